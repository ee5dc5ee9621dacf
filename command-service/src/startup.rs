//! Builds the command service: pool, migrations, event store, gRPC server with health and
//! reflection.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context as _;
use http_body_util::BodyExt as _;
use proto::v1::device_service_server::DeviceServiceServer;
use proto::v1::portal_service_server::PortalServiceServer;
use sqlx::PgPool;
use sqlx::postgres::PgPoolOptions;
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::codegen::http;
use tracing::Instrument as _;

use crate::config::Settings;
use crate::credentials::Credentials;
use crate::grpc::{Commands, DeviceApi, PortalApi};
use crate::idempotency::RequestLog;
use crate::relay::RelaySettings;
use crate::secrets::CodeHasher;
use crate::store::EventStore;
use identity::KeySet;

/// Requests larger than this are refused before they are decoded.
pub const MAX_MESSAGE_BYTES: usize = 64 * 1024;

/// A built, not yet running, command service.
#[derive(Debug)]
pub struct Application {
    listener: TcpListener,
    local_addr: SocketAddr,
    commands: Arc<Commands>,
    pool: PgPool,
    settings: Settings,
    relay_crash_point: Option<std::sync::Arc<std::sync::atomic::AtomicBool>>,
}

/// Connects to the database named in `settings` and applies the migrations.
pub async fn connect_and_migrate(settings: &Settings) -> anyhow::Result<PgPool> {
    let pool = PgPoolOptions::new()
        .max_connections(settings.db_max_connections)
        .acquire_timeout(std::time::Duration::from_secs(5))
        .connect(&settings.database_url.0)
        .await
        .context("connecting to the event store database (LINKD_COMMAND_DATABASE_URL)")?;
    sqlx::migrate!("./migrations")
        .run(&pool)
        .await
        .context("migrating the event store")?;
    Ok(pool)
}

fn duration(std: std::time::Duration) -> anyhow::Result<chrono::Duration> {
    chrono::Duration::from_std(std).context("duration out of range")
}

