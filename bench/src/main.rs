//! `linkd-bench flows`: complete QR link flows against running services (the README's first
//! command), measuring command latency and projection lag (SetSecretCode acknowledged -> the
//! device visible through GetDevice without a consistency token), then counting events in the
//! store, in the stream and in the read model.
#![allow(clippy::print_stdout, reason = "a benchmark prints its figures")]

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use clap::Parser;
use linkctl::client::{Clients, bearer};
use linkctl::dev::DevKeys;
use proto::v1;
use tokio::sync::Semaphore;
use uuid::Uuid;

mod audit;

/// Load and scale benchmarks for linkd; each prints its figures.
#[derive(Debug, Parser)]
enum Bench {
    /// Complete QR link flows against running services (`./scripts/run.sh`).
    Flows(Args),
    /// The audit log at 1,000,000 events: ListEvents latency, ExportHistory throughput.
    Audit(audit::AuditArgs),
}

/// Drives complete link flows through linkd and prints figures.
#[derive(Debug, clap::Args)]
struct Args {
    /// Link flows to run.
    #[arg(long, default_value_t = 1000)]
    flows: usize,
    /// Flows in flight at once.
    #[arg(long, default_value_t = 8)]
    concurrency: usize,
    /// Devices per account.
    #[arg(long, default_value_t = 20)]
    devices_per_account: usize,
    #[arg(long, default_value = "http://127.0.0.1:50051")]
    addr: String,
    #[arg(long, default_value = "http://127.0.0.1:50052")]
    query_addr: String,
    #[arg(long, default_value = ".dev/keys")]
    keys: PathBuf,
    #[arg(
        long,
        default_value = "postgres://postgres@127.0.0.1:5432/linkd_command"
    )]
    command_db: String,
    #[arg(
        long,
        default_value = "postgres://postgres@127.0.0.1:5432/linkd_projection"
    )]
    read_db: String,
    #[arg(long, default_value = "nats://127.0.0.1:4222")]
    nats_url: String,
    #[arg(long, default_value = "LINKD_EVENTS")]
    stream: String,
}

#[derive(Debug, Default)]
struct Flow {
    command: Duration,
    lag: Duration,
}

pub(crate) fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

