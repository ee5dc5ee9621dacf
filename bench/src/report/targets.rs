//! The targets table (issue 15's, with issue 6's ListDevices, growth and rebuild targets): each
//! target with its measured value, met or missed.

use std::time::Duration;

use super::{MEANINGFUL_REBUILD, Results, duration, rate};
use crate::load::{Level, op};
use crate::stats::OpStats;

/// The level with `concurrency` clients, else the highest level run (and whether it was
/// another one).
fn level_for(levels: &[Level], concurrency: usize) -> Option<(&Level, bool)> {
    levels
        .iter()
        .find(|level| level.concurrency == concurrency)
        .map(|level| (level, false))
        .or_else(|| {
            levels
                .iter()
                .max_by_key(|level| level.concurrency)
                .map(|level| (level, true))
        })
}

pub(super) fn targets_section(out: &mut Vec<String>, results: &Results) {
    out.push("### Targets".to_owned());
    out.push(String::new());
    out.push("| target | measured | |".to_owned());
    out.push("|---|---|---|".to_owned());
    let verdict = |met: bool| if met { "met" } else { "**missed**" };
    let mut row = |target: &str, measured: String, met: Option<bool>| {
        out.push(format!(
            "| {target} | {measured} | {} |",
            met.map_or("not measured", verdict)
        ));
    };
    let at = |level: &Level, other: bool| {
        if other {
            format!(" (at {} clients: 32 not run)", level.concurrency)
        } else {
            String::new()
        }
    };
    const NON_HASHING: &str = "Commands that do not hash a secret, 32 clients: ≥ 0.3× the ceiling";
    const PEER: &str = "… and ≥ 1.0× the stock cqrs-es + postgres-es command, 32 clients";
    const UNLINK: &str = "Unlink → visible during the 32-client phase: p99 ≤ 250 ms";
    const CPU: &str = "CPU per non-hashing command, all processes, 32 clients: ≤ half of \
        the figure before issue 15";
    const LIST: &str = "ListDevices, 32 clients: ≥ 5× the command throughput and p99 ≤ 20 ms";
    match level_for(&results.levels, 32) {
        Some((level, other)) => {
            let ceiling = level.ceiling.ops_per_second();
            let commands = level.non_hashing.ops_per_second();
            let ratio = commands / ceiling.max(1e-9);
            row(
                NON_HASHING,
                format!(
                    "{ratio:.2}× ({}/s against {}/s){}",
                    rate(commands),
                    rate(ceiling),
                    at(level, other)
                ),
                Some(ratio >= 0.3),
            );
            match &level.peer {
                Some(peer) => {
                    let times = commands / peer.ops_per_second().max(1e-9);
                    row(
                        PEER,
                        format!(
                            "{times:.2}× ({}/s against {}/s){}",
                            rate(commands),
                            rate(peer.ops_per_second()),
                            at(level, other)
                        ),
                        Some(times >= 1.0),
                    );
                }
                None => row(PEER, "—".into(), None),
            }
            if level.unlink_lag.samples.is_empty() {
                row(UNLINK, "—".into(), None);
            } else {
                let (_, p99, _) = level.unlink_lag.quantiles();
                row(
                    UNLINK,
                    format!(
                        "p99 {} ({} samples){}",
                        duration(p99),
                        level.unlink_lag.samples.len(),
                        at(level, other)
                    ),
                    Some(p99 <= Duration::from_millis(250) && level.unlink_lag.timeouts == 0),
                );
            }
            let cpu: f64 = level
                .non_hashing_cost
                .cpu_ms_per_call(level.non_hashing.count)
                .iter()
                .sum();
            match results.sizing.cpu_before_ms {
                Some(before) => row(
                    CPU,
                    format!(
                        "{cpu:.2} ms against {before:.2} ms before ({:.2}×){}",
                        cpu / before,
                        at(level, other)
                    ),
                    Some(cpu <= before / 2.0),
                ),
                None => row(
                    CPU,
                    format!("{cpu:.2} ms (no figure before given: `--cpu-before-ms`)"),
                    None,
                ),
            }
            let list = level.op(op::LIST);
            let (times, p99) = list.map_or((0.0, Duration::ZERO), |list| {
                (list.ops_per_second() / commands.max(1e-9), list.p99)
            });
            row(
                LIST,
                format!(
                    "{times:.1}× ({}/s), p99 {}{}",
                    rate(list.map_or(0.0, OpStats::ops_per_second)),
                    duration(p99),
                    at(level, other)
                ),
                list.map(|_| times >= 5.0 && p99 <= Duration::from_millis(20)),
            );
        }
        None => {
            for target in [NON_HASHING, PEER, UNLINK, CPU, LIST] {
                row(target, "—".into(), None);
            }
        }
    }
    const ISSUE: &str = "IssueLinkQr at 1 client: p50 ≤ 4× the ceiling's p50";
    match level_for(&results.levels, 1).filter(|(_, other)| !other) {
        Some((level, _)) => match level.op(op::ISSUE) {
            Some(issue) => {
                let times = issue.p50.as_secs_f64() / level.ceiling.p50.as_secs_f64().max(1e-9);
                row(
                    ISSUE,
                    format!(
                        "{times:.1}× ({} against {})",
                        duration(issue.p50),
                        duration(level.ceiling.p50)
                    ),
                    Some(times <= 4.0),
                );
            }
            None => row(ISSUE, "—".into(), None),
        },
        None => row(ISSUE, "—".into(), None),
    }
    match &results.open_loop {
        Some(paced) if !paced.lag.samples.is_empty() => {
            let (_, p99, _) = paced.lag.quantiles();
            row(
                "Projection lag p99 ≤ 50 ms at half the maximum command throughput",
                format!(
                    "p99 {} at {}/s{}",
                    duration(p99),
                    rate(paced.achieved_rate()),
                    if paced.lag.timeouts > 0 {
                        format!("; {} unlinks never seen", paced.lag.timeouts)
                    } else {
                        String::new()
                    }
                ),
                Some(p99 <= Duration::from_millis(50) && paced.lag.timeouts == 0),
            );
        }
        _ => row(
            "Projection lag p99 ≤ 50 ms at half the maximum command throughput",
            "—".into(),
            None,
        ),
    }
    let ceiling = level_for(&results.levels, 32).map(|(level, _)| level.ceiling.ops_per_second());
    match (results.sustained.as_ref(), ceiling) {
        (Some(sustained), Some(ceiling)) => {
            let best = sustained.best().map_or(0.0, |step| step.rate);
            let ratio = best / ceiling.max(1e-9);
            row(
                "Sustained throughput with projection lag p99 ≤ 100 ms: ≥ 0.2× the ceiling",
                format!("{ratio:.3}× ({}/s against {}/s)", rate(best), rate(ceiling)),
                Some(ratio >= 0.2),
            );
        }
        _ => row(
            "Sustained throughput with projection lag p99 ≤ 100 ms: ≥ 0.2× the ceiling",
            "—".into(),
            None,
        ),
    }
    match results
        .growth
        .as_ref()
        .and_then(|growth| Some((growth.ratios()?, growth.rows.first()?, growth.rows.last()?)))
    {
        Some(((p50, p99), small, large)) => row(
            "Latency at 10,000 events ≤ 1.5× latency at 10 events (p50)",
            format!(
                "{p50:.2}× ({} / {}; p99 {p99:.2}×){}",
                duration(large.stats.p50),
                duration(small.stats.p50),
                if large.size == 10_000 && small.size == 10 {
                    String::new()
                } else {
                    format!(" (sizes {} and {})", large.size, small.size)
                }
            ),
            Some(p50 <= 1.5),
        ),
        None => row(
            "Latency at 10,000 events ≤ 1.5× latency at 10 events (p50)",
            "—".into(),
            None,
        ),
    }
    match results.rebuild.as_ref() {
        Some(rebuild) => {
            let per_second = rebuild.events_per_second();
            row(
                "Rebuild ≥ 50,000 events/s",
                format!(
                    "{} events/s over {} events{}",
                    per_second.map_or_else(|| "?".to_owned(), rate),
                    rebuild.events.unwrap_or(0),
                    if rebuild.device_events < MEANINGFUL_REBUILD {
                        " (indicative: a small stream)"
                    } else {
                        ""
                    }
                ),
                per_second.map(|per_second| per_second >= 50_000.0),
            );
        }
        None => row("Rebuild ≥ 50,000 events/s", "—".into(), None),
    }
    out.push(String::new());
}
