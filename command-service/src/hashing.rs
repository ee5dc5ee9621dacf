//! Argon2id hashing of secret codes, on a bounded pool of its own.
//!
//! Hashing is the one expensive thing a caller can make linkd do (19 MiB and tens of
//! milliseconds per code), so it is bounded twice, and a job that cannot be taken is refused at
//! once instead of waiting:
//! - **one job per caller at a time** (a device, or a link attempt): one device looping
//!   `VerifySecretCode` from 64 connections occupies one hashing slot, not all of them;
//! - **at most `capacity` jobs held**, running or waiting, for the whole instance.
//!
//! A refused job is [`Refused::Busy`], answered `RESOURCE_EXHAUSTED` with a retry delay; nothing
//! is written before a hash, so nothing is written then either.

use std::collections::HashSet;
use std::sync::{Arc, Mutex, PoisonError};

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use service_kit::metrics::Metrics;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use uuid::Uuid;

/// Why a hashing job was not done.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(crate) enum Refused {
    /// This caller already has a job in the pool.
    #[error("another secret-code check for this device or link attempt is still running")]
    CallerBusy,
    /// The pool holds as many jobs as it may.
    #[error("the service is checking as many secret codes as it can")]
    Busy,
    /// The job panicked (a bug); logged.
    #[error("hashing task failed")]
    Failed,
}

/// Hashes and verifies secret codes with Argon2id and the pepper. CPU-bound: run the work
/// through [`CodeHasher::run`], on the hasher's own threads.
#[derive(Clone)]
pub(crate) struct CodeHasher {
    pepper: Arc<Vec<u8>>,
    threads: Arc<rayon::ThreadPool>,
    /// One permit per job held (running or waiting).
    held: Arc<Semaphore>,
    /// The callers with a job held.
    callers: Arc<Mutex<HashSet<Uuid>>>,
    /// How long jobs waited for a thread, in seconds.
    wait: Histogram,
    /// Jobs refused, by reason.
    refused: Family<RefusedLabels, Counter>,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RefusedLabels {
    reason: &'static str,
}

/// 1 ms to about 4 s, doubling.
fn wait_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.001, 2.0, 13))
}

impl std::fmt::Debug for CodeHasher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CodeHasher(***)")
    }
}

/// A caller's place in the pool: gives the place back when dropped (job done, or its call
/// cancelled).
struct Place {
    caller: Uuid,
    callers: Arc<Mutex<HashSet<Uuid>>>,
    _permit: OwnedSemaphorePermit,
}

impl Drop for Place {
    fn drop(&mut self) {
        self.callers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&self.caller);
    }
}

impl CodeHasher {
    /// A hasher using `pepper` as Argon2's secret input, with one hashing thread per core and
    /// at most `capacity` jobs held at once.
    pub(crate) fn new(pepper: Vec<u8>, capacity: usize) -> std::io::Result<Self> {
        let cores = std::thread::available_parallelism().map_or(2, std::num::NonZeroUsize::get);
        let threads = rayon::ThreadPoolBuilder::new()
            .num_threads(cores)
            .thread_name(|n| format!("argon2-{n}"))
            // A panic drops the job's answer channel (the call fails with INTERNAL); without a
            // handler rayon would abort the process.
            .panic_handler(|_| tracing::error!("a hashing job panicked"))
            .build()
            .map_err(std::io::Error::other)?;
        Ok(Self {
            pepper: Arc::new(pepper),
            threads: Arc::new(threads),
            held: Arc::new(Semaphore::new(capacity.max(1))),
            callers: Arc::new(Mutex::new(HashSet::new())),
            wait: wait_histogram(),
            refused: Family::default(),
        })
    }

