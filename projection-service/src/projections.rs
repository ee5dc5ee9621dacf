//! Projectors: each applies one event to its read model in one PostgreSQL transaction, together
//! with its per-aggregate guard (the last sequence it applied), so a redelivered event is
//! skipped and an event that arrives before its predecessor is refused until it comes.
//!
//! The rebuild applies many events per transaction instead (`replay`), with the same guard
//! rules, through projectors that can fold events in memory (`BatchProjector`).
//!
//! An event of a type this build does not know (a newer linkd's, `proto::events::is_unknown`)
//! applies as nothing: every guard that reads it moves past it, so the aggregate's later events
//! go on, and the consumer counts it (docs/events.md, "Unknown and newer events"). An event of a
//! known type that names a value this build does not know can never apply: it is poison
//! (`proto::convert`'s rule), parked in `dead_letters`, and the guard moves past it too.

pub(crate) mod audit;
pub mod devices;
pub(crate) mod notifier;
pub(crate) mod replay;

#[cfg(test)]
pub(crate) mod fixtures;

use futures_util::future::BoxFuture;
use prost::Message as _;
use proto::convert::{self, Unknown};
use proto::v1::EventEnvelope;
use service_kit::bus_signing::{BusVerifier, Forged};
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
    /// An event type this build does not know: nothing applied, the guard moved past it.
    Unknown,
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

    /// The aggregate types whose events it reads (`None`: every type, also one this build does
    /// not know). A read model reads only the types it acts on: each type it reads costs a guard
    /// row per aggregate, written in every batch that holds one of its events.
    fn aggregate_types(&self) -> Option<&'static [&'static str]>;

    /// Applies `event` inside `tx` (the guard is handled by [`apply`]).
    fn apply<'a>(
        &'a self,
        tx: &'a mut Transaction<'static, Postgres>,
        event: &'a EventEnvelope,
    ) -> impl Future<Output = Result<(), ProjectionError>> + Send + 'a;

    /// Applies `events` inside `tx`, in order, with the same effect and the same refusals as
    /// [`Projector::apply`] on each in turn (a live batch's events for this read model, each
    /// the next of its aggregate). A projector overrides it to write a batch with fewer
    /// statements.
    fn apply_many<'a>(
        &'a self,
        tx: &'a mut Transaction<'static, Postgres>,
        events: &'a [&'a EventEnvelope],
    ) -> impl Future<Output = Result<(), ProjectionError>> + Send + 'a {
        async move {
            for event in events {
                self.apply(tx, event).await?;
            }
            Ok(())
        }
    }
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

/// What a dead letter keeps of an event the read side has opened: the envelope with each opened
/// personal field replaced by `[not kept]` (dead letters outlive erasures and must not hold
/// those fields in clear, docs/privacy.md); fields still sealed stay as they are.
pub(crate) fn dead_letter_payload(event: &EventEnvelope) -> Vec<u8> {
    let mut kept = event.clone();
    if let Some(inner) = kept.event.as_mut() {
        for field in proto::personal::fields(inner) {
            if !field.value.is_empty() && !service_kit::sealing::is_sealed(field.value) {
                "[not kept]".clone_into(field.value);
            }
        }
    }
    kept.encode_to_vec()
}

/// An event's timestamp as a time, or poison (every event carries valid times).
pub(crate) fn event_time(
    timestamp: Option<&prost_types::Timestamp>,
) -> Result<chrono::DateTime<chrono::Utc>, ProjectionError> {
    timestamp
        .and_then(convert::datetime)
        .ok_or_else(|| ProjectionError::Poison("an event without a valid time".into()))
}

/// Whether `message` is the relay's: signed by one of `verifier`'s keys over its subject,
/// headers and body (ADR 0022). `None` as verifier accepts anything (development).
pub fn authenticate(
    verifier: Option<&BusVerifier>,
    message: &async_nats::Message,
) -> Result<(), Forged> {
    verifier.map_or(Ok(()), |verifier| verifier.verify_nats_message(message))
}

/// Decodes a bus message's body, checked for what every read model relies on: its place in
/// its aggregate, and an event or at least the name of one (an event this build does not know
/// has no `event`, [`Outcome::Unknown`]).
pub fn decode(payload: &[u8]) -> Result<EventEnvelope, ProjectionError> {
    let envelope = EventEnvelope::decode(payload)
        .map_err(|e| ProjectionError::Poison(format!("not an EventEnvelope: {e}")))?;
    if envelope.sequence < 1
        || envelope.aggregate_type.is_empty()
        || envelope.aggregate_id.is_empty()
        || (envelope.event.is_none() && envelope.event_type.is_empty())
    {
        return Err(ProjectionError::Poison(format!(
            "incomplete envelope for {}",
            envelope.event_id
        )));
    }
    Ok(envelope)
}

/// A projector as the live consumer holds it: one delivery feeds several read models, each
/// with its own guard (dyn-compatible, unlike [`Projector`]).
pub trait ReadModel: Send + Sync {
    /// The projector's name: its guard's key and its dead letters' `projector`.
    fn guard(&self) -> &'static str;

