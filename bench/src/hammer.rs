//! `linkd-bench hammer`: one device loops `VerifySecretCode` from many connections while other
//! accounts set their secret codes, with the rate limits lifted so that only the hashing pool's
//! bounds stand between them (ADR 0012). Prints the others' `SetSecretCode` latencies, what the
//! hammer got, and this process's resident memory (the service runs in it) before, at its peak
//! and after.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use linkctl::client::bearer;
use linkctl::dev::DevKeys;
use proto::v1;

use crate::anonymous::{Scratch, ScratchArgs};
use crate::session::Session;

/// The load.
#[derive(Debug, clap::Args)]
pub(crate) struct HammerArgs {
    /// Concurrent VerifySecretCode loops of the one device.
    #[arg(long, default_value_t = 64)]
    loops: usize,
    /// Other accounts that set their secret code meanwhile, one after another.
    #[arg(long, default_value_t = 8)]
    others: usize,
    /// How long the hammer runs.
    #[arg(long, default_value_t = 20)]
    seconds: u64,
    #[command(flatten)]
    scratch: ScratchArgs,
}

/// Every rule of the rate limits, lifted (`LINKD_RATE_LIMITS`).
fn no_rate_limits() -> String {
    command_service::limits::Rule::ALL
        .map(|rule| format!("{}=1000000/1", rule.name()))
        .join(",")
}

/// Runs the hammer on a scratch service.
pub(crate) async fn run(args: HammerArgs) -> anyhow::Result<()> {
    let lifted = no_rate_limits();
    let scratch = Scratch::start(
        &args.scratch,
        &[("LINKD_RATE_LIMITS", &lifted), ("LINKD_RELAY", "off")],
    )
    .await?;
    let outcome = hammer(&args, &scratch).await;
    scratch.finish().await?;
    outcome
}

async fn hammer(args: &HammerArgs, scratch: &Scratch) -> anyhow::Result<()> {
    let keys = Arc::new(DevKeys::load(&args.scratch.keys)?);
    let mut session = Session::connect_at(&scratch.url, &scratch.url, keys).await?;
    session.register("mallory").await?;
    let mallory = session.link_by_qr("mallory").await?;
    let mut waiting = Vec::with_capacity(args.others);
    for n in 0..args.others {
        let account = format!("citizen-{n}");
        session.register(&account).await?;
        waiting.push(ready_to_set_code(&mut session, &account).await?);
    }

    let before = rss_kib()?;
    let peak = Arc::new(AtomicU64::new(before));
    let stop = Arc::new(AtomicBool::new(false));
    let sampler = tokio::spawn({
        let (peak, stop) = (peak.clone(), stop.clone());
        async move {
            while !stop.load(Ordering::Relaxed) {
                if let Ok(now) = rss_kib() {
                    peak.fetch_max(now, Ordering::Relaxed);
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    });
    let mut loops = tokio::task::JoinSet::new();
    for _ in 0..args.loops {
        let mut device = session.grpc.device.clone();
        let (credential, stop) = (mallory.credential.clone(), stop.clone());
        loops.spawn(async move {
            let (mut verdicts, mut refused) = (0_u64, 0_u64);
            while !stop.load(Ordering::Relaxed) {
                let request = v1::VerifySecretCodeRequest {
                    secret_code: crate::session::CODE.into(),
                    request_id: String::new(),
                };
                let Ok(request) = bearer(request, &credential) else {
                    break;
                };
                match device.verify_secret_code(request).await {
                    Ok(_) => verdicts += 1,
                    Err(_) => refused += 1,
                }
            }
            (verdicts, refused)
        });
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let mut latencies = Vec::with_capacity(waiting.len());
    let started = Instant::now();
    for link_token in &waiting {
        let set = Instant::now();
        session
            .set_secret_code(link_token)
            .await
            .map_err(|f| anyhow::anyhow!("SetSecretCode under the hammer: {f}"))?;
        latencies.push(set.elapsed());
    }
    // Then on, to see whether memory keeps growing: one sample a second.
    let mut plateau = Vec::new();
    while started.elapsed() < Duration::from_secs(args.seconds) {
        tokio::time::sleep(Duration::from_secs(1)).await;
        plateau.push(rss_kib()?);
    }
    let hammered = started.elapsed() + Duration::from_secs(1);
    stop.store(true, Ordering::Relaxed);
    let (mut verdicts, mut refused) = (0, 0);
    while let Some(done) = loops.join_next().await {
        let (v, r) = done?;
        verdicts += v;
        refused += r;
    }
    let _ = sampler.await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let after = rss_kib()?;

    latencies.sort();
    let median = latencies
        .get(latencies.len() / 2)
        .copied()
        .unwrap_or_default();
    let longest = latencies.last().copied().unwrap_or_default();
    println!("## Hammer: one device's VerifySecretCode loops against other accounts' links\n");
    let (low, high) = (
        plateau.iter().min().copied().unwrap_or(after),
        plateau.iter().max().copied().unwrap_or(after),
    );
    println!(
        "| loops | hammered for | hammer verdicts | hammer refusals | others' SetSecretCode (median / longest) | RSS before | RSS under load, sampled each second (low–high) | RSS peak | RSS after |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    println!(
        "| {} | {:.1} s | {verdicts} | {refused} | {:.0} ms / {:.0} ms ({} links) | {} MiB | {}–{} MiB | {} MiB | {} MiB |",
        args.loops,
        hammered.as_secs_f64(),
        median.as_secs_f64() * 1e3,
        longest.as_secs_f64() * 1e3,
        latencies.len(),
        before / 1024,
        low / 1024,
        high / 1024,
        peak.load(Ordering::Relaxed) / 1024,
        after / 1024
    );
    println!(
        "\nRate limits lifted (only the hashing pool's bounds apply: one job per device or link \
         attempt, LINKD_HASH_CAPACITY jobs held). RSS is this process's, which runs the service."
    );
    Ok(())
}

/// A new device's link attempt for `account`, scanned and confirmed: its link token.
async fn ready_to_set_code(session: &mut Session, account: &str) -> anyhow::Result<String> {
    let failed = |step: &str, f: crate::stats::Failure| anyhow::anyhow!("{step}: {f}");
    let qr = session
        .issue_qr(account)
        .await
        .map_err(|f| failed("IssueLinkQr", f))?;
    let (_, start) = session
        .start_link(v1::LinkMethod::Qr)
        .await
        .map_err(|f| failed("StartLink", f))?;
    let code = session
        .scan_qr(&start.link_token, &qr.payload)
        .await
        .map_err(|f| failed("ScanQr", f))?;
    session
        .confirm_link(account, &qr.id, &code)
        .await
        .map_err(|f| failed("ConfirmLink", f))?;
    Ok(start.link_token)
}

/// This process's resident memory, in KiB.
fn rss_kib() -> anyhow::Result<u64> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .ok_or_else(|| anyhow::anyhow!("no VmRSS in /proc/self/status"))
}
