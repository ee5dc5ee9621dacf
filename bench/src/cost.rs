//! What a command costs, in figures that survive a slow day: CPU time of each process (from
//! `/proc/<pid>/stat`) and write transactions (transaction ids PostgreSQL assigned), over a
//! phase and the catch-up after it, divided by the phase's successful calls.
//!
//! Processes are told apart by name: `command-service`, `projection-service` (its name is cut
//! to 15 characters by the kernel), every `postgres` process (backends and background workers;
//! with the postmaster's account of children that exited, so a backend that ends mid-phase is
//! still counted), `nats-server`, and this bench. The bench's own polling between phases (a
//! count of the events table every 50 ms while it waits for the projectors) is counted under
//! `postgres` and `bench`, as it would be on any run.
//!
//! Statements come from `pg_stat_statements` (which `scripts/bench.sh` loads in the PostgreSQL
//! cluster it starts for the run; on a server without it they are not counted): every call of
//! every statement, `BEGIN` and `COMMIT` included, on the command service's database and on the
//! others (the read models'), the bench's own queries left out (they are marked
//! `AS linkd_bench`). Write transactions are read from the next transaction id (no lag, unlike
//! `pg_stat_database`, whose counters backends flush up to seconds late). Read-only
//! transactions take no transaction id and are not counted: they write no WAL.

use std::time::Duration;

use sqlx::PgPool;

/// The process groups, in table order.
pub(crate) const GROUPS: [&str; 5] = [
    "command service",
    "projection service",
    "PostgreSQL",
    "NATS",
    "bench",
];

/// CPU time per group, PostgreSQL's next transaction id and statements executed so far, at
/// one instant.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Reading {
    ticks: [u64; 5],
    next_xid: i64,
    /// The highest global position in the event store.
    events: i64,
    statements: Option<Statements>,
}

/// Statements executed, on the command service's database and on the others.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Statements {
    /// On the event store's database.
    pub(crate) command: u64,
    /// On every other database of the server (the read models').
    pub(crate) read_side: u64,
    /// Of those on the event store's, the relay's (reading committed events, moving its
    /// checkpoint, checking its lock when idle).
    pub(crate) relay: u64,
    /// Execution time of the statements on the event store's database, in microseconds
    /// (`total_exec_time`: planning, parsing and the commit's flush wait are not in it).
    pub(crate) command_us: u64,
    /// Execution time of the statements on the read models' databases, in microseconds.
    pub(crate) read_side_us: u64,
    /// Of that, the statements that read or write `audit_heads` (the audit witness, which
    /// replaced the audit log's copy of every event: docs/adr/0029).
    pub(crate) audit_us: u64,
}

impl Statements {
    /// What was counted between `before` and `self`.
    fn since(self, before: Self) -> Self {
        Self {
            command: self.command.saturating_sub(before.command),
            read_side: self.read_side.saturating_sub(before.read_side),
            relay: self.relay.saturating_sub(before.relay),
            command_us: self.command_us.saturating_sub(before.command_us),
            read_side_us: self.read_side_us.saturating_sub(before.read_side_us),
            audit_us: self.audit_us.saturating_sub(before.audit_us),
        }
    }

    /// Both counts together.
    fn plus(self, other: Self) -> Self {
        Self {
            command: self.command + other.command,
            read_side: self.read_side + other.read_side,
            relay: self.relay + other.relay,
            command_us: self.command_us + other.command_us,
            read_side_us: self.read_side_us + other.read_side_us,
            audit_us: self.audit_us + other.audit_us,
        }
    }
}

/// CPU time per group and write transactions over a span, summed over spans.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Cost {
    /// CPU time of each group of [`GROUPS`].
    pub(crate) cpu: [Duration; 5],
    /// Write transactions committed (or rolled back) on the PostgreSQL server.
    pub(crate) transactions: u64,
    /// Events stored.
    pub(crate) events: u64,
    /// Statements executed, if the server counts them (every span did).
    pub(crate) statements: Option<Statements>,
    /// Spans added so far.
    spans: u32,
}

impl Cost {
    /// Adds the span from `before` to `after`.
    pub(crate) fn add(&mut self, before: Reading, after: Reading) {
        let per_tick = Duration::from_secs(1) / u32::try_from(clock_ticks()).unwrap_or(100);
        for (slot, (a, b)) in self
            .cpu
            .iter_mut()
            .zip(after.ticks.iter().zip(before.ticks.iter()))
        {
            *slot += per_tick * u32::try_from(a.saturating_sub(*b)).unwrap_or(u32::MAX);
        }
        self.transactions += u64::try_from(after.next_xid - before.next_xid).unwrap_or(0);
        self.events += u64::try_from(after.events - before.events).unwrap_or(0);
        let span = match (before.statements, after.statements) {
            (Some(before), Some(after)) => Some(after.since(before)),
            _ => None,
        };
        self.statements = match (self.spans, self.statements, span) {
            (0, _, span) => span,
            (_, Some(sum), Some(span)) => Some(sum.plus(span)),
            _ => None,
        };
        self.spans += 1;
    }

