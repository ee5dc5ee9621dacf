//! One service instance running in this process: the command service ([`CommandServer`]) or the
//! projection service ([`ReadSide`]), each stopped when dropped.

use command_service::Application;
use command_service::Settings;
use proto::v1::device_query_service_client::DeviceQueryServiceClient;
use sqlx::PgPool;
use testkit::TestStream;
use tokio::sync::oneshot;
use tonic::transport::Channel;

use crate::settings::projection_settings;

/// A command service instance running in this process.
#[derive(Debug)]
pub struct CommandServer {
    /// Where it listens.
    pub addr: std::net::SocketAddr,
    /// A channel to it.
    pub channel: Channel,
    /// Its pool.
    pub pool: PgPool,
    /// Where it serves `/metrics`, if its settings asked for it.
    pub metrics_addr: Option<std::net::SocketAddr>,
    shutdown: Option<oneshot::Sender<()>>,
    server: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl Drop for CommandServer {
    fn drop(&mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        self.server.abort();
    }
}

impl CommandServer {
    /// Asks the instance to shut down gracefully (as on SIGTERM) and waits for it, up to
    /// `within`; whether it finished in time.
    pub async fn stop_gracefully(mut self, within: std::time::Duration) -> bool {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        tokio::time::timeout(within, &mut self.server).await.is_ok()
    }
}

/// Starts a command service instance with `settings` (and an optional relay crash point).
pub async fn run_command_service(
    settings: Settings,
    crash_point: Option<std::sync::Arc<std::sync::atomic::AtomicBool>>,
) -> CommandServer {
    let settings_tls = settings.tls.clone();
    let mut app = Application::build(settings)
        .await
        .expect("building the command service");
    if let Some(flag) = crash_point {
        app = app.with_relay_crash_point(flag);
    }
    let addr = app.local_addr();
    let pool = app.pool();
    let metrics_addr = app.metrics_addr();
    let (shutdown, stopped) = oneshot::channel::<()>();
    let server = tokio::spawn(app.run_until_stopped(async {
        let _ = stopped.await;
    }));
    let channel = crate::tls::harness_channel(addr, settings_tls.as_ref())
        .connect()
        .await
        .expect("connecting to the command service");
    CommandServer {
        addr,
        channel,
        pool,
        metrics_addr,
        shutdown: Some(shutdown),
        server,
    }
}

/// A running projection service with its own database.
#[derive(Debug)]
pub struct ReadSide {
    /// Where it listens.
    pub addr: std::net::SocketAddr,
    /// The query client.
    pub queries: DeviceQueryServiceClient<Channel>,
    /// The raw channel.
    pub channel: Channel,
    /// The read-model database.
    pub pool: PgPool,
    /// The settings it was started with.
    pub settings: projection_service::Settings,
    /// Where it serves `/metrics`, if its settings asked for it.
    pub metrics_addr: Option<std::net::SocketAddr>,
    shutdown: Option<oneshot::Sender<()>>,
    server: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl Drop for ReadSide {
    fn drop(&mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        self.server.abort();
    }
}

impl ReadSide {
    /// Stops the instance as on SIGTERM (its consumer and email worker with it) and waits for
    /// it, up to `within`; whether it finished in time.
    pub async fn stop_gracefully(mut self, within: std::time::Duration) -> bool {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        tokio::time::timeout(within, &mut self.server).await.is_ok()
    }
}

/// Starts a projection service on `database_url`, consuming `stream`.
pub async fn spawn_read_side(database_url: String, stream: &TestStream) -> ReadSide {
    spawn_read_side_with(projection_settings(database_url, stream)).await
}

/// Starts a projection service with `settings`.
pub async fn spawn_read_side_with(settings: projection_service::Settings) -> ReadSide {
    let app = projection_service::Application::build(settings.clone())
        .await
        .expect("building the projection service");
    let addr = app.local_addr();
    let settings_tls = settings.tls.clone();
    let pool = app.pool();
    let metrics_addr = app.metrics_addr();
    let (shutdown, stopped) = oneshot::channel::<()>();
    let server = tokio::spawn(app.run_until_stopped(async {
        let _ = stopped.await;
    }));
    let channel = crate::tls::harness_channel(addr, settings_tls.as_ref())
        .connect()
        .await
        .expect("connecting to the projection service");
    ReadSide {
        addr,
        queries: DeviceQueryServiceClient::new(channel.clone()),
        channel,
        pool,
        settings,
        metrics_addr,
        shutdown: Some(shutdown),
        server,
    }
}