    /// Reports the pool in `metrics`: jobs held and the capacity (read at each scrape), how
    /// long jobs wait for a thread, and the jobs refused.
    #[must_use]
    pub(crate) fn with_metrics(self, metrics: &Metrics) -> Self {
        let held = metrics.gauge(
            "hashing_jobs",
            "Secret-code hashing jobs held, running or waiting for a thread",
        );
        let capacity = metrics.gauge(
            "hashing_capacity",
            "The most hashing jobs held at once; more are refused (RESOURCE_EXHAUSTED)",
        );
        capacity.set(i64::try_from(self.held.available_permits()).unwrap_or(i64::MAX));
        let callers = Arc::clone(&self.callers);
        metrics.on_scrape(move || {
            let jobs = callers.lock().unwrap_or_else(PoisonError::into_inner).len();
            held.set(i64::try_from(jobs).unwrap_or(i64::MAX));
            std::future::ready(())
        });
        metrics.register(
            "hashing_wait_seconds",
            "Time a hashing job waited for a thread",
            self.wait.clone(),
        );
        // Both series exist from the start, at 0: the first refusal is then an increase.
        for reason in ["busy", "caller_busy"] {
            drop(self.refused.get_or_create(&RefusedLabels { reason }));
        }
        metrics.register(
            "hashing_refused",
            "Hashing jobs refused: reason=busy (the pool was full), caller_busy (the caller had a \
             job held already)",
            self.refused.clone(),
        );
        self
    }

    /// How many jobs the pool holds now (running or waiting).
    #[cfg(test)]
    pub(crate) fn held(&self) -> usize {
        self.callers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }

