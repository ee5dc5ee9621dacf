//! The event store: linkd's own, over the `events` table (postgres-es's layout, extended with
//! `global_position`, `tx_id`, `occurred_at` and a chain hash). See docs/adr/0008 for why it
//! replaced postgres-es's `PersistedEventStore`:
//!
//! - loading is one round trip: the aggregate's snapshot (if any, see [`snapshot`]) and the
//!   events after it;
//! - committing is one round trip: every event of the command in one `INSERT` statement, which
//!   is atomic on its own, returning the events' global positions (consistency tokens need no
//!   further query);
//! - a command is decided by the aggregate on the state just loaded and retried on conflict
//!   through the one retry path, [`retry::retry_on_conflict`].

mod commit;
mod erasure;
mod keys;
pub use keys::rewrap_keys;
mod load;
pub(crate) mod retry;
pub mod snapshot;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;

use cqrs_es::event_sink::EventSink;
use cqrs_es::{Aggregate, AggregateError};
use domain::{Account, Device, LinkAttempt, LinkQr};
use prometheus_client::metrics::counter::Counter;
use proto::consistency::Written;
use service_kit::metrics::Metrics;
use sqlx::PgPool;
use tokio::sync::watch;

use crate::error::CommandError;
use crate::sealing::{Keks, SealError};
pub(crate) use retry::retry_on_conflict;

/// An aggregate kept in the event store.
pub trait Stored: Aggregate<Services = ()> {
    /// The version of the state's meaning. Snapshots record it with a fingerprint of the state's
    /// field names; a snapshot of another version or shape is ignored and the state replayed.
    /// Bump it when `apply` changes what it makes of events without the fields changing.
    const SNAPSHOT_VERSION: u32;

    /// The account this state belongs to, if it knows it (its events are sealed under that
    /// account's data key when the call does not name the account: see [`crate::sealing`]).
    fn owner_account(&self, aggregate_id: &str) -> Option<String>;
}

