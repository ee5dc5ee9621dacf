//! Reads linkd's event store.
//!
//! - The tamper-evidence chain (command-service migration 0005, docs/audit.md): each event's
//!   `chain_hash` = SHA-256(previous event's `chain_hash` || canonical bytes), per aggregate,
//!   verified here for `command-service verify` and the projection service's
//!   `AuditService.VerifyHistory`.
//! - [`stored`]: a row of `events` as the protobuf `EventEnvelope` the relay publishes.
//! - [`sealing`]: which stored fields are personal, sealed under their data subject's key
//!   (ADR 0025), and sealing and opening them in an event's JSON.

pub mod sealing;
pub mod stored;

use std::sync::LazyLock;

use sha2::{Digest as _, Sha256};
use sqlx::PgPool;

/// The outcome of a verification.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Every event checked is intact.
    Intact {
        /// Events checked.
        events: u64,
        /// The highest global position among them (0 if none).
        up_to_position: i64,
    },
    /// The first event (lowest global position) whose link is broken.
    Broken {
        /// Its global position.
        global_position: i64,
        /// `aggregate_type/aggregate_id/sequence`.
        event_id: String,
        /// What is wrong.
        reason: String,
    },
}

#[derive(sqlx::FromRow)]
struct Link {
    sequence: i64,
    global_position: i64,
    canonical: Vec<u8>,
    chain_hash: Vec<u8>,
}

/// An aggregate to verify, and what an independent record (the read side's audit witness) says
/// it held.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Known {
    /// Aggregate type.
    pub aggregate_type: String,
    /// Aggregate id.
    pub aggregate_id: String,
    /// Its last sequence and that event's global position, as recorded elsewhere, if known.
    pub last: Option<(i64, i64)>,
}

/// The statement behind [`aggregates_of`] (`$1`: the account id). Every branch reaches its rows
/// through an index, so a verification costs the account's events, not the whole store's: the
/// events sealed for the account (`data_subject`, command-service migration 0013, set on every
/// event written since, which covers a link attempt once it names its account), the account's
/// own, and events written before 0013, found through their metadata (migration 0015, a partial
/// index that new events never enter).
pub const AGGREGATES_OF: &str = "SELECT aggregate_type, aggregate_id FROM events \
     WHERE data_subject = 'account:' || $1 \
     UNION SELECT aggregate_type, aggregate_id FROM events \
     WHERE aggregate_type = 'account' AND aggregate_id = $1 \
     UNION SELECT aggregate_type, aggregate_id FROM events \
     WHERE data_subject IS NULL AND metadata::jsonb ->> 'account_id' = $1 \
     ORDER BY aggregate_type, aggregate_id";

/// The global positions of every event in an account's history (`$1`: the account id), which
/// `AuditService` lists: the events [`AGGREGATES_OF`] reaches (by the same indexes), and every
/// event of the link attempts among them, those written before the attempt named the account
/// (sealed under the attempt's own key) included, by the aggregate's key.
pub const ACCOUNT_EVENTS: &str = "WITH own AS ( \
         SELECT global_position, aggregate_type, aggregate_id FROM events \
         WHERE data_subject = 'account:' || $1 \
         UNION SELECT global_position, aggregate_type, aggregate_id FROM events \
         WHERE aggregate_type = 'account' AND aggregate_id = $1 \
         UNION SELECT global_position, aggregate_type, aggregate_id FROM events \
         WHERE data_subject IS NULL AND metadata::jsonb ->> 'account_id' = $1) \
     SELECT global_position FROM own \
     UNION SELECT e.global_position FROM events e \
     WHERE e.aggregate_type = 'link_attempt' \
       AND e.aggregate_id IN (SELECT aggregate_id FROM own WHERE aggregate_type = 'link_attempt')";

/// The positions of account `$1`'s events after position `$2` ([`ACCOUNT_EVENTS`]), in order:
/// integers only, read once per call, before the events are fetched a chunk at a time
/// ([`EVENTS_AT`]), so that a page costs the account's positions and its own events, not every
/// event of the history.
pub static ACCOUNT_POSITIONS: LazyLock<String> = LazyLock::new(|| {
    format!(
        "SELECT global_position FROM ({ACCOUNT_EVENTS}) AS a \
         WHERE global_position > $2 ORDER BY global_position"
    )
});

/// The events at positions `$1` of the types `$2` (all if empty), recorded in [`$3`, `$4`)
/// (either end open if null), in position order (`AuditService.ListEvents`, `ExportHistory`).
/// Each is fetched by its position (`OFFSET 0` keeps the planner from joining the positions with
/// the whole store), and only once every transaction whose id is older than its own has ended,
/// as the relay publishes: a reader paging on positions would otherwise pass over an event that
/// a transaction begun earlier commits later with a lower position. (A transaction that draws its
/// position before it has an id can still do so, in the instant between the two.)
pub static EVENTS_AT: LazyLock<String> = LazyLock::new(|| {
    format!(
        "SELECT e.* FROM unnest($1::bigint[]) AS p (position) \
         CROSS JOIN LATERAL ( \
             SELECT {} FROM events \
             WHERE global_position = p.position \
               AND tx_id < pg_snapshot_xmin(pg_current_snapshot()) \
               AND (cardinality($2::text[]) = 0 OR event_type = ANY($2)) \
               AND ($3::timestamptz IS NULL OR occurred_at >= $3) \
               AND ($4::timestamptz IS NULL OR occurred_at < $4) \
             OFFSET 0) AS e \
         ORDER BY e.global_position",
        stored::COLUMNS
    )
});

