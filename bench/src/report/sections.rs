//! The report's sections: one per concurrency level, the paced phase, growth and rebuild.

use super::{MEANINGFUL_REBUILD, duration, errors, rate, thousands, times};
use crate::config::Sizing;
use crate::growth::Growth;
use crate::load::Level;
use crate::open_loop::OpenLoop;
use crate::rebuild::Rebuild;
use crate::stats::{Lags, OpStats};
use crate::sustained::Sustained;

pub(super) fn lag_line(lags: &Lags) -> String {
    if lags.samples.is_empty() && lags.timeouts == 0 {
        return "no samples".to_owned();
    }
    let (p50, p99, max) = lags.quantiles();
    let mut line = format!(
        "p50 {}, p99 {}, max {} ({} samples",
        duration(p50),
        duration(p99),
        duration(max),
        lags.samples.len()
    );
    if lags.timeouts > 0 {
        line.push_str(&format!("; {} never seen within 30 s", lags.timeouts));
    }
    line.push(')');
    line
}

/// Error messages, one per operation and code, under a table.
fn error_samples(out: &mut Vec<String>, ops: &[&OpStats]) {
    let mut any = false;
    for stats in ops {
        for (code, (count, message)) in &stats.errors {
            if !any {
                out.push(String::new());
                out.push("Errors (first message of each kind):".to_owned());
                out.push(String::new());
                any = true;
            }
            out.push(format!("- {} — {code} ×{count}: {message}", stats.name));
        }
    }
}

pub(super) fn level_section(out: &mut Vec<String>, level: &Level, sizing: &Sizing) {
    let clients = if level.concurrency == 1 {
        "1 client".to_owned()
    } else {
        format!("{} clients", level.concurrency)
    };
    let ceiling = level.ceiling.ops_per_second();
    out.push(format!("### {clients}"));
    out.push(String::new());
    out.push(format!(
        "Ceiling (BEGIN; INSERT one small row; COMMIT through sqlx, pool of {}): **{} transactions/s** \
         (p50 {}, p99 {}). {} accounts, {} devices linked and unlinked.",
        level.concurrency,
        rate(ceiling),
        duration(level.ceiling.p50),
        duration(level.ceiling.p99),
        level.accounts,
        level.linked
    ));
    out.push(String::new());
    out.push(
        "| operation | count | ops/s | ratio to ceiling | p50 | p99 | max | errors |".to_owned(),
    );
    out.push("|---|--:|--:|--:|--:|--:|--:|---|".to_owned());
    let row = |stats: &OpStats, bold: bool| {
        let name = if bold {
            format!("**{}**", stats.name)
        } else {
            stats.name.clone()
        };
        format!(
            "| {name} | {} | {} | {} | {} | {} | {} | {} |",
            stats.count,
            rate(stats.ops_per_second()),
            times(stats.ops_per_second() / ceiling.max(1e-9)),
            duration(stats.p50),
            duration(stats.p99),
            duration(stats.max),
            errors(stats)
        )
    };
    for stats in &level.ops {
        out.push(row(stats, false));
    }
    out.push(row(&level.non_hashing, true));
    out.push(String::new());
    out.push(format!(
        "Projection lag, sampled (1 in {} links/unlinks; GetDevice without consistency token, \
         polled every {} ms): link → device visible: {}; unlink → device shown unlinked: {}.",
        sizing.lag_sample_every,
        sizing.lag_poll.as_millis(),
        lag_line(&level.link_lag),
        lag_line(&level.unlink_lag)
    ));
    if let Some(peer) = &level.peer {
        out.push(String::new());
        out.push(format!(
            "The design card's stack alone (stock cqrs-es + postgres-es: `CqrsFramework` over \
             `PostgresEventRepository`, one command creating one aggregate, no gRPC, no \
             authentication, no relay; pool of {}): **{} commands/s** (p50 {}, p99 {}), {} the \
             ceiling. linkd's full gRPC commands that do not hash: **{}** the peer's rate.",
            level.concurrency,
            rate(peer.ops_per_second()),
            duration(peer.p50),
            duration(peer.p99),
            times(peer.ops_per_second() / ceiling.max(1e-9)),
            times(level.non_hashing.ops_per_second() / peer.ops_per_second().max(1e-9))
        ));
    }
    let all: Vec<&OpStats> = level.ops.iter().chain(level.peer.iter()).collect();
    error_samples(out, &all);
    out.push(String::new());
}

