//! The event store: linkd's implementation of cqrs-es's `EventStore` over the `events` table
//! (postgres-es's layout, extended), with bounded conflict retries. See docs/adr/0008 for why it
//! replaced postgres-es's `PersistedEventStore`:
//!
//! - loading is one round trip: the aggregate's snapshot (if any) and the events after it;
//! - committing is one round trip: every event of the command in one `INSERT` statement, which
//!   is atomic on its own, returning the events' global positions (consistency tokens need no
//!   further query);
//! - snapshots are taken from the state the command left (cqrs-es's `EventSink` has already
//!   applied the events to it), every [`SNAPSHOT_EVERY`] events, outside the command's path;
//!   they are a cache and never the truth.

use std::collections::BTreeMap;
use std::future::Future;
use std::time::Duration;

use cqrs_es::event_sink::EventSink;
use cqrs_es::{Aggregate, AggregateContext, AggregateError, DomainEvent, EventEnvelope};
use domain::{Account, Device, LinkAttempt, LinkQr};
use proto::consistency::{ConsistencyToken, Written};
use sha2::{Digest as _, Sha256};
use sqlx::PgPool;
use tokio::sync::watch;

use crate::error::CommandError;

/// How many times a command is tried when another writer got to the aggregate first.
pub const MAX_ATTEMPTS: u32 = 6;

/// A snapshot is written once an aggregate has this many events after its last snapshot, so a
/// load replays at most this many events whatever the length of the history.
pub const SNAPSHOT_EVERY: i64 = 16;

/// An aggregate kept in the event store.
pub trait Stored: Aggregate<Services = ()> {
    /// The version of the state's meaning. Snapshots record it with a fingerprint of the state's
    /// field names; a snapshot of another version or shape is ignored and the state replayed.
    /// Bump it when `apply` changes what it makes of events without the fields changing.
    const SNAPSHOT_VERSION: u32;
}

impl Stored for Account {
    const SNAPSHOT_VERSION: u32 = 1;
}
impl Stored for LinkQr {
    const SNAPSHOT_VERSION: u32 = 1;
}
impl Stored for LinkAttempt {
    const SNAPSHOT_VERSION: u32 = 1;
}
impl Stored for Device {
    const SNAPSHOT_VERSION: u32 = 1;
}

/// The shape a snapshot of `A` must have to be used: the version and a fingerprint of the
/// default state's serialised form (its field names).
fn snapshot_schema<A: Stored>() -> String {
    let shape = serde_json::to_string(&A::default()).unwrap_or_default();
    let digest = Sha256::digest(shape.as_bytes());
    let fingerprint: String = digest[..8].iter().map(|b| format!("{b:02x}")).collect();
    format!("v{}:{fingerprint}", A::SNAPSHOT_VERSION)
}

/// Who did something, and in which request: stored with every event.
#[derive(Debug, Clone)]
pub struct Metadata {
    /// `citizen:<account>`, `system:<subject>`, `app:<device>` or `device:<device>`.
    pub actor: String,
    /// The server-side id of this gRPC call (from `x-request-id`, or generated).
    pub request_id: String,
    /// The account concerned, when known.
    pub account_id: Option<String>,
}

impl Metadata {
    fn to_map(&self) -> BTreeMap<String, String> {
        let mut map = BTreeMap::from([
            ("actor".to_owned(), self.actor.clone()),
            ("request_id".to_owned(), self.request_id.clone()),
        ]);
        if let Some(account_id) = &self.account_id {
            map.insert("account_id".to_owned(), account_id.clone());
        }
        map
    }

    /// The same call, now known to concern `account_id`.
    pub fn for_account(&self, account_id: &str) -> Self {
        Self {
            account_id: Some(account_id.to_owned()),
            ..self.clone()
        }
    }
}

/// An aggregate as loaded: its state and where its history stands.
#[derive(Debug)]
pub struct Loaded<A> {
    aggregate_id: String,
    aggregate: A,
    /// The sequence of its last event (0: none).
    sequence: i64,
    /// The global position of its last event (0: none).
    global_position: i64,
    /// The sequence its snapshot was taken at (0: none used).
    snapshot_sequence: i64,
}

