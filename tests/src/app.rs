//! The system under test: the command service (and, for [`spawn_system`], the projection
//! service) in this process on port 0, each on a database of its own, with typed gRPC clients on
//! [`TestApp`]. Dropping the app stops the services, then drops their databases and stream.

use command_service::Settings;
use linkctl::dev::DevKeys;
use proto::v1::device_query_service_client::DeviceQueryServiceClient;
use proto::v1::device_service_client::DeviceServiceClient;
use proto::v1::portal_service_client::PortalServiceClient;
use sqlx::PgPool;
use testkit::{TestDatabase, TestStream, nats_url};
use tonic::transport::Channel;

use crate::flows::Clients;
use crate::keys::keys;
use crate::servers::{CommandServer, ReadSide, run_command_service, spawn_read_side_with};
use crate::settings::{bus_verify_keys, projection_settings, test_settings};
use service_kit::bus_signing::BusKeys;

/// A running command service with its own database, and clients for it.
#[derive(Debug)]
pub struct TestApp {
    /// The portal client.
    pub portal: PortalServiceClient<Channel>,
    /// The app client.
    pub device: DeviceServiceClient<Channel>,
    /// The raw channel, for health and reflection clients.
    pub channel: Channel,
    /// The event store database.
    pub pool: PgPool,
    /// Signs development tokens the app accepts.
    pub keys: DevKeys,
    /// The read side, for tests started with [`spawn_system`].
    pub read: Option<ReadSide>,
    /// The event stream, for tests started with [`spawn_system`].
    pub stream: Option<TestStream>,
    /// The command service's settings.
    pub settings: Settings,
    /// The consistency token of the last link the helpers completed.
    pub last_consistency_token: String,
    command: Option<CommandServer>,
    read_database: Option<TestDatabase>,
    // Dropped last: the database outlives the server.
    _database: TestDatabase,
}

/// Starts the command service with default test settings.
pub async fn spawn_app() -> TestApp {
    spawn_app_with(|_| {}).await
}

/// Starts the command service after `adjust` changed the test settings.
pub async fn spawn_app_with(adjust: impl FnOnce(&mut Settings)) -> TestApp {
    let (database, mut settings) = fresh_database().await;
    adjust(&mut settings);
    start(database, settings, None).await
}

/// Starts both services on one test stream: the command service with its relay, and the
/// projection service with its consumers, each with its own database.
pub async fn spawn_system() -> TestApp {
    spawn_system_with(|_| {}).await
}

/// [`spawn_system`] after `adjust` changed the command service's settings.
pub async fn spawn_system_with(adjust: impl FnOnce(&mut Settings)) -> TestApp {
    let (database, stream, mut settings) = fresh_system(nats_url()).await;
    adjust(&mut settings);
    start(database, settings, Some(stream)).await
}

/// Starts both services on `nats_url` (instead of the shared server).
pub async fn spawn_system_on(nats_url: String) -> TestApp {
    spawn_system_on_and(nats_url, |_| {}).await
}

/// [`spawn_system_on`] after `adjust` changed the command service's settings.
pub async fn spawn_system_on_and(nats_url: String, adjust: impl FnOnce(&mut Settings)) -> TestApp {
    let (database, stream, mut settings) = fresh_system(nats_url).await;
    adjust(&mut settings);
    start(database, settings, Some(stream)).await
}

/// Starts both services on `stream` (its server, name and prefix, chosen by the test: e.g. to
/// write a server configuration that names them) after `adjust` changed the command service's
/// settings.
pub async fn spawn_system_on_stream_and(
    stream: TestStream,
    adjust: impl FnOnce(&mut Settings),
) -> TestApp {
    let (database, mut settings) = fresh_database().await;
    relay_to(&mut settings, &stream);
    adjust(&mut settings);
    start(database, settings, Some(stream)).await
}

/// Starts both services with the email worker sending through `email`.
pub async fn spawn_system_with_mail(email: projection_service::email::EmailSettings) -> TestApp {
    spawn_system_with_mail_and(email, |_| {}).await
}

/// [`spawn_system_with_mail`] after `adjust` changed the command service's settings.
pub async fn spawn_system_with_mail_and(
    email: projection_service::email::EmailSettings,
    adjust: impl FnOnce(&mut Settings),
) -> TestApp {
    spawn_system_on_with_mail_and(nats_url(), email, adjust).await
}

