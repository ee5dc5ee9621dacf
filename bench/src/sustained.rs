//! Sustained throughput: the highest paced rate of non-hashing commands (IssueLinkQr, StartLink
//! (QR) and ScanQr pairing those two, in turn, sent on a schedule whatever the answers take) at
//! which the read side keeps its lag p99 within [`LAG_BOUND`], found by a short search.
//!
//! The lag is measured on one IssueLinkQr in [`SAMPLE_EVERY`]: from its answer until the read
//! models' guard for its QR code shows the `QrIssued` event applied (the audit witness's guard,
//! moved in the same transaction as every read model's), polled in the read models' database
//! every [`POLL`]. That is the whole way: store, relay, stream, consumer, commit.
//!
//! The search starts at `start` (half the 32-client closed-loop rate); a step holds when the
//! schedule was kept (≥ 95 % of the rate sent, no failures) and the lag p99 stayed within the
//! bound; after a step that held the rate grows by half until one fails, then the search
//! bisects between the highest rate that held and the lowest that failed.

use std::time::{Duration, Instant};

use anyhow::Context as _;
use linkctl::dev::DevKeys;
use sqlx::PgPool;
use tokio::sync::oneshot;
use tokio::task::JoinSet;

use crate::config::Target;
use crate::load::QUIET;
use crate::open_loop::{self, Done};
use crate::session::{self, Session};
use crate::stats::{Lags, Probe};
use crate::system::System;

/// The lag a sustained rate must keep at p99.
pub(crate) const LAG_BOUND: Duration = Duration::from_millis(100);
/// One IssueLinkQr in this many is followed until the read models applied it.
const SAMPLE_EVERY: u64 = 10;
/// Interval between the probes' polls.
const POLL: Duration = Duration::from_millis(2);
/// A probe gives up after this long.
const GIVE_UP: Duration = Duration::from_secs(10);
/// Connections the commands are spread over.
const CONNECTIONS: usize = 8;
/// Accounts the commands are spread over.
const ACCOUNTS: usize = 32;

/// One step of the search.
#[derive(Debug, Clone)]
pub(crate) struct Step {
    /// Commands per second asked for.
    pub(crate) rate: f64,
    /// Commands per second sent.
    pub(crate) sent_rate: f64,
    /// Commands that failed.
    pub(crate) failures: u64,
    /// IssueLinkQr answered → applied by the read models, on the sampled calls.
    pub(crate) lag: Lags,
    /// Whether the step held.
    pub(crate) held: bool,
}

/// What the search found.
#[derive(Debug, Clone)]
pub(crate) struct Sustained {
    /// Each step, in order.
    pub(crate) steps: Vec<Step>,
    /// How long each step sent commands.
    pub(crate) length: Duration,
}

impl Sustained {
    /// The highest rate that held, if any.
    pub(crate) fn best(&self) -> Option<&Step> {
        self.steps
            .iter()
            .filter(|step| step.held)
            .max_by(|a, b| a.rate.total_cmp(&b.rate))
    }
}

/// Searches `steps` rates from `start`, each sent for `length`.
pub(crate) async fn search(
    target: &Target,
    keys: &std::sync::Arc<DevKeys>,
    system: &System,
    run_id: &str,
    start: f64,
    length: Duration,
    steps: usize,
) -> anyhow::Result<Sustained> {
    let accounts: Vec<String> = (0..ACCOUNTS)
        .map(|k| format!("bench-{run_id}-sustained-{k}"))
        .collect();
    let sessions = Session::connect_many(target, keys, CONNECTIONS).await?;
    let sessions = session::register_all(sessions, &accounts).await?;
    let read_db = PgPool::connect(&target.read_db)
        .await
        .context("connecting to the read models' database")?;
    let (mut held, mut failed): (Option<f64>, Option<f64>) = (None, None);
    let mut rate = start.max(1.0);
    let mut done = Vec::with_capacity(steps);
    for _ in 0..steps {
        system.quiesce(QUIET).await?;
        let step = paced(&sessions, &accounts, &read_db, rate, length).await?;
        let (_, p99, _) = step.lag.quantiles();
        eprintln!(
            "  sustained: {rate:.0}/s asked, {:.0}/s sent, {} failed, lag p99 {:.1} ms ({} samples, {} unseen): {}",
            step.sent_rate,
            step.failures,
            crate::stats::ms(p99),
            step.lag.samples.len(),
            step.lag.timeouts,
            if step.held { "held" } else { "not held" }
        );
        if step.held {
            held = Some(held.map_or(rate, |h: f64| h.max(rate)));
        } else {
            failed = Some(failed.map_or(rate, |f: f64| f.min(rate)));
        }
        done.push(step);
        rate = match (held, failed) {
            (Some(held), None) => held * 1.5,
            (Some(held), Some(failed)) => (held + failed) / 2.0,
            (None, Some(failed)) => failed / 2.0,
            (None, None) => rate,
        };
    }
    read_db.close().await;
    Ok(Sustained {
        steps: done,
        length,
    })
}

