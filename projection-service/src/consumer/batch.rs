//! The live consumer's batches: the events a pull brought in, applied in one transaction, with
//! the guard rules of [`projections::apply`] (one commit per batch instead of one per event;
//! docs/adr/0009):
//!
//! 1. The guards of the batch's aggregates are created if missing, then locked in a fixed order
//!    (`FOR UPDATE`, one primary-key probe per key in key order: two instances locking
//!    overlapping batches cannot deadlock).
//! 2. Each event, in stream order, is compared with its aggregate's guard as the batch has moved
//!    it so far: at or below → already applied; the next one → applied through the projector;
//!    beyond → a gap, held back (NAKed after the commit and redelivered, as alone).
//! 3. The guards the batch moved are written back through the row addresses (`ctid`) the lock
//!    returned, and the keys written are checked against the keys moved.
//!
//! Both statements reach the guard table by key or by address, never by a join the planner
//! could turn into a scan of every guard of the projector: without fresh statistics (autovacuum
//! off, a table that grew fast) PostgreSQL chose a hash join over all of them, which made each
//! batch's cost grow with the number of aggregates ever projected.
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

/// Locks the guards of one projector (`$1`) for the keys `$2` (types) and `$3` (ids), in the
/// arrays' order, one primary-key probe each; returns each key with its sequence and row address.
pub const LOCK_GUARDS: &str = "SELECT k.t, k.i, p.last_sequence, p.ctid::text \
     FROM unnest($2::text[], $3::text[]) WITH ORDINALITY AS k (t, i, n) \
     CROSS JOIN LATERAL ( \
         SELECT last_sequence, ctid FROM projector_positions \
         WHERE projector = $1 AND aggregate_type = k.t AND aggregate_id = k.i \
         FOR UPDATE) AS p \
     ORDER BY k.n";

/// Moves the guards at the row addresses `$1` to the sequences `$2`; returns the guards moved
/// (projector and key). The join is on the address alone: any other join condition lets the
/// planner scan the projector's guards again when statistics are missing.
pub const MOVE_GUARDS: &str = "UPDATE projector_positions p SET last_sequence = m.to_sequence \
     FROM unnest($1::tid[], $2::bigint[]) AS m (row, to_sequence) \
     WHERE p.ctid = m.row \
     RETURNING p.projector, p.aggregate_type, p.aggregate_id, m.to_sequence";

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
    let locked: Vec<(String, String, i64, String)> = sqlx::query_as(LOCK_GUARDS)
        .bind(projector.name())
        .bind(&types)
        .bind(&ids)
        .fetch_all(&mut *tx)
        .await?;
    // (guard as locked, guard as the batch moved it, row address)
    let mut guards: BTreeMap<Key, (i64, i64, String)> = locked
        .into_iter()
        .map(|(kind, id, last, ctid)| ((kind, id), (last, last, ctid)))
        .collect();

    let mut verdicts = Vec::with_capacity(events.len());
    for event in events {
        let key = (event.aggregate_type.clone(), event.aggregate_id.clone());
        let Some((_, last, _)) = guards.get_mut(&key) else {
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

    // In key order, as `guards` is.
    let moved: Vec<(&Key, i64, i64, &str)> = guards
        .iter()
        .filter(|(_, (from, to, _))| to > from)
        .map(|(key, (from, to, ctid))| (key, *from, *to, ctid.as_str()))
        .collect();
    if !moved.is_empty() {
        let rows: Vec<&str> = moved.iter().map(|(.., ctid)| *ctid).collect();
        let to: Vec<i64> = moved.iter().map(|(_, _, to, _)| *to).collect();
        // The row addresses are those of the rows this transaction locked, so no one else can
        // have moved them; the projector and keys the update returns are checked all the same.
        let mut updated: Vec<(String, String, String, i64)> = sqlx::query_as(MOVE_GUARDS)
            .bind(&rows)
            .bind(&to)
            .fetch_all(&mut *tx)
            .await?;
        updated.sort();
        let expected = moved
            .iter()
            .map(|(key, _, to, _)| (projector.name(), key.0.as_str(), key.1.as_str(), *to));
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
