//! Projectors: each applies one event to its read model in one PostgreSQL transaction, together
//! with its per-aggregate guard (the last sequence it applied), so a redelivered event is
//! skipped and an event that arrives before its predecessor is refused until it comes.
//!
//! The rebuild applies many events per transaction instead (`replay`), with the same guard
//! rules, through projectors that can fold events in memory (`BatchProjector`).
//!
//! An event that names a value this build does not know can never apply: it is poison
//! (`proto::convert`'s rule), parked in `dead_letters`.

pub(crate) mod audit;
pub mod devices;
pub(crate) mod notifier;
pub(crate) mod replay;

#[cfg(test)]
pub(crate) mod fixtures;

use prost::Message as _;
use proto::convert::{self, Unknown};
use proto::v1::EventEnvelope;
use sqlx::{PgConnection, PgPool, Postgres, Transaction};

/// What became of an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Applied now.
    Applied,
    /// Applied before (a duplicate); nothing changed.
    AlreadyApplied,
    /// Could never apply; parked in `dead_letters`, the guard moved past it.
    Parked,
}

/// Why an event was not applied; the consumer acknowledges accordingly.
#[derive(Debug, thiserror::Error)]
pub enum ProjectionError {
    /// An earlier event of the same aggregate has not been applied yet: retry later.
    #[error("gap: expected sequence {expected} of {aggregate}, got {got}")]
    Gap {
        /// `type/id`.
        aggregate: String,
        /// The next sequence the projector can apply.
        expected: i64,
        /// The sequence received.
        got: i64,
    },
    /// Something this event needs has not been projected yet (e.g. the account of a device
    /// link): retry later.
    #[error("waiting: {0}")]
    Waiting(String),
    /// The database failed: retry later.
    #[error("transient: {0}")]
    Transient(#[from] sqlx::Error),
    /// The message can never be applied (undecodable or inconsistent): park it.
    #[error("poison: {0}")]
    Poison(String),
}

/// An event naming a value this build does not know cannot be applied (proto::convert's rule).
impl From<Unknown> for ProjectionError {
    fn from(unknown: Unknown) -> Self {
        Self::Poison(unknown.to_string())
    }
}

/// A read model fed by events.
pub trait Projector: Send + Sync {
    /// Its name, also the guard's key and the durable consumer's suffix.
    fn name(&self) -> &'static str;

    /// The subjects it needs, relative to the prefix (e.g. `device.>`).
    fn filter(&self) -> &'static str;

    /// Applies `event` inside `tx` (the guard is handled by [`apply`]).
    fn apply<'a>(
        &'a self,
        tx: &'a mut Transaction<'static, Postgres>,
        event: &'a EventEnvelope,
    ) -> impl Future<Output = Result<(), ProjectionError>> + Send + 'a;
}

/// A projector that can also apply a batch of events in one transaction (the rebuild's path):
/// it loads the state of the batch's aggregates once, folds the events into it in memory, and
/// writes the result back with a few bulk statements. The guard is handled by
/// [`replay::apply_batch`].
pub(crate) trait BatchProjector: Projector {
    /// What one batch holds in memory.
    type State: Send;

    /// Loads the state of `aggregates` (type, id) as stored.
    fn load<'a>(
        &'a self,
        connection: &'a mut PgConnection,
        aggregates: &'a [(&'a str, &'a str)],
    ) -> impl Future<Output = Result<Self::State, ProjectionError>> + Send + 'a;

    /// Applies `event` to `state` exactly as [`Projector::apply`] applies it to the tables, and
    /// refuses the same events for the same reasons; `state` is unchanged when it fails.
    fn fold(&self, state: &mut Self::State, event: &EventEnvelope) -> Result<(), ProjectionError>;

    /// Writes what `fold` changed.
    fn store<'a>(
        &'a self,
        connection: &'a mut PgConnection,
        state: Self::State,
    ) -> impl Future<Output = Result<(), ProjectionError>> + Send + 'a;
}

/// An event's timestamp as a time, or poison (every event carries valid times).
pub(crate) fn event_time(
    timestamp: Option<&prost_types::Timestamp>,
) -> Result<chrono::DateTime<chrono::Utc>, ProjectionError> {
    timestamp
        .and_then(convert::datetime)
        .ok_or_else(|| ProjectionError::Poison("an event without a valid time".into()))
}

