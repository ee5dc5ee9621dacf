//! `linkd-bench anonymous`: what anonymous `StartLink` calls cost in storage under the default
//! rate limits. Starts an in-process command service of its own (scratch database and stream,
//! one trusted proxy so that `x-forwarded-for` stands for the client's address), sends
//! `--calls` StartLinks from one address, then the same number spread over `--addresses`
//! addresses, and prints what each run added to the database and to the stream.

use std::time::{Duration, Instant};

use anyhow::Context as _;
use async_nats::jetstream;
use command_service::startup::Application;
use proto::v1;
use proto::v1::device_service_client::DeviceServiceClient;
use sqlx::Connection as _;
use tonic::transport::Channel;

/// What to send.
#[derive(Debug, clap::Args)]
pub(crate) struct AnonymousArgs {
    /// StartLink calls per run.
    #[arg(long, default_value_t = 10_000)]
    calls: usize,
    /// Addresses the second run spreads its calls over.
    #[arg(long, default_value_t = 1_000)]
    addresses: usize,
    #[command(flatten)]
    scratch: ScratchArgs,
}

/// Where a scratch command service is started.
#[derive(Debug, clap::Args)]
pub(crate) struct ScratchArgs {
    /// The server the scratch database is created on.
    #[arg(long, default_value = "postgres://postgres@127.0.0.1:5432/postgres")]
    admin_db: String,
    /// The NATS server (a scratch stream is created and deleted).
    #[arg(long, default_value = "nats://127.0.0.1:4222")]
    pub(crate) nats_url: String,
    /// Development keys (`linkctl dev keys`).
    #[arg(long, default_value = ".dev/keys")]
    pub(crate) keys: std::path::PathBuf,
}

/// Runs the measurement on a scratch database and stream, removed afterwards.
pub(crate) async fn run(args: AnonymousArgs) -> anyhow::Result<()> {
    let scratch = Scratch::start(&args.scratch, &[("LINKD_TRUSTED_PROXY_HOPS", "1")]).await?;
    let outcome = measure(&args, &scratch).await;
    scratch.finish().await?;
    outcome
}