impl<A: Aggregate> AggregateContext<A> for Loaded<A> {
    fn aggregate(&mut self) -> &mut A {
        &mut self.aggregate
    }
}

impl<A: Aggregate> Loaded<A> {
    /// The state as loaded.
    pub fn state(&self) -> &A {
        &self.aggregate
    }

    /// The aggregate's last event, for a consistency token.
    pub fn position(&self) -> Written {
        Written {
            aggregate_type: A::TYPE.to_owned(),
            aggregate_id: self.aggregate_id.clone(),
            sequence: self.sequence,
            global_position: self.global_position,
        }
    }
}

/// What a command left: the aggregate's new state and its last event.
#[derive(Debug)]
pub struct Executed<A> {
    /// The state after the command.
    pub state: A,
    /// The aggregate's last event after the command (unchanged if it decided nothing).
    pub position: Written,
}

/// Why the store failed.
#[derive(Debug, thiserror::Error)]
enum StoreError {
    #[error("another writer appended to the aggregate first")]
    Conflict,
    #[error(transparent)]
    Database(#[from] sqlx::Error),
    #[error("{0}")]
    Corrupt(String),
}

impl From<StoreError> for CommandError {
    fn from(error: StoreError) -> Self {
        match error {
            StoreError::Conflict => Self::Conflict,
            StoreError::Database(source) => source.into(),
            StoreError::Corrupt(detail) => Self::Internal(detail),
        }
    }
}

impl<E: std::error::Error> From<StoreError> for AggregateError<E> {
    fn from(error: StoreError) -> Self {
        match error {
            StoreError::Conflict => Self::AggregateConflict,
            StoreError::Database(source) => Self::DatabaseConnectionError(Box::new(source)),
            StoreError::Corrupt(detail) => Self::DeserializationError(detail.into()),
        }
    }
}

/// SQLSTATEs that mean "someone else wrote first": unique violation on the event's key, and the
/// serialisation failures PostgreSQL may report instead.
fn is_conflict(error: &sqlx::Error) -> bool {
    error
        .as_database_error()
        .and_then(|db| db.code())
        .is_some_and(|code| matches!(code.as_ref(), "23505" | "40001" | "40P01"))
}

/// The event store over one pool.
pub struct EventStore {
    pool: PgPool,
    committed: watch::Sender<u64>,
    /// Authenticates snapshots (see [`snapshot_key`]).
    snapshot_key: std::sync::Arc<Vec<u8>>,
}

/// The key that authenticates snapshots, derived from the server's secret-code pepper: a
/// snapshot decides commands (a device's failure count, say) without leaving a trace in the
/// hash-chained history, so one edited in the database must not be used.
pub fn snapshot_key(pepper: &[u8]) -> Vec<u8> {
    mac(pepper, &[b"linkd/snapshot-key/v1"])
}

/// HMAC-SHA-256 of length-prefixed `parts` under `key`.
fn mac(key: &[u8], parts: &[&[u8]]) -> Vec<u8> {
    use hmac::Mac as _;
    let Ok(mut hmac) = hmac::Hmac::<Sha256>::new_from_slice(key) else {
        // HMAC takes keys of any length; this branch is unreachable.
        return Vec::new();
    };
    for part in parts {
        hmac.update(&(part.len() as u64).to_be_bytes());
        hmac.update(part);
    }
    hmac.finalize().into_bytes().to_vec()
}

/// The MAC a snapshot row must carry (public for tests and tools that check snapshots).
pub fn snapshot_mac(
    key: &[u8],
    (aggregate_type, aggregate_id, schema): (&str, &str, &str),
    last_sequence: i64,
    chain_hash: &[u8],
    payload: &str,
) -> Vec<u8> {
    mac(
        key,
        &[
            aggregate_type.as_bytes(),
            aggregate_id.as_bytes(),
            schema.as_bytes(),
            &last_sequence.to_be_bytes(),
            chain_hash,
            payload.as_bytes(),
        ],
    )
}

impl std::fmt::Debug for EventStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("EventStore")
    }
}

