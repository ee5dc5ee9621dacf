//! Where the services under test are, and how big each part of the suite is (`--quick` picks
//! small sizes for a smoke run; every size can also be set on its own).

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;

/// The running system under test.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct Target {
    /// The command service.
    #[arg(long, default_value = "http://127.0.0.1:50051")]
    pub(crate) addr: String,
    /// The projection service.
    #[arg(long, default_value = "http://127.0.0.1:50052")]
    pub(crate) query_addr: String,
    /// Development keys (`linkctl dev keys`) the services trust.
    #[arg(long, default_value = ".dev/keys")]
    pub(crate) keys: PathBuf,
    /// The command service's database (the event store; the ceiling's scratch table goes here).
    #[arg(
        long,
        default_value = "postgres://postgres@127.0.0.1:5432/linkd_command"
    )]
    pub(crate) command_db: String,
    /// The projection service's database.
    #[arg(
        long,
        default_value = "postgres://postgres@127.0.0.1:5432/linkd_projection"
    )]
    pub(crate) read_db: String,
    /// The NATS server.
    #[arg(long, default_value = "nats://127.0.0.1:4222")]
    pub(crate) nats_url: String,
    /// The stream the relay publishes to.
    #[arg(long, default_value = "LINKD_EVENTS")]
    pub(crate) stream: String,
    /// The stream's subject prefix.
    #[arg(long, default_value = "linkd.events")]
    pub(crate) subject_prefix: String,
    /// The projection service's durable consumer prefix.
    #[arg(long, default_value = "linkd")]
    pub(crate) consumer_prefix: String,
    /// The `projection-service` binary `rebuild` runs.
    #[arg(long, default_value = "target/release/projection-service")]
    pub(crate) projection_bin: PathBuf,
}

/// Sizes of the suite's parts; unset ones take the default (or `--quick`) value.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct SizingArgs {
    /// Small sizes for a smoke run of about a minute.
    #[arg(long)]
    pub(crate) quick: bool,
    /// Concurrency levels (clients), comma-separated [default: 1,8,32; quick: 1,8].
    #[arg(long, value_delimiter = ',')]
    pub(crate) concurrency: Vec<usize>,
    /// Accounts per concurrency level, shared out among the clients [default: 96; quick: 16].
    #[arg(long)]
    pub(crate) accounts: Option<usize>,
    /// Seconds of IssueLinkQr and of ListDevices per level; StartLink, ScanQr, ConfirmLink and
    /// UnlinkDevices run over what the phases before them produced [default: 8; quick: 1.5].
    #[arg(long)]
    pub(crate) phase_seconds: Option<f64>,
    /// Seconds of SetSecretCode and of LuxTrust flows (Argon2id-bound) per level
    /// [default: 10; quick: 2].
    #[arg(long)]
    pub(crate) hash_seconds: Option<f64>,
    /// Seconds of single-row INSERT transactions per level [default: 4; quick: 1].
    #[arg(long)]
    pub(crate) ceiling_seconds: Option<f64>,
    /// Measure projection lag on one link or unlink in this many [default: 10].
    #[arg(long)]
    pub(crate) lag_sample_every: Option<usize>,
    /// Milliseconds between two GetDevice polls while waiting for an effect [default: 5].
    #[arg(long)]
    pub(crate) lag_poll_ms: Option<u64>,
    /// Seconds of the paced (open-loop) lag phase [default: 20; quick: 3].
    #[arg(long)]
    pub(crate) open_loop_seconds: Option<f64>,
    /// In the paced phase, measure projection lag on one unlink in this many [default: 4].
    #[arg(long)]
    pub(crate) paced_lag_every: Option<usize>,
    /// History sizes (events) for `growth`, comma-separated [default: 10,1000,10000;
    /// quick: 10,100,1000].
    #[arg(long, value_delimiter = ',')]
    pub(crate) growth_sizes: Vec<i64>,
    /// Timed SetBiometrics toggles per history size [default: 200; quick: 20].
    #[arg(long)]
    pub(crate) growth_toggles: Option<usize>,
    /// Before `rebuild`, pad the stream with device events up to this many (0: never pad)
    /// [default: 60000; quick: 0].
    #[arg(long)]
    pub(crate) rebuild_min_events: Option<u64>,
    /// CPU milliseconds per non-hashing command at 32 clients (all processes) measured on this
    /// machine before issue 15's changes: the CPU target is half of it (unset: not judged).
    #[arg(long)]
    pub(crate) cpu_before_ms: Option<f64>,
}

