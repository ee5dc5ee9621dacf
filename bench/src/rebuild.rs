//! `linkd-bench rebuild`: times `projection-service rebuild` (the release binary) against the
//! bench's projection database and stream, after making sure the stream holds enough device
//! events (padding it, if asked, with lengthened device histories as `growth` does).

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use linkctl::dev::DevKeys;
use tonic::codegen::tokio_stream::StreamExt as _;

use crate::config::{Sizing, Target};
use crate::growth::{extend_history, toggle_twice};
use crate::session::{self, Session};
use crate::system::System;

/// Events per padding device.
const PAD_PER_DEVICE: u64 = 10_000;

/// The longest wait for the relay and projectors before the rebuild.
const SETTLE: Duration = Duration::from_secs(900);

/// What the rebuild measured.
#[derive(Debug, Clone)]
pub(crate) struct Rebuild {
    /// Events the rebuild says it replayed.
    pub(crate) events: Option<u64>,
    /// How long the rebuild says it took.
    pub(crate) tool_elapsed: Option<Duration>,
    /// The process's run time, start-up and migrations included.
    pub(crate) wall: Duration,
    /// Messages in the stream.
    pub(crate) stream_messages: u64,
    /// Device events in the stream (what the devices read model is rebuilt from).
    pub(crate) device_events: u64,
    /// Device events the bench added to reach the minimum.
    pub(crate) padded: u64,
}

impl Rebuild {
    /// Replayed events per second, by the rebuild's own figures (else the wall clock).
    pub(crate) fn events_per_second(&self) -> Option<f64> {
        let events = self.events? as f64;
        let seconds = self.tool_elapsed.unwrap_or(self.wall).as_secs_f64();
        Some(events / seconds.max(1e-9))
    }
}

/// Device events in the stream, counted per subject.
async fn device_events(target: &Target, system: &System) -> anyhow::Result<u64> {
    let stream = async_nats::jetstream::new(system.nats.clone())
        .get_stream(&target.stream)
        .await
        .with_context(|| format!("opening stream {}", target.stream))?;
    let mut subjects = stream
        .info_with_subjects(format!("{}.device.>", target.subject_prefix))
        .await
        .map_err(|e| anyhow::anyhow!("reading the stream's subjects: {e}"))?;
    let mut total = 0;
    while let Some(subject) = subjects.next().await {
        let (_, count) = subject.map_err(|e| anyhow::anyhow!("reading subjects: {e}"))?;
        total += u64::try_from(count)?;
    }
    Ok(total)
}

/// Pads the stream to `sizing.rebuild_min_events` device events if needed, then rebuilds.
pub(crate) async fn run(
    target: &Target,
    keys: &Arc<DevKeys>,
    system: &System,
    sizing: &Sizing,
    run_id: &str,
) -> anyhow::Result<Rebuild> {
    system.quiesce(SETTLE).await?;
    let before = device_events(target, system).await?;
    let mut padded = 0;
    if before < sizing.rebuild_min_events {
        padded = pad(
            target,
            keys,
            system,
            run_id,
            sizing.rebuild_min_events - before,
        )
        .await?;
        system.quiesce(SETTLE).await?;
    }
    let device_events = device_events(target, system).await?;
    let stream_messages = system.published().await?;
    eprintln!(
        "  rebuild: the stream holds {stream_messages} events ({device_events} device events)"
    );

    let started = Instant::now();
    let output = tokio::process::Command::new(&target.projection_bin)
        .arg("rebuild")
        .env("LINKD_PROJECTION_DATABASE_URL", &target.read_db)
        .env("LINKD_NATS_URL", &target.nats_url)
        .env("LINKD_STREAM", &target.stream)
        .env("LINKD_SUBJECT_PREFIX", &target.subject_prefix)
        .env("LINKD_CONSUMER_PREFIX", &target.consumer_prefix)
        .env(
            "LINKD_IDP_PUBLIC_KEYS_FILE",
            target.keys.join("idp.pub.pem"),
        )
        .env("LINKD_IDP_ISSUER", linkctl::dev::PORTAL_ISSUER)
        // Signed bus messages (ADR 0022) and sealed personal fields (ADR 0025), as the running
        // projection service reads them.
        .env(
            "LINKD_BUS_VERIFY_KEYS_FILE",
            target.keys.join("bus.pub.pem"),
        )
        .env("LINKD_EVENT_STORE_URL", &target.command_db)
        .env("LINKD_KEK_FILE", target.keys.join("kek"))
        .env("LINKD_PROJECTION_GRPC_ADDR", "127.0.0.1:0")
        .env("LINKD_EMAIL", "off")
        .env("RUST_LOG", "info")
        .env_remove("LINKD_LOG_FORMAT")
        // A failure's message, not a backtrace, in the report.
        .env_remove("RUST_BACKTRACE")
        .output()
        .await
        .with_context(|| format!("running {} rebuild", target.projection_bin.display()))?;
    let wall = started.elapsed();
    let text = format!(
        "{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    anyhow::ensure!(
        output.status.success(),
        "projection-service rebuild failed ({}):\n{}",
        output.status,
        tail(&text)
    );
    let (events, tool_elapsed) = parse(&text);
    if events.is_none() {
        eprintln!(
            "warning: could not read the event count in the rebuild's output:\n{}",
            tail(&text)
        );
    }
    Ok(Rebuild {
        events,
        tool_elapsed,
        wall,
        stream_messages,
        device_events,
        padded,
    })
}

