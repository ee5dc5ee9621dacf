//! `linkd-bench audit`: fills an event store with 1,000,000 events over 100,000 accounts (plus
//! one account with a long history), serves their history with an in-process projection service
//! (which reads it from the event store, docs/adr/0029), and measures `ListEvents` first-page
//! latency for one account and `ExportHistory` throughput.

use std::time::{Duration, Instant};

use anyhow::Context as _;
use linkctl::client::bearer;
use linkctl::dev::DevKeys;
use proto::v1;
use proto::v1::audit_service_client::AuditServiceClient;
use sqlx::Connection as _;

use crate::stats::percentile;

/// What to measure.
#[derive(Debug, clap::Args)]
pub(crate) struct AuditArgs {
    /// Events spread over the ordinary accounts.
    #[arg(long, default_value_t = 1_000_000)]
    events: i64,
    /// Ordinary accounts.
    #[arg(long, default_value_t = 100_000)]
    accounts: i64,
    /// Events of the one long history that ExportHistory streams.
    #[arg(long, default_value_t = 100_000)]
    long_history: i64,
    /// ListEvents calls to time.
    #[arg(long, default_value_t = 300)]
    queries: usize,
    /// The server the scratch database is created on.
    #[arg(long, default_value = "postgres://postgres@127.0.0.1:5432/postgres")]
    admin_db: String,
    /// Development keys (for an auditor's token and the service's key file).
    #[arg(long, default_value = ".dev/keys")]
    keys: std::path::PathBuf,
}

/// Runs the audit benchmark.
pub(crate) async fn run(args: AuditArgs) -> anyhow::Result<()> {
    let keys = DevKeys::load(&args.keys)?;
    let suffix = uuid::Uuid::new_v4().simple().to_string();
    let names = [
        format!("linkd_bench_audit_{suffix}"),
        format!("linkd_bench_audit_store_{suffix}"),
    ];
    let mut admin = sqlx::PgConnection::connect(&args.admin_db).await?;
    for name in &names {
        sqlx::query(&format!("CREATE DATABASE \"{name}\""))
            .execute(&mut admin)
            .await?;
    }
    let url = |name: &str| match args.admin_db.rsplit_once('/') {
        Some((server, _)) => Ok(format!("{server}/{name}")),
        None => Err(anyhow::anyhow!("--admin-db must end with a database name")),
    };
    let outcome = match (url(&names[0]), url(&names[1])) {
        (Ok(read), Ok(store)) => measure(&args, &keys, &read, &store).await,
        (Err(error), _) | (_, Err(error)) => Err(error),
    };
    for name in &names {
        sqlx::query(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))
            .execute(&mut admin)
            .await?;
    }
    outcome
}