/// CPU per non-hashing command of each process, and write transactions per command, one row
/// per level.
pub(super) fn cost_section(out: &mut Vec<String>, levels: &[Level]) {
    if levels.is_empty() {
        return;
    }
    out.push("### Cost per command that does not hash".to_owned());
    out.push(String::new());
    out.push(
        "CPU time of each process over the non-hashing phases and the catch-up after each \
         (from `/proc/<pid>/stat`), divided by their successful calls; write transactions from \
         PostgreSQL's transaction ids, and statements (`BEGIN` and `COMMIT` included) from \
         `pg_stat_statements`, over the same spans: on the event store's database (the command \
         service and its relay) and on the read models' (the projection service, and the lag \
         probes' queries). These figures survive a slow day; wall-clock figures do not."
            .to_owned(),
    );
    out.push(String::new());
    let mut header = "| clients | calls |".to_owned();
    let mut rule = "|--:|--:|".to_owned();
    for group in crate::cost::GROUPS {
        header.push_str(&format!(" {group} (CPU ms) |"));
        rule.push_str("--:|");
    }
    header.push_str(
        " **all processes (CPU ms)** | write transactions | statements (event store) | \
         statements (read models) |",
    );
    rule.push_str("--:|--:|--:|--:|");
    out.push(header);
    out.push(rule);
    for level in levels {
        let calls = level.non_hashing.count;
        let per_call = level.non_hashing_cost.cpu_ms_per_call(calls);
        let mut row = format!("| {} | {calls} |", level.concurrency);
        for ms in per_call {
            row.push_str(&format!(" {ms:.2} |"));
        }
        row.push_str(&format!(
            " **{:.2}** | {:.2} | {} |",
            per_call.iter().sum::<f64>(),
            level.non_hashing_cost.transactions_per_call(calls),
            statements(&level.non_hashing_cost, calls)
        ));
        out.push(row);
    }
    out.push(String::new());
    out.push(
        "Each non-hashing operation on its own (its phase and the catch-up after it), per \
         successful call:"
            .to_owned(),
    );
    out.push(String::new());
    out.push(
        "| clients | operation | calls | events | all processes (CPU ms) | write transactions | \
         statements (event store) | statements (read models) |"
            .to_owned(),
    );
    out.push("|--:|---|--:|--:|--:|--:|--:|--:|".to_owned());
    for level in levels {
        for (name, calls, cost) in &level.cost_by_op {
            out.push(format!(
                "| {} | {name} | {calls} | {:.2} | {:.2} | {:.2} | {} |",
                level.concurrency,
                cost.events_per_call(*calls),
                cost.cpu_ms_per_call(*calls).iter().sum::<f64>(),
                cost.transactions_per_call(*calls),
                statements(cost, *calls)
            ));
        }
    }
    out.push(String::new());
    let relay: Vec<String> = levels
        .iter()
        .filter_map(|level| {
            let per_event = level.non_hashing_cost.relay_statements_per_event()?;
            Some(format!(
                "{} at {} clients",
                format_args!("{per_event:.3}"),
                level.concurrency
            ))
        })
        .collect();
    if !relay.is_empty() {
        out.push(format!(
            "The relay's own statements (reading committed events, moving its checkpoint, \
             checking its lock when idle) per event it published: {}.",
            relay.join(", ")
        ));
        out.push(String::new());
    }
    let times: Vec<String> = levels
        .iter()
        .filter_map(|level| {
            let calls = level.non_hashing.count;
            let (command, read_side, audit) =
                level.non_hashing_cost.statement_us_per_call(calls)?;
            let share = 100.0 * audit / (command + read_side).max(1e-9);
            Some(format!(
                "{} clients: event store {command:.0} µs, read models {read_side:.0} µs, of \
                 which the audit witness's {audit:.0} µs ({share:.1} % of all)",
                level.concurrency
            ))
        })
        .collect();
    if !times.is_empty() {
        out.push(format!(
            "Statement execution time per non-hashing command (`pg_stat_statements`' \
             `total_exec_time`; parsing, planning and the commit's flush wait are not in it): \
             {}.",
            times.join("; ")
        ));
        out.push(String::new());
    }
}