/// One step: `rate` commands per second for `length`.
async fn paced(
    sessions: &[Session],
    accounts: &[String],
    read_db: &PgPool,
    rate: f64,
    length: Duration,
) -> anyhow::Result<Step> {
    let interval = Duration::from_secs_f64(1.0 / rate);
    let start = tokio::time::Instant::now();
    let mut tasks: JoinSet<Done> = JoinSet::new();
    let mut qr: Option<oneshot::Receiver<Option<String>>> = None;
    let mut link: Option<oneshot::Receiver<Option<String>>> = None;
    let (mut sent, mut failures, mut lag) = (0_u64, 0_u64, Lags::default());
    // A scan skipped because its IssueLinkQr or StartLink failed (kind `None`) counts as failed.
    let mut collect = |(kind, _, outcome, probe): Done| {
        if kind.is_none() || outcome.is_err() {
            failures += 1;
        }
        if let Some(probe) = probe {
            lag.push(probe);
        }
    };
    for k in 0_u64.. {
        let at = start + interval.mul_f64(k as f64);
        if at >= start + length {
            break;
        }
        tokio::time::sleep_until(at).await;
        let session = sessions[k as usize % sessions.len()].clone();
        let account = accounts[(k / 3) as usize % accounts.len()].clone();
        match k % 3 {
            0 => {
                let (tx, rx) = oneshot::channel();
                qr = Some(rx);
                let probe = (k / 3)
                    .is_multiple_of(SAMPLE_EVERY)
                    .then(|| read_db.clone());
                tasks.spawn(issue(session, account, tx, probe));
            }
            1 => {
                let (tx, rx) = oneshot::channel();
                link = Some(rx);
                tasks.spawn(open_loop::start_link(session, tx));
            }
            _ => {
                tasks.spawn(open_loop::scan(session, qr.take(), link.take()));
            }
        }
        sent += 1;
        while let Some(done) = tasks.try_join_next() {
            collect(done.context("a paced command's task failed")?);
        }
    }
    let elapsed = start.elapsed();
    while let Some(done) = tasks.join_next().await {
        collect(done.context("a paced command's task failed")?);
    }
    let sent_rate = sent as f64 / elapsed.as_secs_f64().max(1e-9);
    let (_, p99, _) = lag.quantiles();
    let held = sent_rate >= rate * 0.95
        && failures == 0
        && lag.timeouts == 0
        && !lag.samples.is_empty()
        && p99 <= LAG_BOUND;
    Ok(Step {
        rate,
        sent_rate,
        failures,
        lag,
        held,
    })
}

/// IssueLinkQr for `account`, its payload sent on to the scan; with `probe`, then polls the read
/// models until they applied it.
async fn issue(
    mut session: Session,
    account: String,
    pair: oneshot::Sender<Option<String>>,
    probe: Option<PgPool>,
) -> Done {
    let started = Instant::now();
    let outcome = session.issue_qr(&account).await;
    let elapsed = started.elapsed();
    let _ = pair.send(outcome.as_ref().ok().map(|qr| qr.payload.clone()));
    let probe = match (&outcome, probe) {
        (Ok(qr), Some(read_db)) => Some(applied(&read_db, &qr.id, started + elapsed).await),
        _ => None,
    };
    (Some(0), elapsed, outcome.map(drop), probe)
}

/// Polls the read models' guard for QR code `qr_id` until its first event is applied.
async fn applied(read_db: &PgPool, qr_id: &str, answered: Instant) -> Probe {
    let mut queries = 0;
    while answered.elapsed() < GIVE_UP {
        queries += 1;
        let applied: Option<i64> = sqlx::query_scalar(
            "SELECT last_sequence AS linkd_bench FROM projector_positions \
             WHERE projector = 'audit' AND aggregate_type = 'link_qr' AND aggregate_id = $1",
        )
        .bind(qr_id)
        .fetch_optional(read_db)
        .await
        .ok()
        .flatten();
        if applied.is_some_and(|sequence| sequence >= 1) {
            return Probe {
                seen: Some(answered.elapsed()),
                queries,
            };
        }
        tokio::time::sleep(POLL).await;
    }
    Probe::unseen(queries)
}