    /// Runs `work` for `caller` on one of the hashing threads and waits for its result, unless
    /// `caller` has a job held already or the pool is full. At most one hash per core runs at
    /// once: more would not finish sooner. The threads are always the same few, so the
    /// allocator reuses each one's 19 MiB buffer (on tokio's blocking pool 32 clients left the
    /// service at 800 MB). A job whose caller has gone (a cancelled call) is skipped.
    pub(crate) async fn run<T: Send + 'static>(
        &self,
        caller: Uuid,
        work: impl FnOnce(&Self) -> T + Send + 'static,
    ) -> Result<T, Refused> {
        let place = self.take_place(caller)?;
        let (answer, result) = tokio::sync::oneshot::channel();
        let hasher = self.clone();
        let queued = std::time::Instant::now();
        self.threads.spawn(move || {
            hasher.wait.observe(queued.elapsed().as_secs_f64());
            if !answer.is_closed() {
                let _ = answer.send(work(&hasher));
            }
        });
        let done = result.await.map_err(|_| Refused::Failed);
        drop(place);
        done
    }

    fn take_place(&self, caller: Uuid) -> Result<Place, Refused> {
        let mut callers = self.callers.lock().unwrap_or_else(PoisonError::into_inner);
        let refused = |reason: &'static str, refusal: Refused| {
            self.refused.get_or_create(&RefusedLabels { reason }).inc();
            refusal
        };
        if callers.contains(&caller) {
            return Err(refused("caller_busy", Refused::CallerBusy));
        }
        let permit = Arc::clone(&self.held)
            .try_acquire_owned()
            .map_err(|_| refused("busy", Refused::Busy))?;
        callers.insert(caller);
        Ok(Place {
            caller,
            callers: Arc::clone(&self.callers),
            _permit: permit,
        })
    }

    fn argon2(&self) -> Result<Argon2<'_>, argon2::Error> {
        // OWASP's recommended Argon2id parameters: 19 MiB, 2 passes, 1 lane.
        let params = Params::new(19 * 1024, 2, 1, None)?;
        Argon2::new_with_secret(&self.pepper, Algorithm::Argon2id, Version::V0x13, params)
    }

    /// The verifier (a PHC string) for `code`.
    pub(crate) fn hash(&self, code: &str) -> Result<String, argon2::password_hash::Error> {
        let salt = SaltString::generate(&mut argon2::password_hash::rand_core::OsRng);
        let argon2 = self
            .argon2()
            .map_err(|_| argon2::password_hash::Error::Algorithm)?;
        Ok(argon2.hash_password(code.as_bytes(), &salt)?.to_string())
    }

    /// Whether `code` matches `verifier`.
    pub(crate) fn verify(
        &self,
        code: &str,
        verifier: &str,
    ) -> Result<bool, argon2::password_hash::Error> {
        let parsed = PasswordHash::new(verifier)?;
        let argon2 = self
            .argon2()
            .map_err(|_| argon2::password_hash::Error::Algorithm)?;
        match argon2.verify_password(code.as_bytes(), &parsed) {
            Ok(()) => Ok(true),
            Err(argon2::password_hash::Error::Password) => Ok(false),
            Err(other) => Err(other),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PEPPER: &[u8] = b"pepper-pepper-pepper-pepper-0001";

    fn caller(n: u128) -> Uuid {
        Uuid::from_u128(n)
    }

    #[test]
    fn a_verifier_accepts_only_its_code_and_only_with_its_pepper() {
        let hasher = CodeHasher::new(PEPPER.to_vec(), 4).unwrap();
        let verifier = hasher.hash("482913").unwrap();
        assert!(!verifier.contains("482913"));
        assert!(hasher.verify("482913", &verifier).unwrap());
        assert!(!hasher.verify("482914", &verifier).unwrap());
        let other = CodeHasher::new(b"pepper-pepper-pepper-pepper-0002".to_vec(), 4).unwrap();
        assert!(!other.verify("482913", &verifier).unwrap());
    }

    #[tokio::test]
    async fn hashing_threads_answer_and_survive_a_panicking_job() {
        let hasher = CodeHasher::new(PEPPER.to_vec(), 4).unwrap();

        let verifier = hasher.run(caller(1), |hasher| hasher.hash("482913")).await;
        #[allow(clippy::panic, reason = "the panic is what is tested")]
        let failed = hasher
            .run(caller(1), |_| -> u8 { panic!("a job that panics") })
            .await;
        let after = hasher
            .run(caller(1), move |hasher| {
                hasher.verify("482913", &verifier.unwrap().unwrap())
            })
            .await;

        assert_eq!(
            failed,
            Err(Refused::Failed),
            "a panicking job gives no answer"
        );
        assert_eq!(after, Ok(Ok(true)), "and the threads keep working");
        assert_eq!(hasher.held(), 0, "and every place is given back");
    }

    #[tokio::test]
    async fn a_caller_holds_one_place_and_the_pool_holds_at_most_its_capacity() {
        let hasher = CodeHasher::new(PEPPER.to_vec(), 2).unwrap();
        let (release, wait) = std::sync::mpsc::channel::<()>();
        let wait = Arc::new(Mutex::new(wait));
        let blocked = |wait: Arc<Mutex<std::sync::mpsc::Receiver<()>>>| {
            move |_: &CodeHasher| {
                let _ = wait.lock().unwrap().recv();
            }
        };
        let first = tokio::spawn({
            let hasher = hasher.clone();
            let job = blocked(Arc::clone(&wait));
            async move { hasher.run(caller(1), job).await }
        });
        tokio::task::yield_now().await;
        while hasher.held() < 1 {
            tokio::task::yield_now().await;
        }

        // The same caller again: refused at once, whatever the room left.
        let again = hasher.run(caller(1), |_| ()).await;
        assert_eq!(again, Err(Refused::CallerBusy));

        // Another caller takes the second place; a third finds the pool full.
        let second = tokio::spawn({
            let hasher = hasher.clone();
            let job = blocked(Arc::clone(&wait));
            async move { hasher.run(caller(2), job).await }
        });
        while hasher.held() < 2 {
            tokio::task::yield_now().await;
        }
        assert_eq!(hasher.run(caller(3), |_| ()).await, Err(Refused::Busy));

        // Once the jobs are done, the places are free again.
        release.send(()).unwrap();
        release.send(()).unwrap();
        assert_eq!(first.await.unwrap(), Ok(()));
        assert_eq!(second.await.unwrap(), Ok(()));
        assert_eq!(hasher.held(), 0);
        assert_eq!(hasher.run(caller(3), |_| ()).await, Ok(()));
    }

    #[tokio::test]
    async fn a_cancelled_call_gives_its_place_back() {
        let hasher = CodeHasher::new(PEPPER.to_vec(), 1).unwrap();
        let slow = hasher.run(caller(1), |hasher| hasher.hash("482913"));
        // Dropped before the answer: the place goes back with the future.
        let _ = tokio::time::timeout(std::time::Duration::from_micros(1), slow).await;
        assert_eq!(hasher.held(), 0);
        assert!(hasher.run(caller(2), |_| ()).await.is_ok());
    }
}
