//! The plumbing linkd's tests share, whatever they test: a scratch PostgreSQL database per test
//! ([`TestDatabase`], dropped with its guard), a scratch JetStream stream and subject prefix per
//! test on the shared nats-server ([`TestStream`], deleted with its guard), a nats-server of a
//! test's own for tests that stop and start NATS ([`OwnNats`]), a PostgreSQL cluster of a
//! test's own for tests that crash PostgreSQL ([`OwnPostgres`]), [`eventually`] for
//! assertions on what settles asynchronously, and [`plans`] for statements that must reach
//! their rows by key whatever the statistics.
//!
//! It knows nothing of linkd: it must not depend on the services (the services' own tests use
//! it), so migrations, settings and clients stay with the crates and the e2e harness that own
//! them. Where the servers are comes from `LINKD_TEST_DATABASE_URL` and `LINKD_TEST_NATS_URL`.
#![allow(
    clippy::expect_used,
    reason = "test support: a broken environment should fail the test loudly"
)]

mod database;
mod nats;
mod own_nats;
mod own_postgres;
pub mod plans;

use std::future::Future;
use std::time::Duration;

pub use database::{TestDatabase, admin_url, with_database};
pub use nats::{TestStream, nats_url};
pub use own_nats::{OwnNats, OwnNatsCluster, nats_server_binary};
pub use own_postgres::OwnPostgres;

/// Polls `check` until it returns `Some`, or panics after `within` naming `what` it waited for.
pub async fn eventually<T, F, Fut>(within: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let started = tokio::time::Instant::now();
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(
            started.elapsed() < within,
            "timed out after {within:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}
