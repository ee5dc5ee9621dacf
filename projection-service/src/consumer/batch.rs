//! The live consumer's batches: the events a pull brought in, applied to every read model in
//! one transaction, with the guard rules of [`projections::apply_all`] (one commit per batch for
//! all read models instead of one per event and read model; docs/adr/0009, docs/adr/0018):
//!
//! 1. The guards of the batch's aggregates, one per aggregate and read model that reads it, are
//!    created if missing, then locked in one order (`FOR UPDATE`, one primary-key probe per
//!    guard in key order: read model, then aggregate), the order [`projections::apply_all`]
//!    locks an event's guards in too, so that two instances cannot deadlock on guards. One
//!    statement each for all read models.
//! 2. Each event, in stream order, is compared with each of its guards as the batch has moved
//!    them so far: at or below → already applied; the next one → applied through that read
//!    model; beyond → a gap, held back (NAKed after the commit and redelivered; the read models
//!    that applied it skip it then). The next one, of a type this build does not know, moves
//!    the guard and applies nothing ([`Outcome::Unknown`]).
//!    Each read model then writes its share of the batch at once ([`ReadModel::project_many`]:
//!    a few statements for the whole share where the read model can fold events in memory).
//! 3. The guards the batch moved are written back through the row addresses (`ctid`) the lock
//!    returned, in one statement, and the keys written are checked against the keys moved.
//!
//! Both statements reach the guard table by key or by address, never by a join the planner
//! could turn into a scan of every guard: without fresh statistics (autovacuum off, a table that
//! grew fast) PostgreSQL chose a hash join over all of them, which made each batch's cost grow
//! with the number of aggregates ever projected.
//! 4. One commit; the messages are acknowledged once it is durable.
//!
//! A read model that finds an event it cannot apply (poison) or any database error rolls the
//! whole batch back; the caller then takes the batch's events one by one through
//! [`projections::apply_all`], which parks poison behind a savepoint per read model. Nothing is
//! acknowledged before the commit that recorded it.

use std::collections::BTreeMap;

use proto::v1::EventEnvelope;
use sqlx::PgPool;

use crate::projections::{self, Outcome, ProjectionError, ReadModel};

#[cfg(test)]
mod tests;

