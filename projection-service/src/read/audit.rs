//! The `audit_log` read model: one row per event, with its account and device resolved. Written
//! by [`crate::projections::audit`]; read here for `AuditService`, together with the event store
//! for `VerifyHistory`.

use chrono::{DateTime, Utc};
use sqlx::PgPool;

use crate::status::QueryError;

/// Every column `AuditService` answers with, in [`AuditRow`]'s order.
const COLUMNS: &str = "global_position, event_id, aggregate_type, aggregate_id, sequence, \
    event_type, occurred_at, actor, request_id, account_id, device_id, details";

/// A row of `audit_log`.
#[derive(Debug, sqlx::FromRow)]
pub(crate) struct AuditRow {
    /// Position in the event store.
    pub(crate) global_position: i64,
    /// `<aggregate_type>/<aggregate_id>/<sequence>`.
    pub(crate) event_id: String,
    /// The aggregate's type.
    pub(crate) aggregate_type: String,
    /// The aggregate's id.
    pub(crate) aggregate_id: String,
    /// Sequence within the aggregate.
    pub(crate) sequence: i64,
    /// E.g. `DeviceLinked`.
    pub(crate) event_type: String,
    /// When it was recorded.
    pub(crate) occurred_at: DateTime<Utc>,
    /// Who caused it.
    pub(crate) actor: String,
    /// The call that caused it.
    pub(crate) request_id: String,
    /// The account concerned.
    pub(crate) account_id: String,
    /// The device concerned, or empty.
    pub(crate) device_id: String,
    /// Event-specific facts (text forms of `proto::convert` for enums).
    pub(crate) details: serde_json::Value,
}

/// Which events of an account a page holds.
#[derive(Debug, Clone)]
pub(crate) struct Filter {
    /// The account.
    pub(crate) account: String,
    /// Only this device's events, unless empty.
    pub(crate) device: String,
    /// Only these event types, unless empty.
    pub(crate) types: Vec<String>,
    /// Only events recorded at or after this instant.
    pub(crate) from: Option<DateTime<Utc>>,
    /// Only events recorded before this instant.
    pub(crate) to: Option<DateTime<Utc>>,
}

/// Up to `limit` events matching `filter` after global position `after`, in position order.
pub(crate) async fn page(
    pool: &PgPool,
    filter: &Filter,
    after: i64,
    limit: i64,
) -> Result<Vec<AuditRow>, QueryError> {
    sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM audit_log WHERE account_id = $1 \
         AND ($2 = '' OR device_id = $2) \
         AND (cardinality($3::text[]) = 0 OR event_type = ANY($3)) \
         AND ($4::timestamptz IS NULL OR occurred_at >= $4) \
         AND ($5::timestamptz IS NULL OR occurred_at < $5) \
         AND global_position > $6 ORDER BY global_position LIMIT $7"
    ))
    .bind(&filter.account)
    .bind(&filter.device)
    .bind(&filter.types)
    .bind(filter.from)
    .bind(filter.to)
    .bind(after)
    .bind(limit)
    .fetch_all(pool)
    .await
    .map_err(QueryError::audit_log)
}

/// A device linked at an instant: the `DeviceLinked` event that linked it.
#[derive(Debug, sqlx::FromRow)]
pub(crate) struct LinkedAt {
    /// The device.
    pub(crate) device_id: String,
    /// When it was linked.
    pub(crate) occurred_at: DateTime<Utc>,
    /// The `DeviceLinked` event.
    pub(crate) event_id: String,
    /// Its details (`device_name`, `method` …).
    pub(crate) details: serde_json::Value,
}

/// The devices linked to `account` at `at`: those whose last link event by then is a
/// `DeviceLinked`, oldest link first.
pub(crate) async fn linked_at(
    pool: &PgPool,
    account: &str,
    at: DateTime<Utc>,
) -> Result<Vec<LinkedAt>, QueryError> {
    sqlx::query_as(
        "SELECT device_id, occurred_at, event_id, details FROM ( \
               SELECT DISTINCT ON (device_id) device_id, event_type, occurred_at, event_id, \
               details FROM audit_log WHERE aggregate_type = 'device' AND account_id = $1 \
               AND event_type IN ('DeviceLinked', 'DeviceUnlinked') AND occurred_at <= $2 \
               ORDER BY device_id, sequence DESC) last \
             WHERE event_type = 'DeviceLinked' ORDER BY occurred_at, device_id",
    )
    .bind(account)
    .bind(at)
    .fetch_all(pool)
    .await
    .map_err(QueryError::audit_log)
}

/// Checks the tamper-evidence chain in the event store (`store`) of every aggregate of
/// `account`: those the audit log knows, each with its last event (so a history cut short is
/// detected too), and any other the event store attributes to it.
pub(crate) async fn verify(
    pool: &PgPool,
    store: &PgPool,
    account: &str,
) -> Result<history::Verdict, QueryError> {
    let logged: Vec<(String, String, i64, i64)> = sqlx::query_as(
        "SELECT aggregate_type, aggregate_id, max(sequence), max(global_position) \
         FROM audit_log WHERE account_id = $1 GROUP BY aggregate_type, aggregate_id",
    )
    .bind(account)
    .fetch_all(pool)
    .await
    .map_err(QueryError::audit_log)?;
    let mut aggregates: Vec<history::Known> = logged
        .into_iter()
        .map(
            |(aggregate_type, aggregate_id, sequence, position)| history::Known {
                aggregate_type,
                aggregate_id,
                last: Some((sequence, position)),
            },
        )
        .collect();
    let stored = history::aggregates_of(store, account)
        .await
        .map_err(QueryError::event_store)?;
    for extra in stored {
        let known = aggregates.iter().any(|k| {
            k.aggregate_type == extra.aggregate_type && k.aggregate_id == extra.aggregate_id
        });
        if !known {
            aggregates.push(extra);
        }
    }
    history::verify_all(store, &aggregates)
        .await
        .map_err(QueryError::event_store)
}
