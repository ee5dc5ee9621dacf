//! The one retry path for optimistic concurrency: a step that lost the race for an aggregate
//! (another writer appended first) is decided again on what the store now holds, a bounded
//! number of times, then answered `ABORTED` (DESIGN §4 rule 3).

use std::future::Future;
use std::time::Duration;

use crate::error::CommandError;

/// How many times a step is decided in all when other writers keep getting to the aggregate
/// first.
pub(crate) const MAX_ATTEMPTS: u32 = 6;

/// Runs `step` again while it fails with a concurrency conflict, at most [`MAX_ATTEMPTS`] times,
/// with a short random pause between tries so that competing writers spread out. Each run of
/// `step` must load what it decides on afresh.
pub(crate) async fn retry_on_conflict<T, F, Fut>(mut step: F) -> Result<T, CommandError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, CommandError>>,
{
    let mut attempt = 1;
    loop {
        match step().await {
            Err(CommandError::Conflict) if attempt < MAX_ATTEMPTS => {
                let ceiling = 5 * u64::from(attempt) * u64::from(attempt);
                let pause = rand::random_range(1..=ceiling);
                tokio::time::sleep(Duration::from_millis(pause)).await;
                attempt += 1;
            }
            other => return other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_conflict_is_decided_again_at_most_max_attempts_times_in_all() {
        let mut tries = 0;
        let outcome: Result<(), _> = retry_on_conflict(|| {
            tries += 1;
            async { Err(CommandError::Conflict) }
        })
        .await;
        assert!(matches!(outcome, Err(CommandError::Conflict)));
        assert_eq!(tries, MAX_ATTEMPTS);
    }

    #[tokio::test]
    async fn other_outcomes_end_the_retries_at_once() {
        let mut tries = 0;
        let outcome = retry_on_conflict(|| {
            tries += 1;
            let attempt = tries;
            async move {
                if attempt < 3 {
                    Err(CommandError::Conflict)
                } else {
                    Ok(attempt)
                }
            }
        })
        .await;
        assert_eq!(outcome.ok(), Some(3));
        assert_eq!(tries, 3);
    }
}
