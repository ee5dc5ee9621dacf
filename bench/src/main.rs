//! `linkd-bench`: the benchmark suite of linkd, against running services (`scripts/bench.sh`
//! starts a scratch set in release mode and runs `linkd-bench suite`).
//!
//! - `load`: the ceiling (single-row INSERT transactions on the same PostgreSQL), then closed-loop
//!   phases per operation at each concurrency level with sampled projection lag, then a paced
//!   (open-loop) phase at half the maximum command throughput measuring projection lag;
//! - `growth`: command latency against the length of a device's history;
//! - `rebuild`: `projection-service rebuild`'s throughput;
//! - `suite`: the three in that order, and the Markdown report in `docs/performance.md`;
//! - `audit`: the audit log at 1,000,000 events (an in-process projection service of its own);
//! - `anonymous`: storage written by anonymous `StartLink` calls under the default rate limits
//!   (an in-process command service of its own);
//! - `hammer`: one device's `VerifySecretCode` loops against other accounts' links, with the
//!   others' latencies and the memory (an in-process command service of its own).
#![allow(clippy::print_stdout, reason = "a benchmark prints its figures")]

use std::path::PathBuf;

use clap::Parser;

mod anonymous;
mod audit;
mod ceiling;
mod chaos;
mod closed;
mod config;
mod cost;
mod growth;
mod hammer;
mod lag;
mod load;
mod machine;
mod open_loop;
mod otlp_sink;
mod peer;
mod rebuild;
mod report;
mod sealing;
mod session;
mod stats;
mod suite;
mod sustained;
mod system;

use config::{SizingArgs, Target};
use suite::Part;

/// Benchmarks for linkd; each prints its figures as Markdown.
#[derive(Debug, Parser)]
#[command(name = "linkd-bench")]
enum Bench {
    /// Ceiling and closed-loop load at each concurrency level, then the paced lag phase.
    Load(Common),
    /// Command latency for devices with 10, 1,000 and 10,000 events of history.
    Growth(Common),
    /// Times `projection-service rebuild` against the services' projection database and stream.
    Rebuild(Common),
    /// load, growth and rebuild in that order; writes the report into `--report`.
    Suite(SuiteArgs),
    /// The audit log at 1,000,000 events: ListEvents latency, ExportHistory throughput.
    Audit(audit::AuditArgs),
    /// Storage written by anonymous StartLink calls under the default rate limits.
    Anonymous(anonymous::AnonymousArgs),
    /// One device's VerifySecretCode loops against other accounts' links: latencies and memory.
    Hammer(hammer::HammerArgs),
    /// What sealing personal fields costs per event, with and without (CPU, no services).
    Sealing(sealing::SealingArgs),
    /// A randomized fault campaign on a system of its own: kills, restarts, then checks.
    Chaos(chaos::ChaosArgs),
    /// An OTLP trace receiver that counts spans (`scripts/bench.sh` with LINKD_BENCH_TRACES=on).
    #[command(hide = true)]
    OtlpSink {
        /// Where to listen.
        #[arg(long)]
        addr: std::net::SocketAddr,
    },
    /// Deletes a stream if it exists (`scripts/bench.sh` tears its scratch stream down with it).
    #[command(hide = true)]
    DropStream {
        /// The NATS server.
        #[arg(long, default_value = "nats://127.0.0.1:4222")]
        nats_url: String,
        /// The stream.
        #[arg(long)]
        stream: String,
    },
}

/// The system under test and the sizes.
#[derive(Debug, clap::Args)]
struct Common {
    #[command(flatten)]
    target: Target,
    #[command(flatten)]
    sizing: SizingArgs,
}

/// The suite's own options.
#[derive(Debug, clap::Args)]
struct SuiteArgs {
    #[command(flatten)]
    common: Common,
    /// The Markdown file whose `<!-- bench:begin -->` … `<!-- bench:end -->` section receives
    /// the report.
    #[arg(long, default_value = "docs/performance.md")]
    report: PathBuf,
    /// The command to name in the report [default: this program's command line].
    #[arg(long)]
    invocation: Option<String>,
}

/// Runs `parts`, prints the report and, for the suite, writes it into `report`.
async fn run(
    common: Common,
    parts: &[Part],
    invocation: Option<String>,
    report: Option<PathBuf>,
) -> anyhow::Result<()> {
    let invocation = invocation.unwrap_or_else(|| std::env::args().collect::<Vec<_>>().join(" "));
    let sizing = common.sizing.resolve()?;
    let results = suite::run(common.target, sizing, parts, invocation).await?;
    let markdown = report::markdown(&results);
    println!("{markdown}");
    if let Some(path) = report {
        report::write(&path, &markdown)?;
        eprintln!("report written to {}", path.display());
    }
    anyhow::ensure!(
        results.failures.is_empty(),
        "{} part(s) failed: {}",
        results.failures.len(),
        results.failures.join("; ")
    );
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Bench::parse() {
        Bench::Load(common) => run(common, &[Part::Load], None, None).await,
        Bench::Growth(common) => run(common, &[Part::Growth], None, None).await,
        Bench::Rebuild(common) => run(common, &[Part::Rebuild], None, None).await,
        Bench::Suite(args) => {
            let parts = [Part::Load, Part::Growth, Part::Rebuild];
            run(args.common, &parts, args.invocation, Some(args.report)).await
        }
        Bench::Audit(args) => audit::run(args).await,
        Bench::Anonymous(args) => anonymous::run(args).await,
        Bench::Hammer(args) => hammer::run(args).await,
        Bench::Sealing(args) => sealing::run(&args),
        Bench::Chaos(args) => chaos::run(args).await,
        Bench::DropStream { nats_url, stream } => system::drop_stream(&nats_url, &stream).await,
        Bench::OtlpSink { addr } => otlp_sink::run(addr).await,
    }
}
