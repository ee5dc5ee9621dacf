//! Committing what a command decided: every event (of one aggregate, or of two that change
//! together) in one `INSERT`, then, every
//! [`snapshot::SNAPSHOT_EVERY`] events, a snapshot of the state it left.

use std::collections::BTreeMap;

use cqrs_es::DomainEvent;

use super::{BearerRow, EventStore, Loaded, StoreError, Stored, keys, snapshot};
use crate::sealing::{self, DataKey};

/// SQLSTATEs that mean "someone else wrote first": unique violation on the event's key, and the
/// serialisation failures PostgreSQL may report instead.
fn is_conflict(error: &sqlx::Error) -> bool {
    error
        .as_database_error()
        .and_then(|db| db.code())
        .is_some_and(|code| matches!(code.as_ref(), "23505" | "40001" | "40P01"))
}

/// The rows of one `INSERT`: the events of one or more aggregates, column by column.
#[derive(Debug, Default)]
pub(super) struct Rows {
    types: Vec<&'static str>,
    ids: Vec<String>,
    sequences: Vec<i64>,
    event_types: Vec<String>,
    versions: Vec<String>,
    payloads: Vec<String>,
    subjects: Vec<String>,
}

impl Rows {
    /// Adds `events` of `loaded`, after its last event, their personal fields sealed under
    /// `key`, the data key of `subject`.
    pub(super) fn push<A: Stored>(
        &mut self,
        loaded: &Loaded<A>,
        events: &[A::Event],
        (subject, key): (&str, &DataKey),
    ) -> Result<(), StoreError> {
        for (n, event) in (1..).zip(events) {
            let sequence = loaded.sequence + n;
            let event_type = event.event_type();
            let payload = if sealing::has_personal(A::TYPE, &event_type) {
                let mut payload = serde_json::to_value(event)
                    .map_err(|e| StoreError::Corrupt(format!("serialising an event: {e}")))?;
                let event_id = format!("{}/{}/{sequence}", A::TYPE, loaded.aggregate_id);
                sealing::seal_event(A::TYPE, &event_type, &event_id, &mut payload, key)?;
                payload.to_string()
            } else {
                serde_json::to_string(event)
                    .map_err(|e| StoreError::Corrupt(format!("serialising an event: {e}")))?
            };
            self.types.push(A::TYPE);
            self.ids.push(loaded.aggregate_id.clone());
            self.sequences.push(sequence);
            self.event_types.push(event_type);
            self.versions.push(event.event_version());
            self.payloads.push(payload);
            self.subjects.push(subject.to_owned());
        }
        Ok(())
    }
}

/// The `data_keys` row of a subject whose first events the statement writes: its unique key
/// makes a concurrent or earlier creator fail the statement (`data_keys_pkey`), never a second
/// key for the subject.
const DATA_KEY_PRIMARY_KEY: &str = "data_keys_pkey";

/// The events' `INSERT`: every event of a commit in one statement, returning where each went.
macro_rules! insert_events {
    () => {
        "INSERT INTO events \
             (aggregate_type, aggregate_id, sequence, event_type, event_version, payload, \
              metadata, data_subject) \
         SELECT e.aggregate_type, e.aggregate_id, e.sequence, e.event_type, e.event_version, \
                e.payload::json, $8::json, e.data_subject \
         FROM unnest($1::text[], $2::text[], $3::bigint[], $4::text[], $5::text[], $6::text[], \
                     $7::text[]) \
              WITH ORDINALITY \
              AS e (aggregate_type, aggregate_id, sequence, event_type, event_version, payload, \
                    data_subject, n) \
         ORDER BY e.n \
         RETURNING aggregate_type, aggregate_id, sequence, global_position, chain_hash"
    };
}

/// Every event of a commit in one `INSERT`.
const EVENTS: &str = insert_events!();

/// [`EVENTS`] and a bearer token's row (`$9`–`$12`), in one statement: a data-modifying `WITH`
/// runs exactly once, and the statement is atomic.
const WITH_BEARER: &str = concat!(
    "WITH bearer AS ( \
         INSERT INTO bearer_tokens (kind, id, token_hash, expires_at) \
         VALUES ($9, $10, $11, $12)) ",
    insert_events!()
);

/// [`EVENTS`] and the new data key of their subject (`$9`–`$11`), in one statement.
const WITH_KEY: &str = concat!(
    "WITH new_key AS ( \
         INSERT INTO data_keys (subject, kek_id, wrapped) VALUES ($9, $10, $11)) ",
    insert_events!()
);