/// An in-process command service on a scratch database and stream of its own (`extra`: settings
/// beyond the defaults), removed by [`Scratch::finish`].
pub(crate) struct Scratch {
    admin: sqlx::PgConnection,
    database: String,
    nats_url: String,
    /// The scratch stream.
    pub(crate) stream: String,
    /// Its address, as a URL.
    pub(crate) url: String,
    /// Its database.
    pub(crate) pool: sqlx::PgPool,
    server: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl Scratch {
    /// Creates the database and starts the service.
    pub(crate) async fn start(args: &ScratchArgs, extra: &[(&str, &str)]) -> anyhow::Result<Self> {
        let (admin_db, nats_url, keys) = (&args.admin_db, &args.nats_url, &args.keys);
        let database = format!("linkd_bench_{}", uuid::Uuid::new_v4().simple());
        let mut admin = sqlx::PgConnection::connect(admin_db).await?;
        sqlx::query(&format!("CREATE DATABASE \"{database}\""))
            .execute(&mut admin)
            .await?;
        let url = match admin_db.rsplit_once('/') {
            Some((server, _)) => format!("{server}/{database}"),
            None => anyhow::bail!("--admin-db must end with a database name"),
        };
        let stream = format!("BENCH_{}", uuid::Uuid::new_v4().simple());
        let files = linkctl::dev::KeyFiles::in_dir(keys);
        let prefix = format!("bench.{}", uuid::Uuid::new_v4().simple());
        let app =
            Application::build(settings(&url, &files, nats_url, &stream, &prefix, extra)?).await?;
        let addr = app.local_addr();
        let pool = app.pool();
        let server = tokio::spawn(app.run_until_stopped(std::future::pending()));
        Ok(Self {
            admin,
            database,
            nats_url: nats_url.to_owned(),
            stream,
            url: format!("http://{addr}"),
            pool,
            server,
        })
    }

    /// Stops the service and removes its database and stream.
    pub(crate) async fn finish(mut self) -> anyhow::Result<()> {
        self.server.abort();
        self.pool.close().await;
        let _ = crate::system::drop_stream(&self.nats_url, &self.stream).await;
        sqlx::query(&format!(
            "DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)",
            self.database
        ))
        .execute(&mut self.admin)
        .await?;
        Ok(())
    }
}

async fn measure(args: &AnonymousArgs, scratch: &Scratch) -> anyhow::Result<()> {
    let stream = scratch.stream.as_str();
    let pool = scratch.pool.clone();
    let channel = Channel::from_shared(scratch.url.clone())?.connect().await?;
    let device = DeviceServiceClient::new(channel);
    let nats = jetstream::new(async_nats::connect(&args.scratch.nats_url).await?);

    println!("## Anonymous StartLink: storage under the default rate limits\n");
    println!(
        "| run | calls | accepted | refused (RESOURCE_EXHAUSTED) | database growth | per accepted call | stream growth | rate-limit rows | took |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    for (label, addresses) in [("one address", 1), ("spread", args.addresses)] {
        let before = Sizes::read(&pool, &nats, stream).await?;
        let started = Instant::now();
        let (accepted, refused) = send(&device, args.calls, addresses).await?;
        let took = started.elapsed();
        wait_for_relay(&pool, &nats, stream).await?;
        let after = Sizes::read(&pool, &nats, stream).await?;
        let database = after.database - before.database;
        let per_call = if accepted > 0 {
            format!("{:.0} B", database as f64 / accepted as f64)
        } else {
            "—".to_owned()
        };
        println!(
            "| {label} ({addresses} address{}) | {} | {accepted} | {refused} | {} | {per_call} | {} | {} | {:.1} s |",
            if addresses == 1 { "" } else { "es" },
            args.calls,
            kib(database),
            kib(after.stream - before.stream),
            after.rate_limit_rows,
            took.as_secs_f64()
        );
    }
    println!(
        "\nDatabase growth is `pg_database_size` (8 KiB pages; indexes included); the stream's is \
         JetStream's byte count. The projection service adds one audit row and guard rows per \
         event on its side. Spent rate-limit rows are swept within a minute of their period."
    );
    Ok(())
}

/// Sends `calls` StartLinks with fresh device ids, spread evenly over `addresses` addresses.
async fn send(
    device: &DeviceServiceClient<Channel>,
    calls: usize,
    addresses: usize,
) -> anyhow::Result<(usize, usize)> {
    let mut accepted = 0;
    let mut refused = 0;
    let mut tasks = tokio::task::JoinSet::new();
    let mut sent = 0;
    while sent < calls || !tasks.is_empty() {
        while sent < calls && tasks.len() < 16 {
            let address: tonic::metadata::MetadataValue<_> = format!(
                "198.18.{}.{}",
                (sent % addresses) / 250,
                (sent % addresses) % 250 + 1
            )
            .parse()?;
            let mut device = device.clone();
            tasks.spawn(async move {
                let mut request = tonic::Request::new(v1::StartLinkRequest {
                    device_id: uuid::Uuid::new_v4().to_string(),
                    device_name: "Bench phone".into(),
                    method: v1::LinkMethod::Qr.into(),
                    platform: v1::Platform::Android.into(),
                    app_version: "1.0.0".into(),
                    device_model: String::new(),
                    request_id: String::new(),
                });
                request.metadata_mut().insert("x-forwarded-for", address);
                device.start_link(request).await
            });
            sent += 1;
        }
        if let Some(done) = tasks.join_next().await {
            match done? {
                Ok(_) => accepted += 1,
                Err(status) if status.code() == tonic::Code::ResourceExhausted => refused += 1,
                Err(status) => anyhow::bail!("StartLink failed: {status}"),
            }
        }
    }
    Ok((accepted, refused))
}

struct Sizes {
    database: i64,
    stream: i64,
    rate_limit_rows: i64,
}

impl Sizes {
    async fn read(
        pool: &sqlx::PgPool,
        nats: &jetstream::Context,
        stream: &str,
    ) -> anyhow::Result<Self> {
        let database: i64 = sqlx::query_scalar("SELECT pg_database_size(current_database())")
            .fetch_one(pool)
            .await?;
        let rate_limit_rows: i64 = sqlx::query_scalar("SELECT count(*) FROM rate_limits")
            .fetch_one(pool)
            .await?;
        let stream = match nats.get_stream(stream).await {
            Ok(mut stream) => i64::try_from(stream.info().await?.state.bytes)?,
            Err(_) => 0,
        };
        Ok(Self {
            database,
            stream,
            rate_limit_rows,
        })
    }
}

/// Waits until the relay has published every event.
async fn wait_for_relay(
    pool: &sqlx::PgPool,
    nats: &jetstream::Context,
    stream: &str,
) -> anyhow::Result<()> {
    let events: i64 = sqlx::query_scalar("SELECT count(*) FROM events")
        .fetch_one(pool)
        .await?;
    for _ in 0..600 {
        if let Ok(mut s) = nats.get_stream(stream).await
            && i64::try_from(s.info().await?.state.messages)? >= events
        {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    anyhow::bail!("the relay did not publish {events} events within a minute")
}

fn kib(bytes: i64) -> String {
    format!("{:.0} KiB", bytes as f64 / 1024.0)
}

fn settings(
    url: &str,
    files: &linkctl::dev::KeyFiles,
    nats_url: &str,
    stream: &str,
    prefix: &str,
    extra: &[(&str, &str)],
) -> anyhow::Result<command_service::Settings> {
    let mut env = std::collections::HashMap::from([
        ("LINKD_COMMAND_DATABASE_URL", url.to_owned()),
        ("LINKD_COMMAND_GRPC_ADDR", "127.0.0.1:0".to_owned()),
        (
            "LINKD_IDP_PUBLIC_KEYS_FILE",
            files.idp_public.display().to_string(),
        ),
        (
            "LINKD_LUXTRUST_PUBLIC_KEYS_FILE",
            files.luxtrust_public.display().to_string(),
        ),
        ("LINKD_IDP_ISSUER", linkctl::dev::PORTAL_ISSUER.to_owned()),
        (
            "LINKD_LUXTRUST_ISSUER",
            linkctl::dev::LUXTRUST_ISSUER.to_owned(),
        ),
        ("LINKD_SECRET_CODE_PEPPER", "bench-pepper-".repeat(4)),
        ("LINKD_KEK_FILE", files.kek.display().to_string()),
        (
            "LINKD_BUS_SIGNING_KEY_FILE",
            files.bus_private.display().to_string(),
        ),
        ("LINKD_NATS_URL", nats_url.to_owned()),
        ("LINKD_STREAM", stream.to_owned()),
        ("LINKD_SUBJECT_PREFIX", prefix.to_owned()),
    ]);
    for (key, value) in extra {
        env.insert(key, (*value).to_owned());
    }
    let settings = command_service::Settings::from_lookup(|key| env.get(key).cloned())
        .context("the command service's settings")?;
    Ok(settings)
}