impl Stored for Account {
    const SNAPSHOT_VERSION: u32 = 1;
    fn owner_account(&self, aggregate_id: &str) -> Option<String> {
        Some(aggregate_id.to_owned())
    }
}
impl Stored for LinkQr {
    const SNAPSHOT_VERSION: u32 = 1;
    fn owner_account(&self, _: &str) -> Option<String> {
        self.account_id().map(|account| account.0.clone())
    }
}
impl Stored for LinkAttempt {
    const SNAPSHOT_VERSION: u32 = 1;
    fn owner_account(&self, _: &str) -> Option<String> {
        self.account_id().map(|account| account.0.clone())
    }
}
impl Stored for Device {
    const SNAPSHOT_VERSION: u32 = 1;
    fn owner_account(&self, _: &str) -> Option<String> {
        self.owner().map(|account| account.0.clone())
    }
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
        // The call's trace, for the relay and the read side to continue (ADR 0024); only while
        // traces are exported.
        if let Some(traceparent) = service_kit::traces::current_traceparent() {
            map.insert(service_kit::traces::TRACEPARENT.to_owned(), traceparent);
        }
        map
    }

    /// The same call, now known to concern `account_id`.
    pub(crate) fn for_account(&self, account_id: &str) -> Self {
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

impl<A: Aggregate> Loaded<A> {
    /// The state as loaded.
    pub fn state(&self) -> &A {
        &self.aggregate
    }

    /// The state, without the history's position.
    pub fn into_state(self) -> A {
        self.aggregate
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

/// The hash of a bearer token (a QR code's, a link attempt's) that names a new aggregate, stored
/// in `bearer_tokens` with the aggregate's first events ([`EventStore::execute_with_bearer`]).
#[derive(Debug, Clone)]
pub(crate) struct BearerRow {
    /// `bearer_tokens.kind`.
    pub(crate) kind: &'static str,
    /// The aggregate's id.
    pub(crate) id: uuid::Uuid,
    /// SHA-256 of the token.
    pub(crate) hash: Vec<u8>,
    /// When the token dies.
    pub(crate) expires_at: chrono::DateTime<chrono::Utc>,
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
    /// A stored event in a shape this build cannot bring to its own (a newer linkd wrote it).
    #[error("{0}")]
    Version(String),
    #[error(transparent)]
    Sealing(#[from] SealError),
    #[error("the personal data of {0} was erased; nothing more can be recorded for it")]
    Erased(String),
    /// A statement that was to create its subject's data key found one (the key is then read).
    #[error("the data key of the events' subject exists already")]
    KeyTaken,
}

impl From<StoreError> for CommandError {
    fn from(error: StoreError) -> Self {
        match error {
            StoreError::Conflict => Self::Conflict,
            StoreError::Database(source) => source.into(),
            StoreError::Corrupt(detail) => Self::Internal(detail),
            // During a rolling deploy: an upgraded instance can answer.
            StoreError::Version(detail) => Self::NewerVersion(format!(
                "{detail}; retry (an instance of the newer version can handle it)"
            )),
            StoreError::Sealing(error) => Self::Internal(error.to_string()),
            // A write for an erased account (a QR code issued before the erasure, scanned
            // after it): the same refusal as the account's own commands get.
            StoreError::Erased(_) => Self::Account(domain::AccountError::Erased),
            // Handled where it arises (the key is read and the write tried again).
            StoreError::KeyTaken => Self::Conflict,
        }
    }
}

/// The event store over one pool.
pub struct EventStore {
    pool: PgPool,
    committed: watch::Sender<u64>,
    /// Authenticates snapshots ([`snapshot::key`]).
    snapshot_key: std::sync::Arc<Vec<u8>>,
    /// The data keys personal fields are sealed under ([`crate::sealing`]).
    keys: std::sync::Arc<keys::Keyring>,
    metrics: StoreMetrics,
}

/// What the store counts: transactions that appended events, the events, and the appends
/// refused because another writer got to the aggregate first (each decided again, up to
/// [`retry::MAX_ATTEMPTS`] times).
#[derive(Debug, Clone, Default)]
struct StoreMetrics {
    commits: Counter,
    events: Counter,
    conflicts: Counter,
}

impl std::fmt::Debug for EventStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("EventStore")
    }
}

impl EventStore {
    /// An event store over `pool` (migrated with this crate's migrations); snapshots are
    /// authenticated with `snapshot_key` ([`snapshot::key`]); data keys are wrapped by `keks`.
    pub fn new(pool: PgPool, snapshot_key: Vec<u8>, keks: Keks) -> Self {
        Self {
            pool,
            committed: watch::Sender::new(0),
            snapshot_key: std::sync::Arc::new(snapshot_key),
            keys: std::sync::Arc::new(keys::Keyring::new(keks)),
            metrics: StoreMetrics::default(),
        }
    }

    /// Counts commits, events and conflicts in `metrics`.
    #[must_use]
    pub fn with_metrics(self, metrics: &Metrics) -> Self {
        let StoreMetrics {
            commits,
            events,
            conflicts,
        } = &self.metrics;
        metrics.register(
            "event_store_commits",
            "Transactions that appended events to the store",
            commits.clone(),
        );
        metrics.register(
            "event_store_events",
            "Events appended to the store",
            events.clone(),
        );
        metrics.register(
            "event_store_conflicts",
            "Appends refused because another writer appended to the aggregate first (the \
             command is decided again)",
            conflicts.clone(),
        );
        self
    }

    /// Changes whenever this process commits events (the relay waits on it).
    pub(crate) fn commits(&self) -> watch::Receiver<u64> {
        self.committed.subscribe()
    }

    /// Aggregate `id` as it stands: check its state, then pass it to [`EventStore::execute`]
    /// (one load for both). An aggregate without events loads as its default state.
    pub async fn load<A: Stored>(&self, id: &str) -> Result<Loaded<A>, CommandError> {
        Ok(self.load_context::<A>(id).await?)
    }

    /// Aggregate `id` before its first event, without reading the store: for a new aggregate
    /// with a fresh id (a random UUID). Should it exist after all, the commit conflicts and the
    /// command is decided again on what the store holds.
    pub(crate) fn fresh<A: Stored>(&self, id: &str) -> Loaded<A> {
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

    /// Executes `command` on `loaded`: the aggregate decides on the state as loaded and what it
    /// decides is committed. When another writer appended since the load, the command is decided
    /// again on a fresh load, through [`retry_on_conflict`] (at most
    /// [`retry::MAX_ATTEMPTS`] decisions in all, then `ABORTED`).
    pub async fn execute<A>(
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
        self.execute_storing(loaded, command, metadata, None).await
    }

    /// [`EventStore::execute`] for a command that starts an aggregate named by a bearer token:
    /// the token's hash is stored by the same statement as the events (both or neither), so a
    /// token never exists for an aggregate that does not, and the call costs one round trip
    /// less. A command that decides nothing stores no token and fails.
    pub(crate) async fn execute_with_bearer<A>(
        &self,
        loaded: Loaded<A>,
        command: A::Command,
        metadata: &Metadata,
        bearer: &BearerRow,
    ) -> Result<Executed<A>, CommandError>
    where
        A: Stored,
        A::Command: Clone,
        CommandError: From<AggregateError<A::Error>>,
    {
        self.execute_storing(loaded, command, metadata, Some(bearer))
            .await
    }

    async fn execute_storing<A>(
        &self,
        loaded: Loaded<A>,
        command: A::Command,
        metadata: &Metadata,
        bearer: Option<&BearerRow>,
    ) -> Result<Executed<A>, CommandError>
    where
        A: Stored,
        A::Command: Clone,
        CommandError: From<AggregateError<A::Error>>,
    {
        let id = loaded.aggregate_id.clone();
        let mut first = Some(loaded);
        retry_on_conflict(|| {
            let loaded = first.take();
            let command = command.clone();
            let id = &id;
            async move {
                let loaded = match loaded {
                    Some(loaded) => loaded,
                    None => self.load_context::<A>(id).await?,
                };
                self.execute_once(loaded, command, metadata, bearer).await
            }
        })
        .await
    }

    /// Executes two commands on two aggregates that change together, committed in one statement
    /// (both or neither): each aggregate decides on its state as loaded. When another writer
    /// appended to either since the load, both are loaded again and both commands decided again,
    /// through [`retry_on_conflict`].
    pub async fn execute_pair<A, B>(
        &self,
        (a, a_command): (Loaded<A>, A::Command),
        (b, b_command): (Loaded<B>, B::Command),
        metadata: &Metadata,
    ) -> Result<(Executed<A>, Executed<B>), CommandError>
    where
        A: Stored,
        B: Stored,
        A::Command: Clone,
        B::Command: Clone,
        CommandError: From<AggregateError<A::Error>> + From<AggregateError<B::Error>>,
    {
        let ids = (a.aggregate_id.clone(), b.aggregate_id.clone());
        let metadata = metadata.to_map();
        let mut first = Some((a, b));
        retry_on_conflict(|| {
            let loaded = first.take();
            let (a_command, b_command) = (a_command.clone(), b_command.clone());
            let (ids, metadata) = (&ids, &metadata);
            async move {
                let (mut a, mut b) = match loaded {
                    Some(loaded) => loaded,
                    None => (
                        self.load_context::<A>(&ids.0).await?,
                        self.load_context::<B>(&ids.1).await?,
                    ),
                };
                let a_events = decide(&mut a.aggregate, a_command).await?;
                let b_events = decide(&mut b.aggregate, b_command).await?;
                let (a, b) = self
                    .commit_pair((a, a_events), (b, b_events), metadata)
                    .await?;
                let (a_position, b_position) = (a.position(), b.position());
                Ok((
                    Executed {
                        state: a.aggregate,
                        position: a_position,
                    },
                    Executed {
                        state: b.aggregate,
                        position: b_position,
                    },
                ))
            }
        })
        .await
    }

    /// Executes `command` on `loaded` once: a conflict is returned to the caller. For a step of
    /// [`retry_on_conflict`] whose command depends on other aggregates' state, which the step
    /// loads again on each try. With `bearer`, the token's row goes in with the events
    /// ([`EventStore::execute_with_bearer`]).
    pub(crate) async fn execute_once<A>(
        &self,
        mut loaded: Loaded<A>,
        command: A::Command,
        metadata: &Metadata,
        bearer: Option<&BearerRow>,
    ) -> Result<Executed<A>, CommandError>
    where
        A: Stored,
        CommandError: From<AggregateError<A::Error>>,
    {
        let events = decide(&mut loaded.aggregate, command).await?;
        let loaded = self
            .commit_events(loaded, events, &metadata.to_map(), bearer)
            .await?;
        let position = loaded.position();
        Ok(Executed {
            state: loaded.aggregate,
            position,
        })
    }
}

/// What `aggregate` decides on `command` (its state moves with the events, as cqrs-es's
/// `EventSink` applies them).
async fn decide<A>(aggregate: &mut A, command: A::Command) -> Result<Vec<A::Event>, CommandError>
where
    A: Stored,
    CommandError: From<AggregateError<A::Error>>,
{
    let sink = EventSink::default();
    aggregate
        .handle(command, &(), &sink)
        .await
        .map_err(|refusal| CommandError::from(AggregateError::UserError(refusal)))?;
    Ok(sink.collect().await)
}