/// [`WITH_BEARER`] and the new data key of the events' subject (`$13`–`$15`).
const WITH_BEARER_AND_KEY: &str = concat!(
    "WITH bearer AS ( \
         INSERT INTO bearer_tokens (kind, id, token_hash, expires_at) \
         VALUES ($9, $10, $11, $12)), \
     new_key AS ( \
         INSERT INTO data_keys (subject, kek_id, wrapped) VALUES ($13, $14, $15)) ",
    insert_events!()
);

/// What the `INSERT` returned for one event: type, id, sequence, global position, chain hash.
pub(super) type Written = (String, String, i64, i64, Vec<u8>);

impl EventStore {
    /// Appends `events` after the loaded state, in one statement (atomic on its own), and
    /// returns where the aggregate's history now stands. A concurrent writer that appended first
    /// makes it fail with a conflict and write nothing.
    /// With `bearer`, the token's row goes in with the events.
    pub(super) async fn commit_events<A: Stored>(
        &self,
        mut loaded: Loaded<A>,
        events: Vec<A::Event>,
        metadata: &BTreeMap<String, String>,
        bearer: Option<&BearerRow>,
    ) -> Result<Loaded<A>, StoreError> {
        if events.is_empty() {
            return match bearer {
                None => Ok(loaded),
                Some(_) => Err(StoreError::Corrupt(
                    "a bearer token for an aggregate its command did not start".into(),
                )),
            };
        }
        let subject = keys::subject_of(&loaded, metadata);
        // A subject that starts with this aggregate (a new link attempt, a new account) has no
        // key yet: it is created by the statement that writes the events. If one exists after
        // all (an earlier writer's), the statement fails on it and the key is read as usual.
        if loaded.sequence == 0
            && subject == format!("{}:{}", A::TYPE, loaded.aggregate_id)
            && !self.keys.is_cached(&subject)
        {
            let (key, new_key) = self.keys.fresh(&subject);
            let mut rows = Rows::default();
            rows.push(&loaded, &events, (&subject, &key))?;
            match self
                .insert_on(&self.pool, rows, metadata, bearer, Some(&new_key))
                .await
            {
                Ok(written) => {
                    self.keys.remember(&subject, &key);
                    self.advance(&mut loaded, &written, (&subject, &key));
                    return Ok(loaded);
                }
                Err(StoreError::KeyTaken) => {}
                Err(error) => return Err(error),
            }
        }
        let key = self.keys.for_sealing(&self.pool, &subject).await?;
        let mut rows = Rows::default();
        rows.push(&loaded, &events, (&subject, &key))?;
        let written = self.insert(rows, metadata, bearer).await?;
        self.advance(&mut loaded, &written, (&subject, &key));
        Ok(loaded)
    }

    /// Appends the events of two aggregates in one statement: both or neither. A concurrent
    /// writer that appended to either first makes it fail with a conflict and write nothing.
    pub(super) async fn commit_pair<A: Stored, B: Stored>(
        &self,
        (mut a, a_events): (Loaded<A>, Vec<A::Event>),
        (mut b, b_events): (Loaded<B>, Vec<B::Event>),
        metadata: &BTreeMap<String, String>,
    ) -> Result<(Loaded<A>, Loaded<B>), StoreError> {
        if a_events.is_empty() && b_events.is_empty() {
            return Ok((a, b));
        }
        let a_subject = keys::subject_of(&a, metadata);
        let a_key = self.keys.for_sealing(&self.pool, &a_subject).await?;
        let b_subject = keys::subject_of(&b, metadata);
        let b_key = if b_subject == a_subject {
            a_key.clone()
        } else {
            self.keys.for_sealing(&self.pool, &b_subject).await?
        };
        let mut rows = Rows::default();
        rows.push(&a, &a_events, (&a_subject, &a_key))?;
        rows.push(&b, &b_events, (&b_subject, &b_key))?;
        let written = self.insert(rows, metadata, None).await?;
        self.advance(&mut a, &written, (&a_subject, &a_key));
        self.advance(&mut b, &written, (&b_subject, &b_key));
        Ok((a, b))
    }

    /// One `INSERT` of `rows`, in their order (and of `bearer`'s row, in the same statement).
    async fn insert(
        &self,
        rows: Rows,
        metadata: &BTreeMap<String, String>,
        bearer: Option<&BearerRow>,
    ) -> Result<Vec<Written>, StoreError> {
        self.insert_on(&self.pool, rows, metadata, bearer, None)
            .await
    }

