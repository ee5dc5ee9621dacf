//! The paced (open-loop) lag phase: commands are sent at a fixed rate whatever the answers
//! take — IssueLinkQr, StartLink (QR), ScanQr pairing those two, and UnlinkDevices of a
//! pre-linked device, in turn — and one unlink in [`Pace::sample_every`] is followed by
//! GetDevice polls (no consistency token) until the device shows as unlinked. Sampling keeps
//! the observer's own queries a small part of the load it observes.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use linkctl::dev::DevKeys;
use proto::v1::LinkMethod;
use tokio::sync::oneshot;
use tokio::task::JoinSet;

use crate::closed::{self, Deadline};
use crate::config::Target;
use crate::lag::{Want, until_visible};
use crate::load::{QUIET, op};
use crate::session::{self, DEVICES_PER_ACCOUNT, Linked, Session};
use crate::stats::{Failure, Lags, OpStats, Probe, Recorder};
use crate::system::System;

/// Connections the paced commands are spread over.
const CONNECTIONS: usize = 8;
/// Accounts the paced commands are spread over.
const ACCOUNTS: usize = 32;

/// What the paced phase measured.
#[derive(Debug, Clone)]
pub(crate) struct OpenLoop {
    /// The level whose non-hashing throughput set the pace, and that throughput.
    pub(crate) based_on: (usize, f64),
    /// Commands per second asked for.
    pub(crate) target_rate: f64,
    /// Commands sent.
    pub(crate) sent: u64,
    /// How long sending took.
    pub(crate) send_elapsed: Duration,
    /// Commands that succeeded.
    pub(crate) succeeded: u64,
    /// ScanQr slots skipped because the IssueLinkQr or StartLink before them failed.
    pub(crate) skipped: u64,
    /// One row per command.
    pub(crate) ops: Vec<OpStats>,
    /// Unlink acknowledged -> device shown as unlinked, on the sampled unlinks.
    pub(crate) lag: Lags,
    /// One unlink in this many was sampled.
    pub(crate) sample_every: usize,
    /// Devices linked beforehand, and how long that took.
    pub(crate) prelinked: (usize, Duration),
    /// Interval between visibility polls.
    pub(crate) poll: Duration,
}

impl OpenLoop {
    /// Commands sent per second.
    pub(crate) fn achieved_rate(&self) -> f64 {
        self.sent as f64 / self.send_elapsed.as_secs_f64().max(1e-9)
    }
}

/// One paced command's outcome: its kind (0 Issue, 1 Start, 2 Scan, 3 Unlink; `None`: a
/// skipped scan), latency and outcome, and for a sampled unlink its lag probe.
pub(crate) type Done = (Option<usize>, Duration, Result<(), Failure>, Option<Probe>);

/// How the paced phase runs.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Pace {
    /// The level whose non-hashing throughput sets the pace (half of it), and that throughput.
    pub(crate) based_on: (usize, f64),
    /// How long commands are sent.
    pub(crate) length: Duration,
    /// Interval between visibility polls.
    pub(crate) poll: Duration,
    /// One unlink in this many is followed until it is visible.
    pub(crate) sample_every: usize,
    /// The longest the bench spends linking devices for the unlinks beforehand.
    pub(crate) prelink_limit: Duration,
}