/// (is the snapshot, sequence, global position, payload, chain hash, MAC): the last two for the
/// snapshot row only.
type Row = (bool, i64, i64, String, Option<Vec<u8>>, Option<Vec<u8>>);

impl EventStore {
    /// An event store over `pool` (migrated with this crate's migrations); snapshots are
    /// authenticated with `snapshot_key` ([`snapshot_key`]).
    pub fn new(pool: PgPool, snapshot_key: Vec<u8>) -> Self {
        Self {
            pool,
            committed: watch::Sender::new(0),
            snapshot_key: std::sync::Arc::new(snapshot_key),
        }
    }

    /// The pool, for the secret tables that live beside the events.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Changes whenever this process commits events (the relay waits on it).
    pub fn commits(&self) -> watch::Receiver<u64> {
        self.committed.subscribe()
    }

    /// The current state of aggregate `id` (the default state if it has no events).
    pub async fn load<A: Stored>(&self, id: &str) -> Result<A, CommandError> {
        Ok(self.load_context::<A>(id).await?.aggregate)
    }

    /// The current state of aggregate `id` and where its history stands.
    pub async fn load_with_position<A: Stored>(
        &self,
        id: &str,
    ) -> Result<(A, Written), CommandError> {
        let loaded = self.load_context::<A>(id).await?;
        let position = loaded.position();
        Ok((loaded.aggregate, position))
    }

    /// Aggregate `id` loaded for a command: check its state, then pass it to
    /// [`EventStore::execute_loaded`] (one load instead of two).
    pub async fn load_for_command<A: Stored>(&self, id: &str) -> Result<Loaded<A>, CommandError> {
        Ok(self.load_context::<A>(id).await?)
    }

    /// Aggregate `id` before its first event, without reading the store: for a new aggregate
    /// with a fresh id (a random UUID). Should it exist after all, the commit conflicts and the
    /// command is decided again on what the store holds. Also the start of every replay.
    pub fn fresh<A: Stored>(&self, id: &str) -> Loaded<A> {
        Loaded {
            aggregate_id: id.to_owned(),
            aggregate: A::default(),
            sequence: 0,
            global_position: 0,
            snapshot_sequence: 0,
        }
    }

    /// The state of aggregate `id` replayed from its first event, ignoring snapshots (to check
    /// them).
    pub async fn replay<A: Stored>(&self, id: &str) -> Result<A, CommandError> {
        Ok(self.replay_all::<A>(id).await?.aggregate)
    }

    async fn load_context<A: Stored>(&self, id: &str) -> Result<Loaded<A>, StoreError> {
        let schema = snapshot_schema::<A>();
        let rows: Vec<Row> = sqlx::query_as(
            "WITH snapshot AS ( \
                 SELECT s.last_sequence, s.last_global_position, s.payload, s.chain_hash, s.mac \
                 FROM aggregate_snapshots s \
                 WHERE s.aggregate_type = $1 AND s.aggregate_id = $2 AND s.schema = $3 \
                   AND s.chain_hash = ( \
                       SELECT e.chain_hash FROM events e WHERE e.aggregate_type = $1 \
                          AND e.aggregate_id = $2 AND e.sequence = s.last_sequence)) \
             SELECT true, last_sequence, last_global_position, payload::text, chain_hash, mac \
             FROM snapshot \
             UNION ALL \
             SELECT false, sequence, global_position, payload::text, NULL::bytea, NULL::bytea \
             FROM events \
             WHERE aggregate_type = $1 AND aggregate_id = $2 \
               AND sequence > coalesce((SELECT last_sequence FROM snapshot), 0) \
             ORDER BY 1 DESC, 2",
        )
        .bind(A::TYPE)
        .bind(id)
        .bind(&schema)
        .fetch_all(&self.pool)
        .await?;
        let mut rows = rows.into_iter().peekable();
        let mut loaded = self.fresh::<A>(id);
        if let Some((_, sequence, global_position, payload, chain_hash, mac)) =
            rows.next_if(|(is_snapshot, ..)| *is_snapshot)
        {
            let expected = snapshot_mac(
                &self.snapshot_key,
                (A::TYPE, id, &schema),
                sequence,
                chain_hash.as_deref().unwrap_or_default(),
                &payload,
            );
            if mac.as_deref() != Some(expected.as_slice()) {
                tracing::warn!(
                    aggregate_type = A::TYPE,
                    aggregate_id = id,
                    "a snapshot whose MAC does not verify; replaying the whole history"
                );
                return self.replay_all::<A>(id).await;
            }
            match serde_json::from_str::<A>(&payload) {
                Ok(state) => {
                    loaded.aggregate = state;
                    loaded.sequence = sequence;
                    loaded.global_position = global_position;
                    loaded.snapshot_sequence = sequence;
                }
                Err(error) => {
                    tracing::warn!(
                        aggregate_type = A::TYPE,
                        aggregate_id = id,
                        %error,
                        "unreadable snapshot; replaying the whole history"
                    );
                    return self.replay_all::<A>(id).await;
                }
            }
        }
        apply_rows(&mut loaded, rows)?;
        Ok(loaded)
    }

