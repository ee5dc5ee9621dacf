//! What a database error says about the database: whether the call may simply be retried; and
//! the pools every service opens.

use std::time::Duration;

use sqlx::PgPool;
use sqlx::postgres::PgPoolOptions;

/// How long a connection may sit idle in a pool and still be handed out without a check.
pub const TRUSTED_IDLE: Duration = Duration::from_secs(1);

/// Pool options for a service: `max_connections` connections, a 5 s acquire timeout, and a
/// liveness check (one `Sync` round trip) only for a connection idle for [`TRUSTED_IDLE`] or
/// more. sqlx checks every connection as it returns to the pool, so a connection reused within
/// a second was alive a moment ago: on the hot path, where connections are reused within
/// milliseconds, no call pays a round trip before its first statement (sqlx's default checks on
/// every acquire). A connection the server drops within that second fails its next statement,
/// answered `UNAVAILABLE` like a call in flight when the server went away, and is closed when it
/// returns to the pool.
pub fn pool_options(max_connections: u32) -> PgPoolOptions {
    PgPoolOptions::new()
        .max_connections(max_connections)
        .acquire_timeout(Duration::from_secs(5))
        .test_before_acquire(false)
        .before_acquire(|connection, meta| {
            Box::pin(async move {
                if meta.idle_for >= TRUSTED_IDLE {
                    sqlx::Connection::ping(connection).await?;
                }
                Ok(true)
            })
        })
}

/// A lazily connected pool on `pool`'s database whose transactions commit without waiting for
/// their WAL flush (`synchronous_commit = off`), for writes that may be forgotten by a database
/// crash at no cost that matters: the rate-limit counters. A crash loses at most the last
/// `3 × wal_writer_delay` (600 ms by default) of them, and never a write that a later
/// synchronous commit on the same server followed (that commit flushes the WAL before it).
/// It saves each such write a WAL flush: one `fdatasync` and its wait, per call.
pub fn asynchronous_commit_pool(pool: &PgPool, max_connections: u32) -> PgPool {
    let options = (*pool.connect_options())
        .clone()
        .options([("synchronous_commit", "off")]);
    pool_options(max_connections).connect_lazy_with(options)
}

/// Begins a round of work that one instance at a time runs (a sweep, a scheduler's pass): a
/// transaction holding the transaction-scoped advisory lock `key`, released when the round's
/// transaction ends or its connection does; `None` if another instance holds it.
pub async fn lead_round(
    pool: &PgPool,
    key: i64,
) -> Result<Option<sqlx::Transaction<'static, sqlx::Postgres>>, sqlx::Error> {
    let mut round = pool.begin().await?;
    let leading: bool = sqlx::query_scalar("SELECT pg_try_advisory_xact_lock($1)")
        .bind(key)
        .fetch_one(&mut *round)
        .await?;
    Ok(leading.then_some(round))
}

/// Whether `error` is the database's state rather than the request's: the pool (timed out,
/// closed), I/O, and SQLSTATE classes 08 (connection), 53 (insufficient resources) and 57
/// (operator intervention: shutdown, statement timeout). Such a failure is answered
/// `UNAVAILABLE` (retry later); any other is internal.
#[expect(
    clippy::wildcard_enum_match_arm,
    reason = "sqlx::Error is non_exhaustive"
)]
pub fn is_unavailable(error: &sqlx::Error) -> bool {
    match error {
        sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed | sqlx::Error::Io(_) => true,
        sqlx::Error::Database(db) => db.code().is_some_and(|code| {
            code.starts_with("08") || code.starts_with("53") || code.starts_with("57")
        }),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pool_and_the_network_are_the_database_state() {
        assert!(is_unavailable(&sqlx::Error::PoolTimedOut));
        assert!(is_unavailable(&sqlx::Error::PoolClosed));
        assert!(is_unavailable(&sqlx::Error::Io(std::io::Error::other(
            "reset"
        ))));
        assert!(!is_unavailable(&sqlx::Error::RowNotFound));
        assert!(!is_unavailable(&sqlx::Error::Protocol("garbled".into())));
    }
}
