//! Committing what a command decided: every event in one `INSERT`, then, every
//! [`snapshot::SNAPSHOT_EVERY`] events, a snapshot of the state it left.

use std::collections::BTreeMap;

use cqrs_es::DomainEvent;

use super::{EventStore, Loaded, StoreError, Stored, snapshot};

/// SQLSTATEs that mean "someone else wrote first": unique violation on the event's key, and the
/// serialisation failures PostgreSQL may report instead.
fn is_conflict(error: &sqlx::Error) -> bool {
    error
        .as_database_error()
        .and_then(|db| db.code())
        .is_some_and(|code| matches!(code.as_ref(), "23505" | "40001" | "40P01"))
}

impl EventStore {
    /// Appends `events` after the loaded state, in one statement (atomic on its own), and
    /// returns where the aggregate's history now stands. A concurrent writer that appended first
    /// makes it fail with a conflict and write nothing.
    pub(super) async fn commit_events<A: Stored>(
        &self,
        mut loaded: Loaded<A>,
        events: Vec<A::Event>,
        metadata: &BTreeMap<String, String>,
    ) -> Result<Loaded<A>, StoreError> {
        if events.is_empty() {
            return Ok(loaded);
        }
        let mut sequences = Vec::with_capacity(events.len());
        let mut types = Vec::with_capacity(events.len());
        let mut versions = Vec::with_capacity(events.len());
        let mut payloads = Vec::with_capacity(events.len());
        for (n, event) in (1..).zip(&events) {
            sequences.push(loaded.sequence + n);
            types.push(event.event_type());
            versions.push(event.event_version());
            payloads.push(
                serde_json::to_string(event)
                    .map_err(|e| StoreError::Corrupt(format!("serialising an event: {e}")))?,
            );
        }
        let metadata = serde_json::to_string(metadata)
            .map_err(|e| StoreError::Corrupt(format!("serialising metadata: {e}")))?;
        let written: Result<Vec<(i64, i64, Vec<u8>)>, sqlx::Error> = sqlx::query_as(
            "INSERT INTO events \
                 (aggregate_type, aggregate_id, sequence, event_type, event_version, payload, \
                  metadata) \
             SELECT $1, $2, e.sequence, e.event_type, e.event_version, e.payload::json, $7::json \
             FROM unnest($3::bigint[], $4::text[], $5::text[], $6::text[]) WITH ORDINALITY \
                  AS e (sequence, event_type, event_version, payload, n) \
             ORDER BY e.n \
             RETURNING sequence, global_position, chain_hash",
        )
        .bind(A::TYPE)
        .bind(&loaded.aggregate_id)
        .bind(&sequences)
        .bind(&types)
        .bind(&versions)
        .bind(&payloads)
        .bind(&metadata)
        .fetch_all(&self.pool)
        .await;
        let written = match written {
            Ok(written) => written,
            Err(error) if is_conflict(&error) => return Err(StoreError::Conflict),
            Err(error) => return Err(error.into()),
        };
        self.committed.send_modify(|n| *n = n.wrapping_add(1));
        if let Some((sequence, global_position, chain_hash)) =
            written.into_iter().max_by_key(|(sequence, ..)| *sequence)
        {
            loaded.sequence = sequence;
            loaded.global_position = global_position;
            if loaded.sequence - loaded.snapshot_sequence >= snapshot::SNAPSHOT_EVERY {
                self.take_snapshot(&loaded, chain_hash);
            }
        }
        Ok(loaded)
    }

    /// Saves a snapshot of the state a command left (in the background: see [`snapshot`]).
    fn take_snapshot<A: Stored>(&self, loaded: &Loaded<A>, chain_hash: Vec<u8>) {
        let payload = match serde_json::to_string(&loaded.aggregate) {
            Ok(payload) => payload,
            Err(error) => {
                tracing::warn!(%error, "cannot serialise a snapshot");
                return;
            }
        };
        let taken = snapshot::Taken {
            aggregate_id: loaded.aggregate_id.clone(),
            last_sequence: loaded.sequence,
            last_global_position: loaded.global_position,
            chain_hash,
            payload,
        };
        snapshot::save::<A>(&self.pool, &self.snapshot_key, taken);
    }
}