/// A guard: read model, aggregate type, aggregate id.
type Key = (&'static str, String, String);

/// Locks the guards named by the arrays `$1` (read models), `$2` (aggregate types) and `$3`
/// (ids), in the arrays' order, one primary-key probe each; returns each guard's key with its
/// sequence and row address.
pub const LOCK_GUARDS: &str = "SELECT k.p, k.t, k.i, g.last_sequence, g.ctid::text \
     FROM unnest($1::text[], $2::text[], $3::text[]) WITH ORDINALITY AS k (p, t, i, n) \
     CROSS JOIN LATERAL ( \
         SELECT last_sequence, ctid FROM projector_positions \
         WHERE projector = k.p AND aggregate_type = k.t AND aggregate_id = k.i \
         FOR UPDATE) AS g \
     ORDER BY k.n";

/// Moves the guards at the row addresses `$1` to the sequences `$2`; returns the guards moved
/// (read model and key). The join is on the address alone: any other join condition lets the
/// planner scan the guards again when statistics are missing.
pub const MOVE_GUARDS: &str = "UPDATE projector_positions p SET last_sequence = m.to_sequence \
     FROM unnest($1::tid[], $2::bigint[]) AS m (row, to_sequence) \
     WHERE p.ctid = m.row \
     RETURNING p.projector, p.aggregate_type, p.aggregate_id, m.to_sequence";

/// What became of each event of a batch that committed.
pub type Verdicts = Vec<Result<Outcome, ProjectionError>>;

/// Where one guard stands while a batch runs.
struct Guard {
    /// As locked.
    from: i64,
    /// As the batch moved it so far.
    to: i64,
    /// Its row address.
    row: String,
}

/// Applies `events` (in stream order) to every read model of `models` that reads them, in one
/// transaction. `Err` means nothing was committed.
pub async fn apply(
    pool: &PgPool,
    models: &[&dyn ReadModel],
    events: &[EventEnvelope],
) -> Result<Verdicts, ProjectionError> {
    let mut keys: Vec<Key> = events
        .iter()
        .flat_map(|event| {
            models
                .iter()
                .filter(|model| model.reads(&event.aggregate_type))
                .map(|model| {
                    (
                        model.guard(),
                        event.aggregate_type.clone(),
                        event.aggregate_id.clone(),
                    )
                })
        })
        .collect();
    keys.sort();
    keys.dedup();
    let mut names = Vec::with_capacity(keys.len());
    let mut types = Vec::with_capacity(keys.len());
    let mut ids = Vec::with_capacity(keys.len());
    for (name, kind, id) in &keys {
        names.push(*name);
        types.push(kind.as_str());
        ids.push(id.as_str());
    }

    let mut tx = pool.begin().await?;
    sqlx::query(
        "INSERT INTO projector_positions (projector, aggregate_type, aggregate_id, last_sequence) \
         SELECT p, t, i, 0 FROM unnest($1::text[], $2::text[], $3::text[]) AS k (p, t, i) \
         ORDER BY p, t, i ON CONFLICT DO NOTHING",
    )
    .bind(&names)
    .bind(&types)
    .bind(&ids)
    .execute(&mut *tx)
    .await?;
    let locked: Vec<(String, String, String, i64, String)> = sqlx::query_as(LOCK_GUARDS)
        .bind(&names)
        .bind(&types)
        .bind(&ids)
        .fetch_all(&mut *tx)
        .await?;
    // `locked` comes back in the order of `keys`, one row each.
    let complete = locked.len() == keys.len()
        && keys
            .iter()
            .zip(&locked)
            .all(|((name, kind, id), (n, k, i, ..))| name == n && kind == k && id == i);
    if !complete {
        return Err(ProjectionError::Transient(sqlx::Error::Protocol(
            "a guard the batch created is missing".into(),
        )));
    }
    let mut guards: BTreeMap<Key, Guard> = keys
        .into_iter()
        .zip(locked)
        .map(|(key, (.., last, row))| {
            let guard = Guard {
                from: last,
                to: last,
                row,
            };
            (key, guard)
        })
        .collect();

    // Each read model's share of the batch, written after the verdicts (read models do not read
    // each other's tables, so the order between them does not matter; within one, it is the
    // stream's).
    let mut shares: Vec<Vec<&EventEnvelope>> = vec![Vec::new(); models.len()];
    let mut verdicts = Vec::with_capacity(events.len());
    for event in events {
        let mut outcomes = Vec::with_capacity(models.len());
        for (model, share) in models
            .iter()
            .zip(shares.iter_mut())
            .filter(|(model, _)| model.reads(&event.aggregate_type))
        {
            let key = (
                model.guard(),
                event.aggregate_type.clone(),
                event.aggregate_id.clone(),
            );
            let Some(guard) = guards.get_mut(&key) else {
                return Err(ProjectionError::Transient(sqlx::Error::Protocol(
                    "a guard the batch created is missing".into(),
                )));
            };
            if event.sequence <= guard.to {
                outcomes.push(Ok(Outcome::AlreadyApplied));
            } else if event.sequence != guard.to + 1 {
                outcomes.push(Err(ProjectionError::Gap {
                    aggregate: format!("{}/{}", event.aggregate_type, event.aggregate_id),
                    expected: guard.to + 1,
                    got: event.sequence,
                }));
            } else if proto::events::is_unknown(event) {
                // Nothing to apply; the aggregate's later events go on behind it.
                guard.to = event.sequence;
                outcomes.push(Ok(Outcome::Unknown));
            } else {
                share.push(event);
                guard.to = event.sequence;
                outcomes.push(Ok(Outcome::Applied));
            }
        }
        verdicts.push(projections::verdict(outcomes));
    }
    // A refusal here (poison, or a wait) rolls the whole batch back, as it would one event at
    // a time: the caller then takes the events one by one.
    for (model, share) in models.iter().zip(&shares) {
        if !share.is_empty() {
            model.project_many(&mut tx, share).await?;
        }
    }

    // In key order, as `guards` is.
    let moved: Vec<(&Key, &Guard)> = guards.iter().filter(|(_, g)| g.to > g.from).collect();
    if !moved.is_empty() {
        let rows: Vec<&str> = moved.iter().map(|(_, g)| g.row.as_str()).collect();
        let to: Vec<i64> = moved.iter().map(|(_, g)| g.to).collect();
        // The row addresses are those of the rows this transaction locked, so no one else can
        // have moved them; the read models and keys the update returns are checked all the same.
        let mut updated: Vec<(String, String, String, i64)> = sqlx::query_as(MOVE_GUARDS)
            .bind(&rows)
            .bind(&to)
            .fetch_all(&mut *tx)
            .await?;
        updated.sort();
        let expected = moved
            .iter()
            .map(|((name, kind, id), g)| (*name, kind.as_str(), id.as_str(), g.to));
        if updated.len() != moved.len()
            || !updated
                .iter()
                .map(|(name, kind, id, to)| (name.as_str(), kind.as_str(), id.as_str(), *to))
                .eq(expected)
        {
            return Err(ProjectionError::Transient(sqlx::Error::Protocol(
                "a guard moved under its lock".into(),
            )));
        }
    }
    tx.commit().await?;
    Ok(verdicts)
}

/// The events of a batch one by one, as without batching (after the batch was rolled back).
pub async fn one_by_one(
    pool: &PgPool,
    models: &[&dyn ReadModel],
    events: &[EventEnvelope],
) -> Verdicts {
    let mut verdicts = Vec::with_capacity(events.len());
    for event in events {
        verdicts.push(projections::apply_all(pool, models, event).await);
    }
    verdicts
}