/// Adds at least `missing` device events: devices linked over gRPC, histories lengthened.
async fn pad(
    target: &Target,
    keys: &Arc<DevKeys>,
    system: &System,
    run_id: &str,
    missing: u64,
) -> anyhow::Result<u64> {
    let devices = usize::try_from(missing.div_ceil(PAD_PER_DEVICE))?;
    let sessions = Session::connect_many(target, keys, 4).await?;
    let prefix = format!("bench-{run_id}-padding");
    let (mut sessions, linked) = session::link_spread(sessions, &prefix, devices).await?;
    let mut session = sessions.pop().context("no session")?;
    let size = i64::try_from(missing.div_ceil(u64::try_from(devices)?.max(1)))? + 3;
    let mut added = 0;
    for device in &linked {
        toggle_twice(&mut session, device).await?;
        added += 2 + extend_history(&system.command_db, &device.device_id, size)
            .await?
            .0;
    }
    eprintln!("  rebuild: padded the stream with {added} device events on {devices} devices");
    Ok(added)
}

/// The last lines of a process's output.
fn tail(text: &str) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(15)..].join("\n")
}

/// The event count and duration the rebuild reported: `events=N seconds=S` (its log line),
/// or `events: N` / `elapsed: 1.5s` (a `Rebuilt { .. }` debug print), or JSON fields.
fn parse(text: &str) -> (Option<u64>, Option<Duration>) {
    let events = number_after(text, "events").and_then(|n| n.parse::<u64>().ok());
    let seconds = number_after(text, "seconds")
        .and_then(|n| n.parse::<f64>().ok())
        .and_then(|s| Duration::try_from_secs_f64(s).ok());
    let elapsed = seconds.or_else(|| {
        let at = text.rfind("elapsed")?;
        let rest = text[at + "elapsed".len()..].trim_start_matches([':', '=', ' ', '"']);
        let digits: String = rest
            .chars()
            .take_while(|c| c.is_ascii_digit() || *c == '.')
            .collect();
        let value: f64 = digits.parse().ok()?;
        let unit = &rest[digits.len()..];
        let seconds = if unit.starts_with("ms") {
            value / 1000.0
        } else if unit.starts_with("µs") || unit.starts_with("us") {
            value / 1e6
        } else {
            value
        };
        Duration::try_from_secs_f64(seconds).ok()
    });
    (events, elapsed)
}

/// The number right after the last `key=`, `key:` or `"key":` in `text`.
fn number_after<'a>(text: &'a str, key: &str) -> Option<&'a str> {
    let mut found = None;
    let mut from = 0;
    while let Some(at) = text[from..].find(key) {
        let start = from + at;
        from = start + key.len();
        // A whole word: not `events_per_second` nor `device_events`.
        let before = text[..start].chars().next_back();
        if before.is_some_and(|c| c.is_alphanumeric() || c == '_') {
            continue;
        }
        let rest = text[from..].trim_start_matches('"');
        let Some(rest) = rest.strip_prefix(['=', ':']) else {
            continue;
        };
        let rest = rest.trim_start();
        let len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        if len > 0 {
            found = Some(&rest[..len]);
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_log_line_is_read() {
        let line = "INFO read models rebuilt and switched over events=61234 seconds=1.5 \
                    events_per_second=40822.6";
        let (events, elapsed) = parse(line);
        assert_eq!(events, Some(61234));
        assert_eq!(elapsed, Some(Duration::from_millis(1500)));
    }

    #[test]
    fn a_debug_print_is_read() {
        let (events, elapsed) = parse("Rebuilt { events: 900, elapsed: 250.5ms }");
        assert_eq!(events, Some(900));
        assert_eq!(elapsed, Some(Duration::from_micros(250_500)));
    }

    #[test]
    fn json_fields_are_read() {
        let (events, elapsed) = parse(r#"{"fields":{"events":12,"seconds":0.25}}"#);
        assert_eq!(events, Some(12));
        assert_eq!(elapsed, Some(Duration::from_millis(250)));
    }
}