/// [`spawn_system_with_mail_and`] on `nats_url` (instead of the shared server).
pub async fn spawn_system_on_with_mail_and(
    nats_url: String,
    email: projection_service::email::EmailSettings,
    adjust: impl FnOnce(&mut Settings),
) -> TestApp {
    let (database, stream, mut settings) = fresh_system(nats_url).await;
    adjust(&mut settings);
    start_with_email(database, settings, Some(stream), Some(email)).await
}

/// A new event store database and the command service's test settings for it.
async fn fresh_database() -> (TestDatabase, Settings) {
    let database = TestDatabase::create("linkd_e2e")
        .await
        .expect("creating a test database");
    let settings = test_settings(database.url.clone());
    (database, settings)
}

/// [`fresh_database`], a new stream on `nats_url`, and settings with the relay publishing to it.
async fn fresh_system(nats_url: String) -> (TestDatabase, TestStream, Settings) {
    let (database, mut settings) = fresh_database().await;
    let stream = TestStream::new(nats_url);
    relay_to(&mut settings, &stream);
    (database, stream, settings)
}

/// Settings with the relay publishing to `stream`.
fn relay_to(settings: &mut Settings, stream: &TestStream) {
    settings.relay_enabled = true;
    settings.nats_url = stream.nats_url.clone();
    settings.stream = stream.name.clone();
    settings.subject_prefix = stream.prefix.clone();
}

async fn start(database: TestDatabase, settings: Settings, stream: Option<TestStream>) -> TestApp {
    start_with_email(database, settings, stream, None).await
}

async fn start_with_email(
    database: TestDatabase,
    settings: Settings,
    stream: Option<TestStream>,
    email: Option<projection_service::email::EmailSettings>,
) -> TestApp {
    if std::env::var("TEST_LOG").is_ok() {
        let _ = service_kit::telemetry::init_with("linkd-test", None);
    }
    let command = run_command_service(settings.clone(), None).await;
    let (read, read_database) = match &stream {
        Some(stream) => {
            let read_database = TestDatabase::create("linkd_e2e_read")
                .await
                .expect("creating a read database");
            let mut read_settings = projection_settings(read_database.url.clone(), stream);
            read_settings.event_store_url = Some(settings.database_url.clone());
            read_settings.kek_file = Some(settings.kek_file.clone());
            // The same NATS account as the command service's.
            read_settings.nats_auth = settings.nats_auth.clone();
            // The same certificate (both run on this machine).
            read_settings.tls = settings.tls.clone();
            // The relay signs: the read side checks (as in a deployment).
            if matches!(settings.bus_signing_key, BusKeys::File(_)) {
                read_settings.bus_verify_keys = bus_verify_keys();
            }
            if let Some(email) = email {
                read_settings.email = email;
                read_settings.email_enabled = true;
            }
            let read = spawn_read_side_with(read_settings).await;
            (Some(read), Some(read_database))
        }
        None => (None, None),
    };
    TestApp {
        portal: PortalServiceClient::new(command.channel.clone()),
        device: DeviceServiceClient::new(command.channel.clone()),
        channel: command.channel.clone(),
        pool: command.pool.clone(),
        keys: keys().signers.clone(),
        read,
        stream,
        settings,
        last_consistency_token: String::new(),
        command: Some(command),
        read_database,
        _database: database,
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        self.stop_command_service();
        self.read.take();
        self.read_database.take();
    }
}

impl TestApp {
    /// Stops the command service (and its relay); the databases and the read side stay.
    pub fn stop_command_service(&mut self) {
        self.command.take();
    }

    /// Shuts the command service down gracefully (as on SIGTERM); whether it finished within
    /// `within`.
    pub async fn stop_command_service_gracefully(&mut self, within: std::time::Duration) -> bool {
        match self.command.take() {
            Some(command) => command.stop_gracefully(within).await,
            None => true,
        }
    }

