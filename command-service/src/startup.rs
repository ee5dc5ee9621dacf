//! Builds the command service: pool, migrations, event store, gRPC server with health and
//! reflection.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context as _;
use proto::v1::device_service_server::DeviceServiceServer;
use proto::v1::portal_service_server::PortalServiceServer;
use service_kit::bus_signing::{BusKeys, BusSigner};
use service_kit::grpc::{GrpcServer, MAX_MESSAGE_BYTES};
use service_kit::metrics::Metrics;
use sqlx::PgPool;
use tokio::net::TcpListener;
use tracing::Instrument as _;

use crate::app::{App, Lifetimes};
use crate::config::Settings;
use crate::credentials::Credentials;
use crate::grpc::Api;
use crate::hashing::CodeHasher;
use crate::idempotency::RequestLog;
use crate::relay::{RelayMetrics, RelaySettings};
use crate::sealing::Keks;
use crate::store::{EventStore, snapshot};
use identity::{Checks, KeySet};

/// A built, not yet running, command service.
#[derive(Debug)]
pub struct Application {
    listener: TcpListener,
    local_addr: SocketAddr,
    api: Api,
    pool: PgPool,
    settings: Settings,
    relay_crash_point: Option<std::sync::Arc<std::sync::atomic::AtomicBool>>,
    /// Told when shutdown begins, so that open `WatchLinkQr` streams end and the drain finishes.
    stopping: tokio::sync::watch::Sender<bool>,
    metrics: Metrics,
    /// Bound when `LINKD_COMMAND_METRICS_ADDR` is set.
    metrics_listener: Option<TcpListener>,
    /// The gRPC server's TLS, its files read and checked.
    tls: Option<tonic::transport::ServerTlsConfig>,
    /// The relay's signing key, loaded at build.
    bus_signer: Option<Arc<BusSigner>>,
}

/// Connects to the database named in `settings` and applies the migrations.
pub async fn connect_and_migrate(settings: &Settings) -> anyhow::Result<PgPool> {
    let pool = service_kit::database::pool_options(settings.db_max_connections)
        .connect(&settings.database_url.0)
        .await
        .context("connecting to the event store database (LINKD_COMMAND_DATABASE_URL)")?;
    sqlx::migrate!("./migrations")
        .run(&pool)
        .await
        .context("migrating the event store")?;
    Ok(pool)
}

/// The KEKs from `LINKD_KEK_FILE`, checked against the store: every data key must be wrapped
/// under a KEK the file holds, or its subject's personal data could not be read (the service
/// refuses to start rather than fail call by call).
pub async fn load_keks(settings: &Settings, pool: &sqlx::PgPool) -> anyhow::Result<Keks> {
    let keks = Keks::load(&settings.kek_file)?;
    let used: Vec<(String, i64)> = sqlx::query_as(
        "SELECT kek_id, count(*) FROM data_keys WHERE wrapped IS NOT NULL GROUP BY kek_id",
    )
    .fetch_all(pool)
    .await
    .context("reading which KEKs wrap the data keys")?;
    for (kek_id, keys) in &used {
        if !keks.holds(kek_id) {
            anyhow::bail!(
                "{keys} data keys are wrapped under KEK '{kek_id}', which LINKD_KEK_FILE ({}) \
                 does not hold: add it back (earlier lines unwrap, the last one wraps new keys), \
                 then `command-service rewrap-keys` moves them to the current KEK",
                settings.kek_file.display()
            );
        }
    }
    let old: i64 = used
        .iter()
        .filter(|(kek_id, _)| kek_id != keks.current_id())
        .map(|(_, keys)| keys)
        .sum();
    if old > 0 {
        tracing::info!(
            keys = old,
            current = keks.current_id(),
            "data keys wrapped under an older KEK; `command-service rewrap-keys` moves them to \
             the current one, after which the older KEKs can be removed"
        );
    }
    Ok(keks)
}

fn seconds(duration: std::time::Duration) -> i64 {
    i64::try_from(duration.as_secs()).unwrap_or(i64::MAX)
}

fn duration(std: std::time::Duration) -> anyhow::Result<chrono::Duration> {
    chrono::Duration::from_std(std).context("duration out of range")
}

