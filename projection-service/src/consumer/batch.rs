//! The live consumer's batches: the events a pull brought in, applied in one transaction, with
//! the guard rules of [`projections::apply`] (one commit per batch instead of one per event;
//! docs/adr/0009):
//!
//! 1. The guards of the batch's aggregates are created if missing, then locked in a fixed order
//!    (`FOR UPDATE`, ordered by key: two instances locking overlapping batches cannot deadlock).
//! 2. Each event, in stream order, is compared with its aggregate's guard as the batch has moved
//!    it so far: at or below → already applied; the next one → applied through the projector;
//!    beyond → a gap, held back (NAKed after the commit and redelivered, as alone).
//! 3. The guards the batch moved are written back, each only from the value it was locked at.
//! 4. One commit; then every message is acknowledged.
//!
//! A projector that finds an event it cannot apply (poison) or any database error rolls the
//! whole batch back; the caller then takes the batch's events one by one through
//! [`projections::apply`], which parks poison behind a savepoint. Nothing is acknowledged before
//! the commit that recorded it.

use std::collections::BTreeMap;

use proto::v1::EventEnvelope;
use sqlx::PgPool;

use crate::projections::{self, Outcome, ProjectionError, Projector};

type Key = (String, String);

/// What became of each event of a batch that committed.
pub type Verdicts = Vec<Result<Outcome, ProjectionError>>;

/// Applies `events` (in stream order) in one transaction. `Err` means nothing was committed.
pub async fn apply<P: Projector>(
    pool: &PgPool,
    projector: &P,
    events: &[EventEnvelope],
) -> Result<Verdicts, ProjectionError> {
    let mut keys: Vec<Key> = events
        .iter()
        .map(|event| (event.aggregate_type.clone(), event.aggregate_id.clone()))
        .collect();
    keys.sort();
    keys.dedup();
    let (types, ids): (Vec<String>, Vec<String>) = keys.iter().cloned().unzip();

    let mut tx = pool.begin().await?;
    sqlx::query(
        "INSERT INTO projector_positions (projector, aggregate_type, aggregate_id, last_sequence) \
         SELECT $1, t, i, 0 FROM unnest($2::text[], $3::text[]) AS k (t, i) \
         ORDER BY t, i ON CONFLICT DO NOTHING",
    )
    .bind(projector.name())
    .bind(&types)
    .bind(&ids)
    .execute(&mut *tx)
    .await?;
    let locked: Vec<(String, String, i64)> = sqlx::query_as(
        "SELECT p.aggregate_type, p.aggregate_id, p.last_sequence \
         FROM projector_positions p \
         JOIN unnest($2::text[], $3::text[]) AS k (t, i) \
           ON p.aggregate_type = k.t AND p.aggregate_id = k.i \
         WHERE p.projector = $1 \
         ORDER BY p.aggregate_type, p.aggregate_id FOR UPDATE OF p",
    )
    .bind(projector.name())
    .bind(&types)
    .bind(&ids)
    .fetch_all(&mut *tx)
    .await?;
    // (guard as locked, guard as the batch moved it)
    let mut guards: BTreeMap<Key, (i64, i64)> = locked
        .into_iter()
        .map(|(kind, id, last)| ((kind, id), (last, last)))
        .collect();

    let mut verdicts = Vec::with_capacity(events.len());
    for event in events {
        let key = (event.aggregate_type.clone(), event.aggregate_id.clone());
        let Some((_, last)) = guards.get_mut(&key) else {
            return Err(ProjectionError::Transient(sqlx::Error::Protocol(
                "a guard the batch created is missing".into(),
            )));
        };
        if event.sequence <= *last {
            verdicts.push(Ok(Outcome::AlreadyApplied));
        } else if event.sequence != *last + 1 {
            verdicts.push(Err(ProjectionError::Gap {
                aggregate: format!("{}/{}", event.aggregate_type, event.aggregate_id),
                expected: *last + 1,
                got: event.sequence,
            }));
        } else {
            projector.apply(&mut tx, event).await?;
            *last = event.sequence;
            verdicts.push(Ok(Outcome::Applied));
        }
    }

    let moved: Vec<(&Key, i64, i64)> = guards
        .iter()
        .filter(|(_, (from, to))| to > from)
        .map(|(key, (from, to))| (key, *from, *to))
        .collect();
    if !moved.is_empty() {
        let types: Vec<&str> = moved.iter().map(|(key, ..)| key.0.as_str()).collect();
        let ids: Vec<&str> = moved.iter().map(|(key, ..)| key.1.as_str()).collect();
        let from: Vec<i64> = moved.iter().map(|(_, from, _)| *from).collect();
        let to: Vec<i64> = moved.iter().map(|(.., to)| *to).collect();
        let updated = sqlx::query(
            "UPDATE projector_positions p SET last_sequence = m.to_sequence \
             FROM unnest($2::text[], $3::text[], $4::bigint[], $5::bigint[]) \
                  AS m (t, i, from_sequence, to_sequence) \
             WHERE p.projector = $1 AND p.aggregate_type = m.t AND p.aggregate_id = m.i \
               AND p.last_sequence = m.from_sequence",
        )
        .bind(projector.name())
        .bind(&types)
        .bind(&ids)
        .bind(&from)
        .bind(&to)
        .execute(&mut *tx)
        .await?;
        if updated.rows_affected() != moved.len() as u64 {
            return Err(ProjectionError::Transient(sqlx::Error::Protocol(
                "a guard moved under its lock".into(),
            )));
        }
    }
    tx.commit().await?;
    Ok(verdicts)
}

/// The events of a batch one by one, as without batching (after the batch was rolled back).
pub async fn one_by_one<P: Projector>(
    pool: &PgPool,
    projector: &P,
    events: &[EventEnvelope],
) -> Verdicts {
    let mut verdicts = Vec::with_capacity(events.len());
    for event in events {
        verdicts.push(projections::apply(pool, projector, event).await);
    }
    verdicts
}
