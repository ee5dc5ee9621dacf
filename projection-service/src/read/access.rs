//! `access_records`: who read which account's history, through which `AuditService` call and
//! with which filters, and when (issue 19, reads on record). Written before an auditor's read is
//! answered (a read that cannot be recorded is not served); listed for the holder.

use chrono::{DateTime, Utc};
use sqlx::PgPool;

use crate::status::QueryError;

/// One read of an account by someone other than its holder.
#[derive(Debug, sqlx::FromRow)]
pub(crate) struct AccessRecord {
    /// Its position among all records.
    pub(crate) id: i64,
    /// The account read.
    pub(crate) account_id: String,
    /// `auditor:<subject>`.
    pub(crate) reader: String,
    /// The `AuditService` method.
    pub(crate) rpc: String,
    /// The request's filters.
    pub(crate) filters: serde_json::Value,
    /// When.
    pub(crate) at: DateTime<Utc>,
}

/// Records that `reader` reads `account` with `rpc` and `filters`.
pub(crate) async fn record(
    pool: &PgPool,
    account: &str,
    reader: &str,
    rpc: &str,
    filters: &serde_json::Value,
) -> Result<(), QueryError> {
    sqlx::query(
        "INSERT INTO access_records (account_id, reader, rpc, filters) VALUES ($1, $2, $3, $4)",
    )
    .bind(account)
    .bind(reader)
    .bind(rpc)
    .bind(filters)
    .execute(pool)
    .await
    .map_err(QueryError::audit_log)?;
    Ok(())
}

/// Up to `limit` records of `account` after record `after`, oldest first.
pub(crate) async fn page(
    pool: &PgPool,
    account: &str,
    after: i64,
    limit: i64,
) -> Result<Vec<AccessRecord>, QueryError> {
    sqlx::query_as(
        "SELECT id, account_id, reader, rpc, filters, at FROM access_records \
         WHERE account_id = $1 AND id > $2 ORDER BY id LIMIT $3",
    )
    .bind(account)
    .bind(after)
    .bind(limit)
    .fetch_all(pool)
    .await
    .map_err(QueryError::audit_log)
}
