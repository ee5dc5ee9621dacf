//! The device lifecycle scheduler: every [`LifecycleSettings::every`], one instance (the one that
//! wins a transaction-scoped advisory lock for the round) looks at every live link whose device
//! has not been used for long enough to be warned, and lets [`App::expire_if_unused`] warn or
//! unlink it. Idempotent: the device's stream decides, so an extra round or a second scheduler
//! changes nothing more.

use std::sync::Arc;
use std::time::Duration;

use sqlx::PgPool;

use crate::app::App;
use crate::app::inactivity::{Expiry, Inactivity, UnusedLink};

/// The lock one round holds (any fixed number distinct from the relay's).
const ROUND_LOCK: i64 = 0x6c69_6e6b_6c69_6665;

/// When devices expire and how often the scheduler looks.
#[derive(Debug, Clone, Copy)]
pub struct LifecycleSettings {
    /// Unused this long, a device is unlinked (`LINKD_INACTIVITY_DAYS`, default 180).
    pub after: Duration,
    /// The warning comes this long before (`LINKD_INACTIVITY_WARNING_DAYS`, default 14).
    pub warning: Duration,
    /// How often the scheduler looks (`LINKD_LIFECYCLE_EVERY_SECONDS`, default 3600).
    pub every: Duration,
}

/// Runs rounds until the task is dropped; a failed round is logged and the next one tries again.
pub(crate) async fn run(app: Arc<App>, pool: PgPool, settings: LifecycleSettings) {
    let mut ticks = tokio::time::interval(settings.every);
    loop {
        ticks.tick().await;
        match round(&app, &pool, settings).await {
            Ok((0, 0)) => {}
            Ok((warned, unlinked)) => tracing::info!(warned, unlinked, "inactive devices"),
            Err(error) => {
                tracing::warn!(error = %error, "device lifecycle round failed; will retry")
            }
        }
    }
}

/// One round: (devices warned, devices unlinked); nothing if another instance holds the round.
pub(crate) async fn round(
    app: &App,
    pool: &PgPool,
    settings: LifecycleSettings,
) -> anyhow::Result<(u32, u32)> {
    let policy = Inactivity {
        after: chrono::Duration::from_std(settings.after)?,
        warning: chrono::Duration::from_std(settings.warning)?,
    };
    let Some(round) = service_kit::database::lead_round(pool, ROUND_LOCK).await? else {
        return Ok((0, 0));
    };
    let warn_after = settings.after.saturating_sub(settings.warning);
    let unused: Vec<UnusedLink> = sqlx::query_as(
        "SELECT link_id, device_id, account_id, used_at FROM device_credentials \
         WHERE account_id IS NOT NULL AND used_at <= now() - make_interval(secs => $1) \
         ORDER BY used_at",
    )
    .bind(warn_after.as_secs_f64())
    .fetch_all(pool)
    .await?;
    let (mut warned, mut unlinked) = (0, 0);
    for link in &unused {
        match app.expire_if_unused(link, policy).await {
            Ok(Expiry::Warned) => warned += 1,
            Ok(Expiry::Unlinked) => unlinked += 1,
            Ok(Expiry::Nothing) => {}
            Err(error) => tracing::warn!(device_id = %link.device_id, %error, "could not expire"),
        }
    }
    round.commit().await?;
    Ok((warned, unlinked))
}