    /// [`EventStore::insert`] on `executor` (a transaction that does more, as erasure's), with
    /// the new data key of the events' subject if `new_key` ([`StoreError::KeyTaken`] if the
    /// subject has one already).
    pub(super) async fn insert_on<'c, E: sqlx::PgExecutor<'c>>(
        &self,
        executor: E,
        rows: Rows,
        metadata: &BTreeMap<String, String>,
        bearer: Option<&BearerRow>,
        new_key: Option<&keys::NewKey>,
    ) -> Result<Vec<Written>, StoreError> {
        let metadata = serde_json::to_string(metadata)
            .map_err(|e| StoreError::Corrupt(format!("serialising metadata: {e}")))?;
        let statement = match (bearer.is_some(), new_key.is_some()) {
            (true, true) => WITH_BEARER_AND_KEY,
            (true, false) => WITH_BEARER,
            (false, true) => WITH_KEY,
            (false, false) => EVENTS,
        };
        let query = sqlx::query_as(statement)
            .bind(&rows.types)
            .bind(&rows.ids)
            .bind(&rows.sequences)
            .bind(&rows.event_types)
            .bind(&rows.versions)
            .bind(&rows.payloads)
            .bind(&rows.subjects)
            .bind(&metadata);
        let query = match bearer {
            Some(bearer) => query
                .bind(bearer.kind)
                .bind(bearer.id)
                .bind(&bearer.hash)
                .bind(bearer.expires_at),
            None => query,
        };
        let query = match new_key {
            Some(new_key) => query
                .bind(&new_key.subject)
                .bind(&new_key.kek_id)
                .bind(&new_key.wrapped),
            None => query,
        };
        let written: Result<Vec<Written>, sqlx::Error> = query.fetch_all(executor).await;
        let written = match written {
            Ok(written) => written,
            Err(error)
                if error
                    .as_database_error()
                    .and_then(|db| db.constraint())
                    .is_some_and(|c| c == DATA_KEY_PRIMARY_KEY) =>
            {
                return Err(StoreError::KeyTaken);
            }
            Err(error) if is_conflict(&error) => {
                self.metrics.conflicts.inc();
                return Err(StoreError::Conflict);
            }
            Err(error) => return Err(error.into()),
        };
        self.metrics.commits.inc();
        self.metrics
            .events
            .inc_by(u64::try_from(written.len()).unwrap_or(u64::MAX));
        self.committed.send_modify(|n| *n = n.wrapping_add(1));
        Ok(written)
    }

    /// Moves `loaded` to its last event among `written` (if any), and takes a snapshot when due
    /// (sealed under the data key its events were sealed under).
    pub(super) fn advance<A: Stored>(
        &self,
        loaded: &mut Loaded<A>,
        written: &[Written],
        sealed_for: (&str, &DataKey),
    ) {
        let last = written
            .iter()
            .filter(|(kind, id, ..)| kind == A::TYPE && *id == loaded.aggregate_id)
            .max_by_key(|(_, _, sequence, ..)| *sequence);
        if let Some((_, _, sequence, global_position, chain_hash)) = last {
            loaded.sequence = *sequence;
            loaded.global_position = *global_position;
            if loaded.sequence - loaded.snapshot_sequence >= snapshot::SNAPSHOT_EVERY {
                self.take_snapshot(loaded, chain_hash.clone(), sealed_for);
            }
        }
    }

    /// Saves a snapshot of the state a command left (in the background: see [`snapshot`]).
    fn take_snapshot<A: Stored>(
        &self,
        loaded: &Loaded<A>,
        chain_hash: Vec<u8>,
        (subject, key): (&str, &DataKey),
    ) {
        let state = match serde_json::to_vec(&loaded.aggregate) {
            Ok(state) => state,
            Err(error) => {
                tracing::warn!(%error, "cannot serialise a snapshot");
                return;
            }
        };
        let aad = snapshot::aad(A::TYPE, &loaded.aggregate_id, loaded.sequence);
        let payload = serde_json::Value::String(key.seal_text(&aad, &state)).to_string();
        let taken = snapshot::Taken {
            aggregate_id: loaded.aggregate_id.clone(),
            last_sequence: loaded.sequence,
            last_global_position: loaded.global_position,
            chain_hash,
            payload,
            data_subject: subject.to_owned(),
        };
        snapshot::save::<A>(&self.pool, &self.snapshot_key, taken);
    }
}