    /// Statements per call on the command service's database and on the read models', for
    /// `calls` calls.
    pub(crate) fn statements_per_call(&self, calls: u64) -> Option<(f64, f64)> {
        let calls = calls.max(1) as f64;
        self.statements
            .map(|s| (s.command as f64 / calls, s.read_side as f64 / calls))
    }

    /// Statement execution time per call in microseconds: on the event store's database, on
    /// the read models', and of those the audit witness's statements.
    pub(crate) fn statement_us_per_call(&self, calls: u64) -> Option<(f64, f64, f64)> {
        let calls = calls.max(1) as f64;
        self.statements.map(|s| {
            (
                s.command_us as f64 / calls,
                s.read_side_us as f64 / calls,
                s.audit_us as f64 / calls,
            )
        })
    }

    /// Events stored per call.
    pub(crate) fn events_per_call(&self, calls: u64) -> f64 {
        self.events as f64 / calls.max(1) as f64
    }

    /// The relay's statements per event it published.
    pub(crate) fn relay_statements_per_event(&self) -> Option<f64> {
        self.statements
            .map(|s| s.relay as f64 / self.events.max(1) as f64)
    }

    /// CPU milliseconds of each group per call, for `calls` calls.
    pub(crate) fn cpu_ms_per_call(&self, calls: u64) -> [f64; 5] {
        let calls = calls.max(1) as f64;
        self.cpu.map(|cpu| cpu.as_secs_f64() * 1000.0 / calls)
    }

    /// Write transactions per call.
    pub(crate) fn transactions_per_call(&self, calls: u64) -> f64 {
        self.transactions as f64 / calls.max(1) as f64
    }
}

/// A [`Cost`] summed over the spans between `start` and `stop`, and each span's own.
#[derive(Debug, Clone, Default)]
pub(crate) struct Meter {
    /// What the spans cost so far.
    pub(crate) cost: Cost,
    /// Each span that measured an operation: its name, its successful calls and its cost.
    pub(crate) spans: Vec<(String, u64, Cost)>,
    since: Option<Reading>,
}

impl Meter {
    /// Starts a span.
    pub(crate) async fn start(&mut self, db: &PgPool) -> anyhow::Result<()> {
        self.since = Some(read(db).await?);
        Ok(())
    }

    /// Ends the span started last (nothing if none is open), which measured `op` (its name and
    /// successful calls) if any.
    pub(crate) async fn stop(
        &mut self,
        db: &PgPool,
        op: Option<(&str, u64)>,
    ) -> anyhow::Result<()> {
        if let Some(before) = self.since.take() {
            let after = read(db).await?;
            self.cost.add(before, after);
            if let Some((name, calls)) = op {
                let mut span = Cost::default();
                span.add(before, after);
                self.spans.push((name.to_owned(), calls, span));
            }
        }
        Ok(())
    }
}

/// Reads the CPU time of each group, the next transaction id and the statements executed now.
pub(crate) async fn read(db: &PgPool) -> anyhow::Result<Reading> {
    let (next_xid, events): (i64, i64) = sqlx::query_as(
        "SELECT pg_snapshot_xmax(pg_current_snapshot())::text::bigint AS linkd_bench, \
         (SELECT coalesce(max(global_position), 0) FROM events)",
    )
    .fetch_one(db)
    .await?;
    // `None` where pg_stat_statements is not loaded.
    let statements: Option<(i64, i64, i64, i64, i64, i64)> = sqlx::query_as(
        "SELECT coalesce(sum(s.calls) FILTER (WHERE d.datname = current_database()), 0)::bigint, \
         coalesce(sum(s.calls) FILTER (WHERE d.datname <> current_database()), 0)::bigint, \
         coalesce(sum(s.calls) FILTER (WHERE d.datname = current_database() AND \
             (s.query LIKE '%relay_checkpoint%' OR s.query LIKE '%pg_snapshot_xmin%' \
              OR s.query = 'SELECT $1')), 0)::bigint, \
         (coalesce(sum(s.total_exec_time) FILTER (WHERE d.datname = current_database()), 0) \
             * 1000)::bigint, \
         (coalesce(sum(s.total_exec_time) FILTER (WHERE d.datname <> current_database()), 0) \
             * 1000)::bigint, \
         (coalesce(sum(s.total_exec_time) FILTER (WHERE d.datname <> current_database() \
             AND s.query LIKE '%audit_heads%'), 0) * 1000)::bigint AS linkd_bench \
         FROM pg_stat_statements s JOIN pg_database d ON d.oid = s.dbid \
         WHERE s.query NOT LIKE '%linkd_bench%' AND d.datname <> 'postgres'",
    )
    .fetch_one(db)
    .await
    .ok();
    let count = |n: i64| u64::try_from(n).unwrap_or(0);
    let statements = statements.map(
        |(command, read_side, relay, command_us, read_side_us, audit_us)| Statements {
            command: count(command),
            read_side: count(read_side),
            relay: count(relay),
            command_us: count(command_us),
            read_side_us: count(read_side_us),
            audit_us: count(audit_us),
        },
    );
    let ticks = tokio::task::spawn_blocking(cpu_ticks).await?;
    Ok(Reading {
        ticks,
        next_xid,
        events,
        statements,
    })
}

