//! Builds the projection service: pool, migrations, consumers, query server with health and
//! reflection.

use std::net::SocketAddr;
use std::str::FromStr as _;

use anyhow::Context as _;
use identity::{Checks, KeySet};
use proto::v1::audit_service_server::AuditServiceServer;
use proto::v1::device_query_service_server::DeviceQueryServiceServer;
use service_kit::grpc::{GrpcServer, MAX_MESSAGE_BYTES};
use service_kit::metrics::Metrics;
use sqlx::PgPool;
use sqlx::postgres::PgConnectOptions;
use tokio::net::TcpListener;
use tracing::Instrument as _;

use crate::config::Settings;
use crate::consumer;
use crate::email;
use crate::grpc::Queries;
use crate::grpc::audit::Audits;

/// A built, not yet running, projection service.
#[derive(Debug)]
pub struct Application {
    listener: TcpListener,
    local_addr: SocketAddr,
    pool: PgPool,
    /// The email worker's own connections, so that queries waiting for a consistency token can
    /// never starve it.
    worker_pool: PgPool,
    /// The consumer's own connections, which commit without waiting for the WAL flush (its
    /// acknowledgements wait for it instead: `consumer::durable_acks`).
    consumer_pool: PgPool,
    settings: Settings,
    queries: Queries,
    audits: Audits,
    metrics: Metrics,
    /// Bound when `LINKD_PROJECTION_METRICS_ADDR` is set.
    metrics_listener: Option<TcpListener>,
    /// The gRPC server's TLS, its files read and checked.
    tls: Option<tonic::transport::ServerTlsConfig>,
    /// Where and how the consumer reads (its bus keys loaded at build).
    consumer_settings: consumer::ConsumerSettings,
}

/// Connects to the read-model database and applies the migrations.
pub async fn connect_and_migrate(database_url: &str) -> anyhow::Result<PgPool> {
    let pool = service_kit::database::pool_options(10)
        .connect(database_url)
        .await
        .context("connecting to the read-model database (LINKD_PROJECTION_DATABASE_URL)")?;
    sqlx::migrate!("./migrations")
        .run(&pool)
        .await
        .context("migrating the read models")?;
    Ok(pool)
}

/// The live consumer's connections to the read-model database: its transactions commit without
/// waiting for the WAL flush, and its acknowledgements wait for it instead.
pub async fn consumer_pool(database_url: &str) -> anyhow::Result<PgPool> {
    let options = PgConnectOptions::from_str(database_url)
        .context("LINKD_PROJECTION_DATABASE_URL is not a PostgreSQL URL")?
        .options([("synchronous_commit", "off")]);
    service_kit::database::pool_options(4)
        .connect_with(options)
        .await
        .context("connecting the consumer to the read-model database")
}