    /// Starts the command service again on the same databases, after `adjust` changed its
    /// settings; the clients now talk to the new instance.
    pub async fn restart_command_service(
        &mut self,
        adjust: impl FnOnce(&mut Settings),
        crash_point: Option<std::sync::Arc<std::sync::atomic::AtomicBool>>,
    ) {
        // Gracefully: the old instance's relay and sweeper are its own tasks, which only a
        // graceful stop ends (dropping the server alone would leave its relay leading).
        if let Some(command) = self.command.take() {
            command
                .stop_gracefully(std::time::Duration::from_secs(10))
                .await;
        }
        adjust(&mut self.settings);
        let command = run_command_service(self.settings.clone(), crash_point).await;
        self.portal = PortalServiceClient::new(command.channel.clone());
        self.device = DeviceServiceClient::new(command.channel.clone());
        self.channel = command.channel.clone();
        self.command = Some(command);
    }

    /// Stops the projection service gracefully and starts it again on the same database and
    /// stream, after `adjust` changed its settings; the query clients now talk to the new one.
    pub async fn restart_read_side(
        &mut self,
        adjust: impl FnOnce(&mut projection_service::Settings),
    ) {
        let read = self.read.take().expect("a test started with spawn_system");
        let mut settings = read.settings.clone();
        read.stop_gracefully(std::time::Duration::from_secs(10))
            .await;
        adjust(&mut settings);
        self.read = Some(spawn_read_side_with(settings).await);
    }

    /// Where the command service listens.
    pub fn command_addr(&self) -> std::net::SocketAddr {
        self.command
            .as_ref()
            .expect("the command service is running")
            .addr
    }

    /// Where the projection service listens (for tests started with [`spawn_system`]).
    pub fn read_addr(&self) -> std::net::SocketAddr {
        self.read
            .as_ref()
            .expect("a test started with spawn_system")
            .addr
    }

    /// Where the command service serves `/metrics` (started with `metrics_addr` set).
    pub fn command_metrics_addr(&self) -> std::net::SocketAddr {
        self.command
            .as_ref()
            .and_then(|command| command.metrics_addr)
            .expect("a command service started with metrics_addr")
    }

    /// Where the projection service serves `/metrics` (started with `metrics_addr` set).
    pub fn read_metrics_addr(&self) -> std::net::SocketAddr {
        self.read
            .as_ref()
            .and_then(|read| read.metrics_addr)
            .expect("a projection service started with metrics_addr")
    }

    /// The read-model database's URL (for more projection-service instances).
    pub fn read_database_url(&self) -> String {
        self.read_database
            .as_ref()
            .expect("a test started with spawn_system")
            .url
            .clone()
    }

    /// The running projection service's settings: another instance, a rebuild or a variant
    /// started from them opens sealed events and checks signatures as the first one does.
    pub fn read_settings(&self) -> projection_service::Settings {
        self.read
            .as_ref()
            .expect("a test started with spawn_system")
            .settings
            .clone()
    }

    /// The query client (for tests started with [`spawn_system`]).
    pub fn queries(&self) -> DeviceQueryServiceClient<Channel> {
        self.read
            .as_ref()
            .expect("a test started with spawn_system")
            .queries
            .clone()
    }

    /// The read-model database (for tests started with [`spawn_system`]).
    pub fn read_pool(&self) -> PgPool {
        self.read
            .as_ref()
            .expect("a test started with spawn_system")
            .pool
            .clone()
    }

    /// Clients on another command service instance.
    pub fn clients_on(channel: &Channel) -> Clients {
        Clients {
            portal: PortalServiceClient::new(channel.clone()),
            device: DeviceServiceClient::new(channel.clone()),
        }
    }

    /// A second handle on the same service (clients and keys, not the server or database), for
    /// concurrent calls.
    pub fn clone_clients(&self) -> Clients {
        Clients {
            portal: self.portal.clone(),
            device: self.device.clone(),
        }
    }

    /// linkctl's clients on both services (for tests started with [`spawn_system`]).
    pub fn linkctl_clients(&self) -> linkctl::client::Clients {
        linkctl::client::Clients::from_channels(
            self.channel.clone(),
            self.read
                .as_ref()
                .expect("a test started with spawn_system")
                .channel
                .clone(),
        )
    }

    /// A citizen's token, authenticated just now.
    pub fn citizen(&self, account_id: &str) -> String {
        self.keys
            .citizen_token(account_id, 0)
            .expect("a citizen token")
    }

    /// The portal back end's token.
    pub fn system(&self) -> String {
        self.keys.system_token().expect("a system token")
    }
}