impl Application {
    /// Connects, migrates, loads keys and binds the listener (port 0 picks a free port).
    pub async fn build(settings: Settings) -> anyhow::Result<Self> {
        let pool = connect_and_migrate(&settings).await?;
        let idp = KeySet::from_pem_file(
            &settings.idp_public_keys_file,
            settings.idp_audience.clone(),
            settings.idp_issuer.clone(),
        )
        .context("loading the identity provider's keys (LINKD_IDP_PUBLIC_KEYS_FILE)")?;
        let luxtrust = KeySet::from_pem_file(
            &settings.luxtrust_public_keys_file,
            settings.luxtrust_audience.clone(),
            None,
        )
        .context("loading the LuxTrust keys (LINKD_LUXTRUST_PUBLIC_KEYS_FILE)")?;
        let commands = Arc::new(Commands {
            store: EventStore::new(
                pool.clone(),
                crate::store::snapshot_key(&settings.secret_code_pepper.0),
            ),
            requests: RequestLog::new(pool.clone()),
            credentials: Credentials::new(pool.clone()),
            idp,
            luxtrust,
            hasher: CodeHasher::new(settings.secret_code_pepper.0.clone())
                .context("starting the secret-code hashing threads")?,
            qr_ttl: duration(settings.qr_ttl)?,
            link_attempt_ttl: duration(settings.link_attempt_ttl)?,
            reauth_max_age: duration(settings.reauth_max_age)?,
        });
        let listener = TcpListener::bind(settings.grpc_addr)
            .await
            .with_context(|| format!("binding {}", settings.grpc_addr))?;
        let local_addr = listener.local_addr()?;
        Ok(Self {
            listener,
            local_addr,
            commands,
            pool,
            settings,
            relay_crash_point: None,
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

    /// The database pool (tests inspect the event store through it).
    pub fn pool(&self) -> PgPool {
        self.pool.clone()
    }

    /// Serves until `shutdown` completes, then drains in-flight calls.
    pub async fn run_until_stopped(
        self,
        shutdown: impl Future<Output = ()> + Send,
    ) -> anyhow::Result<()> {
        let (health, health_service) = tonic_health::server::health_reporter();
        health.set_serving::<PortalServiceServer<PortalApi>>().await;
        health.set_serving::<DeviceServiceServer<DeviceApi>>().await;
        let reflection = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .build_v1()
            .context("building the reflection service")?;
        let portal = PortalServiceServer::new(PortalApi(self.commands.clone()))
            .max_decoding_message_size(MAX_MESSAGE_BYTES);
        let device = DeviceServiceServer::new(DeviceApi(self.commands.clone()))
            .max_decoding_message_size(MAX_MESSAGE_BYTES);
        let abandoned_after = self.settings.link_attempt_ttl + std::time::Duration::from_secs(600);
        let sweeper = tokio::spawn(crate::sweeper::run(self.pool.clone(), abandoned_after));
        let leading = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let announcer = tokio::spawn(crate::relay::announce(
            self.pool.clone(),
            self.commands.store.commits(),
            leading.clone(),
        ));
        let relay = self.settings.relay_enabled.then(|| {
            let settings = RelaySettings {
                nats_url: self.settings.nats_url.clone(),
                stream: self.settings.stream.clone(),
                subject_prefix: self.settings.subject_prefix.clone(),
                poll_interval: std::time::Duration::from_millis(100),
                wake: self.commands.store.commits(),
                leading,
                crash_after_publish: self.relay_crash_point.clone(),
            };
            let database_url = self.settings.database_url.0.clone();
            tokio::spawn(
                crate::relay::run(self.pool.clone(), database_url, settings)
                    .instrument(tracing::info_span!("relay")),
            )
        });
        tracing::info!(addr = %self.local_addr, "command service listening");
        let served = tonic::transport::Server::builder()
            .layer(tower::util::MapResponseLayer::new(
                oversized_is_invalid_argument,
            ))
            .add_service(health_service)
            .add_service(reflection)
            .add_service(portal)
            .add_service(device)
            .serve_with_incoming_shutdown(incoming(self.listener), shutdown)
            .await
            .context("serving gRPC");
        sweeper.abort();
        announcer.abort();
        if let Some(relay) = relay {
            relay.abort();
        }
        served
    }
}

/// tonic refuses a request over the decoding limit with `OUT_OF_RANGE`; for a client that is a
/// malformed request, so it is answered `INVALID_ARGUMENT` with the limit named. The status may
/// travel in the headers (trailers-only reply) or in the trailers, so both are rewritten.
fn oversized_is_invalid_argument(
    mut response: http::Response<tonic::body::Body>,
) -> http::Response<tonic::body::Body> {
    rewrite_limit_status(response.headers_mut());
    response.map(|body| {
        tonic::body::Body::new(body.map_frame(|frame| match frame.into_trailers() {
            Ok(mut trailers) => {
                rewrite_limit_status(&mut trailers);
                http_body::Frame::trailers(trailers)
            }
            Err(frame) => frame,
        }))
    })
}

fn rewrite_limit_status(headers: &mut http::HeaderMap) {
    let over_limit = headers
        .get("grpc-status")
        .is_some_and(|status| status == "11")
        && headers
            .get("grpc-message")
            .and_then(|message| message.to_str().ok())
            // The message is percent-encoded on the wire.
            .is_some_and(|message| message.contains("message%20length%20too%20large"));
    if over_limit {
        headers.insert("grpc-status", http::HeaderValue::from_static("3"));
        headers.insert(
            "grpc-message",
            http::HeaderValue::from_static(
                "the%20request%20message%20exceeds%20the%2064%20KiB%20limit",
            ),
        );
    }
}

/// Completes on Ctrl-C or SIGTERM (compose and systemd stop services with SIGTERM).
pub async fn shutdown_signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = terminate => {},
    }
    tracing::info!("shutting down");
}

/// Accepted connections with Nagle's algorithm off: gRPC answers are small, and without this a
/// reply can wait for the peer's delayed acknowledgement (about 40 ms).
fn incoming(
    listener: TcpListener,
) -> impl tokio_stream::Stream<Item = std::io::Result<tokio::net::TcpStream>> {
    use tokio_stream::StreamExt as _;
    TcpListenerStream::new(listener).map(|accepted| {
        let stream = accepted?;
        stream.set_nodelay(true)?;
        Ok(stream)
    })
}
