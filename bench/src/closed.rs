//! Closed-loop phases: every client runs its own loop (next call as soon as the last one
//! answered) in a task of its own; the phase ends when the last client is done.

use std::future::Future;
use std::time::{Duration, Instant};

use anyhow::Context as _;

/// Runs `body(index, state)` for every state at once, each in its own task, and returns what
/// they returned, in the order of the states.
pub(crate) async fn each<S, T, F, Fut>(states: Vec<S>, body: F) -> anyhow::Result<Vec<T>>
where
    F: Fn(usize, S) -> Fut,
    Fut: Future<Output = T> + Send + 'static,
    T: Send + 'static,
{
    let handles: Vec<_> = states
        .into_iter()
        .enumerate()
        .map(|(index, state)| tokio::spawn(body(index, state)))
        .collect();
    let mut results = Vec::with_capacity(handles.len());
    for handle in handles {
        results.push(handle.await.context("a bench client task failed")?);
    }
    Ok(results)
}

/// A pool of exactly `concurrency` connections to `url`, every one opened before it is
/// returned (so no phase's clock pays for connecting); `what` names it in errors.
pub(crate) async fn warm_pool(
    url: &str,
    concurrency: usize,
    what: &str,
) -> anyhow::Result<sqlx::PgPool> {
    let size = u32::try_from(concurrency)?;
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(size)
        .min_connections(size)
        .connect(url)
        .await
        .with_context(|| format!("connecting the {what}'s pool"))?;
    let mut warm = Vec::with_capacity(concurrency);
    for _ in 0..concurrency {
        warm.push(pool.acquire().await?);
    }
    drop(warm);
    Ok(pool)
}

/// When a phase must stop, and whether it has.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Deadline(Instant);

impl Deadline {
    /// `length` from now.
    pub(crate) fn after(length: Duration) -> Self {
        Self(Instant::now() + length)
    }

    /// Whether the phase is over.
    pub(crate) fn passed(self) -> bool {
        Instant::now() >= self.0
    }
}