/// Statements per call on the event store's database and on the read models', as two table
/// cells ("—" where the server does not count them).
fn statements(cost: &crate::cost::Cost, calls: u64) -> String {
    match cost.statements_per_call(calls) {
        Some((command, read_side)) => format!("{command:.2} | {read_side:.2}"),
        None => "— | —".to_owned(),
    }
}

pub(super) fn open_loop_section(out: &mut Vec<String>, paced: &OpenLoop) {
    out.push("### Projection lag at half the maximum command throughput (paced)".to_owned());
    out.push(String::new());
    out.push(format!(
        "Pace: half the non-hashing command throughput measured at {} clients ({}/s) = \
         **{} commands/s**, IssueLinkQr, StartLink, ScanQr and UnlinkDevices in turn, sent on a \
         schedule whatever the answers take, for {:.1} s. Sent {} ({}/s achieved), {} succeeded \
         ({}/s){}. {} devices were linked beforehand (in {:.1} s) for the unlinks.",
        paced.based_on.0,
        rate(paced.based_on.1),
        rate(paced.target_rate),
        paced.send_elapsed.as_secs_f64(),
        paced.sent,
        rate(paced.achieved_rate()),
        paced.succeeded,
        rate(paced.succeeded as f64 / paced.send_elapsed.as_secs_f64().max(1e-9)),
        if paced.skipped > 0 {
            format!(
                ", {} scans skipped (their QR code or attempt failed)",
                paced.skipped
            )
        } else {
            String::new()
        },
        paced.prelinked.0,
        paced.prelinked.1.as_secs_f64()
    ));
    out.push(String::new());
    out.push(format!(
        "**Unlink acknowledged → GetDevice (no consistency token, polled every {} ms) shows it \
         unlinked: {}.** Measured on one unlink in {}; the probes sent {} GetDevice queries \
         ({}/s, {:.0}% of the commands' rate).",
        paced.poll.as_millis(),
        lag_line(&paced.lag),
        paced.sample_every,
        paced.lag.queries,
        rate(paced.lag.queries as f64 / paced.send_elapsed.as_secs_f64().max(1e-9)),
        100.0 * paced.lag.queries as f64 / (paced.sent.max(1)) as f64
    ));
    out.push(String::new());
    out.push("| operation | count | ops/s | p50 | p99 | max | errors |".to_owned());
    out.push("|---|--:|--:|--:|--:|--:|---|".to_owned());
    for stats in &paced.ops {
        out.push(format!(
            "| {} | {} | {} | {} | {} | {} | {} |",
            stats.name,
            stats.count,
            rate(stats.ops_per_second()),
            duration(stats.p50),
            duration(stats.p99),
            duration(stats.max),
            errors(stats)
        ));
    }
    let all: Vec<&OpStats> = paced.ops.iter().collect();
    error_samples(out, &all);
    out.push(String::new());
}

pub(super) fn growth_section(out: &mut Vec<String>, growth: &Growth) {
    out.push("### Command latency against history length".to_owned());
    out.push(String::new());
    out.push(format!(
        "Sequential SetBiometrics toggles (1 client) on devices whose history was lengthened by \
         inserting copies of their own BiometricsEnabled/BiometricsDisabled events ({} inserted; \
         the relay and projectors took {:.1} s to take them in before timing started). The \
         sizes are interleaved (one toggle of each size in turn, a size's devices round-robin), \
         so background work falls on every size alike. \"First call\" is each device's first \
         timed toggle (median over the devices).",
        growth.inserted,
        growth.settle.as_secs_f64()
    ));
    out.push(String::new());
    out.push(
        "| history (events) | devices | history at the end | toggles | p50 | p99 | max | first call | errors |"
            .to_owned(),
    );
    out.push("|--:|--:|--:|--:|--:|--:|--:|--:|---|".to_owned());
    for row in &growth.rows {
        out.push(format!(
            "| {} | {} | ≤ {} | {} | {} | {} | {} | {} | {} |",
            row.size,
            row.devices,
            row.grown_to,
            row.stats.count,
            duration(row.stats.p50),
            duration(row.stats.p99),
            duration(row.stats.max),
            duration(row.first),
            errors(&row.stats)
        ));
    }
    if let (Some((p50, p99)), Some(small), Some(large)) =
        (growth.ratios(), growth.rows.first(), growth.rows.last())
    {
        out.push(String::new());
        out.push(format!(
            "{} events / {} events: p50 **{p50:.2}×**, p99 {p99:.2}×.",
            large.size, small.size
        ));
    }
    let all: Vec<&OpStats> = growth.rows.iter().map(|row| &row.stats).collect();
    error_samples(out, &all);
    out.push(String::new());
}