async fn measure(args: &AuditArgs, keys: &DevKeys, url: &str, store: &str) -> anyhow::Result<()> {
    projection_service::startup::connect_and_migrate(url).await?;
    let events = sqlx::PgPool::connect(store).await?;
    sqlx::migrate!("../command-service/migrations")
        .run(&events)
        .await
        .context("migrating the scratch event store")?;
    let started = Instant::now();
    // Each account's device, `per` events of it, the accounts' events interleaved in the store
    // as they would be; sealed for their account as the command service writes them (the
    // fields of these types are not personal, so nothing is to open).
    let fill = |accounts: i64, per: i64, account: &str| {
        format!(
            "INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type, \
             event_version, payload, metadata, data_subject) \
             SELECT 'device', {account} || '-phone', s, \
                    (ARRAY['BiometricsEnabled', 'SecretCodeVerified', 'BiometricsDisabled'])[1 + s % 3], \
                    '1', json_build_object( \
                        (ARRAY['BiometricsEnabled', 'SecretCodeVerified', 'BiometricsDisabled'])[1 + s % 3], \
                        json_build_object('at', now())), \
                    json_build_object('account_id', {account}, 'actor', 'device:bench', \
                                      'request_id', 'bench'), \
                    'account:' || {account} \
             FROM generate_series(1, {per}) s, generate_series(0, {accounts} - 1) a \
             ORDER BY s, a"
        )
    };
    sqlx::query(&fill(
        args.accounts,
        args.events / args.accounts.max(1),
        "'bench-' || a",
    ))
    .execute(&events)
    .await
    .context("filling the event store")?;
    sqlx::query(&fill(1, args.long_history, "'bench-long'"))
        .execute(&events)
        .await
        .context("filling the long history")?;
    sqlx::query("ANALYZE events").execute(&events).await?;
    events.close().await;
    println!(
        "event store filled: {} events over {} accounts + {} for one account, in {:.1} s",
        args.events,
        args.accounts,
        args.long_history,
        started.elapsed().as_secs_f64()
    );

    let settings = projection_service::Settings::from_lookup(|key| match key {
        "LINKD_PROJECTION_DATABASE_URL" => Some(url.to_owned()),
        "LINKD_EVENT_STORE_URL" => Some(store.to_owned()),
        "LINKD_IDP_ISSUER" => Some(linkctl::dev::PORTAL_ISSUER.to_owned()),
        // The bench's auditor makes hundreds of calls; the default limit is 20 per 15 s.
        "LINKD_QUERY_RATE_LIMITS" => Some("audit.caller=1000000/1".to_owned()),
        "LINKD_PROJECTION_GRPC_ADDR" => Some("127.0.0.1:0".to_owned()),
        "LINKD_IDP_PUBLIC_KEYS_FILE" => {
            Some(args.keys.join("idp.pub.pem").to_string_lossy().into_owned())
        }
        "LINKD_BUS_VERIFY_KEYS_FILE" => {
            Some(args.keys.join("bus.pub.pem").to_string_lossy().into_owned())
        }
        "LINKD_EMAIL" => Some("off".to_owned()),
        "LINKD_STREAM" => Some("LINKD_BENCH_UNUSED".to_owned()),
        _ => None,
    })?;
    let app = projection_service::Application::build(settings).await?;
    let addr = app.local_addr();
    let server = tokio::spawn(app.run_until_stopped(std::future::pending()));
    let channel = tonic::transport::Channel::from_shared(format!("http://{addr}"))?
        .connect()
        .await?;
    let mut client = AuditServiceClient::new(channel);
    let auditor = keys.auditor_token()?;

    let mut latencies = Vec::with_capacity(args.queries);
    for n in 0..args.queries {
        let account = format!("bench-{}", (n * 7919) % usize::try_from(args.accounts)?);
        let request = v1::ListEventsRequest {
            account_id: account,
            ..Default::default()
        };
        let started = Instant::now();
        let page = client
            .list_events(bearer(request, &auditor)?)
            .await?
            .into_inner();
        latencies.push(started.elapsed());
        anyhow::ensure!(!page.events.is_empty(), "an account without events");
    }
    latencies.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!(
        "ListEvents first page, one account of ~{} events: p50 {:.2} ms  p99 {:.2} ms  ({} calls)",
        args.events / args.accounts,
        ms(percentile(&latencies, 0.5)),
        ms(percentile(&latencies, 0.99)),
        latencies.len()
    );

    let started = Instant::now();
    let request = v1::ExportHistoryRequest {
        account_id: "bench-long".into(),
    };
    let mut stream = client
        .export_history(bearer(request, &auditor)?)
        .await?
        .into_inner();
    let mut exported = 0_u64;
    while stream.message().await?.is_some() {
        exported += 1;
    }
    let elapsed = started.elapsed();
    println!(
        "ExportHistory: {exported} events in {:.2} s = {:.0} events/s",
        elapsed.as_secs_f64(),
        exported as f64 / elapsed.as_secs_f64()
    );
    server.abort();
    Ok(())
}
