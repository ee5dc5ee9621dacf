//! Retention on the read side (issue 19, fourth point; docs/privacy.md): emails that were sent
//! or given up on, dead letters, and the audit witness's rows (`audit_heads`) of link attempts
//! that never named an account are deleted once older than their periods, so that the personal
//! data they hold (addresses, device names, a poison message's envelope) does not stay for ever
//! and what strangers can grow (an attempt needs no account) is bounded.
//! Pending emails are never touched.
//!
//! One instance sweeps per round: each round runs in one transaction that first takes a
//! transaction-scoped advisory lock, and an instance that does not get it skips the round.

use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use service_kit::metrics::Metrics;
use sqlx::PgPool;

/// How long each kind of row is kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    /// Sent emails, from when they were sent (`LINKD_RETENTION_SENT_EMAIL_DAYS`, default 30).
    pub sent_emails: Duration,
    /// Emails given up on, from when they were queued (`LINKD_RETENTION_FAILED_EMAIL_DAYS`,
    /// default 90: time for an operator to look at them, `linkctl admin emails`).
    pub failed_emails: Duration,
    /// Dead letters, from when they were parked (`LINKD_RETENTION_DEAD_LETTER_DAYS`, default 90).
    pub dead_letters: Duration,
    /// The audit witness's row of a link attempt that never named an account (the phone's id),
    /// from its first event (`LINKD_RETENTION_UNCLAIMED_ATTEMPT_DAYS`, default 30,
    /// as the command service destroys the attempt's data key).
    pub unclaimed_attempts: Duration,
    /// How often an instance sweeps (`LINKD_RETENTION_EVERY_SECONDS`, default 3600).
    pub every: Duration,
}

impl Default for Retention {
    fn default() -> Self {
        const DAY: u64 = 24 * 3600;
        Self {
            sent_emails: Duration::from_secs(30 * DAY),
            failed_emails: Duration::from_secs(90 * DAY),
            dead_letters: Duration::from_secs(90 * DAY),
            unclaimed_attempts: Duration::from_secs(30 * DAY),
            every: Duration::from_secs(3600),
        }
    }
}

/// What one sweep deleted; `None` when another instance held the round.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Purged {
    /// Sent emails deleted.
    pub sent_emails: u64,
    /// Emails given up on, deleted.
    pub failed_emails: u64,
    /// Dead letters deleted.
    pub dead_letters: u64,
    /// Audit-witness rows of unclaimed link attempts deleted.
    pub unclaimed_attempts: u64,
}

/// What a row deleted for its age was (the label of `linkd_retention_deleted_total`).
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Deleted {
    rows: &'static str,
}

/// Rows the sweeper deleted, by kind (`sent_email`, `failed_email`, `dead_letter`,
/// `unclaimed_attempt`), as
/// `linkd_retention_deleted_total` (docs/metrics.md).
#[derive(Debug, Clone, Default)]
pub struct RetentionMetrics {
    deleted: Family<Deleted, Counter>,
}

impl RetentionMetrics {
    /// The counters, registered in `metrics`.
    pub fn register(metrics: &Metrics) -> Self {
        let this = Self::default();
        // Every kind is served from the start, at 0 until a round deletes one.
        this.count(&Purged::default());
        metrics.register(
            "retention_deleted",
            "Rows the retention sweeper deleted past their period, by kind (docs/privacy.md)",
            this.deleted.clone(),
        );
        this
    }

    /// Counts what one round deleted.
    pub fn count(&self, purged: &Purged) {
        for (rows, n) in [
            ("sent_email", purged.sent_emails),
            ("failed_email", purged.failed_emails),
            ("dead_letter", purged.dead_letters),
            ("unclaimed_attempt", purged.unclaimed_attempts),
        ] {
            self.deleted.get_or_create(&Deleted { rows }).inc_by(n);
        }
    }
}

/// The advisory lock key of a round ("linkd retention", any constant no other lock uses).
const LOCK: i64 = 0x6c69_6e6b_7265_7401;

/// One round: deletes what is past its period, unless another instance is sweeping.
pub async fn sweep(pool: &PgPool, retention: &Retention) -> Result<Option<Purged>, sqlx::Error> {
    let Some(mut tx) = service_kit::database::lead_round(pool, LOCK).await? else {
        return Ok(None);
    };
    let sent_emails = sqlx::query(
        "DELETE FROM email_outbox WHERE status = 'sent' \
         AND sent_at < now() - make_interval(secs => $1)",
    )
    .bind(retention.sent_emails.as_secs_f64())
    .execute(&mut *tx)
    .await?
    .rows_affected();
    let failed_emails = sqlx::query(
        "DELETE FROM email_outbox WHERE status = 'failed' \
         AND created_at < now() - make_interval(secs => $1)",
    )
    .bind(retention.failed_emails.as_secs_f64())
    .execute(&mut *tx)
    .await?
    .rows_affected();
    let dead_letters = sqlx::query(
        "DELETE FROM dead_letters WHERE received_at < now() - make_interval(secs => $1)",
    )
    .bind(retention.dead_letters.as_secs_f64())
    .execute(&mut *tx)
    .await?
    .rows_affected();
    // No account can list these rows (they name none), and no event can name one any more.
    let unclaimed_attempts = sqlx::query(
        "DELETE FROM audit_heads WHERE account_id = '' AND aggregate_type = 'link_attempt' \
         AND first_at < now() - make_interval(secs => $1)",
    )
    .bind(retention.unclaimed_attempts.as_secs_f64())
    .execute(&mut *tx)
    .await?
    .rows_affected();
    tx.commit().await?;
    Ok(Some(Purged {
        sent_emails,
        failed_emails,
        dead_letters,
        unclaimed_attempts,
    }))
}

/// Sweeps every `retention.every`, logging each purge; a failed round is logged and retried at
/// the next.
pub async fn run(pool: PgPool, retention: Retention, metrics: RetentionMetrics) {
    let mut ticks = tokio::time::interval(retention.every);
    loop {
        ticks.tick().await;
        match sweep(&pool, &retention).await {
            Ok(Some(purged)) if purged != Purged::default() => {
                metrics.count(&purged);
                tracing::info!(
                    sent_emails = purged.sent_emails,
                    failed_emails = purged.failed_emails,
                    dead_letters = purged.dead_letters,
                    unclaimed_attempts = purged.unclaimed_attempts,
                    "retention: deleted rows past their period"
                );
            }
            Ok(_) => {}
            Err(error) => tracing::warn!(%error, "retention sweep failed; retrying at the next"),
        }
    }
}