    /// The aggregate replayed from its first event, ignoring snapshots.
    async fn replay_all<A: Stored>(&self, id: &str) -> Result<Loaded<A>, StoreError> {
        let rows: Vec<Row> = sqlx::query_as(
            "SELECT false, sequence, global_position, payload::text, NULL::bytea, NULL::bytea \
             FROM events \
             WHERE aggregate_type = $1 AND aggregate_id = $2 ORDER BY sequence",
        )
        .bind(A::TYPE)
        .bind(id)
        .fetch_all(&self.pool)
        .await?;
        let mut loaded = self.fresh::<A>(id);
        apply_rows(&mut loaded, rows.into_iter())?;
        Ok(loaded)
    }

    /// Appends `events` after the loaded state, in one statement (atomic on its own), and
    /// returns where the aggregate's history now stands. A concurrent writer that appended first
    /// makes it fail with a conflict and write nothing.
    async fn commit_events<A: Stored>(
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
            if loaded.sequence - loaded.snapshot_sequence >= SNAPSHOT_EVERY {
                self.save_snapshot(&loaded, chain_hash);
            }
        }
        Ok(loaded)
    }

    /// Writes a snapshot of `loaded` in the background: it is a cache, so a failure only costs
    /// later loads a longer replay, and the command does not wait for it.
    fn save_snapshot<A: Stored>(&self, loaded: &Loaded<A>, chain_hash: Vec<u8>) {
        let payload = match serde_json::to_string(&loaded.aggregate) {
            Ok(payload) => payload,
            Err(error) => {
                tracing::warn!(%error, "cannot serialise a snapshot");
                return;
            }
        };
        let pool = self.pool.clone();
        let (id, sequence, position) = (
            loaded.aggregate_id.clone(),
            loaded.sequence,
            loaded.global_position,
        );
        let schema = snapshot_schema::<A>();
        let mac = snapshot_mac(
            &self.snapshot_key,
            (A::TYPE, &id, &schema),
            sequence,
            &chain_hash,
            &payload,
        );
        tokio::spawn(async move {
            let saved = sqlx::query(
                "INSERT INTO aggregate_snapshots \
                     (aggregate_type, aggregate_id, schema, last_sequence, last_global_position, \
                      payload, chain_hash, mac) \
                 VALUES ($1, $2, $3, $4, $5, $6::json, $7, $8) \
                 ON CONFLICT (aggregate_type, aggregate_id) DO UPDATE \
                 SET schema = EXCLUDED.schema, last_sequence = EXCLUDED.last_sequence, \
                     last_global_position = EXCLUDED.last_global_position, \
                     payload = EXCLUDED.payload, chain_hash = EXCLUDED.chain_hash, \
                     mac = EXCLUDED.mac \
                 WHERE aggregate_snapshots.last_sequence < EXCLUDED.last_sequence \
                    OR aggregate_snapshots.schema <> EXCLUDED.schema",
            )
            .bind(A::TYPE)
            .bind(&id)
            .bind(schema)
            .bind(sequence)
            .bind(position)
            .bind(payload)
            .bind(chain_hash)
            .bind(mac)
            .execute(&pool)
            .await;
            if let Err(error) = saved {
                tracing::warn!(aggregate_type = A::TYPE, aggregate_id = id, %error, "snapshot not saved");
            }
        });
    }

    /// Executes `command` on aggregate `id`, retrying a bounded number of times when another
    /// writer committed to the same aggregate first (the command is decided again on the new
    /// state). After the last try the conflict is returned (`ABORTED`).
    pub async fn execute<A>(
        &self,
        id: &str,
        command: A::Command,
        metadata: &Metadata,
    ) -> Result<Executed<A>, CommandError>
    where
        A: Stored,
        A::Command: Clone,
        CommandError: From<AggregateError<A::Error>>,
    {
        retry_on_conflict(|| self.execute_once::<A>(id, command.clone(), metadata)).await
    }

    /// Executes `command` on an aggregate already loaded (see [`EventStore::load_for_command`]).
    /// If another writer appended since the load, the command is decided again on a fresh load,
    /// as [`EventStore::execute`] does.
    pub async fn execute_loaded<A>(
        &self,
        loaded: Loaded<A>,
        command: A::Command,
        metadata: &Metadata,
    ) -> Result<Executed<A>, CommandError>
    where
        A: Stored,
        A::Command: Clone,
        CommandError: From<AggregateError<A::Error>>,
    {
        let id = loaded.aggregate_id.clone();
        match self.decide(loaded, command.clone(), metadata).await {
            Err(CommandError::Conflict) => self.execute::<A>(&id, command, metadata).await,
            other => other,
        }
    }

    /// Executes `command` once; a conflict is returned to the caller, who decides again (use
    /// inside [`retry_on_conflict`] when the command depends on other aggregates' state).
    pub async fn execute_once<A>(
        &self,
        id: &str,
        command: A::Command,
        metadata: &Metadata,
    ) -> Result<Executed<A>, CommandError>
    where
        A: Stored,
        CommandError: From<AggregateError<A::Error>>,
    {
        let loaded = self.load_context::<A>(id).await?;
        self.decide(loaded, command, metadata).await
    }

    /// Lets the aggregate decide `command` and commits what it decided.
    async fn decide<A>(
        &self,
        mut loaded: Loaded<A>,
        command: A::Command,
        metadata: &Metadata,
    ) -> Result<Executed<A>, CommandError>
    where
        A: Stored,
        CommandError: From<AggregateError<A::Error>>,
    {
        let sink = EventSink::default();
        loaded
            .aggregate
            .handle(command, &(), &sink)
            .await
            .map_err(|refusal| CommandError::from(AggregateError::UserError(refusal)))?;
        let events = sink.collect().await;
        let loaded = self
            .commit_events(loaded, events, &metadata.to_map())
            .await?;
        let position = loaded.position();
        Ok(Executed {
            state: loaded.aggregate,
            position,
        })
    }

    /// The consistency token naming the last event of each aggregate in `written`, read from
    /// the store (for answers that did not execute a command on each of them).
    pub async fn current_token(
        &self,
        written: &[(&'static str, String)],
    ) -> Result<String, CommandError> {
        let mut positions = Vec::with_capacity(written.len());
        for (aggregate_type, aggregate_id) in written {
            let position: Option<(i64, i64)> = sqlx::query_as(
                "SELECT sequence, global_position FROM events \
                 WHERE aggregate_type = $1 AND aggregate_id = $2 ORDER BY sequence DESC LIMIT 1",
            )
            .bind(aggregate_type)
            .bind(aggregate_id)
            .fetch_optional(&self.pool)
            .await?;
            if let Some((sequence, global_position)) = position {
                positions.push(Written {
                    aggregate_type: (*aggregate_type).to_owned(),
                    aggregate_id: aggregate_id.clone(),
                    sequence,
                    global_position,
                });
            }
        }
        Ok(ConsistencyToken(positions).to_string())
    }
}

/// The consistency token naming these positions (aggregates without events are left out).
pub fn token<'a>(positions: impl IntoIterator<Item = &'a Written>) -> String {
    ConsistencyToken(
        positions
            .into_iter()
            .filter(|position| position.sequence > 0)
            .cloned()
            .collect(),
    )
    .to_string()
}