/// The kernel's clock ticks per second (`getconf CLK_TCK`; 100 if it cannot be asked).
fn clock_ticks() -> u64 {
    static TICKS: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *TICKS.get_or_init(|| {
        std::process::Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|out| String::from_utf8(out.stdout).ok())
            .and_then(|text| text.trim().parse().ok())
            .unwrap_or(100)
    })
}

/// Which group a process of this name (and pid) belongs to.
fn group_of(comm: &str, pid: u32) -> Option<usize> {
    if pid == std::process::id() {
        return Some(4);
    }
    match comm {
        "command-service" => Some(0),
        // The kernel keeps 15 characters of a process's name.
        "projection-serv" => Some(1),
        "postgres" => Some(2),
        "nats-server" => Some(3),
        _ => None,
    }
}

/// User + system ticks of every process, by group (the postmaster's `cutime`/`cstime` count
/// the backends that exited).
fn cpu_ticks() -> [u64; 5] {
    let mut ticks = [0u64; 5];
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return ticks;
    };
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // `pid (comm) state ppid …`: the name may hold spaces; the fields follow the last `)`.
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
            continue;
        };
        let comm = &stat[open + 1..close];
        let Some(group) = group_of(comm, pid) else {
            continue;
        };
        let fields: Vec<&str> = stat[close + 1..].split_whitespace().collect();
        // After the name: state(0) ppid(1) … utime(11) stime(12) cutime(13) cstime(14).
        let field = |n: usize| {
            fields
                .get(n)
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0)
        };
        let mut own = field(11) + field(12);
        let parent = fields
            .get(1)
            .and_then(|v| v.parse::<u32>().ok())
            .unwrap_or(0);
        let parent_is_postgres = std::fs::read_to_string(format!("/proc/{parent}/comm"))
            .is_ok_and(|name| name.trim() == "postgres");
        if group == 2 && !parent_is_postgres {
            // The postmaster: its exited children too.
            own += field(13) + field(14);
        }
        ticks[group] += own;
    }
    ticks
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_is_counted_as_the_bench() {
        let before = cpu_ticks();
        // Busy for 200 ms of wall time: at least a few clock ticks of CPU, however fast.
        let started = std::time::Instant::now();
        let mut x = 0u64;
        while started.elapsed() < Duration::from_millis(200) {
            x = std::hint::black_box(x.wrapping_add(1));
        }
        let after = cpu_ticks();
        assert!(after[4] > before[4], "{before:?} → {after:?}");
    }

    #[test]
    fn costs_divide_by_calls() {
        let mut cost = Cost::default();
        let statements = |command, read_side, relay| {
            Some(Statements {
                command,
                read_side,
                relay,
                command_us: command * 10,
                read_side_us: read_side * 10,
                audit_us: read_side * 2,
            })
        };
        let before = Reading {
            ticks: [0; 5],
            next_xid: 10,
            events: 100,
            statements: statements(1_000, 500, 10),
        };
        let after = Reading {
            ticks: [100, 0, 200, 0, 0],
            next_xid: 40,
            events: 120,
            statements: statements(1_060, 530, 14),
        };
        cost.add(before, after);
        let per_call = cost.cpu_ms_per_call(10);
        let tick_ms = 1000.0 / clock_ticks() as f64;
        assert!((per_call[0] - 10.0 * tick_ms).abs() < 1e-9);
        assert!((per_call[2] - 20.0 * tick_ms).abs() < 1e-9);
        assert!((cost.transactions_per_call(10) - 3.0).abs() < 1e-9);
        assert!((cost.events_per_call(10) - 2.0).abs() < 1e-9);
        assert_eq!(cost.statements_per_call(10), Some((6.0, 3.0)));
        assert_eq!(cost.relay_statements_per_event(), Some(0.2));
        assert_eq!(cost.statement_us_per_call(10), Some((60.0, 30.0, 6.0)));
    }

    #[test]
    fn statements_are_counted_only_if_every_span_counted_them() {
        let reading = |statements| Reading {
            ticks: [0; 5],
            next_xid: 0,
            events: 0,
            statements,
        };
        let counted = Some(Statements::default());
        let mut cost = Cost::default();
        cost.add(reading(counted), reading(counted));
        assert!(cost.statements.is_some());
        cost.add(reading(None), reading(counted));
        assert!(cost.statements.is_none());
        cost.add(reading(counted), reading(counted));
        assert!(cost.statements.is_none());
    }
}
