//! The Markdown report: header facts, one table per concurrency level, projection lag, history
//! growth, rebuild, and the targets met or missed; written between the markers of
//! `docs/performance.md`.

use std::path::Path;
use std::time::Duration;

use anyhow::Context as _;

use crate::config::Sizing;
use crate::growth::Growth;
use crate::load::Level;
use crate::machine::Machine;
use crate::open_loop::OpenLoop;
use crate::rebuild::Rebuild;
use crate::stats::{OpStats, ms};
use crate::sustained::Sustained;

mod sections;
mod targets;

use sections::{
    cost_section, growth_section, level_section, open_loop_section, rebuild_section,
    sustained_section,
};
use targets::targets_section;

/// The report's opening marker.
pub(crate) const BEGIN: &str = "<!-- bench:begin -->";
/// The report's closing marker.
pub(crate) const END: &str = "<!-- bench:end -->";

/// Below this many device events in the stream, the rebuild figure is only indicative.
const MEANINGFUL_REBUILD: u64 = 50_000;

/// Everything a run measured; parts not run are `None` or empty.
#[derive(Debug, Clone)]
pub(crate) struct Results {
    /// Where and when.
    pub(crate) machine: Machine,
    /// The command that ran the suite.
    pub(crate) invocation: String,
    /// The sizes used.
    pub(crate) sizing: Sizing,
    /// Ceiling and load, per concurrency level.
    pub(crate) levels: Vec<Level>,
    /// The paced lag phase.
    pub(crate) open_loop: Option<OpenLoop>,
    /// The sustained-throughput search.
    pub(crate) sustained: Option<Sustained>,
    /// History growth.
    pub(crate) growth: Option<Growth>,
    /// Rebuild.
    pub(crate) rebuild: Option<Rebuild>,
    /// Parts that failed, with why.
    pub(crate) failures: Vec<String>,
    /// How long the run took.
    pub(crate) total: Duration,
}

fn duration(d: Duration) -> String {
    let millis = ms(d);
    if millis < 10.0 {
        format!("{millis:.2} ms")
    } else if millis < 1_000.0 {
        format!("{millis:.1} ms")
    } else {
        format!("{:.2} s", d.as_secs_f64())
    }
}

fn rate(per_second: f64) -> String {
    if per_second >= 100.0 {
        format!("{per_second:.0}")
    } else {
        format!("{per_second:.1}")
    }
}

/// A count with thousands separators (`60,018`).
fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (index, digit) in digits.chars().enumerate() {
        if index > 0 && (digits.len() - index).is_multiple_of(3) {
            out.push(',');
        }
        out.push(digit);
    }
    out
}

/// A ratio, with more digits when it is small.
fn times(ratio: f64) -> String {
    if ratio < 0.1 {
        format!("{ratio:.3}×")
    } else {
        format!("{ratio:.2}×")
    }
}

fn errors(stats: &OpStats) -> String {
    if stats.errors.is_empty() {
        return "—".to_owned();
    }
    stats
        .errors
        .iter()
        .map(|(code, (count, _))| format!("{code} {count}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The report.
pub(crate) fn markdown(results: &Results) -> String {
    let mut out = Vec::new();
    let machine = &results.machine;
    let sizing = &results.sizing;
    out.push("## Latest results".to_owned());
    out.push(String::new());
    out.push(format!(
        "- **Machine:** {} CPUs ({}), {} RAM; PostgreSQL {} ({}); nats-server {}",
        machine.cpus,
        machine.cpu_model,
        machine.memory,
        machine.postgres,
        machine.postgres_settings,
        machine.nats
    ));
    out.push(format!("- **Date:** {}", machine.date));
    out.push(format!("- **Commit:** {}", machine.commit));
    out.push(format!("- **Command:** `{}`", results.invocation));
    out.push(format!(
        "- **Sizes:** {}concurrency {:?}; {} accounts per level; IssueLinkQr and ListDevices {:.1} s, \
         SetSecretCode and LuxTrust flows {:.1} s, ceiling {:.1} s per level; paced phase {:.1} s; \
         growth sizes {:?} with {} toggles each. The whole run took {:.1} min.",
        if sizing.quick { "`--quick` (smoke run; figures are not meaningful): " } else { "" },
        sizing.concurrency,
        sizing.accounts,
        sizing.phase.as_secs_f64(),
        sizing.hash_phase.as_secs_f64(),
        sizing.ceiling.as_secs_f64(),
        sizing.open_loop.as_secs_f64(),
        sizing.growth_sizes,
        sizing.growth_toggles,
        results.total.as_secs_f64() / 60.0
    ));
    for failure in &results.failures {
        out.push(format!("- **Failed:** {failure}"));
    }
    out.push(String::new());
    if !results.levels.is_empty() {
        out.push(
            "Each level runs one closed-loop phase per operation (each client calls again as soon \
             as it has an answer, on accounts of its own); ops/s counts successful calls over the \
             phase's wall-clock time, and latencies are those of successful calls. The bench waits \
             for the relay and projectors to catch up between phases."
                .to_owned(),
        );
        out.push(String::new());
    }
    for level in &results.levels {
        level_section(&mut out, level, sizing);
    }
    cost_section(&mut out, &results.levels);
    if let Some(paced) = &results.open_loop {
        open_loop_section(&mut out, paced);
    }
    if let Some(sustained) = &results.sustained {
        sustained_section(&mut out, sustained, &results.levels);
    }
    if let Some(growth) = &results.growth {
        growth_section(&mut out, growth);
    }
    if let Some(rebuild) = &results.rebuild {
        rebuild_section(&mut out, rebuild);
    }
    targets_section(&mut out, results);
    out.join("\n")
}

/// Replaces what is between the markers of `path` with `report` (creating the file if needed).
pub(crate) fn write(path: &Path, report: &str) -> anyhow::Result<()> {
    let current = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            format!("# Performance\n\n{BEGIN}\n{END}\n")
        }
        Err(error) => {
            return Err(error).with_context(|| format!("reading {}", path.display()));
        }
    };
    let (Some(begin), Some(end)) = (current.find(BEGIN), current.find(END)) else {
        anyhow::bail!("{} lacks the markers {BEGIN} and {END}", path.display());
    };
    anyhow::ensure!(
        begin < end,
        "{}: {END} comes before {BEGIN}",
        path.display()
    );
    let updated = format!(
        "{}{BEGIN}\n\n{}\n\n{}",
        &current[..begin],
        report.trim(),
        &current[end..]
    );
    std::fs::write(path, updated).with_context(|| format!("writing {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_get_thousands_separators() {
        assert_eq!(thousands(7), "7");
        assert_eq!(thousands(50_000), "50,000");
        assert_eq!(thousands(1_234_567), "1,234,567");
    }

    #[test]
    fn the_report_replaces_only_what_is_between_the_markers() {
        let dir = std::env::temp_dir().join(format!("linkd-bench-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("performance.md");
        std::fs::write(&path, format!("intro\n{BEGIN}\nold\n{END}\nafter\n")).unwrap();

        write(&path, "new figures").unwrap();

        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(
            text,
            format!("intro\n{BEGIN}\n\nnew figures\n\n{END}\nafter\n")
        );
        std::fs::remove_dir_all(dir).unwrap();
    }
}
