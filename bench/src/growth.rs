//! `linkd-bench growth`: command latency against the length of an aggregate's history.
//!
//! Devices are linked over gRPC and toggle biometrics twice (one real `BiometricsEnabled` and one
//! real `BiometricsDisabled` event each); their histories are then lengthened to 10, 1,000 and
//! 10,000 events by inserting copies of those two events straight into the `events` table
//! (alternating, `sequence` incremented; the table's defaults and trigger fill in the rest).
//! Once the relay and the projectors have caught up, sequential SetBiometrics toggles (one
//! client) are timed, the sizes interleaved (one toggle of each size in turn). A small history is
//! spread over several devices, so that the toggles themselves do not lengthen it much.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use linkctl::dev::DevKeys;
use sqlx::PgPool;

use crate::config::{Sizing, Target};
use crate::session::{self, Linked, Session};
use crate::stats::{OpStats, Recorder};
use crate::system::System;

const ENABLED: &str = "BiometricsEnabled";
const DISABLED: &str = "BiometricsDisabled";

/// Rows per INSERT statement when lengthening a history.
const CHUNK: i64 = 2_000;

/// The longest wait for the relay and projectors to take in the inserted events.
const SETTLE: Duration = Duration::from_secs(600);

/// One history size's figures.
#[derive(Debug, Clone)]
pub(crate) struct GrowthRow {
    /// Events in each device's history when the timed toggles start.
    pub(crate) size: i64,
    /// Devices the toggles were spread over.
    pub(crate) devices: usize,
    /// The longest history at the end (each toggle adds an event).
    pub(crate) grown_to: i64,
    /// Median over the devices of their first timed toggle.
    pub(crate) first: Duration,
    /// All timed toggles.
    pub(crate) stats: OpStats,
}

/// What `growth` measured.
#[derive(Debug, Clone)]
pub(crate) struct Growth {
    /// One row per size, smallest first.
    pub(crate) rows: Vec<GrowthRow>,
    /// Events inserted directly.
    pub(crate) inserted: u64,
    /// How long the relay and projectors took to take them in.
    pub(crate) settle: Duration,
}

impl Growth {
    /// p50 and p99 of the largest history over those of the smallest.
    pub(crate) fn ratios(&self) -> Option<(f64, f64)> {
        let (small, large) = (self.rows.first()?, self.rows.last()?);
        let ratio = |a: Duration, b: Duration| a.as_secs_f64() / b.as_secs_f64().max(1e-9);
        Some((
            ratio(large.stats.p50, small.stats.p50),
            ratio(large.stats.p99, small.stats.p99),
        ))
    }
}

/// A device and the biometrics state its last event left.
#[derive(Debug)]
struct Subject {
    device: Linked,
    enabled: bool,
}

/// Runs the growth benchmark.
pub(crate) async fn run(
    target: &Target,
    keys: &Arc<DevKeys>,
    system: &System,
    sizing: &Sizing,
    run_id: &str,
) -> anyhow::Result<Growth> {
    let toggles = sizing.growth_toggles;
    let mut sizes = sizing.growth_sizes.clone();
    sizes.sort_unstable();
    // Enough devices that the toggles lengthen a history by at most half its size.
    let per_size: Vec<usize> = sizes
        .iter()
        .map(|&size| {
            let per_device = usize::try_from(size / 2).unwrap_or(usize::MAX).max(1);
            toggles.div_ceil(per_device).clamp(1, toggles)
        })
        .collect();
    let sessions = Session::connect_many(target, keys, 4).await?;
    let total = per_size.iter().sum::<usize>() + 1;
    let prefix = format!("bench-{run_id}-growth");
    let (mut sessions, devices) = session::link_spread(sessions, &prefix, total).await?;
    let mut session = sessions.pop().context("no session")?;
    let mut devices = devices.into_iter();
    let warm_up = devices.next().context("no warm-up device")?;
    toggle_twice(&mut session, &warm_up).await?;

    let started = Instant::now();
    let mut inserted = 0;
    let mut groups: Vec<Vec<Subject>> = Vec::new();
    for (&size, &count) in sizes.iter().zip(&per_size) {
        let mut group = Vec::with_capacity(count);
        for device in devices.by_ref().take(count) {
            toggle_twice(&mut session, &device).await?;
            let (added, enabled) = extend_history(&system.command_db, &device.device_id, size)
                .await
                .with_context(|| format!("lengthening a history to {size} events"))?;
            inserted += added;
            group.push(Subject { device, enabled });
        }
        groups.push(group);
    }
    eprintln!(
        "  growth: {inserted} events inserted in {:.1} s; waiting for the relay and projectors",
        started.elapsed().as_secs_f64()
    );
    let started = Instant::now();
    system.quiesce(SETTLE).await?;
    let settle = started.elapsed();

    let mut enabled = false;
    for _ in 0..10 {
        enabled = !enabled;
        // Untimed: warms connections, caches and the service's code paths.
        let _ = session.set_biometrics(&warm_up.credential, enabled).await;
    }
    let rows = measure(&mut session, &sizes, groups, toggles).await;
    Ok(Growth {
        rows,
        inserted,
        settle,
    })
}

/// One history size's devices while they are toggled.
struct Timed {
    size: i64,
    subjects: Vec<Subject>,
    /// Timed toggles per device so far.
    calls: Vec<usize>,
    firsts: Vec<Duration>,
    recorder: Recorder,
    busy: Duration,
}