impl Application {
    /// Connects, migrates, loads keys and binds the listener (port 0 picks a free port).
    pub async fn build(settings: Settings) -> anyhow::Result<Self> {
        let pool = connect_and_migrate(&settings).await?;
        let keks = load_keks(&settings, &pool).await?;
        let idp = KeySet::from_pem_file(
            &settings.idp_public_keys_file,
            Checks {
                audience: settings.idp_audience.clone(),
                issuer: settings.idp_issuer.clone(),
                max_lifetime_seconds: seconds(settings.idp_max_token_lifetime),
            },
        )
        .context("loading the identity provider's keys (LINKD_IDP_PUBLIC_KEYS_FILE)")?;
        let luxtrust = KeySet::from_pem_file(
            &settings.luxtrust_public_keys_file,
            Checks {
                audience: settings.luxtrust_audience.clone(),
                issuer: settings.luxtrust_issuer.clone(),
                max_lifetime_seconds: seconds(settings.luxtrust_max_assertion_age),
            },
        )
        .context("loading the LuxTrust keys (LINKD_LUXTRUST_PUBLIC_KEYS_FILE)")?;
        let bus_signer = match &settings.bus_signing_key {
            BusKeys::File(path) if settings.relay_enabled => Some(Arc::new(
                BusSigner::from_pem_file(path).context("LINKD_BUS_SIGNING_KEY_FILE")?,
            )),
            BusKeys::File(_) => None,
            BusKeys::Unsigned => {
                if settings.relay_enabled {
                    tracing::warn!(
                        "LINKD_BUS_UNSIGNED=on: the relay publishes unsigned \
                        messages; projection services must accept unsigned messages too, and \
                        anyone who can publish on the stream's subjects can change the read \
                        models (development only)"
                    );
                }
                None
            }
        };
        let metrics = Metrics::new();
        metrics.watch_pool("command", pool.clone());
        let app = Arc::new(App {
            store: EventStore::new(
                pool.clone(),
                snapshot::key(&settings.secret_code_pepper.0),
                keks.clone(),
            )
            .with_metrics(&metrics),
            credentials: Credentials::new(pool.clone()),
            idp,
            luxtrust,
            hasher: CodeHasher::new(
                settings.secret_code_pepper.0.clone(),
                settings.hash_capacity,
            )
            .context("starting the secret-code hashing threads")?
            .with_metrics(&metrics),
            lifetimes: Lifetimes {
                qr: duration(settings.qr_ttl)?,
                link_attempt: duration(settings.link_attempt_ttl)?,
                reauth_max_age: duration(settings.reauth_max_age)?,
                confirmation: settings.qr_confirmation.map(duration).transpose()?,
                // Often enough for the warning period to see every use, at most once a minute.
                use_record_every: duration(
                    (settings.lifecycle.warning / 4).min(std::time::Duration::from_secs(60)),
                )?,
            },
            matching_key: crate::matching::key(&settings.secret_code_pepper.0),
            device_cap: settings.max_devices_per_account,
            limits: crate::limits::RateLimits::new(
                settings.rate_limits.clone(),
                // Short statements: half the main pool's connections (at least one).
                service_kit::database::asynchronous_commit_pool(
                    &pool,
                    (settings.db_max_connections / 2).max(1),
                ),
            ),
        });
        let (stopping, stopping_seen) = tokio::sync::watch::channel(false);
        let api = Api {
            app,
            stopping: stopping_seen,
            requests: RequestLog::new(pool.clone(), settings.replay_retention),
            trusted_proxy_hops: settings.trusted_proxy_hops,
            qr_watches: crate::grpc::Watches::new(settings.max_qr_watches),
        };
        let tls = match &settings.tls {
            Some(tls) => Some(
                tls.load()
                    .context("the gRPC server's TLS settings (LINKD_COMMAND_TLS_*)")?,
            ),
            None => None,
        };
        let listener = TcpListener::bind(settings.grpc_addr)
            .await
            .with_context(|| format!("binding {}", settings.grpc_addr))?;
        let local_addr = listener.local_addr()?;
        let metrics_listener = match settings.metrics_addr {
            Some(addr) => Some(service_kit::metrics::bind(addr).await?),
            None => None,
        };
        Ok(Self {
            listener,
            local_addr,
            api,
            pool,
            settings,
            relay_crash_point: None,
            stopping,
            metrics,
            metrics_listener,
            tls,
            bus_signer,
        })
    }

