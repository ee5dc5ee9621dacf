//! The event store: one cqrs-es framework per aggregate over postgres-es (pure event store, no
//! snapshots, no in-process queries), plus loading current state and bounded conflict retries.

use std::collections::HashMap;
use std::future::Future;
use std::time::Duration;

use cqrs_es::persist::PersistedEventStore;
use cqrs_es::{Aggregate, AggregateError, CqrsFramework, EventStore as _};
use domain::{Account, Device, LinkAttempt, LinkQr};
use postgres_es::PostgresEventRepository;
use sqlx::PgPool;

use crate::error::CommandError;

/// How many times a command is tried when another writer got to the aggregate first.
pub const MAX_ATTEMPTS: u32 = 6;

type Store<A> = PersistedEventStore<PostgresEventRepository, A>;

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
    fn to_map(&self) -> HashMap<String, String> {
        let mut map = HashMap::from([
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

/// One framework per aggregate, all over the same pool.
pub struct EventStore {
    pool: PgPool,
    accounts: CqrsFramework<Account, Store<Account>>,
    qrs: CqrsFramework<LinkQr, Store<LinkQr>>,
    attempts: CqrsFramework<LinkAttempt, Store<LinkAttempt>>,
    devices: CqrsFramework<Device, Store<Device>>,
}

impl std::fmt::Debug for EventStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("EventStore")
    }
}

fn framework<A: Aggregate<Services = ()>>(pool: &PgPool) -> CqrsFramework<A, Store<A>> {
    let store = PersistedEventStore::new_event_store(PostgresEventRepository::new(pool.clone()));
    CqrsFramework::new(store, vec![], ())
}

/// Picks the framework of an aggregate type.
pub trait HasFramework<A: Aggregate> {
    /// The framework for `A`.
    fn framework(&self) -> &CqrsFramework<A, Store<A>>;
}

macro_rules! has_framework {
    ($($aggregate:ty => $field:ident),*) => {$(
        impl HasFramework<$aggregate> for EventStore {
            fn framework(&self) -> &CqrsFramework<$aggregate, Store<$aggregate>> {
                &self.$field
            }
        }
    )*};
}
has_framework!(Account => accounts, LinkQr => qrs, LinkAttempt => attempts, Device => devices);

impl EventStore {
    /// An event store over `pool` (migrated with this crate's migrations).
    pub fn new(pool: PgPool) -> Self {
        Self {
            accounts: framework(&pool),
            qrs: framework(&pool),
            attempts: framework(&pool),
            devices: framework(&pool),
            pool,
        }
    }

    /// The pool, for the secret tables that live beside the events.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// The current state of aggregate `id` (the default state if it has no events).
    pub async fn load<A>(&self, id: &str) -> Result<A, CommandError>
    where
        A: Aggregate,
        CommandError: From<AggregateError<A::Error>>,
    {
        let store: Store<A> =
            PersistedEventStore::new_event_store(PostgresEventRepository::new(self.pool.clone()));
        let context = store.load_aggregate(id).await?;
        Ok(context.aggregate)
    }

    /// The consistency token naming the last event of each aggregate in `written`.
    pub async fn token(&self, written: &[(&'static str, String)]) -> Result<String, CommandError> {
        let mut token = proto::consistency::ConsistencyToken::default();
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
                token.0.push(proto::consistency::Written {
                    aggregate_type: (*aggregate_type).to_owned(),
                    aggregate_id: aggregate_id.clone(),
                    sequence,
                    global_position,
                });
            }
        }
        Ok(token.to_string())
    }

    /// Executes `command` on aggregate `id`, retrying a bounded number of times when another
    /// writer committed to the same aggregate first (the command is decided again on the new
    /// state). After the last try the conflict is returned (`ABORTED`).
    pub async fn execute<A>(
        &self,
        id: &str,
        command: A::Command,
        metadata: &Metadata,
    ) -> Result<(), CommandError>
    where
        A: Aggregate,
        A::Command: Clone,
        Self: HasFramework<A>,
        CommandError: From<AggregateError<A::Error>>,
    {
        retry_on_conflict(|| self.execute_once::<A>(id, command.clone(), metadata)).await
    }

    /// Executes `command` once; a conflict is returned to the caller, who decides again (use
    /// inside [`retry_on_conflict`] when the command depends on other aggregates' state).
    pub async fn execute_once<A>(
        &self,
        id: &str,
        command: A::Command,
        metadata: &Metadata,
    ) -> Result<(), CommandError>
    where
        A: Aggregate,
        Self: HasFramework<A>,
        CommandError: From<AggregateError<A::Error>>,
    {
        HasFramework::<A>::framework(self)
            .execute_with_metadata(id, command, metadata.to_map())
            .await
            .map_err(CommandError::from)
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

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};

    use super::*;

    #[tokio::test]
    async fn a_conflict_is_retried_a_bounded_number_of_times_then_returned() {
        let tries = AtomicU32::new(0);
        let outcome: Result<(), CommandError> = retry_on_conflict(|| async {
            tries.fetch_add(1, Ordering::SeqCst);
            Err(CommandError::Conflict)
        })
        .await;
        assert!(matches!(outcome, Err(CommandError::Conflict)));
        assert_eq!(tries.load(Ordering::SeqCst), MAX_ATTEMPTS);
        let status = crate::status::to_status(CommandError::Conflict);
        assert_eq!(status.code(), tonic::Code::Aborted);
    }

    #[tokio::test]
    async fn a_conflict_that_clears_is_not_an_error() {
        let tries = AtomicU32::new(0);
        let outcome = retry_on_conflict(|| async {
            if tries.fetch_add(1, Ordering::SeqCst) < 2 {
                Err(CommandError::Conflict)
            } else {
                Ok(7)
            }
        })
        .await;
        assert_eq!(outcome.unwrap(), 7);
    }

    #[tokio::test]
    async fn other_errors_are_not_retried() {
        let tries = AtomicU32::new(0);
        let outcome: Result<(), CommandError> = retry_on_conflict(|| async {
            tries.fetch_add(1, Ordering::SeqCst);
            Err(CommandError::NotFound("x".into()))
        })
        .await;
        assert!(outcome.is_err());
        assert_eq!(tries.load(Ordering::SeqCst), 1);
    }
}
