//! Operator commands that read the projection service's database directly: the email outbox.

use sqlx::PgPool;

/// One outbox row, for operators.
#[derive(Debug, sqlx::FromRow)]
pub struct OutboxRow {
    /// Row id.
    pub id: i64,
    /// `pending`, `sent` or `failed`.
    pub status: String,
    /// Send attempts so far.
    pub attempts: i32,
    /// Recipient address.
    pub recipient: String,
    /// `device_linked`, `device_unlinked`, `email_changed_old`, `email_changed_new`.
    pub kind: String,
    /// The event that caused it.
    pub event_id: String,
    /// The last SMTP error, if any.
    pub last_error: Option<String>,
    /// When it was queued.
    pub created_at: chrono::DateTime<chrono::Utc>,
    /// When the worker tries it next (pending rows; for the others, when it would have).
    pub next_attempt_at: chrono::DateTime<chrono::Utc>,
}

/// Outbox rows with `status` (`all` for every row), newest first.
pub async fn emails(pool: &PgPool, status: &str, limit: i64) -> anyhow::Result<Vec<OutboxRow>> {
    anyhow::ensure!(
        ["pending", "sent", "failed", "all"].contains(&status),
        "--status must be pending, sent, failed or all"
    );
    Ok(sqlx::query_as(
        "SELECT id, status, attempts, recipient, kind, event_id, last_error, created_at, \
         next_attempt_at FROM email_outbox \
         WHERE $1 = 'all' OR status = $1 ORDER BY id DESC LIMIT $2",
    )
    .bind(status)
    .bind(limit)
    .fetch_all(pool)
    .await?)
}

/// Puts a failed email back in the queue, to be sent at once and retried for the whole
/// give-up period again (it counts as queued now); `false` if it was not failed.
pub async fn retry_email(pool: &PgPool, id: i64) -> anyhow::Result<bool> {
    let updated = sqlx::query(
        "UPDATE email_outbox SET status = 'pending', attempts = 0, next_attempt_at = now(), \
         created_at = now() WHERE id = $1 AND status = 'failed'",
    )
    .bind(id)
    .execute(pool)
    .await?;
    Ok(updated.rows_affected() == 1)
}