    /// Test-only: the relay stops once after publishing a batch, before saving its checkpoint,
    /// when this flag is set.
    pub fn with_relay_crash_point(
        mut self,
        flag: std::sync::Arc<std::sync::atomic::AtomicBool>,
    ) -> Self {
        self.relay_crash_point = Some(flag);
        self
    }

    /// The address the server listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Where `GET /metrics` is served, if `LINKD_COMMAND_METRICS_ADDR` is set.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_listener
            .as_ref()
            .and_then(|listener| listener.local_addr().ok())
    }

    /// The database pool (tests inspect the event store through it).
    pub fn pool(&self) -> PgPool {
        self.pool.clone()
    }

    /// Serves until `shutdown` completes, then drains in-flight calls.
    pub async fn run_until_stopped(
        self,
        shutdown: impl Future<Output = ()> + Send,
    ) -> anyhow::Result<()> {
        let periods = crate::sweeper::Periods {
            replays: self.settings.replay_retention,
            abandoned_after: self.settings.link_attempt_ttl + std::time::Duration::from_secs(600),
            unclaimed_attempt_keys: self.settings.unclaimed_attempt_retention,
        };
        let sweeper = tokio::spawn(crate::sweeper::run(self.pool.clone(), periods));
        let lifecycle = tokio::spawn(crate::lifecycle::run(
            self.api.app.clone(),
            self.pool.clone(),
            self.settings.lifecycle,
        ));
        let limits = self.api.app.limits.clone();
        let forgetter = tokio::spawn(async move {
            let mut ticks = tokio::time::interval(crate::sweeper::SWEEP_EVERY);
            loop {
                ticks.tick().await;
                limits.forget_idle_addresses();
            }
        });
        let leading = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let announcer = tokio::spawn(crate::relay::announce(
            self.pool.clone(),
            self.api.app.store.commits(),
            leading.clone(),
        ));
        let relay = self.settings.relay_enabled.then(|| {
            let settings = RelaySettings {
                nats_url: self.settings.nats_url.clone(),
                stream: self.settings.stream.clone(),
                subject_prefix: self.settings.subject_prefix.clone(),
                limits: self.settings.stream_limits,
                replicas: self.settings.stream_replicas,
                poll_interval: std::time::Duration::from_millis(100),
                wake: self.api.app.store.commits(),
                metrics: RelayMetrics::register(&self.metrics, self.pool.clone(), leading.clone()),
                signer: self.bus_signer.clone(),
                nats_auth: self.settings.nats_auth.clone(),
                leading,
                crash_after_publish: self.relay_crash_point.clone(),
            };
            let database_url = self.settings.database_url.0.clone();
            tokio::spawn(
                crate::relay::run(self.pool.clone(), database_url, settings)
                    .instrument(tracing::info_span!("relay")),
            )
        });
        let metrics_server =
            service_kit::metrics::spawn_endpoint(self.metrics_listener, &self.metrics);
        let tls = service_kit::tls::ServerTls::mode(self.settings.tls.as_ref());
        tracing::info!(addr = %self.local_addr, tls, "command service listening");
        let stopping = self.stopping;
        let shutdown = async move {
            shutdown.await;
            // Open watches end now (UNAVAILABLE), or the drain would wait for them.
            stopping.send_replace(true);
        };
        let served = GrpcServer::new()
            .tls(self.tls)
            .limits(self.settings.grpc_limits)
            .metrics(&self.metrics)
            .service(
                PortalServiceServer::new(self.api.clone())
                    .max_decoding_message_size(MAX_MESSAGE_BYTES),
            )
            .service(
                DeviceServiceServer::new(self.api).max_decoding_message_size(MAX_MESSAGE_BYTES),
            )
            .serve(self.listener, shutdown)
            .await;
        sweeper.abort();
        forgetter.abort();
        lifecycle.abort();
        announcer.abort();
        if let Some(relay) = relay {
            relay.abort();
        }
        if let Some(metrics_server) = metrics_server {
            metrics_server.abort();
        }
        served
    }
}
