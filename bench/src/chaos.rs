//! `linkd-bench chaos`: a randomized fault campaign (issue 17, point 4). Everything runs on
//! loopback and is the campaign's own: a PostgreSQL cluster (`initdb`, `pg_ctl`), a NATS server,
//! the SMTP sink (`scripts/smtp-sink.py`), and the two services as processes of the given build.
//! Under a mixed load of link flows and unlinks, each round kills one of them at random
//! (`kill -9`; PostgreSQL: `pg_ctl stop -m immediate`), waits a random time, starts it again, and
//! times how long until a new registration reaches the read models. At the end, once the load
//! has stopped and the system has caught up, it checks:
//!
//! - every acknowledged command's events are in the store (a link's `DeviceLinked`, an unlink's
//!   `DeviceUnlinked`): **lost** must be 0;
//! - the stream holds every stored event, each aggregate's in order (copies are counted as
//!   duplicates absorbed);
//! - each read model equals a fold of the store (the devices' status, one audit row per event,
//!   every read model's guard at each aggregate's last sequence);
//! - every `DeviceLinked` has its email delivered, found in the sink by its Message-ID;
//! - no dead letters; every account's hash chain verifies.
//!
//! It prints the figures and fails on any violation.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use async_nats::jetstream;
use linkctl::dev::DevKeys;
use prost::Message as _;
use proto::v1::EventEnvelope;
use sqlx::PgPool;
use testkit::{OwnNats, OwnPostgres};

use crate::session::Session;

/// The campaign's options.
#[derive(Debug, clap::Args)]
pub(crate) struct ChaosArgs {
    /// Rounds: one kill and restart each.
    #[arg(long, default_value_t = 50)]
    rounds: usize,
    /// Clients driving link flows and unlinks, one account each.
    #[arg(long, default_value_t = 3)]
    clients: usize,
    /// Seed of the random choices (default: from the clock; printed, to replay a run).
    #[arg(long)]
    seed: Option<u64>,
    /// Where the `command-service` and `projection-service` binaries are.
    #[arg(long, default_value = "target/debug")]
    bin: PathBuf,
    /// The SMTP sink.
    #[arg(long, default_value = "scripts/smtp-sink.py")]
    smtp_sink: PathBuf,
    /// Stop the rounds after this many seconds, whatever their number.
    #[arg(long, default_value_t = 3600)]
    max_seconds: u64,
    /// Keep the scratch directory (keys, logs, mail) instead of removing it.
    #[arg(long)]
    keep: bool,
}

/// What is killed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Victim {
    CommandService,
    ProjectionService,
    Nats,
    SmtpSink,
    Postgres,
}

const VICTIMS: [Victim; 5] = [
    Victim::CommandService,
    Victim::ProjectionService,
    Victim::Nats,
    Victim::SmtpSink,
    Victim::Postgres,
];

/// splitmix64: deterministic for a seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, bound: u64) -> u64 {
        self.next() % bound.max(1)
    }

    fn millis(&mut self, from: u64, to: u64) -> Duration {
        Duration::from_millis(from + self.below(to - from))
    }
}

/// A process of the campaign's: how to start it, and the running child.
struct Process {
    name: &'static str,
    program: PathBuf,
    args: Vec<String>,
    env: Vec<(String, String)>,
    port: u16,
    log: PathBuf,
    child: Option<Child>,
}