/// Decodes a bus message.
pub fn decode(payload: &[u8]) -> Result<EventEnvelope, ProjectionError> {
    let envelope = EventEnvelope::decode(payload)
        .map_err(|e| ProjectionError::Poison(format!("not an EventEnvelope: {e}")))?;
    if envelope.sequence < 1 || envelope.aggregate_type.is_empty() || envelope.event.is_none() {
        return Err(ProjectionError::Poison(format!(
            "incomplete envelope for {}",
            envelope.event_id
        )));
    }
    Ok(envelope)
}

/// Applies `event` with `projector` exactly once, in order, per aggregate. An event that decodes
/// but cannot apply is parked in `dead_letters` in the same transaction and the guard moves past
/// it.
pub async fn apply<P: Projector>(
    pool: &PgPool,
    projector: &P,
    event: &EventEnvelope,
) -> Result<Outcome, ProjectionError> {
    let mut tx = pool.begin().await?;
    // The guard row exists before it is locked, so two instances handling an aggregate's first
    // event serialise on it too (FOR UPDATE on a missing row locks nothing).
    sqlx::query(
        "INSERT INTO projector_positions (projector, aggregate_type, aggregate_id, last_sequence) \
         VALUES ($1, $2, $3, 0) ON CONFLICT DO NOTHING",
    )
    .bind(projector.name())
    .bind(&event.aggregate_type)
    .bind(&event.aggregate_id)
    .execute(&mut *tx)
    .await?;
    let last: i64 = sqlx::query_scalar(
        "SELECT last_sequence FROM projector_positions \
         WHERE projector = $1 AND aggregate_type = $2 AND aggregate_id = $3 FOR UPDATE",
    )
    .bind(projector.name())
    .bind(&event.aggregate_type)
    .bind(&event.aggregate_id)
    .fetch_one(&mut *tx)
    .await?;
    if event.sequence <= last {
        return Ok(Outcome::AlreadyApplied);
    }
    if event.sequence != last + 1 {
        return Err(ProjectionError::Gap {
            aggregate: format!("{}/{}", event.aggregate_type, event.aggregate_id),
            expected: last + 1,
            got: event.sequence,
        });
    }
    sqlx::query("SAVEPOINT projecting")
        .execute(&mut *tx)
        .await?;
    let outcome = match projector.apply(&mut tx, event).await {
        Ok(()) => Outcome::Applied,
        // An event that decodes but can never apply: park it and move on, so that the
        // aggregate's later events are not blocked behind it for ever.
        Err(ProjectionError::Poison(reason)) => {
            sqlx::query("ROLLBACK TO SAVEPOINT projecting")
                .execute(&mut *tx)
                .await?;
            tracing::error!(event_id = %event.event_id, %reason, "parking an event that cannot apply");
            sqlx::query(
                "INSERT INTO dead_letters (projector, subject, event_id, reason, payload) \
                 VALUES ($1, $2, $3, $4, $5)",
            )
            .bind(projector.name())
            .bind(format!("{}.{}", event.aggregate_type, event.event_type))
            .bind(&event.event_id)
            .bind(&reason)
            .bind(prost::Message::encode_to_vec(event))
            .execute(&mut *tx)
            .await?;
            Outcome::Parked
        }
        Err(other) => return Err(other),
    };
    let moved = sqlx::query(
        "UPDATE projector_positions SET last_sequence = $4 \
         WHERE projector = $1 AND aggregate_type = $2 AND aggregate_id = $3 \
         AND last_sequence = $4 - 1",
    )
    .bind(projector.name())
    .bind(&event.aggregate_type)
    .bind(&event.aggregate_id)
    .bind(event.sequence)
    .execute(&mut *tx)
    .await?;
    if moved.rows_affected() != 1 {
        return Err(ProjectionError::Transient(sqlx::Error::Protocol(
            "the guard moved under its lock".into(),
        )));
    }
    tx.commit().await?;
    Ok(outcome)
}

/// The last sequence `projector` applied for an aggregate (0 if none).
pub async fn applied_sequence(
    pool: &PgPool,
    projector: &str,
    aggregate_type: &str,
    aggregate_id: &str,
) -> Result<i64, sqlx::Error> {
    Ok(sqlx::query_scalar(
        "SELECT last_sequence FROM projector_positions \
         WHERE projector = $1 AND aggregate_type = $2 AND aggregate_id = $3",
    )
    .bind(projector)
    .bind(aggregate_type)
    .bind(aggregate_id)
    .fetch_optional(pool)
    .await?
    .unwrap_or(0))
}