fn apply_rows<A: Aggregate>(
    loaded: &mut Loaded<A>,
    rows: impl Iterator<Item = Row>,
) -> Result<(), StoreError> {
    for (_, sequence, global_position, payload, ..) in rows {
        let event: A::Event = serde_json::from_str(&payload).map_err(|error| {
            StoreError::Corrupt(format!(
                "event {sequence} of {} {} does not deserialise: {error}",
                A::TYPE,
                loaded.aggregate_id
            ))
        })?;
        if sequence != loaded.sequence + 1 {
            return Err(StoreError::Corrupt(format!(
                "{} {} jumps from event {} to {sequence}",
                A::TYPE,
                loaded.aggregate_id,
                loaded.sequence
            )));
        }
        loaded.aggregate.apply(event);
        loaded.sequence = sequence;
        loaded.global_position = global_position;
    }
    Ok(())
}

/// cqrs-es's view of the store, so that a `CqrsFramework` can run over it as well.
impl<A: Stored> cqrs_es::EventStore<A> for EventStore {
    type AC = Loaded<A>;

    async fn load_events(
        &self,
        aggregate_id: &str,
    ) -> Result<Vec<EventEnvelope<A>>, AggregateError<A::Error>> {
        let rows: Vec<(i64, String, String)> = sqlx::query_as(
            "SELECT sequence, payload::text, metadata::text FROM events \
             WHERE aggregate_type = $1 AND aggregate_id = $2 ORDER BY sequence",
        )
        .bind(A::TYPE)
        .bind(aggregate_id)
        .fetch_all(&self.pool)
        .await
        .map_err(StoreError::from)?;
        rows.into_iter()
            .map(|(sequence, payload, metadata)| {
                let corrupt = |e: serde_json::Error| {
                    AggregateError::from(StoreError::Corrupt(format!(
                        "event {sequence} of {} {aggregate_id}: {e}",
                        A::TYPE
                    )))
                };
                Ok(EventEnvelope {
                    aggregate_id: aggregate_id.to_owned(),
                    sequence: usize::try_from(sequence).unwrap_or_default(),
                    payload: serde_json::from_str(&payload).map_err(corrupt)?,
                    metadata: serde_json::from_str(&metadata).map_err(corrupt)?,
                })
            })
            .collect()
    }