/// `toggles` timed toggles per size, interleaved: one toggle of each size in turn, a size's
/// devices taken round-robin. Whatever else the machine does meanwhile (autovacuum, a checkpoint,
/// the projectors catching up) then falls on every size alike instead of on the size timed last.
async fn measure(
    session: &mut Session,
    sizes: &[i64],
    groups: Vec<Vec<Subject>>,
    toggles: usize,
) -> Vec<GrowthRow> {
    let mut timed: Vec<Timed> = sizes
        .iter()
        .zip(groups)
        .filter(|(_, subjects)| !subjects.is_empty())
        .map(|(&size, subjects)| Timed {
            size,
            calls: vec![0; subjects.len()],
            firsts: Vec::with_capacity(subjects.len()),
            subjects,
            recorder: Recorder::default(),
            busy: Duration::ZERO,
        })
        .collect();
    for round in 0..toggles {
        for size in &mut timed {
            let index = round % size.subjects.len();
            let subject = &mut size.subjects[index];
            subject.enabled = !subject.enabled;
            let call = session.set_biometrics(&subject.device.credential, subject.enabled);
            let begun = Instant::now();
            let outcome = call.await;
            let took = begun.elapsed();
            if size.calls[index] == 0 {
                size.firsts.push(took);
            }
            size.calls[index] += 1;
            size.busy += took;
            size.recorder.record(took, outcome);
        }
    }
    timed
        .into_iter()
        .map(|mut size| {
            size.firsts.sort();
            let longest = size.calls.iter().copied().max().unwrap_or(0);
            GrowthRow {
                size: size.size,
                devices: size.subjects.len(),
                grown_to: size.size + i64::try_from(longest).unwrap_or(i64::MAX),
                first: crate::stats::percentile(&size.firsts, 0.5),
                stats: size
                    .recorder
                    .summary(&format!("SetBiometrics, {} events", size.size), size.busy),
            }
        })
        .collect()
}

/// Enables, then disables biometrics over gRPC: the real events `extend_history` copies.
pub(crate) async fn toggle_twice(session: &mut Session, device: &Linked) -> anyhow::Result<()> {
    for enabled in [true, false] {
        session
            .set_biometrics(&device.credential, enabled)
            .await
            .map_err(|f| anyhow::anyhow!("SetBiometrics: {f}"))?;
    }
    Ok(())
}

/// A stored event to copy.
#[derive(Debug, sqlx::FromRow)]
struct Stored {
    aggregate_type: String,
    sequence: i64,
    event_type: String,
    event_version: String,
    payload: String,
    metadata: String,
}

/// Lengthens `device_id`'s history to `size` events with copies of its own last
/// `BiometricsEnabled` and `BiometricsDisabled` events, alternating; returns how many events
/// it inserted and whether biometrics end up enabled.
pub(crate) async fn extend_history(
    pool: &PgPool,
    device_id: &str,
    size: i64,
) -> anyhow::Result<(u64, bool)> {
    let history: Vec<Stored> = sqlx::query_as(
        "SELECT aggregate_type, sequence, event_type, event_version, payload::text AS payload, \
         metadata::text AS metadata FROM events \
         WHERE aggregate_type = 'device' AND aggregate_id = $1 ORDER BY sequence",
    )
    .bind(device_id)
    .fetch_all(pool)
    .await
    .context("reading a device's history")?;
    let template = |kind: &str| history.iter().rev().find(|e| e.event_type == kind);
    let (Some(on), Some(off), Some(last)) = (template(ENABLED), template(DISABLED), history.last())
    else {
        anyhow::bail!("device {device_id} has no biometrics events to copy");
    };
    // The next event is the opposite of the last one.
    let (first, second) = if last.event_type == ENABLED {
        (off, on)
    } else {
        (on, off)
    };
    let from = last.sequence + 1;
    let mut start = from;
    while start <= size {
        let end = (start + CHUNK - 1).min(size);
        sqlx::query(
            "INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type, \
             event_version, payload, metadata) \
             SELECT $1, $2, s, \
                    CASE WHEN (s - $3) % 2 = 0 THEN $4 ELSE $5 END, \
                    CASE WHEN (s - $3) % 2 = 0 THEN $6 ELSE $7 END, \
                    (CASE WHEN (s - $3) % 2 = 0 THEN $8 ELSE $9 END)::json, \
                    (CASE WHEN (s - $3) % 2 = 0 THEN $10 ELSE $11 END)::json \
             FROM generate_series($12::bigint, $13::bigint) AS s ORDER BY s",
        )
        .bind(&last.aggregate_type)
        .bind(device_id)
        .bind(from)
        .bind(&first.event_type)
        .bind(&second.event_type)
        .bind(&first.event_version)
        .bind(&second.event_version)
        .bind(&first.payload)
        .bind(&second.payload)
        .bind(&first.metadata)
        .bind(&second.metadata)
        .bind(start)
        .bind(end)
        .execute(pool)
        .await
        .context("inserting copied events")?;
        start = end + 1;
    }
    let added = (size - last.sequence).max(0);
    let enabled = if added == 0 {
        last.event_type == ENABLED
    } else {
        // The event at `size` is `first` if an odd number were added.
        let final_is_first = added % 2 == 1;
        (final_is_first && first.event_type == ENABLED)
            || (!final_is_first && second.event_type == ENABLED)
    };
    Ok((u64::try_from(added)?, enabled))
}