    /// Whether it reads events of `aggregate_type` (its [`Projector::aggregate_types`]).
    fn reads(&self, aggregate_type: &str) -> bool;

    /// [`Projector::apply`].
    fn project<'a>(
        &'a self,
        tx: &'a mut Transaction<'static, Postgres>,
        event: &'a EventEnvelope,
    ) -> BoxFuture<'a, Result<(), ProjectionError>>;

    /// [`Projector::apply_many`].
    fn project_many<'a>(
        &'a self,
        tx: &'a mut Transaction<'static, Postgres>,
        events: &'a [&'a EventEnvelope],
    ) -> BoxFuture<'a, Result<(), ProjectionError>>;
}

impl<P: Projector> ReadModel for P {
    fn guard(&self) -> &'static str {
        self.name()
    }

    fn reads(&self, aggregate_type: &str) -> bool {
        self.aggregate_types()
            .is_none_or(|types| types.contains(&aggregate_type))
    }

    fn project<'a>(
        &'a self,
        tx: &'a mut Transaction<'static, Postgres>,
        event: &'a EventEnvelope,
    ) -> BoxFuture<'a, Result<(), ProjectionError>> {
        Box::pin(self.apply(tx, event))
    }

    fn project_many<'a>(
        &'a self,
        tx: &'a mut Transaction<'static, Postgres>,
        events: &'a [&'a EventEnvelope],
    ) -> BoxFuture<'a, Result<(), ProjectionError>> {
        Box::pin(self.apply_many(tx, events))
    }
}

/// A read model that refuses every event with `reason`: an event applied through it is parked
/// for that read model and its guard moves past it, as for any event that can never apply (an
/// event whose sealed fields do not open, say). Its guard and what it reads are the wrapped
/// read model's.
pub(crate) struct Refusing<'a> {
    /// The read model whose guard moves.
    pub(crate) model: &'a dyn ReadModel,
    /// Why the event cannot apply (the dead letter's reason).
    pub(crate) reason: &'a str,
}

impl ReadModel for Refusing<'_> {
    fn guard(&self) -> &'static str {
        self.model.guard()
    }

    fn reads(&self, aggregate_type: &str) -> bool {
        self.model.reads(aggregate_type)
    }

    fn project<'a>(
        &'a self,
        _tx: &'a mut Transaction<'static, Postgres>,
        _event: &'a EventEnvelope,
    ) -> BoxFuture<'a, Result<(), ProjectionError>> {
        Box::pin(std::future::ready(Err(ProjectionError::Poison(
            self.reason.to_owned(),
        ))))
    }

    fn project_many<'a>(
        &'a self,
        _tx: &'a mut Transaction<'static, Postgres>,
        _events: &'a [&'a EventEnvelope],
    ) -> BoxFuture<'a, Result<(), ProjectionError>> {
        Box::pin(std::future::ready(Err(ProjectionError::Poison(
            self.reason.to_owned(),
        ))))
    }
}

/// What became of one event across the read models that read it: the first refusal if any
/// (the message is delivered again; the read models that applied it skip it then), else applied
/// if any applied it, else parked if any parked it, else already applied.
pub fn verdict(
    outcomes: impl IntoIterator<Item = Result<Outcome, ProjectionError>>,
) -> Result<Outcome, ProjectionError> {
    let mut combined = Outcome::AlreadyApplied;
    for outcome in outcomes {
        combined = match (outcome?, combined) {
            (Outcome::Applied, _) | (_, Outcome::Applied) => Outcome::Applied,
            (Outcome::Parked, _) | (_, Outcome::Parked) => Outcome::Parked,
            (Outcome::Unknown, _) | (_, Outcome::Unknown) => Outcome::Unknown,
            (Outcome::AlreadyApplied, Outcome::AlreadyApplied) => Outcome::AlreadyApplied,
        };
    }
    Ok(combined)
}

/// Applies `event` with `projector` exactly once, in order, per aggregate: [`apply_all`] with
/// one read model.
pub async fn apply<P: Projector>(
    pool: &PgPool,
    projector: &P,
    event: &EventEnvelope,
) -> Result<Outcome, ProjectionError> {
    apply_all(pool, &[projector as &dyn ReadModel], event).await
}

/// Applies `event` to every read model of `models` that reads it, exactly once and in order per
/// aggregate and read model, in one transaction. Each read model's work sits behind a savepoint:
/// an event that decodes but cannot apply is parked in `dead_letters` for that read model and
/// its guard moves past it; a gap or a wait leaves that read model's guard where it was (the
/// message comes again, and the others skip it then).
pub async fn apply_all(
    pool: &PgPool,
    models: &[&dyn ReadModel],
    event: &EventEnvelope,
) -> Result<Outcome, ProjectionError> {
    // Guards are locked in one order everywhere (by read model, then aggregate), as a batch
    // locks them, so that a batch and an event taken alone cannot deadlock.
    let mut readers: Vec<&dyn ReadModel> = models
        .iter()
        .copied()
        .filter(|model| model.reads(&event.aggregate_type))
        .collect();
    readers.sort_by_key(|model| model.guard());
    let mut tx = pool.begin().await?;
    let mut outcomes = Vec::with_capacity(readers.len());
    for model in readers {
        outcomes.push(apply_one(&mut tx, model, event).await?);
    }
    tx.commit().await?;
    verdict(outcomes)
}

