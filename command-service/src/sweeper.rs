//! Removes what no longer serves, one instance per round: expired token hashes, replay answers
//! past retention, spent
//! rate limits, the credentials of links that ended — including those a crash left behind between an unlink's
//! event and the deletion of its credential (DESIGN §4 rule 2) — and the data keys of link
//! attempts that never named their account, once past their retention (docs/privacy.md).

use std::time::Duration;

use sqlx::{PgConnection, PgPool};

/// How often the sweeper runs.
pub const SWEEP_EVERY: Duration = Duration::from_secs(60);

/// What one sweep removed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Swept {
    /// Expired QR and link-attempt token hashes.
    pub bearer_tokens: u64,
    /// Replay answers past their period.
    pub replays: u64,
    /// Credentials of links that ended, or that never came to be.
    pub credentials: u64,
    /// Keyed rate limits whose allowance is whole again.
    pub rate_limits: u64,
    /// Data keys destroyed: link attempts past retention that never named their account.
    pub attempt_keys: u64,
}

/// The advisory-lock key of a sweep round (`'linksweep'`'s first bytes): one instance sweeps
/// at a time, the others skip the round.
const ROUND_LOCK: i64 = 0x6c69_6e6b_7377_6565;

/// How old things must be before a sweep removes them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Periods {
    /// A replay answer (`LINKD_RETENTION_REPLAY_HOURS`, default 24): the window in which a
    /// call retried with the same `request_id` gets the first answer again.
    pub replays: Duration,
    /// A credential row of a link that never happened (longer than a link attempt lives).
    pub abandoned_after: Duration,
    /// The data key of a link attempt that never named its account
    /// (`LINKD_RETENTION_UNCLAIMED_ATTEMPT_DAYS`; longer than a link attempt lives).
    pub unclaimed_attempt_keys: Duration,
}

/// The most attempt keys one sweep examines (the rest wait for the next sweep).
const ATTEMPT_KEYS_PER_SWEEP: i64 = 10_000;

/// One sweep with `periods`, or `None` if another instance holds the round (a transaction-scoped
/// advisory lock, released when the round ends or its connection does). The round's statements
/// run in its transaction, on one connection: a pool of one is enough.
pub async fn sweep(pool: &PgPool, periods: &Periods) -> Result<Option<Swept>, sqlx::Error> {
    let Some(mut round) = service_kit::database::lead_round(pool, ROUND_LOCK).await? else {
        return Ok(None);
    };
    let swept = sweep_round(&mut round, periods).await?;
    round.commit().await?;
    Ok(Some(swept))
}

async fn sweep_round(db: &mut PgConnection, periods: &Periods) -> Result<Swept, sqlx::Error> {
    let abandoned_after = periods.abandoned_after;
    let bearer_tokens =
        sqlx::query("DELETE FROM bearer_tokens WHERE expires_at < now() - interval '1 hour'")
            .execute(&mut *db)
            .await?
            .rows_affected();
    let replays =
        sqlx::query("DELETE FROM request_log WHERE created_at < now() - make_interval(secs => $1)")
            .bind(periods.replays.as_secs_f64())
            .execute(&mut *db)
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
    .execute(&mut *db)
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
    .execute(&mut *db)
    .await?;
    Ok(Swept {
        bearer_tokens,
        replays,
        credentials,
        rate_limits: crate::limits::sweep(&mut *db).await?,
        attempt_keys: destroy_unclaimed_attempt_keys(&mut *db, periods.unclaimed_attempt_keys)
            .await?,
    })
}

/// Destroys the data keys of link attempts older than `after` whose events never named an
/// account whose key still exists (their sealed phone details then read as placeholders, like
/// an erased account's), and marks the keys of attempts that did as `kept`: those live until
/// their account is erased (`store::erasure`). Each key is examined once; rows an erasure
/// holds are left for later.
async fn destroy_unclaimed_attempt_keys(
    db: &mut PgConnection,
    after: Duration,
) -> Result<u64, sqlx::Error> {
    let (destroyed,): (i64,) = sqlx::query_as(
        "WITH due AS ( \
             SELECT k.subject, EXISTS ( \
                 SELECT 1 FROM events e \
                 JOIN data_keys a ON a.subject = e.data_subject AND a.wrapped IS NOT NULL \
                 WHERE e.aggregate_type = 'link_attempt' \
                 AND e.aggregate_id = substr(k.subject, length('link_attempt:') + 1) \
                 AND e.data_subject LIKE 'account:%') AS claimed \
             FROM data_keys k \
             WHERE k.wrapped IS NOT NULL AND NOT k.kept AND k.subject LIKE 'link_attempt:%' \
               AND k.created_at < now() - make_interval(secs => $1) \
             ORDER BY k.created_at LIMIT $2 FOR UPDATE OF k SKIP LOCKED), \
         kept AS ( \
             UPDATE data_keys k SET kept = true FROM due \
             WHERE k.subject = due.subject AND due.claimed RETURNING 1), \
         destroyed AS ( \
             UPDATE data_keys k SET wrapped = NULL, erased_at = now() FROM due \
             WHERE k.subject = due.subject AND NOT due.claimed RETURNING 1) \
         SELECT count(*) FROM destroyed",
    )
    .bind(after.as_secs_f64())
    .bind(ATTEMPT_KEYS_PER_SWEEP)
    .fetch_one(&mut *db)
    .await?;
    Ok(u64::try_from(destroyed).unwrap_or_default())
}

/// Sweeps every [`SWEEP_EVERY`] until the task is dropped; failures are logged and retried.
pub async fn run(pool: PgPool, periods: Periods) {
    let mut ticks = tokio::time::interval(SWEEP_EVERY);
    loop {
        ticks.tick().await;
        match sweep(&pool, &periods).await {
            Ok(Some(swept)) if swept != Swept::default() => tracing::info!(?swept, "swept"),
            Ok(_) => {}
            Err(error) => tracing::warn!(%error, "sweeping failed; will retry"),
        }
    }
}