/// Runs the paced phase.
pub(crate) async fn run(
    target: &Target,
    keys: &Arc<DevKeys>,
    system: &System,
    run_id: &str,
    pace: Pace,
) -> anyhow::Result<OpenLoop> {
    let Pace {
        based_on,
        length,
        poll,
        sample_every,
        prelink_limit,
    } = pace;
    let sample_every = sample_every.max(1);
    let rate = (based_on.1 / 2.0).max(1.0);
    let accounts: Vec<String> = (0..ACCOUNTS)
        .map(|k| format!("bench-{run_id}-open-{k}"))
        .collect();
    let wanted = (rate * length.as_secs_f64() / 4.0).ceil() as usize + 4;
    // The devices to unlink are linked to accounts of their own, at most the device cap each:
    // the paced scans on `accounts` must not meet a full account.
    let holders: Vec<String> = (0..wanted.div_ceil(DEVICES_PER_ACCOUNT))
        .map(|k| format!("bench-{run_id}-open-holder-{k}"))
        .collect();
    let sessions = Session::connect_many(target, keys, CONNECTIONS).await?;
    let everyone: Vec<String> = accounts.iter().chain(&holders).cloned().collect();
    let sessions = session::register_all(sessions, &everyone).await?;
    let started = Instant::now();
    let (mut sessions, devices) = prelink(sessions, &holders, wanted, prelink_limit).await?;
    let prelinked = (devices.len(), started.elapsed());
    eprintln!(
        "  paced phase: {} devices linked beforehand in {:.1} s; {rate:.0} commands/s for {:.0} s",
        devices.len(),
        prelinked.1.as_secs_f64(),
        length.as_secs_f64()
    );
    for session in &mut sessions {
        for account in &everyone {
            session.citizen(account)?;
        }
    }
    system.quiesce(QUIET).await?;

    let interval = Duration::from_secs_f64(1.0 / rate);
    let start = tokio::time::Instant::now();
    let mut devices = devices.into_iter();
    let mut tasks: JoinSet<Done> = JoinSet::new();
    let mut recorders = [(); 4].map(|()| Recorder::default());
    let (mut lag, mut skipped, mut sent) = (Lags::default(), 0, 0_u64);
    let mut qr: Option<oneshot::Receiver<Option<String>>> = None;
    let mut link: Option<oneshot::Receiver<Option<String>>> = None;
    let mut collect = |done: Done| {
        let (kind, elapsed, outcome, unlinked) = done;
        match kind {
            Some(kind) => {
                recorders[kind].record(elapsed, outcome);
            }
            None => skipped += 1,
        }
        if let Some(probe) = unlinked {
            lag.push(probe);
        }
    };
    for k in 0_u32.. {
        let at = start + interval * k;
        if at >= start + length {
            break;
        }
        tokio::time::sleep_until(at).await;
        let session = sessions[k as usize % CONNECTIONS].clone();
        let account = accounts[(k / 4) as usize % ACCOUNTS].clone();
        match k % 4 {
            0 => {
                let (tx, rx) = oneshot::channel();
                qr = Some(rx);
                tasks.spawn(issue(session, account, Some(tx)));
            }
            1 => {
                let (tx, rx) = oneshot::channel();
                link = Some(rx);
                tasks.spawn(start_link(session, tx));
            }
            2 => {
                tasks.spawn(scan(session, qr.take(), link.take()));
            }
            _ => match devices.next() {
                Some(device) => {
                    let unlinks = (k / 4) as usize;
                    if unlinks.is_multiple_of(sample_every) {
                        // The sampled unlinks (and their polls) take the connections in turn;
                        // by `k` alone they would all fall on the same one.
                        let turn = sessions[unlinks / sample_every % CONNECTIONS].clone();
                        tasks.spawn(unlink(turn, device, Some(poll)));
                    } else {
                        tasks.spawn(unlink(session, device, None));
                    }
                }
                None => {
                    tasks.spawn(issue(session, account, None));
                }
            },
        }
        sent += 1;
        while let Some(done) = tasks.try_join_next() {
            collect(done.context("a paced command's task failed")?);
        }
    }
    let send_elapsed = start.elapsed();
    while let Some(done) = tasks.join_next().await {
        collect(done.context("a paced command's task failed")?);
    }
    let ops: Vec<OpStats> = recorders
        .iter()
        .zip([op::ISSUE, op::START, op::SCAN, op::UNLINK])
        .map(|(recorder, name)| recorder.summary(name, send_elapsed))
        .collect();
    let succeeded = ops.iter().map(|stats| stats.count).sum();
    Ok(OpenLoop {
        based_on,
        target_rate: rate,
        sent,
        send_elapsed,
        succeeded,
        skipped,
        ops,
        lag,
        sample_every,
        prelinked,
        poll,
    })
}

