//! Builds the projection service: pool, migrations, gRPC server with health.

use std::net::SocketAddr;

use anyhow::Context as _;
use sqlx::PgPool;
use sqlx::postgres::PgPoolOptions;
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;

use crate::config::Settings;

/// A built, not yet running, projection service.
#[derive(Debug)]
pub struct Application {
    listener: TcpListener,
    local_addr: SocketAddr,
    pool: PgPool,
}

impl Application {
    /// Connects, migrates and binds the listener (port 0 picks a free port).
    pub async fn build(settings: Settings) -> anyhow::Result<Self> {
        let pool = PgPoolOptions::new()
            .max_connections(10)
            .acquire_timeout(std::time::Duration::from_secs(5))
            .connect(&settings.database_url)
            .await
            .context("connecting to the read-model database (LINKD_PROJECTION_DATABASE_URL)")?;
        sqlx::migrate!("./migrations")
            .run(&pool)
            .await
            .context("migrating the read models")?;
        let listener = TcpListener::bind(settings.grpc_addr)
            .await
            .with_context(|| format!("binding {}", settings.grpc_addr))?;
        let local_addr = listener.local_addr()?;
        Ok(Self {
            listener,
            local_addr,
            pool,
        })
    }

    /// The address the server listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The database pool.
    pub fn pool(&self) -> PgPool {
        self.pool.clone()
    }

    /// Serves health checks until `shutdown` completes.
    pub async fn run_until_stopped(
        self,
        shutdown: impl Future<Output = ()> + Send,
    ) -> anyhow::Result<()> {
        let (health, health_service) = tonic_health::server::health_reporter();
        // The service name clients probe until the query API exists.
        health
            .set_service_status(
                "linking.v1.projection",
                tonic_health::ServingStatus::Serving,
            )
            .await;
        tracing::info!(addr = %self.local_addr, "projection service listening");
        tonic::transport::Server::builder()
            .add_service(health_service)
            .serve_with_incoming_shutdown(TcpListenerStream::new(self.listener), shutdown)
            .await
            .context("serving gRPC")
    }
}