async fn flow(mut clients: Clients, keys: &DevKeys, account: &str) -> anyhow::Result<Flow> {
    let citizen = keys.citizen_token(account, 0)?;
    let started = Instant::now();
    let qr = clients
        .portal
        .issue_link_qr(bearer(v1::IssueLinkQrRequest::default(), &citizen)?)
        .await?
        .into_inner();
    let device_id = Uuid::new_v4().to_string();
    let start = clients
        .device
        .start_link(v1::StartLinkRequest {
            device_id: device_id.clone(),
            device_name: "Bench phone".into(),
            method: v1::LinkMethod::Qr.into(),
            platform: v1::Platform::Android.into(),
            app_version: "1.0.0".into(),
            request_id: String::new(),
        })
        .await?
        .into_inner();
    clients
        .device
        .scan_qr(v1::ScanQrRequest {
            link_token: start.link_token.clone(),
            qr_payload: qr.qr_payload,
            request_id: String::new(),
        })
        .await?;
    clients
        .device
        .set_secret_code(v1::SetSecretCodeRequest {
            link_token: start.link_token,
            secret_code: "482913".into(),
            request_id: String::new(),
        })
        .await?;
    let acked = Instant::now();
    loop {
        let request = v1::GetDeviceRequest {
            device_id: device_id.clone(),
            consistency_token: String::new(),
        };
        match clients.queries.get_device(bearer(request, &citizen)?).await {
            Ok(_) => break,
            Err(status) if status.code() == tonic::Code::NotFound => {}
            Err(status) => return Err(status.into()),
        }
        anyhow::ensure!(
            acked.elapsed() < Duration::from_secs(60),
            "device never became visible"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    Ok(Flow {
        command: acked - started,
        lag: acked.elapsed(),
    })
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Bench::parse() {
        Bench::Flows(args) => flows(args).await,
        Bench::Audit(args) => audit::run(args).await,
    }
}

async fn flows(args: Args) -> anyhow::Result<()> {
    let keys = Arc::new(DevKeys::load(&args.keys)?);
    let clients = Clients::connect(&args.addr, &args.query_addr).await?;
    let accounts: Vec<String> = (0..args.flows.div_ceil(args.devices_per_account))
        .map(|_| format!("bench-{}", &Uuid::new_v4().simple().to_string()[..12]))
        .collect();
    let system = keys.system_token()?;
    for account in &accounts {
        let request = v1::RegisterAccountRequest {
            account_id: account.clone(),
            email: format!("{account}@example.lu"),
            language: "en".into(),
            request_id: String::new(),
        };
        clients
            .portal
            .clone()
            .register_account(bearer(request, &system)?)
            .await?;
    }
    println!(
        "linkd-bench: {} QR link flows, {} at once",
        args.flows, args.concurrency
    );
    let limit = Arc::new(Semaphore::new(args.concurrency));
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for n in 0..args.flows {
        let permit = limit.clone().acquire_owned().await?;
        let (clients, keys) = (clients.clone(), keys.clone());
        let account = accounts[n / args.devices_per_account].clone();
        tasks.spawn(async move {
            let outcome = flow(clients, &keys, &account).await;
            drop(permit);
            outcome
        });
    }
    let mut flows = Vec::with_capacity(args.flows);
    let mut errors = 0;
    while let Some(outcome) = tasks.join_next().await {
        match outcome? {
            Ok(flow) => flows.push(flow),
            Err(error) => {
                errors += 1;
                if errors <= 5 {
                    println!("error: {error:#}");
                }
            }
        }
    }
    let elapsed = started.elapsed();
    let mut commands: Vec<Duration> = flows.iter().map(|f| f.command).collect();
    let mut lags: Vec<Duration> = flows.iter().map(|f| f.lag).collect();
    commands.sort();
    lags.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!(
        "flows completed          {} ({errors} errors) in {:.1} s",
        flows.len(),
        elapsed.as_secs_f64()
    );
    println!(
        "flows per second         {:.1}",
        flows.len() as f64 / elapsed.as_secs_f64()
    );
    println!(
        "flow latency (4 calls)   p50 {:.1} ms  p99 {:.1} ms  max {:.1} ms",
        ms(percentile(&commands, 0.5)),
        ms(percentile(&commands, 0.99)),
        ms(commands.last().copied().unwrap_or_default())
    );
    println!(
        "ack -> visible (no token) p50 {:.1} ms  p99 {:.1} ms  max {:.1} ms",
        ms(percentile(&lags, 0.5)),
        ms(percentile(&lags, 0.99)),
        ms(lags.last().copied().unwrap_or_default())
    );
    let command_db = sqlx::PgPool::connect(&args.command_db)
        .await
        .context("command database")?;
    let read_db = sqlx::PgPool::connect(&args.read_db)
        .await
        .context("read database")?;
    let stored: i64 = sqlx::query_scalar("SELECT count(*) FROM events")
        .fetch_one(&command_db)
        .await?;
    let device_events: i64 =
        sqlx::query_scalar("SELECT count(*) FROM events WHERE aggregate_type = 'device'")
            .fetch_one(&command_db)
            .await?;
    let projected: Option<i64> = sqlx::query_scalar(
        "SELECT sum(last_sequence)::bigint FROM projector_positions WHERE projector = 'devices'",
    )
    .fetch_one(&read_db)
    .await?;
    let client = async_nats::connect(&args.nats_url).await?;
    let mut stream = async_nats::jetstream::new(client)
        .get_stream(&args.stream)
        .await?;
    let published = stream.info().await?.state.messages;
    println!("events in the store      {stored} ({device_events} device events)");
    println!("events in the stream     {published}");
    println!("device events projected  {}", projected.unwrap_or(0));
    Ok(())
}