impl Application {
    /// Connects, migrates, loads keys and binds the listener (port 0 picks a free port).
    pub async fn build(settings: Settings) -> anyhow::Result<Self> {
        let pool = connect_and_migrate(&settings.database_url.0).await?;
        // A rebuild killed halfway left copies of the read models (personal data included)
        // in a schema of its own: removed here, unless a rebuild is running.
        crate::rebuild::remove_leftovers(&pool)
            .await
            .context("removing what an interrupted rebuild left behind")?;
        let idp = KeySet::from_pem_file(
            &settings.idp_public_keys_file,
            Checks {
                audience: settings.idp_audience.clone(),
                issuer: settings.idp_issuer.clone(),
                max_lifetime_seconds: i64::try_from(settings.idp_max_token_lifetime.as_secs())
                    .unwrap_or(i64::MAX),
            },
        )
        .context("loading the identity provider's keys (LINKD_IDP_PUBLIC_KEYS_FILE)")?;
        let worker_pool = service_kit::database::pool_options(2)
            .connect(&settings.database_url.0)
            .await
            .context("connecting the email worker to the read-model database")?;
        let consumer_pool = consumer_pool(&settings.database_url.0).await?;
        let queries = Queries {
            pool: pool.clone(),
            limits_pool: service_kit::database::asynchronous_commit_pool(&pool, 5),
            idp,
            reauth_max_age: settings.reauth_max_age,
            limits: settings.query_rate_limits,
        };
        // The audit log is read here (docs/adr/0029).
        let event_store = match &settings.event_store_url {
            Some(url) => Some(
                service_kit::database::pool_options(4)
                    .connect_lazy(&url.0)
                    .context("LINKD_EVENT_STORE_URL is not a PostgreSQL URL")?,
            ),
            None => None,
        };
        let tls = match &settings.tls {
            Some(tls) => Some(
                tls.load()
                    .context("the gRPC server's TLS settings (LINKD_PROJECTION_TLS_*)")?,
            ),
            None => None,
        };
        let listener = TcpListener::bind(settings.grpc_addr)
            .await
            .with_context(|| format!("binding {}", settings.grpc_addr))?;
        let local_addr = listener.local_addr()?;
        let consumer_settings = settings.consumers()?;
        let audits = Audits {
            queries: queries.clone(),
            event_store,
            opener: consumer_settings.opener.clone(),
        };
        if consumer_settings.verifier.is_none() {
            tracing::warn!(
                "LINKD_BUS_UNSIGNED=on: messages on the bus are applied without \
                checking the relay's signature; anyone who can publish on the stream's subjects \
                can change the read models (development only)"
            );
        }
        let metrics = Metrics::new();
        metrics.watch_pool("queries", pool.clone());
        metrics.watch_pool("consumer", consumer_pool.clone());
        metrics.watch_pool("email", worker_pool.clone());
        if let Some(event_store) = &audits.event_store {
            metrics.watch_pool("event_store", event_store.clone());
        }
        let metrics_listener = match settings.metrics_addr {
            Some(addr) => Some(service_kit::metrics::bind(addr).await?),
            None => None,
        };
        Ok(Self {
            listener,
            local_addr,
            pool,
            worker_pool,
            consumer_pool,
            settings,
            queries,
            audits,
            metrics,
            metrics_listener,
            tls,
            consumer_settings,
        })
    }

    /// The address the server listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Where `GET /metrics` is served, if `LINKD_PROJECTION_METRICS_ADDR` is set.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_listener
            .as_ref()
            .and_then(|listener| listener.local_addr().ok())
    }

    /// The database pool.
    pub fn pool(&self) -> PgPool {
        self.pool.clone()
    }

    /// Consumes and serves queries until `shutdown` completes.
    pub async fn run_until_stopped(
        self,
        shutdown: impl Future<Output = ()> + Send,
    ) -> anyhow::Result<()> {
        let consumer_settings = self.consumer_settings.clone();
        let limits_sweeper =
            tokio::spawn(crate::limits::sweep_every_minute(self.queries.pool.clone()));
        let retention = tokio::spawn(crate::retention::run(
            self.queries.pool.clone(),
            self.settings.retention,
            crate::retention::RetentionMetrics::register(&self.metrics),
        ));
        let models = consumer_settings.read_models();
        let consumer = tokio::spawn(
            consumer::run(
                self.consumer_pool.clone(),
                consumer_settings,
                models,
                consumer::ConsumerMetrics::register(&self.metrics),
            )
            .instrument(tracing::info_span!("consumer")),
        );
        let sender = self.settings.email_enabled.then(|| {
            tokio::spawn(
                email::run(
                    self.worker_pool.clone(),
                    self.settings.email.clone(),
                    email::EmailMetrics::register(&self.metrics, self.worker_pool.clone()),
                )
                .instrument(tracing::info_span!("email")),
            )
        });
        let metrics_server =
            service_kit::metrics::spawn_endpoint(self.metrics_listener, &self.metrics);
        let tls = service_kit::tls::ServerTls::mode(self.settings.tls.as_ref());
        tracing::info!(addr = %self.local_addr, tls, "projection service listening");
        let served = GrpcServer::new()
            .tls(self.tls)
            .limits(self.settings.grpc_limits)
            .metrics(&self.metrics)
            .service(
                DeviceQueryServiceServer::new(self.queries)
                    .max_decoding_message_size(MAX_MESSAGE_BYTES),
            )
            .service(
                AuditServiceServer::new(self.audits).max_decoding_message_size(MAX_MESSAGE_BYTES),
            )
            .serve(self.listener, shutdown)
            .await;
        limits_sweeper.abort();
        retention.abort();
        consumer.abort();
        if let Some(sender) = sender {
            sender.abort();
        }
        if let Some(metrics_server) = metrics_server {
            metrics_server.abort();
        }
        served
    }
}
