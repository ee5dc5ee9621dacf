//! Latency samples and error counts of one operation, and their summary (count, throughput,
//! p50/p99/max, errors by gRPC status code).

use std::collections::BTreeMap;
use std::future::Future;
use std::time::{Duration, Instant};

/// Why a call did not succeed: a gRPC status, or a failure on the bench's side (before the call,
/// or a reply without what it should hold).
#[derive(Debug, Clone)]
pub(crate) struct Failure {
    /// The gRPC status code name (`FAILED_PRECONDITION`), or `CLIENT`.
    pub(crate) code: &'static str,
    /// What went wrong.
    pub(crate) message: String,
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.code, self.message)
    }
}

impl std::error::Error for Failure {}

impl From<tonic::Status> for Failure {
    fn from(status: tonic::Status) -> Self {
        Self {
            code: code_name(status.code()),
            message: status.message().to_owned(),
        }
    }
}

impl From<anyhow::Error> for Failure {
    fn from(error: anyhow::Error) -> Self {
        Self {
            code: "CLIENT",
            message: format!("{error:#}"),
        }
    }
}

/// The canonical name of a gRPC status code.
pub(crate) fn code_name(code: tonic::Code) -> &'static str {
    use tonic::Code;
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

/// Samples of one operation from one or more clients.
#[derive(Debug, Default, Clone)]
pub(crate) struct Recorder {
    /// Latencies of the calls that succeeded.
    pub(crate) latencies: Vec<Duration>,
    /// Failed calls per code, with the first message seen for each.
    pub(crate) errors: BTreeMap<&'static str, (u64, String)>,
}

impl Recorder {
    /// Times `call`, records its outcome, and returns its value if it succeeded.
    pub(crate) async fn time<T>(
        &mut self,
        call: impl Future<Output = Result<T, Failure>>,
    ) -> Option<T> {
        let started = Instant::now();
        let outcome = call.await;
        self.record(started.elapsed(), outcome)
    }

    /// Times `call` and records its outcome, which it returns.
    pub(crate) async fn try_time<T>(
        &mut self,
        call: impl Future<Output = Result<T, Failure>>,
    ) -> Result<T, Failure> {
        let started = Instant::now();
        let outcome = call.await;
        match outcome {
            Ok(value) => {
                self.latencies.push(started.elapsed());
                Ok(value)
            }
            Err(failure) => {
                self.error(failure.clone());
                Err(failure)
            }
        }
    }

    /// Records one call that took `elapsed`.
    pub(crate) fn record<T>(
        &mut self,
        elapsed: Duration,
        outcome: Result<T, Failure>,
    ) -> Option<T> {
        match outcome {
            Ok(value) => {
                self.latencies.push(elapsed);
                Some(value)
            }
            Err(failure) => {
                self.error(failure);
                None
            }
        }
    }

    /// Records a failed call.
    pub(crate) fn error(&mut self, failure: Failure) {
        let entry = self
            .errors
            .entry(failure.code)
            .or_insert_with(|| (0, failure.message));
        entry.0 += 1;
    }

    /// All the samples of `recorders`.
    pub(crate) fn merged(recorders: impl IntoIterator<Item = Self>) -> Self {
        let mut all = Self::default();
        for recorder in recorders {
            all.merge(recorder);
        }
        all
    }

    /// Adds another recorder's samples.
    pub(crate) fn merge(&mut self, other: Self) {
        self.latencies.extend(other.latencies);
        for (code, (count, message)) in other.errors {
            self.errors.entry(code).or_insert((0, message)).0 += count;
        }
    }

    /// The summary of these samples, for an operation that ran for `elapsed`.
    pub(crate) fn summary(&self, name: &str, elapsed: Duration) -> OpStats {
        let mut sorted = self.latencies.clone();
        sorted.sort();
        OpStats {
            name: name.to_owned(),
            count: sorted.len() as u64,
            elapsed,
            p50: percentile(&sorted, 0.50),
            p99: percentile(&sorted, 0.99),
            max: sorted.last().copied().unwrap_or_default(),
            errors: self
                .errors
                .iter()
                .map(|(code, (count, message))| ((*code).to_owned(), (*count, message.clone())))
                .collect(),
        }
    }
}