pub(super) fn rebuild_section(out: &mut Vec<String>, rebuild: &Rebuild) {
    out.push("### Rebuild".to_owned());
    out.push(String::new());
    let figure = match (rebuild.events, rebuild.events_per_second()) {
        (Some(events), Some(per_second)) => format!(
            "replayed **{events} events in {:.2} s = {} events/s**",
            rebuild.tool_elapsed.unwrap_or(rebuild.wall).as_secs_f64(),
            rate(per_second)
        ),
        _ => "did not report an event count".to_owned(),
    };
    out.push(format!(
        "`projection-service rebuild` (release) {figure} by its own figures; {:.2} s wall clock \
         with start-up. The stream held {} events, {} of them device events{}.",
        rebuild.wall.as_secs_f64(),
        rebuild.stream_messages,
        rebuild.device_events,
        if rebuild.padded > 0 {
            format!(
                " ({} of those added for the rebuild: copies of BiometricsEnabled/Disabled \
                 events lengthening a few devices' histories)",
                rebuild.padded
            )
        } else {
            String::new()
        }
    ));
    if rebuild.device_events < MEANINGFUL_REBUILD {
        out.push(String::new());
        out.push(format!(
            "**Note:** fewer than {} device events in the stream; the figure is indicative \
             only (start-up and the final switch weigh more).",
            thousands(MEANINGFUL_REBUILD)
        ));
    }
    out.push(String::new());
}

pub(super) fn sustained_section(out: &mut Vec<String>, sustained: &Sustained, levels: &[Level]) {
    out.push("### Sustained throughput".to_owned());
    out.push(String::new());
    out.push(format!(
        "The highest paced rate of non-hashing commands (IssueLinkQr, StartLink and ScanQr in \
         turn, sent on a schedule for {:.0} s) at which the read side keeps its lag p99 within \
         {} ms: the lag runs from a sampled IssueLinkQr's answer until the read models' guard \
         shows its event applied (store, relay, stream, consumer and commit). A step holds when \
         at least 95 % of the rate was sent, nothing failed and the p99 stayed within the bound.",
        sustained.length.as_secs_f64(),
        crate::sustained::LAG_BOUND.as_millis()
    ));
    out.push(String::new());
    out.push("| rate asked | sent | failed | lag p50 | lag p99 | samples | held |".to_owned());
    out.push("|--:|--:|--:|--:|--:|--:|---|".to_owned());
    for step in &sustained.steps {
        let (p50, p99, _) = step.lag.quantiles();
        out.push(format!(
            "| {}/s | {}/s | {} | {} | {} | {}{} | {} |",
            rate(step.rate),
            rate(step.sent_rate),
            step.failures,
            duration(p50),
            duration(p99),
            step.lag.samples.len(),
            if step.lag.timeouts > 0 {
                format!(" ({} unseen)", step.lag.timeouts)
            } else {
                String::new()
            },
            if step.held { "yes" } else { "no" }
        ));
    }
    out.push(String::new());
    let ceiling = levels
        .iter()
        .find(|level| level.concurrency == 32)
        .or_else(|| levels.iter().max_by_key(|level| level.concurrency))
        .map(|level| level.ceiling.ops_per_second());
    match (sustained.best(), ceiling) {
        (Some(best), Some(ceiling)) => out.push(format!(
            "**Sustained: {}/s, {:.3}× the ceiling ({}/s at {} clients).**",
            rate(best.rate),
            best.rate / ceiling.max(1e-9),
            rate(ceiling),
            levels
                .iter()
                .find(|level| level.concurrency == 32)
                .or_else(|| levels.iter().max_by_key(|level| level.concurrency))
                .map_or(0, |level| level.concurrency)
        )),
        _ => out.push("**No rate held.**".to_owned()),
    }
    out.push(String::new());
}
