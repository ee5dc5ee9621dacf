//! The parts of a run — ceiling and load (with the paced lag phase), growth, rebuild — and the
//! suite that runs them in that order. A part that fails is noted in the report; the others
//! still run.

use std::sync::Arc;
use std::time::Instant;

use linkctl::dev::DevKeys;

use crate::ceiling::Ceiling;
use crate::config::{Sizing, Target};
use crate::load::{self, Level};
use crate::machine;
use crate::open_loop::{self, Pace};
use crate::peer::Peer;
use crate::report::Results;
use crate::stats::ms;
use crate::sustained;
use crate::system::System;
use crate::{growth, rebuild};

/// Which parts to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Part {
    /// Ceiling, load levels and the paced phase.
    Load,
    /// History growth.
    Growth,
    /// Rebuild.
    Rebuild,
}

/// What every part needs.
#[derive(Debug)]
struct Bench {
    target: Target,
    keys: Arc<DevKeys>,
    system: System,
    sizing: Sizing,
    run_id: String,
}

/// Runs `parts` in order; a part's failure is recorded and the next part still runs.
pub(crate) async fn run(
    target: Target,
    sizing: Sizing,
    parts: &[Part],
    invocation: String,
) -> anyhow::Result<Results> {
    let started = Instant::now();
    let keys = Arc::new(DevKeys::load(&target.keys)?);
    let system = System::connect(&target).await?;
    let machine = machine::describe(&system).await;
    let bench = Bench {
        target,
        keys,
        system,
        sizing: sizing.clone(),
        run_id: uuid::Uuid::new_v4().simple().to_string()[..8].to_owned(),
    };
    let mut results = Results {
        machine,
        invocation,
        sizing,
        levels: Vec::new(),
        open_loop: None,
        sustained: None,
        growth: None,
        rebuild: None,
        failures: Vec::new(),
        total: started.elapsed(),
    };
    for part in parts {
        let outcome = match part {
            Part::Load => run_load(&bench, &mut results).await,
            Part::Growth => {
                eprintln!("growth: history sizes {:?}", bench.sizing.growth_sizes);
                growth::run(
                    &bench.target,
                    &bench.keys,
                    &bench.system,
                    &bench.sizing,
                    &bench.run_id,
                )
                .await
                .map(|growth| results.growth = Some(growth))
            }
            Part::Rebuild => {
                eprintln!("rebuild");
                rebuild::run(
                    &bench.target,
                    &bench.keys,
                    &bench.system,
                    &bench.sizing,
                    &bench.run_id,
                )
                .await
                .map(|rebuild| results.rebuild = Some(rebuild))
            }
        };
        if let Err(error) = outcome {
            eprintln!("error: {part:?} failed: {error:#}");
            results.failures.push(format!("{part:?}: {error:#}"));
        }
    }
    results.total = started.elapsed();
    Ok(results)
}

/// The ceiling at every level, the load levels, then the paced phase.
async fn run_load(bench: &Bench, results: &mut Results) -> anyhow::Result<()> {
    let Bench {
        target,
        keys,
        system,
        sizing,
        run_id,
    } = bench;
    let ceiling = Ceiling::create(&target.command_db).await?;
    let mut ceilings = Vec::with_capacity(sizing.concurrency.len());
    let mut measured = Ok(());
    for &concurrency in &sizing.concurrency {
        match ceiling.measure(concurrency, sizing.ceiling).await {
            Ok(stats) => {
                eprintln!(
                    "ceiling at {concurrency}: {:.0} INSERT transactions/s",
                    stats.ops_per_second()
                );
                ceilings.push(stats);
            }
            Err(error) => {
                measured = Err(error);
                break;
            }
        }
    }
    ceiling.drop_table().await?;
    measured?;
    let peer = Peer::create(&target.command_db).await?;
    let mut peers = Vec::with_capacity(sizing.concurrency.len());
    for &concurrency in &sizing.concurrency {
        let stats = peer.measure(concurrency, sizing.ceiling).await;
        if let Ok(stats) = &stats {
            eprintln!(
                "cqrs-es + postgres-es peer at {concurrency}: {:.0} commands/s",
                stats.ops_per_second()
            );
        }
        peers.push(stats);
    }
    peer.drop_tables().await?;
    for ((&concurrency, ceiling), peer) in sizing.concurrency.iter().zip(ceilings).zip(peers) {
        eprintln!("load: {concurrency} clients");
        let mut level =
            load::level(target, keys, system, sizing, run_id, concurrency, ceiling).await?;
        level.peer = Some(peer?);
        progress(&level);
        results.levels.push(level);
    }
    let Some(base) = results
        .levels
        .iter()
        .find(|level| level.concurrency == 32)
        .or_else(|| results.levels.iter().max_by_key(|level| level.concurrency))
    else {
        return Ok(());
    };
    let pace = Pace {
        based_on: (base.concurrency, base.non_hashing.ops_per_second()),
        length: sizing.open_loop,
        poll: sizing.lag_poll,
        sample_every: sizing.paced_lag_every,
        prelink_limit: sizing.open_loop * 4,
    };
    eprintln!("paced lag phase");
    results.open_loop = Some(open_loop::run(target, keys, system, run_id, pace).await?);
    eprintln!("sustained-throughput search");
    let steps = if sizing.quick { 2 } else { 5 };
    results.sustained = Some(
        sustained::search(
            target,
            keys,
            system,
            run_id,
            pace.based_on.1 / 2.0,
            sizing.open_loop,
            steps,
        )
        .await?,
    );
    Ok(())
}

fn progress(level: &Level) {
    for stats in level.ops.iter().chain([&level.non_hashing]) {
        eprintln!(
            "  {:<45} {:>7.1}/s  p50 {:>7.2} ms  p99 {:>7.2} ms  errors {}",
            stats.name,
            stats.ops_per_second(),
            ms(stats.p50),
            ms(stats.p99),
            stats.error_count()
        );
    }
}
