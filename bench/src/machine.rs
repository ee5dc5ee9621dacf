//! Where and when the suite ran: CPUs, memory, server versions, date and commit.

use crate::system::System;

/// The report's header facts.
#[derive(Debug, Clone)]
pub(crate) struct Machine {
    /// Logical CPUs.
    pub(crate) cpus: usize,
    /// The CPU model.
    pub(crate) cpu_model: String,
    /// Total memory.
    pub(crate) memory: String,
    /// PostgreSQL's version.
    pub(crate) postgres: String,
    /// PostgreSQL settings that move the figures (autovacuum, durability, memory).
    pub(crate) postgres_settings: String,
    /// nats-server's version.
    pub(crate) nats: String,
    /// The date and time (UTC) the run started.
    pub(crate) date: String,
    /// The git commit of the code under test.
    pub(crate) commit: String,
}

/// Gathers the facts (`unknown` for any that cannot be read).
pub(crate) async fn describe(system: &System) -> Machine {
    let unknown = || "unknown".to_owned();
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let cpu_model = cpuinfo
        .lines()
        .find(|line| line.starts_with("model name"))
        .and_then(|line| line.split_once(':'))
        .map_or_else(unknown, |(_, model)| model.trim().to_owned());
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let memory = meminfo
        .lines()
        .find(|line| line.starts_with("MemTotal:"))
        .and_then(|line| line.split_whitespace().nth(1))
        .and_then(|kib| kib.parse::<f64>().ok())
        .map_or_else(unknown, |kib| format!("{:.1} GiB", kib / 1024.0 / 1024.0));
    let postgres: Option<String> = sqlx::query_scalar("SHOW server_version")
        .fetch_one(&system.command_db)
        .await
        .ok();
    // Autovacuum matters beyond speed: without it no statistics are gathered, so the planner
    // keeps its guesses for tables that grew during the run.
    let settings: Option<String> = sqlx::query_scalar(
        "SELECT string_agg(name || ' ' || current_setting(name), ', ' ORDER BY name) \
         FROM pg_settings WHERE name IN ('autovacuum', 'synchronous_commit', 'fsync', \
         'shared_buffers', 'max_connections')",
    )
    .fetch_one(&system.command_db)
    .await
    .ok();
    let date: Option<String> = sqlx::query_scalar(
        "SELECT to_char(now() AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI') || ' UTC'",
    )
    .fetch_one(&system.command_db)
    .await
    .ok();
    let nats = system.nats.server_info().version;
    Machine {
        cpus: std::thread::available_parallelism().map_or(0, std::num::NonZero::get),
        cpu_model,
        memory,
        postgres: postgres.unwrap_or_else(unknown),
        postgres_settings: settings.unwrap_or_else(unknown),
        nats: if nats.is_empty() { unknown() } else { nats },
        date: date.unwrap_or_else(unknown),
        commit: commit().unwrap_or_else(unknown),
    }
}

/// `HEAD`'s hash, noting uncommitted changes.
fn commit() -> Option<String> {
    let git = |args: &[&str]| {
        std::process::Command::new("git")
            .args(args)
            .output()
            .ok()
            .filter(|output| output.status.success())
            .map(|output| String::from_utf8_lossy(&output.stdout).trim().to_owned())
    };
    let head = git(&["rev-parse", "--short=12", "HEAD"])?;
    let dirty = git(&["status", "--porcelain"]).is_some_and(|status| !status.is_empty());
    Some(if dirty {
        format!("{head} (with uncommitted changes)")
    } else {
        head
    })
}