    async fn load_aggregate(
        &self,
        aggregate_id: &str,
    ) -> Result<Loaded<A>, AggregateError<A::Error>> {
        Ok(self.load_context::<A>(aggregate_id).await?)
    }

    async fn commit(
        &self,
        events: Vec<A::Event>,
        context: Loaded<A>,
        metadata: std::collections::HashMap<String, String>,
    ) -> Result<Vec<EventEnvelope<A>>, AggregateError<A::Error>> {
        let first = context.sequence + 1;
        let aggregate_id = context.aggregate_id.clone();
        let stored: BTreeMap<String, String> = metadata.clone().into_iter().collect();
        self.commit_events(context, events.clone(), &stored).await?;
        Ok((first..)
            .zip(events)
            .map(|(sequence, payload)| EventEnvelope {
                aggregate_id: aggregate_id.clone(),
                sequence: usize::try_from(sequence).unwrap_or_default(),
                payload,
                metadata: metadata.clone(),
            })
            .collect())
    }
}

/// Runs `step` again while it fails with a concurrency conflict, at most [`MAX_ATTEMPTS`] times,
/// with a short random pause between tries so that competing writers spread out.
pub async fn retry_on_conflict<T, F, Fut>(mut step: F) -> Result<T, CommandError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, CommandError>>,
{
    let mut attempt = 1;
    loop {
        match step().await {
            Err(CommandError::Conflict) if attempt < MAX_ATTEMPTS => {
                let ceiling = 5 * u64::from(attempt) * u64::from(attempt);
                let pause = rand::random_range(1..=ceiling);
                tokio::time::sleep(Duration::from_millis(pause)).await;
                attempt += 1;
            }
            other => return other,
        }
    }
}