/// Links up to `wanted` devices over `accounts` within `limit`.
async fn prelink(
    sessions: Vec<Session>,
    accounts: &[String],
    wanted: usize,
    limit: Duration,
) -> anyhow::Result<(Vec<Session>, Vec<Linked>)> {
    let deadline = Deadline::after(limit);
    let count = sessions.len().max(1);
    let accounts = Arc::new(accounts.to_vec());
    let done = closed::each(sessions, |index, mut session| {
        let accounts = accounts.clone();
        async move {
            let mut linked = Vec::new();
            let mut failures = 0;
            let mut n = index;
            while n < wanted && !deadline.passed() {
                match session.link_by_qr(&accounts[n % accounts.len()]).await {
                    Ok(device) => linked.push(device),
                    Err(error) => {
                        failures += 1;
                        if failures == 1 {
                            eprintln!("warning: linking a device for the paced phase: {error:#}");
                        }
                    }
                }
                n += count;
            }
            (session, linked)
        }
    })
    .await?;
    let (sessions, linked): (Vec<_>, Vec<Vec<Linked>>) = done.into_iter().unzip();
    let linked: Vec<Linked> = linked.into_iter().flatten().collect();
    anyhow::ensure!(
        !linked.is_empty(),
        "no device could be linked for the paced phase"
    );
    Ok((sessions, linked))
}

async fn issue(
    mut session: Session,
    account: String,
    pair: Option<oneshot::Sender<Option<String>>>,
) -> Done {
    let started = Instant::now();
    let outcome = session.issue_qr(&account).await;
    let elapsed = started.elapsed();
    if let Some(pair) = pair {
        let _ = pair.send(outcome.as_ref().ok().map(|qr| qr.payload.clone()));
    }
    (Some(0), elapsed, outcome.map(drop), None)
}

pub(crate) async fn start_link(
    mut session: Session,
    pair: oneshot::Sender<Option<String>>,
) -> Done {
    let started = Instant::now();
    let outcome = session.start_link(LinkMethod::Qr).await;
    let elapsed = started.elapsed();
    let _ = pair.send(outcome.as_ref().ok().map(|(_, s)| s.link_token.clone()));
    (Some(1), elapsed, outcome.map(drop), None)
}

pub(crate) async fn scan(
    mut session: Session,
    qr: Option<oneshot::Receiver<Option<String>>>,
    link: Option<oneshot::Receiver<Option<String>>>,
) -> Done {
    let (Some(qr), Some(link)) = (qr, link) else {
        return (None, Duration::ZERO, Ok(()), None);
    };
    let (Ok(Some(qr)), Ok(Some(link_token))) = (qr.await, link.await) else {
        return (None, Duration::ZERO, Ok(()), None);
    };
    let started = Instant::now();
    let outcome = session.scan_qr(&link_token, &qr).await;
    (Some(2), started.elapsed(), outcome.map(drop), None)
}

/// Unlinks `device`; with a `poll` interval, then waits until a query shows it unlinked.
async fn unlink(mut session: Session, device: Linked, poll: Option<Duration>) -> Done {
    let started = Instant::now();
    let outcome = session.unlink(&device.account, &device.device_id).await;
    let elapsed = started.elapsed();
    let acked = Instant::now();
    let lag = match (&outcome, poll, session.citizen(&device.account)) {
        (Ok(()), Some(poll), Ok(token)) => Some(
            until_visible(
                session.grpc.queries.clone(),
                token,
                device.device_id,
                Want::Unlinked,
                acked,
                poll,
            )
            .await,
        ),
        _ => None,
    };
    (Some(3), elapsed, outcome, lag)
}