/// The `p`-quantile (0..=1) of sorted samples, by nearest rank.
pub(crate) fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

/// What one operation did during a phase.
#[derive(Debug, Clone)]
pub(crate) struct OpStats {
    /// The operation, as the report names it.
    pub(crate) name: String,
    /// Calls that succeeded.
    pub(crate) count: u64,
    /// How long the phase ran (wall clock).
    pub(crate) elapsed: Duration,
    /// Median latency of successful calls.
    pub(crate) p50: Duration,
    /// 99th percentile latency of successful calls.
    pub(crate) p99: Duration,
    /// Slowest successful call.
    pub(crate) max: Duration,
    /// Failed calls per gRPC code, with the first message.
    pub(crate) errors: BTreeMap<String, (u64, String)>,
}

impl OpStats {
    /// Successful calls per second of phase.
    pub(crate) fn ops_per_second(&self) -> f64 {
        self.count as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    /// Failed calls in all.
    pub(crate) fn error_count(&self) -> u64 {
        self.errors.values().map(|(count, _)| count).sum()
    }
}

/// Lag samples (command acknowledged -> effect visible through a query without a token).
#[derive(Debug, Default, Clone)]
pub(crate) struct Lags {
    /// Observed lags.
    pub(crate) samples: Vec<Duration>,
    /// Effects not seen before the bench gave up.
    pub(crate) timeouts: u64,
    /// GetDevice queries the probes sent: the load the observer added.
    pub(crate) queries: u64,
}

/// One probe's outcome.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Probe {
    /// The lag, or `None` if the effect was never seen.
    pub(crate) seen: Option<Duration>,
    /// GetDevice queries sent.
    pub(crate) queries: u32,
}

impl Probe {
    /// An effect not seen after `queries` queries.
    pub(crate) fn unseen(queries: u32) -> Self {
        Self {
            seen: None,
            queries,
        }
    }
}

impl Lags {
    /// Adds one probe's outcome.
    pub(crate) fn push(&mut self, probe: Probe) {
        match probe.seen {
            Some(lag) => self.samples.push(lag),
            None => self.timeouts += 1,
        }
        self.queries += u64::from(probe.queries);
    }

    /// Adds another set of samples.
    pub(crate) fn merge(&mut self, other: Self) {
        self.samples.extend(other.samples);
        self.timeouts += other.timeouts;
        self.queries += other.queries;
    }

    /// (p50, p99, max) of the observed lags.
    pub(crate) fn quantiles(&self) -> (Duration, Duration, Duration) {
        let mut sorted = self.samples.clone();
        sorted.sort();
        (
            percentile(&sorted, 0.50),
            percentile(&sorted, 0.99),
            sorted.last().copied().unwrap_or_default(),
        )
    }
}

/// Milliseconds, for people.
pub(crate) fn ms(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn millis(values: &[u64]) -> Vec<Duration> {
        values.iter().copied().map(Duration::from_millis).collect()
    }

    #[test]
    fn percentiles_are_nearest_ranks() {
        let sorted = millis(&(1..=100).collect::<Vec<_>>());
        assert_eq!(percentile(&sorted, 0.5), Duration::from_millis(51));
        assert_eq!(percentile(&sorted, 0.99), Duration::from_millis(99));
        assert_eq!(percentile(&[], 0.99), Duration::ZERO);
    }

    #[test]
    fn failures_are_counted_by_code_and_not_timed() {
        let mut one = Recorder::default();
        one.record(Duration::from_millis(3), Ok(()));
        one.record::<()>(
            Duration::from_millis(9),
            Err(tonic::Status::aborted("retry").into()),
        );
        let mut two = Recorder::default();
        two.record::<()>(
            Duration::from_millis(1),
            Err(tonic::Status::aborted("again").into()),
        );
        one.merge(two);

        let stats = one.summary("op", Duration::from_secs(1));

        assert_eq!(stats.count, 1);
        assert_eq!(stats.max, Duration::from_millis(3));
        assert_eq!(stats.error_count(), 2);
        assert_eq!(stats.errors["ABORTED"], (2, "retry".to_owned()));
    }
}