/// Resolved sizes.
#[derive(Debug, Clone)]
pub(crate) struct Sizing {
    /// Whether these are the `--quick` sizes.
    pub(crate) quick: bool,
    /// Concurrency levels.
    pub(crate) concurrency: Vec<usize>,
    /// Accounts per level.
    pub(crate) accounts: usize,
    /// Duration of the IssueLinkQr and ListDevices phases.
    pub(crate) phase: Duration,
    /// Duration of the Argon2id-bound phases.
    pub(crate) hash_phase: Duration,
    /// Duration of the ceiling per level.
    pub(crate) ceiling: Duration,
    /// One sampled link/unlink in this many.
    pub(crate) lag_sample_every: usize,
    /// Interval between visibility polls.
    pub(crate) lag_poll: Duration,
    /// Duration of the open-loop phase.
    pub(crate) open_loop: Duration,
    /// One paced unlink in this many is followed until visible.
    pub(crate) paced_lag_every: usize,
    /// History sizes for growth.
    pub(crate) growth_sizes: Vec<i64>,
    /// Timed toggles per size.
    pub(crate) growth_toggles: usize,
    /// Device events the stream should hold before a rebuild.
    pub(crate) rebuild_min_events: u64,
    /// CPU ms per non-hashing command before issue 15 (the CPU target is half of it).
    pub(crate) cpu_before_ms: Option<f64>,
}

impl SizingArgs {
    /// The sizes to run with.
    pub(crate) fn resolve(&self) -> anyhow::Result<Sizing> {
        let quick = self.quick;
        let pick = |value: Option<f64>, default: f64, small: f64| -> anyhow::Result<Duration> {
            let seconds = value.unwrap_or(if quick { small } else { default });
            Duration::try_from_secs_f64(seconds).context("a duration must be a positive number")
        };
        let concurrency = if self.concurrency.is_empty() {
            if quick { vec![1, 8] } else { vec![1, 8, 32] }
        } else {
            self.concurrency.clone()
        };
        anyhow::ensure!(
            concurrency.iter().all(|&c| c > 0),
            "concurrency levels must be at least 1"
        );
        let growth_sizes = if self.growth_sizes.is_empty() {
            if quick {
                vec![10, 100, 1000]
            } else {
                vec![10, 1000, 10_000]
            }
        } else {
            self.growth_sizes.clone()
        };
        anyhow::ensure!(
            growth_sizes.iter().all(|&size| size >= 3),
            "growth sizes must be at least 3 (a link and two real toggles)"
        );
        Ok(Sizing {
            quick,
            accounts: self.accounts.unwrap_or(if quick { 16 } else { 96 }),
            phase: pick(self.phase_seconds, 8.0, 1.5)?,
            hash_phase: pick(self.hash_seconds, 10.0, 2.0)?,
            ceiling: pick(self.ceiling_seconds, 4.0, 1.0)?,
            lag_sample_every: self.lag_sample_every.unwrap_or(10).max(1),
            lag_poll: Duration::from_millis(self.lag_poll_ms.unwrap_or(5).max(1)),
            open_loop: pick(self.open_loop_seconds, 20.0, 3.0)?,
            paced_lag_every: self.paced_lag_every.unwrap_or(4).max(1),
            growth_toggles: self
                .growth_toggles
                .unwrap_or(if quick { 20 } else { 200 })
                .max(1),
            rebuild_min_events: self
                .rebuild_min_events
                .unwrap_or(if quick { 0 } else { 60_000 }),
            cpu_before_ms: self.cpu_before_ms.filter(|ms| *ms > 0.0),
            concurrency,
            growth_sizes,
        })
    }
}