/// One read model's share of [`apply_all`]. The outer `Err` is a failure of the transaction
/// itself; the inner one is this read model's refusal of the event.
async fn apply_one(
    tx: &mut Transaction<'static, Postgres>,
    model: &dyn ReadModel,
    event: &EventEnvelope,
) -> Result<Result<Outcome, ProjectionError>, ProjectionError> {
    // The guard row exists before it is locked, so two instances handling an aggregate's first
    // event serialise on it too (FOR UPDATE on a missing row locks nothing).
    sqlx::query(
        "INSERT INTO projector_positions (projector, aggregate_type, aggregate_id, last_sequence) \
         VALUES ($1, $2, $3, 0) ON CONFLICT DO NOTHING",
    )
    .bind(model.guard())
    .bind(&event.aggregate_type)
    .bind(&event.aggregate_id)
    .execute(&mut **tx)
    .await?;
    let last: i64 = sqlx::query_scalar(
        "SELECT last_sequence FROM projector_positions \
         WHERE projector = $1 AND aggregate_type = $2 AND aggregate_id = $3 FOR UPDATE",
    )
    .bind(model.guard())
    .bind(&event.aggregate_type)
    .bind(&event.aggregate_id)
    .fetch_one(&mut **tx)
    .await?;
    if event.sequence <= last {
        return Ok(Ok(Outcome::AlreadyApplied));
    }
    if event.sequence != last + 1 {
        return Ok(Err(ProjectionError::Gap {
            aggregate: format!("{}/{}", event.aggregate_type, event.aggregate_id),
            expected: last + 1,
            got: event.sequence,
        }));
    }
    let outcome = if proto::events::is_unknown(event) {
        Outcome::Unknown
    } else {
        match project_behind_a_savepoint(tx, model, event).await? {
            Ok(outcome) => outcome,
            Err(refusal) => return Ok(Err(refusal)),
        }
    };
    let moved = sqlx::query(
        "UPDATE projector_positions SET last_sequence = $4 \
         WHERE projector = $1 AND aggregate_type = $2 AND aggregate_id = $3 \
         AND last_sequence = $4 - 1",
    )
    .bind(model.guard())
    .bind(&event.aggregate_type)
    .bind(&event.aggregate_id)
    .bind(event.sequence)
    .execute(&mut **tx)
    .await?;
    if moved.rows_affected() != 1 {
        return Err(ProjectionError::Transient(sqlx::Error::Protocol(
            "the guard moved under its lock".into(),
        )));
    }
    Ok(Ok(outcome))
}

/// `model`'s work on `event` behind a savepoint: applied, or parked if it can never apply. The
/// outer `Err` is a failure of the transaction; the inner one a refusal that leaves the guard
/// where it was (a gap, a wait).
async fn project_behind_a_savepoint(
    tx: &mut Transaction<'static, Postgres>,
    model: &dyn ReadModel,
    event: &EventEnvelope,
) -> Result<Result<Outcome, ProjectionError>, ProjectionError> {
    sqlx::query("SAVEPOINT projecting")
        .execute(&mut **tx)
        .await?;
    let outcome = match model.project(tx, event).await {
        Ok(()) => Outcome::Applied,
        // An event that decodes but can never apply: park it and move on, so that the
        // aggregate's later events are not blocked behind it for ever.
        Err(ProjectionError::Poison(reason)) => {
            sqlx::query("ROLLBACK TO SAVEPOINT projecting")
                .execute(&mut **tx)
                .await?;
            tracing::error!(event_id = %event.event_id, projector = model.guard(), %reason,
                "parking an event that cannot apply");
            // Once per read model and event: a rebuild that meets it again parks nothing more.
            sqlx::query(
                "INSERT INTO dead_letters (projector, subject, event_id, reason, payload) \
                 SELECT $1, $2, $3, $4, $5 WHERE NOT EXISTS \
                 (SELECT 1 FROM dead_letters WHERE projector = $1 AND event_id = $3)",
            )
            .bind(model.guard())
            .bind(format!("{}.{}", event.aggregate_type, event.event_type))
            .bind(&event.event_id)
            .bind(&reason)
            .bind(dead_letter_payload(event))
            .execute(&mut **tx)
            .await?;
            Outcome::Parked
        }
        // Not yet (or the database refused this read model's statements): undo its share only.
        Err(refusal) => {
            sqlx::query("ROLLBACK TO SAVEPOINT projecting")
                .execute(&mut **tx)
                .await?;
            return Ok(Err(refusal));
        }
    };
    Ok(Ok(outcome))
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