impl Process {
    fn start(&mut self) -> anyhow::Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)?;
        let child = Command::new(&self.program)
            .args(&self.args)
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {} ({})", self.name, self.program.display()))?;
        self.child = Some(child);
        Ok(())
    }

    /// SIGKILL.
    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    async fn listening(&mut self, within: Duration) -> anyhow::Result<()> {
        let started = Instant::now();
        loop {
            if tokio::net::TcpStream::connect(("127.0.0.1", self.port))
                .await
                .is_ok()
            {
                return Ok(());
            }
            if let Some(child) = &mut self.child
                && let Some(status) = child.try_wait()?
            {
                anyhow::bail!(
                    "{} exited ({status}); see {}",
                    self.name,
                    self.log.display()
                );
            }
            anyhow::ensure!(
                started.elapsed() < within,
                "{} not listening on {} after {within:?}; see {}",
                self.name,
                self.port,
                self.log.display()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.kill();
    }
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// What the load was told was done.
#[derive(Debug, Default)]
struct Acknowledged {
    links: Vec<String>,
    unlinks: Vec<String>,
    failures: u64,
}

/// The campaign's figures.
#[derive(Debug, Default)]
struct Figures {
    rounds: usize,
    kills: BTreeMap<String, usize>,
    converge: Vec<Duration>,
}

/// Runs the campaign.
pub(crate) async fn run(args: ChaosArgs) -> anyhow::Result<()> {
    let seed = args.seed.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |since| since.as_secs())
    });
    let mut rng = Rng(seed);
    let scratch = std::env::temp_dir().join(format!("linkd-chaos-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(scratch.join("mail"))?;
    eprintln!(
        "chaos: seed {seed}, {} rounds, {} clients; scratch {}",
        args.rounds,
        args.clients,
        scratch.display()
    );
    let outcome = campaign(&args, &mut rng, &scratch).await;
    if args.keep || outcome.is_err() {
        eprintln!("chaos: logs, keys and mail kept in {}", scratch.display());
    } else {
        let _ = std::fs::remove_dir_all(&scratch);
    }
    outcome
}

#[allow(
    clippy::too_many_lines,
    reason = "the campaign reads best as one sequence: set up, rounds, convergence, checks"
)]
async fn campaign(args: &ChaosArgs, rng: &mut Rng, scratch: &Path) -> anyhow::Result<()> {
    // The back ends of the campaign's own.
    let postgres = OwnPostgres::start(&[]).await;
    let admin = PgPool::connect(&postgres.url).await?;
    for database in ["chaos_command", "chaos_projection"] {
        sqlx::query(&format!("CREATE DATABASE {database}"))
            .execute(&admin)
            .await?;
    }
    admin.close().await;
    let command_db = postgres.database_url("chaos_command");
    let read_db = postgres.database_url("chaos_projection");
    let mut nats = OwnNats::start().await;
    let keys_dir = scratch.join("keys");
    linkctl::dev::generate(&keys_dir)?;
    let key = |name: &str| keys_dir.join(name).display().to_string();
    let pepper =
        uuid::Uuid::new_v4().simple().to_string() + &uuid::Uuid::new_v4().simple().to_string();
    let (command_port, projection_port, smtp_port) = (free_port()?, free_port()?, free_port()?);
    let limits = [
        "start_link.address",
        "start_link.device",
        "scan_qr.address",
        "scan_qr.link_attempt",
        "set_secret_code.address",
        "set_secret_code.link_attempt",
        "issue_link_qr.account",
    ]
    .map(|rule| format!("{rule}=1000000/1"))
    .join(",");
    let common = vec![
        ("LINKD_NATS_URL".to_owned(), nats.url.clone()),
        ("LINKD_STREAM".to_owned(), "CHAOS".to_owned()),
        ("LINKD_SUBJECT_PREFIX".to_owned(), "chaos.events".to_owned()),
        // The default bound (10 GiB) is refused by a NATS server with less free disk than that.
        (
            "LINKD_STREAM_MAX_BYTES".to_owned(),
            (1u64 << 30).to_string(),
        ),
        ("LINKD_IDP_PUBLIC_KEYS_FILE".to_owned(), key("idp.pub.pem")),
        (
            "LINKD_IDP_ISSUER".to_owned(),
            linkctl::dev::PORTAL_ISSUER.to_owned(),
        ),
        ("LINKD_BUS_SIGNING_KEY_FILE".to_owned(), key("bus.key.pem")),
        ("LINKD_BUS_VERIFY_KEYS_FILE".to_owned(), key("bus.pub.pem")),
        ("LINKD_KEK_FILE".to_owned(), key("kek")),
        ("RUST_LOG".to_owned(), "info".to_owned()),
    ];
    let mut command_env = common.clone();
    command_env.extend(
        [
            ("LINKD_COMMAND_DATABASE_URL", command_db.clone()),
            (
                "LINKD_COMMAND_GRPC_ADDR",
                format!("127.0.0.1:{command_port}"),
            ),
            ("LINKD_LUXTRUST_PUBLIC_KEYS_FILE", key("luxtrust.pub.pem")),
            (
                "LINKD_LUXTRUST_ISSUER",
                linkctl::dev::LUXTRUST_ISSUER.to_owned(),
            ),
            ("LINKD_SECRET_CODE_PEPPER", pepper),
            ("LINKD_QR_CONFIRMATION_SECONDS", "600".to_owned()),
            ("LINKD_RATE_LIMITS", limits),
            ("LINKD_MAX_DEVICES_PER_ACCOUNT", "100".to_owned()),
        ]
        .map(|(k, v)| (k.to_owned(), v)),
    );
    let mut projection_env = common;
    projection_env.extend(
        [
            ("LINKD_PROJECTION_DATABASE_URL", read_db.clone()),
            ("LINKD_PROJECTION_GRPC_ADDR", format!("127.0.0.1:{projection_port}")),
            ("LINKD_CONSUMER_PREFIX", "chaos".to_owned()),
            ("LINKD_EVENT_STORE_URL", command_db.clone()),
            ("LINKD_SMTP_HOST", "127.0.0.1".to_owned()),
            ("LINKD_SMTP_PORT", smtp_port.to_string()),
            ("LINKD_SMTP_TLS", "none".to_owned()),
            ("LINKD_EMAIL_RETRY_BASE_MS", "100".to_owned()),
            ("LINKD_EMAIL_RETRY_MAX_DELAY_SECONDS", "2".to_owned()),
            (
                "LINKD_QUERY_RATE_LIMITS",
                "list_devices.account=1000000/1,get_device.account=1000000/1,audit.caller=1000000/1"
                    .to_owned(),
            ),
        ]
        .map(|(k, v)| (k.to_owned(), v)),
    );
    let logs = scratch.to_path_buf();
    let mut command = Process {
        name: "command-service",
        program: args.bin.join("command-service"),
        args: Vec::new(),
        env: command_env,
        port: command_port,
        log: logs.join("command-service.log"),
        child: None,
    };
    let mut projection = Process {
        name: "projection-service",
        program: args.bin.join("projection-service"),
        args: Vec::new(),
        env: projection_env,
        port: projection_port,
        log: logs.join("projection-service.log"),
        child: None,
    };
    let mut smtp = Process {
        name: "smtp-sink",
        program: PathBuf::from("python3"),
        args: vec![
            args.smtp_sink.display().to_string(),
            "--port".into(),
            smtp_port.to_string(),
            "--dir".into(),
            scratch.join("mail").display().to_string(),
        ],
        env: Vec::new(),
        port: smtp_port,
        log: logs.join("smtp-sink.log"),
        child: None,
    };
    const UP: Duration = Duration::from_secs(60);
    smtp.start()?;
    smtp.listening(UP).await?;
    command.start()?;
    command.listening(UP).await?;
    projection.start()?;
    projection.listening(UP).await?;

    let keys = Arc::new(DevKeys::load(&keys_dir)?);
    let addr = format!("http://127.0.0.1:{command_port}");
    let query_addr = format!("http://127.0.0.1:{projection_port}");
    let read = sqlx::postgres::PgPoolOptions::new()
        .max_connections(2)
        .acquire_timeout(Duration::from_secs(5))
        .connect_lazy(&read_db)?;
    let store = sqlx::postgres::PgPoolOptions::new()
        .max_connections(2)
        .acquire_timeout(Duration::from_secs(5))
        .connect_lazy(&command_db)?;

    // The load: each client links a phone to its account, and unlinks some.
    let acknowledged = Arc::new(Mutex::new(Acknowledged::default()));
    let stop = Arc::new(AtomicBool::new(false));
    let mut clients = Vec::new();
    for client in 0..args.clients {
        let mut session = Session::connect_at(&addr, &query_addr, keys.clone()).await?;
        let account = format!("chaos-{client}");
        session.register(&account).await?;
        let (acknowledged, stop) = (acknowledged.clone(), stop.clone());
        let mut dice = Rng(rng.next());
        clients.push(tokio::spawn(async move {
            let mut kept: Vec<String> = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let done = async {
                    if kept.len() >= 3 || (!kept.is_empty() && dice.below(2) == 0) {
                        let device = kept[0].clone();
                        session
                            .unlink(&account, &device)
                            .await
                            .map_err(|f| anyhow::anyhow!("{f}"))?;
                        kept.remove(0);
                        lock(&acknowledged).unlinks.push(device);
                    } else {
                        let linked = session.link_by_qr(&account).await?;
                        kept.push(linked.device_id.clone());
                        lock(&acknowledged).links.push(linked.device_id);
                    }
                    anyhow::Ok(())
                }
                .await;
                if done.is_err() {
                    lock(&acknowledged).failures += 1;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }));
    }

    // The rounds.
    let mut figures = Figures::default();
    let started = Instant::now();
    let mut probe = Session::connect_at(&addr, &query_addr, keys.clone()).await?;
    for round in 0..args.rounds {
        if started.elapsed() > Duration::from_secs(args.max_seconds) {
            eprintln!("chaos: time is up after {round} rounds");
            break;
        }
        tokio::time::sleep(rng.millis(200, 1500)).await;
        let victim = VICTIMS[usize::try_from(rng.below(VICTIMS.len() as u64)).unwrap_or(0)];
        *figures.kills.entry(format!("{victim:?}")).or_default() += 1;
        match victim {
            Victim::CommandService => command.kill(),
            Victim::ProjectionService => projection.kill(),
            Victim::Nats => nats.stop(),
            Victim::SmtpSink => smtp.kill(),
            Victim::Postgres => postgres.crash(),
        }
        tokio::time::sleep(rng.millis(100, 2000)).await;
        let restarted = Instant::now();
        match victim {
            Victim::CommandService => {
                command.start()?;
                command.listening(UP).await?;
            }
            Victim::ProjectionService => {
                projection.start()?;
                projection.listening(UP).await?;
            }
            Victim::Nats => nats.resume().await,
            Victim::SmtpSink => {
                smtp.start()?;
                smtp.listening(UP).await?;
            }
            Victim::Postgres => postgres.resume().await,
        }
        // Converged: a registration made now has reached the read models.
        let marker = format!("probe-{round}");
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            anyhow::ensure!(
                Instant::now() < deadline,
                "round {round} ({victim:?}): the probe registration was not accepted"
            );
            if probe.register(&marker).await.is_ok() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        loop {
            anyhow::ensure!(
                Instant::now() < deadline,
                "round {round} ({victim:?}): the probe did not reach the read models in 120 s"
            );
            let seen: Option<i64> =
                sqlx::query_scalar("SELECT 1::bigint FROM email_accounts WHERE account_id = $1")
                    .bind(&marker)
                    .fetch_optional(&read)
                    .await
                    .ok()
                    .flatten();
            if seen.is_some() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        figures.converge.push(restarted.elapsed());
        figures.rounds += 1;
        eprintln!(
            "chaos: round {round}: {victim:?} killed; converged in {:.2} s",
            restarted.elapsed().as_secs_f64()
        );
    }
    stop.store(true, Ordering::Relaxed);
    for client in clients {
        let _ = client.await;
    }

    // Caught up: the stream holds the store, the read models the stream, every email sent.
    let acknowledged = std::mem::take(&mut *lock(&acknowledged));
    let caught_up = Instant::now();
    let mut report = Vec::new();
    let deadline = caught_up + Duration::from_secs(180);
    let mut looks = 0u32;
    let (stream, exact) = loop {
        looks += 1;
        let stream = stream_check(&nats.url, &store).await;
        let exact = read_models_check(&store, &read).await;
        let emails = emails_check(&store, &read, &scratch.join("mail")).await;
        let done = matches!((&stream, &exact, &emails), (Ok(s), Ok(e), Ok(m))
            if s.missing.is_empty() && s.out_of_order == 0 && e.is_empty() && m.is_empty());
        if !done && looks.is_multiple_of(20) {
            eprintln!(
                "chaos: catching up: stream {}, read models {:?}, emails {}",
                match &stream {
                    Ok(s) => format!(
                        "{} missing, {} out of order",
                        s.missing.len(),
                        s.out_of_order
                    ),
                    Err(e) => format!("{e:#}"),
                },
                exact.as_ref().map_err(ToString::to_string),
                match &emails {
                    Ok(m) => format!("{} without delivery", m.len()),
                    Err(e) => format!("{e:#}"),
                }
            );
        }
        if done || Instant::now() > deadline {
            if let Ok(missing) = &emails
                && !missing.is_empty()
            {
                report.push(format!(
                    "{} DeviceLinked event(s) without a delivered email, e.g. {:?}",
                    missing.len(),
                    missing.iter().take(3).collect::<Vec<_>>()
                ));
            }
            if let Err(error) = &emails {
                report.push(format!("emails: {error:#}"));
            }
            break (stream?, exact?);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };

    // The checks.
    let linked: BTreeSet<String> = sqlx::query_scalar(
        "SELECT aggregate_id FROM events WHERE aggregate_type = 'device' \
         AND event_type = 'DeviceLinked'",
    )
    .fetch_all(&store)
    .await?
    .into_iter()
    .collect();
    let unlinked: BTreeSet<String> = sqlx::query_scalar(
        "SELECT aggregate_id FROM events WHERE aggregate_type = 'device' \
         AND event_type = 'DeviceUnlinked'",
    )
    .fetch_all(&store)
    .await?
    .into_iter()
    .collect();
    let lost = acknowledged
        .links
        .iter()
        .filter(|device| !linked.contains(*device))
        .count()
        + acknowledged
            .unlinks
            .iter()
            .filter(|device| !unlinked.contains(*device))
            .count();
    if lost > 0 {
        report.push(format!("{lost} acknowledged command(s) lost"));
    }
    if !stream.missing.is_empty() {
        report.push(format!(
            "the stream lacks {} stored event(s), e.g. {:?}",
            stream.missing.len(),
            stream.missing.iter().take(3).collect::<Vec<_>>()
        ));
    }
    if stream.out_of_order > 0 {
        report.push(format!(
            "{} event(s) on the stream before an earlier one of their aggregate",
            stream.out_of_order
        ));
    }
    report.extend(exact.iter().cloned());
    let parked: i64 = sqlx::query_scalar("SELECT count(*) FROM dead_letters")
        .fetch_one(&read)
        .await?;
    if parked > 0 {
        report.push(format!("{parked} dead letter(s)"));
    }
    let accounts: Vec<String> = sqlx::query_scalar(
        "SELECT DISTINCT aggregate_id FROM events WHERE aggregate_type = 'account'",
    )
    .fetch_all(&store)
    .await?;
    for account in &accounts {
        if let history::Verdict::Broken {
            event_id, reason, ..
        } = history::verify_account(&store, account).await?
        {
            report.push(format!(
                "{account}'s history is broken at {event_id}: {reason}"
            ));
        }
    }

    // The figures.
    let stored: i64 = sqlx::query_scalar("SELECT count(*) FROM events")
        .fetch_one(&store)
        .await?;
    let mut converge = figures.converge.clone();
    converge.sort();
    let percentile = |p: f64| {
        converge
            .get(((converge.len() as f64 - 1.0) * p).round() as usize)
            .map_or(0.0, Duration::as_secs_f64)
    };
    println!("## Fault campaign (`linkd-bench chaos`)\n");
    println!("| figure | value |\n|---|---|");
    println!("| rounds | {} |", figures.rounds);
    for (victim, kills) in &figures.kills {
        println!("| kills: {victim} | {kills} |");
    }
    println!(
        "| acknowledged commands | {} ({} links, {} unlinks; {} calls failed during faults) |",
        acknowledged.links.len() + acknowledged.unlinks.len(),
        acknowledged.links.len(),
        acknowledged.unlinks.len(),
        acknowledged.failures
    );
    println!("| lost | {lost} |");
    println!("| events stored | {stored} |");
    println!(
        "| duplicates absorbed (stream copies beyond one per event) | {} |",
        stream.duplicates
    );
    println!(
        "| time to converge after a restart, p50 / p99 | {:.2} s / {:.2} s |",
        percentile(0.5),
        percentile(0.99)
    );
    println!(
        "| caught up after the load stopped | {:.1} s |",
        caught_up.elapsed().as_secs_f64()
    );
    println!(
        "| accounts whose chain verifies | {} of {} |",
        accounts.len()
            - report
                .iter()
                .filter(|r| r.contains("history is broken"))
                .count(),
        accounts.len()
    );
    println!("| violations | {} |", report.len());
    for violation in &report {
        println!("- {violation}");
    }
    drop(projection);
    drop(command);
    drop(smtp);
    anyhow::ensure!(report.is_empty(), "{} violation(s)", report.len());
    Ok(())
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// What the stream holds against the store.
struct StreamCheck {
    missing: Vec<String>,
    out_of_order: usize,
    duplicates: usize,
}

async fn stream_check(nats_url: &str, store: &PgPool) -> anyhow::Result<StreamCheck> {
    let context = jetstream::new(async_nats::connect(nats_url).await?);
    let mut stream = context.get_stream("CHAOS").await?;
    let state = stream.info().await?.state.clone();
    let mut seen: BTreeMap<(String, String), i64> = BTreeMap::new();
    let mut ids = BTreeSet::new();
    let (mut out_of_order, mut copies) = (0, 0);
    for sequence in state.first_sequence..=state.last_sequence {
        let Ok(message) = stream.get_raw_message(sequence).await else {
            continue;
        };
        let envelope = EventEnvelope::decode(message.payload.as_ref())?;
        if !ids.insert(envelope.event_id.clone()) {
            copies += 1;
            continue;
        }
        let last = seen
            .entry((envelope.aggregate_type, envelope.aggregate_id))
            .or_default();
        if envelope.sequence != *last + 1 {
            out_of_order += 1;
        }
        *last = (*last).max(envelope.sequence);
    }
    let stored: Vec<String> = sqlx::query_scalar(
        "SELECT aggregate_type || '/' || aggregate_id || '/' || sequence FROM events",
    )
    .fetch_all(store)
    .await?;
    let missing = stored.into_iter().filter(|id| !ids.contains(id)).collect();
    Ok(StreamCheck {
        missing,
        out_of_order,
        duplicates: copies,
    })
}

/// How the read models differ from a fold of the store (empty: they are exact).
async fn read_models_check(store: &PgPool, read: &PgPool) -> anyhow::Result<Vec<String>> {
    let mut differences = Vec::new();
    // Each aggregate's last sequence, and each device's status after its last link or unlink.
    let last: BTreeMap<(String, String), i64> = sqlx::query_as::<_, (String, String, i64)>(
        "SELECT aggregate_type, aggregate_id, max(sequence) FROM events GROUP BY 1, 2",
    )
    .fetch_all(store)
    .await?
    .into_iter()
    .map(|(kind, id, sequence)| ((kind, id), sequence))
    .collect();
    let status: BTreeMap<String, String> = sqlx::query_as::<_, (String, String)>(
        "SELECT DISTINCT ON (aggregate_id) aggregate_id, \
         CASE event_type WHEN 'DeviceLinked' THEN 'linked' ELSE 'unlinked' END \
         FROM events WHERE aggregate_type = 'device' \
         AND event_type IN ('DeviceLinked', 'DeviceUnlinked') \
         ORDER BY aggregate_id, sequence DESC",
    )
    .fetch_all(store)
    .await?
    .into_iter()
    .collect();
    let projected: BTreeMap<String, String> =
        sqlx::query_as::<_, (String, String)>("SELECT device_id::text, status FROM devices")
            .fetch_all(read)
            .await?
            .into_iter()
            .collect();
    if projected != status {
        let wrong = status
            .iter()
            .filter(|(device, status)| projected.get(*device) != Some(status))
            .count();
        differences.push(format!("devices: {wrong} device(s) differ from the store"));
    }
    for projector in ["devices", "audit", "notifier"] {
        let guards: BTreeMap<(String, String), i64> = sqlx::query_as::<_, (String, String, i64)>(
            "SELECT aggregate_type, aggregate_id, last_sequence FROM projector_positions \
                 WHERE projector = $1",
        )
        .bind(projector)
        .fetch_all(read)
        .await?
        .into_iter()
        .map(|(kind, id, sequence)| ((kind, id), sequence))
        .collect();
        let expected: BTreeMap<(String, String), i64> = last
            .iter()
            .filter(|((kind, _), _)| match projector {
                "devices" => kind == "device",
                "notifier" => kind == "device" || kind == "account",
                _ => true,
            })
            .map(|(key, sequence)| (key.clone(), *sequence))
            .collect();
        if guards != expected {
            differences.push(format!(
                "{projector}: guards of {} aggregate(s) differ from the store",
                expected
                    .iter()
                    .filter(|(key, sequence)| guards.get(*key) != Some(sequence))
                    .count()
            ));
        }
    }
    // The audit witness: per aggregate, its last event that names an account (any, for a link
    // attempt), as the store says.
    let witnessed: Vec<(String, String, i64)> = sqlx::query_as(
        "SELECT aggregate_type, aggregate_id, max(last_sequence) FROM audit_heads \
         GROUP BY aggregate_type, aggregate_id ORDER BY aggregate_type, aggregate_id",
    )
    .fetch_all(read)
    .await?;
    let stored: Vec<(String, String, i64)> = sqlx::query_as(
        "SELECT aggregate_type, aggregate_id, max(sequence) FROM events \
         WHERE aggregate_type IN ('account', 'link_attempt') \
            OR coalesce(metadata::jsonb ->> 'account_id', '') <> '' \
            OR data_subject LIKE 'account:%' \
         GROUP BY aggregate_type, aggregate_id ORDER BY aggregate_type, aggregate_id",
    )
    .fetch_all(store)
    .await?;
    if witnessed != stored {
        differences.push(format!(
            "audit witness: {} aggregate(s) for {} in the store, or at other events",
            witnessed.len(),
            stored.len()
        ));
    }
    Ok(differences)
}

/// The `DeviceLinked` events whose email is not in the sink by its Message-ID.
async fn emails_check(store: &PgPool, read: &PgPool, mail: &Path) -> anyhow::Result<Vec<String>> {
    let linked: Vec<String> = sqlx::query_scalar(
        "SELECT aggregate_type || '/' || aggregate_id || '/' || sequence FROM events \
         WHERE event_type = 'DeviceLinked'",
    )
    .fetch_all(store)
    .await?;
    let queued: BTreeMap<String, String> = sqlx::query_as::<_, (String, String)>(
        "SELECT event_id, message_id FROM email_outbox WHERE kind = 'device_linked'",
    )
    .fetch_all(read)
    .await?
    .into_iter()
    .collect();
    let mut delivered = BTreeSet::new();
    for entry in std::fs::read_dir(mail)? {
        let path = entry?.path();
        if path.extension().is_none_or(|extension| extension != "eml") {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        for line in text.lines() {
            if let Some(id) = line
                .strip_prefix("Message-ID:")
                .or_else(|| line.strip_prefix("Message-Id:"))
            {
                delivered.insert(id.trim().to_owned());
            }
        }
    }
    Ok(linked
        .into_iter()
        .filter(|event| {
            queued
                .get(event)
                .is_none_or(|message_id| !delivered.contains(message_id))
        })
        .collect())
}
