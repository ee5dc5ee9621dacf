//! Removes what no longer serves: expired token hashes, replay answers past retention, spent
//! rate limits, and the credentials of links that ended — including those a crash left behind between an unlink's
//! event and the deletion of its credential (DESIGN §4 rule 2).

use std::time::Duration;

use sqlx::PgPool;

/// How often the sweeper runs.
pub const SWEEP_EVERY: Duration = Duration::from_secs(60);

/// What one sweep removed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Swept {
    /// Expired QR and link-attempt token hashes.
    pub bearer_tokens: u64,
    /// Replay answers older than 24 hours.
    pub replays: u64,
    /// Credentials of links that ended, or that never came to be.
    pub credentials: u64,
    /// Keyed rate limits whose allowance is whole again.
    pub rate_limits: u64,
}

/// One sweep. `abandoned_after` is how old a credential row of a link that never happened must
/// be before it is removed (longer than a link attempt lives).
pub async fn sweep(pool: &PgPool, abandoned_after: Duration) -> Result<Swept, sqlx::Error> {
    let bearer_tokens =
        sqlx::query("DELETE FROM bearer_tokens WHERE expires_at < now() - interval '1 hour'")
            .execute(pool)
            .await?
            .rows_affected();
    let replays =
        sqlx::query("DELETE FROM request_log WHERE created_at < now() - interval '24 hours'")
            .execute(pool)
            .await?
            .rows_affected();
    let credentials = sqlx::query(
        "DELETE FROM device_credentials c WHERE EXISTS ( \
             SELECT 1 FROM events e WHERE e.aggregate_type = 'device' \
             AND e.aggregate_id = c.device_id::text AND e.event_type = 'DeviceUnlinked' \
             AND e.payload -> 'DeviceUnlinked' ->> 'link_id' = c.link_id::text) \
         OR (c.created_at < now() - make_interval(secs => $1) AND NOT EXISTS ( \
             SELECT 1 FROM events e WHERE e.aggregate_type = 'device' \
             AND e.aggregate_id = c.device_id::text AND e.event_type = 'DeviceLinked' \
             AND e.payload -> 'DeviceLinked' ->> 'link_id' = c.link_id::text))",
    )
    .bind(abandoned_after.as_secs_f64())
    .execute(pool)
    .await?
    .rows_affected();
    // Rows an older instance claimed without naming their account (during a rolling upgrade):
    // the device cap and containment count links by account.
    sqlx::query(
        "UPDATE device_credentials c SET account_id = ( \
             SELECT e.payload -> 'DeviceLinked' ->> 'account_id' FROM events e \
             WHERE e.aggregate_type = 'device' AND e.aggregate_id = c.device_id::text \
             AND e.event_type = 'DeviceLinked' \
             AND e.payload -> 'DeviceLinked' ->> 'link_id' = c.link_id::text LIMIT 1) \
         WHERE c.account_id IS NULL",
    )
    .execute(pool)
    .await?;
    Ok(Swept {
        bearer_tokens,
        replays,
        credentials,
        rate_limits: crate::limits::sweep(pool).await?,
    })
}

/// Sweeps every [`SWEEP_EVERY`] until the task is dropped; failures are logged and retried.
pub async fn run(pool: PgPool, abandoned_after: Duration) {
    let mut ticks = tokio::time::interval(SWEEP_EVERY);
    loop {
        ticks.tick().await;
        match sweep(&pool, abandoned_after).await {
            Ok(swept) if swept != Swept::default() => tracing::info!(?swept, "swept"),
            Ok(_) => {}
            Err(error) => tracing::warn!(%error, "sweeping failed; will retry"),
        }
    }
}
