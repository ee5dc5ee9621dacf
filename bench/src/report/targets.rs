//! The targets table: each target with its measured value, met or missed.

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
    match level_for(&results.levels, 32) {
        Some((level, other)) => {
            let ceiling = level.ceiling.ops_per_second();
            let ratio = level.non_hashing.ops_per_second() / ceiling.max(1e-9);
            row(
                "Commands that do not hash a secret, 32 clients: ≥ 0.6× the ceiling",
                format!(
                    "{ratio:.2}× ({}/s against {}/s){}",
                    rate(level.non_hashing.ops_per_second()),
                    rate(ceiling),
                    at(level, other)
                ),
                Some(ratio >= 0.6),
            );
            let list = level.op(op::LIST);
            let (times, p99) = list.map_or((0.0, Duration::ZERO), |list| {
                (
                    list.ops_per_second() / level.non_hashing.ops_per_second().max(1e-9),
                    list.p99,
                )
            });
            row(
                "ListDevices, 32 clients: ≥ 5× the command throughput and p99 ≤ 20 ms",
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
            row(
                "Commands that do not hash a secret, 32 clients: ≥ 0.6× the ceiling",
                "—".into(),
                None,
            );
            row(
                "ListDevices, 32 clients: ≥ 5× the command throughput and p99 ≤ 20 ms",
                "—".into(),
                None,
            );
        }
    }
    match &results.open_loop {
        Some(paced) if !paced.lag.samples.is_empty() => {
            let (_, p99, _) = paced.lag.quantiles();
            row(
                "Projection lag p99 ≤ 100 ms at half the maximum command throughput",
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
                Some(p99 <= Duration::from_millis(100) && paced.lag.timeouts == 0),
            );
        }
        _ => row(
            "Projection lag p99 ≤ 100 ms at half the maximum command throughput",
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