/// The link and unlink events of account `$1`'s devices recorded at or before `$2`, in position
/// order (`AuditService.DevicesAt`).
pub static ACCOUNT_LINKS: LazyLock<String> = LazyLock::new(|| {
    format!(
        "SELECT e.* FROM ({accounts}) AS p \
         CROSS JOIN LATERAL ( \
             SELECT {columns} FROM events \
             WHERE global_position = p.global_position \
               AND tx_id < pg_snapshot_xmin(pg_current_snapshot()) \
               AND aggregate_type = 'device' \
               AND event_type IN ('DeviceLinked', 'DeviceUnlinked') AND occurred_at <= $2 \
             OFFSET 0) AS e \
         ORDER BY e.global_position",
        accounts = ACCOUNT_EVENTS,
        columns = stored::COLUMNS,
    )
});

/// The aggregates of `account_id` according to the event store itself (the account, and every
/// QR code, link attempt and device whose events name it or are sealed for it).
pub async fn aggregates_of(pool: &PgPool, account_id: &str) -> Result<Vec<Known>, sqlx::Error> {
    let aggregates: Vec<(String, String)> = sqlx::query_as(AGGREGATES_OF)
        .bind(account_id)
        .fetch_all(pool)
        .await?;
    Ok(aggregates
        .into_iter()
        .map(|(aggregate_type, aggregate_id)| Known {
            aggregate_type,
            aggregate_id,
            last: None,
        })
        .collect())
}

/// Verifies every aggregate the event store attributes to `account_id`.
pub async fn verify_account(pool: &PgPool, account_id: &str) -> Result<Verdict, sqlx::Error> {
    verify_all(pool, &aggregates_of(pool, account_id).await?).await
}

/// Verifies `aggregates`; for those with a known last event, also that none is missing at the
/// end (truncation), which the chain alone cannot show.
pub async fn verify_all(pool: &PgPool, aggregates: &[Known]) -> Result<Verdict, sqlx::Error> {
    let mut events = 0;
    let mut up_to_position = 0;
    let mut first_break: Option<Verdict> = None;
    for known in aggregates {
        let verdict = verify_aggregate(pool, &known.aggregate_type, &known.aggregate_id).await?;
        let verdict = match (verdict, known.last) {
            (Verdict::Intact { events: n, .. }, Some((last_sequence, last_position)))
                if i64::try_from(n).unwrap_or(i64::MAX) < last_sequence =>
            {
                Verdict::Broken {
                    global_position: last_position,
                    event_id: format!(
                        "{}/{}/{last_sequence}",
                        known.aggregate_type, known.aggregate_id
                    ),
                    reason: format!(
                        "the event store holds {n} events of this aggregate; {last_sequence} were recorded"
                    ),
                }
            }
            (verdict, _) => verdict,
        };
        match verdict {
            Verdict::Intact {
                events: n,
                up_to_position: position,
            } => {
                events += n;
                up_to_position = up_to_position.max(position);
            }
            broken @ Verdict::Broken { .. } => {
                let earlier = match (&first_break, &broken) {
                    (
                        Some(Verdict::Broken {
                            global_position: known,
                            ..
                        }),
                        Verdict::Broken {
                            global_position: new,
                            ..
                        },
                    ) => new < known,
                    _ => true,
                };
                if earlier {
                    first_break = Some(broken);
                }
            }
        }
    }
    Ok(first_break.unwrap_or(Verdict::Intact {
        events,
        up_to_position,
    }))
}

/// Verifies one aggregate's chain: sequences 1, 2, 3 … without a hole, each hash recomputed.
pub async fn verify_aggregate(
    pool: &PgPool,
    aggregate_type: &str,
    aggregate_id: &str,
) -> Result<Verdict, sqlx::Error> {
    let links: Vec<Link> = sqlx::query_as(
        "SELECT e.sequence, e.global_position, event_canonical_bytes(e) AS canonical, \
         e.chain_hash FROM events e WHERE aggregate_type = $1 AND aggregate_id = $2 \
         ORDER BY sequence",
    )
    .bind(aggregate_type)
    .bind(aggregate_id)
    .fetch_all(pool)
    .await?;
    let mut previous = vec![0u8; 32];
    let mut up_to_position = 0;
    for (index, link) in links.iter().enumerate() {
        let event_id = format!("{aggregate_type}/{aggregate_id}/{}", link.sequence);
        let expected_sequence = i64::try_from(index).unwrap_or(i64::MAX) + 1;
        if link.sequence != expected_sequence {
            return Ok(Verdict::Broken {
                global_position: link.global_position,
                event_id,
                reason: format!("event {expected_sequence} of the aggregate is missing"),
            });
        }
        let mut hasher = Sha256::new();
        hasher.update(&previous);
        hasher.update(&link.canonical);
        let computed = hasher.finalize().to_vec();
        if computed != link.chain_hash {
            return Ok(Verdict::Broken {
                global_position: link.global_position,
                event_id,
                reason: "its content or its predecessor was changed".into(),
            });
        }
        previous = computed;
        up_to_position = up_to_position.max(link.global_position);
    }
    Ok(Verdict::Intact {
        events: links.len() as u64,
        up_to_position,
    })
}
