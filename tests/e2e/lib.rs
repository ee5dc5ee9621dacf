//! The harness behind the end-to-end tests: the command service in-process on port 0, a fresh
//! PostgreSQL database per test (dropped afterwards, even when the test fails), development keys
//! for the identity provider and LuxTrust, and typed gRPC clients.
#![allow(
    clippy::expect_used,
    clippy::unwrap_used,
    reason = "test harness: a broken environment should fail the test loudly"
)]

pub mod mail;

use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::Duration;

use command_service::config::Redacted;
use command_service::{Application, Settings};
use linkctl::dev::{DevKeys, key_pair_pem};
use proto::v1::device_query_service_client::DeviceQueryServiceClient;
use proto::v1::device_service_client::DeviceServiceClient;
use proto::v1::portal_service_client::PortalServiceClient;
use sqlx::{Connection as _, PgConnection, PgPool};
use tokio::sync::oneshot;
use tonic::Request;
use tonic::transport::Channel;
use uuid::Uuid;

/// The server that test databases are created on (`LINKD_TEST_DATABASE_URL`).
pub fn admin_url() -> String {
    std::env::var("LINKD_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned())
}

fn with_database(url: &str, database: &str) -> String {
    match url.rsplit_once('/') {
        Some((server, _)) => format!("{server}/{database}"),
        None => format!("{url}/{database}"),
    }
}

/// A database that exists for one test and is dropped with this guard.
#[derive(Debug)]
pub struct TestDatabase {
    /// Its name.
    pub name: String,
    /// A URL that connects to it.
    pub url: String,
}

impl TestDatabase {
    /// Creates a database with a random name.
    pub async fn create(prefix: &str) -> anyhow::Result<Self> {
        let name = format!("{prefix}_{}", Uuid::new_v4().simple());
        let mut admin = PgConnection::connect(&admin_url()).await?;
        sqlx::query(&format!("CREATE DATABASE \"{name}\""))
            .execute(&mut admin)
            .await?;
        admin.close().await?;
        Ok(Self {
            url: with_database(&admin_url(), &name),
            name,
        })
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        let name = self.name.clone();
        // A fresh runtime on its own thread: Drop may run inside (or outside) a runtime.
        let dropped = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            runtime.block_on(async {
                let mut admin = PgConnection::connect(&admin_url()).await?;
                sqlx::query(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))
                    .execute(&mut admin)
                    .await?;
                anyhow::Ok(())
            })
        })
        .join();
        if !matches!(dropped, Ok(Ok(()))) {
            eprintln!("could not drop test database {}", self.name);
        }
    }
}

struct Keys {
    signers: DevKeys,
    idp_public: PathBuf,
    luxtrust_public: PathBuf,
}

/// One set of development keys per test process.
fn keys() -> &'static Keys {
    static KEYS: OnceLock<Keys> = OnceLock::new();
    KEYS.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("linkd-e2e-keys-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("creating a folder for test keys");
        let (idp_private, idp_public) = key_pair_pem().expect("an identity provider key pair");
        let (lt_private, lt_public) = key_pair_pem().expect("a LuxTrust key pair");
        let idp_public_path = dir.join("idp.pub.pem");
        let luxtrust_public_path = dir.join("luxtrust.pub.pem");
        std::fs::write(&idp_public_path, idp_public).expect("writing a public key");
        std::fs::write(&luxtrust_public_path, lt_public).expect("writing a public key");
        Keys {
            signers: DevKeys::from_pem(&idp_private, &lt_private).expect("loading signing keys"),
            idp_public: idp_public_path,
            luxtrust_public: luxtrust_public_path,
        }
    })
}

/// The settings a test app starts with; tests may change them before `spawn_app_with`.
pub fn test_settings(database_url: String) -> Settings {
    let keys = keys();
    Settings {
        grpc_addr: "127.0.0.1:0".parse().expect("a socket address"),
        database_url: Redacted(database_url),
        db_max_connections: 10,
        idp_public_keys_file: keys.idp_public.clone(),
        idp_audience: linkctl::dev::PORTAL_AUDIENCE.into(),
        idp_issuer: None,
        luxtrust_public_keys_file: keys.luxtrust_public.clone(),
        luxtrust_audience: linkctl::dev::LUXTRUST_AUDIENCE.into(),
        secret_code_pepper: Redacted(b"e2e-pepper-e2e-pepper-e2e-pepper".to_vec()),
        qr_ttl: Duration::from_secs(120),
        link_attempt_ttl: Duration::from_secs(600),
        reauth_max_age: Duration::from_secs(300),
        nats_url: nats_url(),
        stream: "UNUSED".into(),
        subject_prefix: "unused".into(),
        relay_enabled: false,
    }
}

/// The NATS server tests use (`LINKD_TEST_NATS_URL`).
pub fn nats_url() -> String {
    std::env::var("LINKD_TEST_NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".to_owned())
}

/// A stream and subject prefix of one test's own, deleted with this guard.
#[derive(Debug)]
pub struct TestStream {
    /// The NATS server.
    pub nats_url: String,
    /// The stream name.
    pub name: String,
    /// The subject prefix.
    pub prefix: String,
}

impl TestStream {
    /// A fresh name and prefix on `nats_url` (nothing is created yet: the relay creates it).
    pub fn new(nats_url: String) -> Self {
        let id = Uuid::new_v4().simple().to_string();
        Self {
            nats_url,
            name: format!("LINKD_T_{id}"),
            prefix: format!("t{id}.events"),
        }
    }
}

impl Drop for TestStream {
    fn drop(&mut self) {
        let (url, name) = (self.nats_url.clone(), self.name.clone());
        let _ = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            runtime.block_on(async {
                let client =
                    tokio::time::timeout(Duration::from_secs(2), async_nats::connect(&url))
                        .await??;
                let _ = async_nats::jetstream::new(client)
                    .delete_stream(&name)
                    .await;
                anyhow::Ok(())
            })
        })
        .join();
    }
}

/// The projection service's settings for a test.
pub fn projection_settings(
    database_url: String,
    stream: &TestStream,
) -> projection_service::Settings {
    let keys = keys();
    projection_service::Settings {
        grpc_addr: "127.0.0.1:0".parse().expect("a socket address"),
        database_url,
        nats_url: stream.nats_url.clone(),
        stream: stream.name.clone(),
        subject_prefix: stream.prefix.clone(),
        consumer_prefix: "linkd-test".into(),
        idp_public_keys_file: keys.idp_public.clone(),
        idp_audience: linkctl::dev::PORTAL_AUDIENCE.into(),
        idp_issuer: None,
        reauth_max_age: Duration::from_secs(300),
        email: projection_service::email::EmailSettings {
            smtp_host: "127.0.0.1".into(),
            smtp_port: 1,
            smtp_tls: projection_service::email::SmtpTls::None,
            smtp_credentials: None,
            sender: "usermanagement@security.public.lu".into(),
            default_language: "en".into(),
            max_attempts: 3,
            retry_base: Duration::from_millis(50),
            max_event_age: Duration::from_secs(24 * 3600),
            crash_after_send: None,
        },
        email_enabled: false,
        event_store_url: None,
    }
}

/// A running projection service with its own database.
#[derive(Debug)]
pub struct ReadSide {
    /// The query client.
    pub queries: DeviceQueryServiceClient<Channel>,
    /// The raw channel.
    pub channel: Channel,
    /// The read-model database.
    pub pool: PgPool,
    server: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl Drop for ReadSide {
    fn drop(&mut self) {
        self.server.abort();
    }
}

/// Starts a projection service on `database_url`, consuming `stream`.
pub async fn spawn_read_side(database_url: String, stream: &TestStream) -> ReadSide {
    spawn_read_side_with(projection_settings(database_url, stream)).await
}

/// Starts a projection service with `settings`.
pub async fn spawn_read_side_with(settings: projection_service::Settings) -> ReadSide {
    let app = projection_service::Application::build(settings)
        .await
        .expect("building the projection service");
    let addr = app.local_addr();
    let pool = app.pool();
    let server = tokio::spawn(app.run_until_stopped(std::future::pending()));
    let channel = Channel::from_shared(format!("http://{addr}"))
        .expect("a channel URL")
        .connect()
        .await
        .expect("connecting to the projection service");
    ReadSide {
        queries: DeviceQueryServiceClient::new(channel.clone()),
        channel,
        pool,
        server,
    }
}

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
    let database = TestDatabase::create("linkd_e2e")
        .await
        .expect("creating a test database");
    let mut settings = test_settings(database.url.clone());
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
    let database = TestDatabase::create("linkd_e2e")
        .await
        .expect("creating a test database");
    let stream = TestStream::new(nats_url());
    let mut settings = test_settings(database.url.clone());
    settings.relay_enabled = true;
    settings.stream = stream.name.clone();
    settings.subject_prefix = stream.prefix.clone();
    adjust(&mut settings);
    start(database, settings, Some(stream)).await
}

/// A command service instance running in this process.
#[derive(Debug)]
pub struct CommandServer {
    /// A channel to it.
    pub channel: Channel,
    /// Its pool.
    pub pool: PgPool,
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

/// Starts a command service instance with `settings` (and an optional relay crash point).
pub async fn run_command_service(
    settings: Settings,
    crash_point: Option<std::sync::Arc<std::sync::atomic::AtomicBool>>,
) -> CommandServer {
    let mut app = Application::build(settings)
        .await
        .expect("building the command service");
    if let Some(flag) = crash_point {
        app = app.with_relay_crash_point(flag);
    }
    let addr = app.local_addr();
    let pool = app.pool();
    let (shutdown, stopped) = oneshot::channel::<()>();
    let server = tokio::spawn(app.run_until_stopped(async {
        let _ = stopped.await;
    }));
    let channel = Channel::from_shared(format!("http://{addr}"))
        .expect("a channel URL")
        .connect()
        .await
        .expect("connecting to the command service");
    CommandServer {
        channel,
        pool,
        shutdown: Some(shutdown),
        server,
    }
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
        command_service::telemetry::init();
    }
    let command = run_command_service(settings.clone(), None).await;
    let (read, read_database) = match &stream {
        Some(stream) => {
            let read_database = TestDatabase::create("linkd_e2e_read")
                .await
                .expect("creating a read database");
            let mut read_settings = projection_settings(read_database.url.clone(), stream);
            read_settings.event_store_url = Some(settings.database_url.0.clone());
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

/// `message` with `authorization: Bearer <token>`.
pub fn bearer<T>(message: T, token: &str) -> Request<T> {
    let mut request = Request::new(message);
    request.metadata_mut().insert(
        "authorization",
        format!("Bearer {token}")
            .parse()
            .expect("a valid metadata value"),
    );
    request
}

impl TestApp {
    /// Stops the command service (and its relay); the databases and the read side stay.
    pub fn stop_command_service(&mut self) {
        self.command.take();
    }

    /// Starts the command service again on the same databases, after `adjust` changed its
    /// settings; the clients now talk to the new instance.
    pub async fn restart_command_service(
        &mut self,
        adjust: impl FnOnce(&mut Settings),
        crash_point: Option<std::sync::Arc<std::sync::atomic::AtomicBool>>,
    ) {
        self.command.take();
        adjust(&mut self.settings);
        let command = run_command_service(self.settings.clone(), crash_point).await;
        self.portal = PortalServiceClient::new(command.channel.clone());
        self.device = DeviceServiceClient::new(command.channel.clone());
        self.channel = command.channel.clone();
        self.command = Some(command);
    }

    /// The read-model database's URL (for more projection-service instances).
    pub fn read_database_url(&self) -> String {
        self.read_database
            .as_ref()
            .expect("a test started with spawn_system")
            .url
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

    /// How many events the store holds.
    pub async fn event_count(&self) -> i64 {
        sqlx::query_scalar("SELECT count(*) FROM events")
            .fetch_one(&self.pool)
            .await
            .expect("counting events")
    }

    /// How many events of `event_type` the store holds.
    pub async fn events_of_type(&self, event_type: &str) -> i64 {
        sqlx::query_scalar("SELECT count(*) FROM events WHERE event_type = $1")
            .bind(event_type)
            .fetch_one(&self.pool)
            .await
            .expect("counting events")
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

/// A device that completed linking.
#[derive(Debug, Clone)]
pub struct Linked {
    /// Its id.
    pub device_id: String,
    /// Its credential.
    pub credential: String,
    /// The consistency token of `SetSecretCode`.
    pub consistency_token: String,
}

/// The secret code the flows set.
pub const CODE: &str = "482913";

use proto::v1::{
    AuthenticateWithLuxTrustRequest, IssueLinkQrRequest, IssueLinkQrResponse, LinkMethod,
    LuxTrustProduct, Platform, ProductKind, RecordPortalLoginRequest, RegisterAccountRequest,
    ScanQrRequest, SetSecretCodeRequest, StartLinkRequest, StartLinkResponse,
};

impl TestApp {
    /// Registers `account_id` (email `<account_id>@example.lu`, French) as the portal would.
    pub async fn register(&mut self, account_id: &str) {
        let request = RegisterAccountRequest {
            account_id: account_id.into(),
            email: format!("{account_id}@example.lu"),
            language: "fr".into(),
            request_id: String::new(),
        };
        self.portal
            .register_account(bearer(request, &self.system()))
            .await
            .expect("registering");
    }

    /// Records a portal login of `account_id` with LuxTrust Mobile `serial`.
    pub async fn record_login(&mut self, account_id: &str, serial: &str) {
        let request = RecordPortalLoginRequest {
            account_id: account_id.into(),
            product: Some(LuxTrustProduct {
                kind: ProductKind::LuxtrustMobile.into(),
                serial: serial.into(),
            }),
            request_id: String::new(),
        };
        let token = self.system();
        self.portal
            .record_portal_login(bearer(request, &token))
            .await
            .expect("recording a login");
    }

    /// Issues a QR code to `account_id`'s browser session.
    pub async fn issue_qr(&mut self, account_id: &str) -> IssueLinkQrResponse {
        let token = self.citizen(account_id);
        self.portal
            .issue_link_qr(bearer(IssueLinkQrRequest::default(), &token))
            .await
            .expect("issuing a QR code")
            .into_inner()
    }

    /// A `StartLink` request for a new device.
    pub fn start_request(device_id: &str, method: LinkMethod) -> StartLinkRequest {
        StartLinkRequest {
            device_id: device_id.into(),
            device_name: "Anna's phone".into(),
            method: method.into(),
            platform: Platform::Android.into(),
            app_version: "2.4.1".into(),
            request_id: String::new(),
        }
    }

    /// Starts linking `device_id` with `method`.
    pub async fn start_link(&mut self, device_id: &str, method: LinkMethod) -> StartLinkResponse {
        self.device
            .start_link(Self::start_request(device_id, method))
            .await
            .expect("starting a link")
            .into_inner()
    }

    /// A new device's link attempt, authenticated by scanning a fresh QR code of `account_id`
    /// (ready for `SetSecretCode`).
    pub async fn authenticated_qr_attempt(&mut self, account_id: &str) -> StartLinkResponse {
        let qr = self.issue_qr(account_id).await;
        let start = self
            .start_link(&Uuid::new_v4().to_string(), LinkMethod::Qr)
            .await;
        self.device
            .scan_qr(ScanQrRequest {
                link_token: start.link_token.clone(),
                qr_payload: qr.qr_payload,
                request_id: String::new(),
            })
            .await
            .expect("scanning the QR code");
        start
    }

    /// Sets the secret code of a started, authenticated attempt.
    pub async fn set_code(&mut self, link_token: &str) -> Result<Linked, tonic::Status> {
        let linked = self.clone_clients().set_code(link_token).await?;
        self.last_consistency_token = linked.consistency_token.clone();
        Ok(linked)
    }

    /// Links a new device to `account_id` with a fresh QR code.
    pub async fn link_by_qr(&mut self, account_id: &str) -> Linked {
        let device_id = Uuid::new_v4().to_string();
        self.link_device_by_qr(account_id, &device_id)
            .await
            .expect("linking by QR code")
    }

    /// Links `device_id` to `account_id` with a fresh QR code.
    pub async fn link_device_by_qr(
        &mut self,
        account_id: &str,
        device_id: &str,
    ) -> Result<Linked, tonic::Status> {
        let qr = self.issue_qr(account_id).await;
        let start = self
            .device
            .start_link(Self::start_request(device_id, LinkMethod::Qr))
            .await?;
        let link_token = start.into_inner().link_token;
        self.device
            .scan_qr(ScanQrRequest {
                link_token: link_token.clone(),
                qr_payload: qr.qr_payload,
                request_id: String::new(),
            })
            .await?;
        self.set_code(&link_token).await
    }

    /// Links a new device to `account_id` with LuxTrust Mobile `serial`.
    pub async fn link_by_luxtrust(&mut self, account_id: &str, serial: &str) -> Linked {
        let device_id = Uuid::new_v4().to_string();
        let start = self.start_link(&device_id, LinkMethod::Luxtrust).await;
        self.authenticate_luxtrust(&start, account_id, serial)
            .await
            .expect("LuxTrust accepted");
        self.set_code(&start.link_token)
            .await
            .expect("setting the secret code")
    }

    /// Submits a LuxTrust assertion for `account_id` and Mobile `serial` to a started attempt.
    pub async fn authenticate_luxtrust(
        &mut self,
        start: &StartLinkResponse,
        account_id: &str,
        serial: &str,
    ) -> Result<(), tonic::Status> {
        let assertion = self
            .keys
            .luxtrust_assertion(account_id, "mobile", serial, &start.luxtrust_nonce)
            .expect("a LuxTrust assertion");
        self.device
            .authenticate_with_lux_trust(AuthenticateWithLuxTrustRequest {
                link_token: start.link_token.clone(),
                assertion,
                request_id: String::new(),
            })
            .await
            .map(|_| ())
    }
}

/// Clients without the server, for concurrent calls in tests.
#[derive(Debug, Clone)]
pub struct Clients {
    /// The portal client.
    pub portal: PortalServiceClient<Channel>,
    /// The app client.
    pub device: DeviceServiceClient<Channel>,
}

impl Clients {
    /// Sets the secret code of a started, authenticated attempt.
    pub async fn set_code(mut self, link_token: &str) -> Result<Linked, tonic::Status> {
        let response = self
            .device
            .set_secret_code(SetSecretCodeRequest {
                link_token: link_token.into(),
                secret_code: CODE.into(),
                request_id: String::new(),
            })
            .await?
            .into_inner();
        Ok(Linked {
            device_id: response.device_id,
            credential: response.device_credential,
            consistency_token: response.consistency_token,
        })
    }
}

/// Polls `check` until it returns `Some`, or panics after `within`.
pub async fn eventually<T, F, Fut>(within: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let started = tokio::time::Instant::now();
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(
            started.elapsed() < within,
            "timed out after {within:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// A nats-server process of one test's own (for tests that stop and start NATS), on a free
/// loopback port with its own store; killed when dropped.
#[derive(Debug)]
pub struct OwnNats {
    /// `nats://127.0.0.1:<port>`.
    pub url: String,
    port: u16,
    store: PathBuf,
    child: Option<std::process::Child>,
}

impl OwnNats {
    /// Starts one (Debian's `/usr/sbin/nats-server`, or `LINKD_TEST_NATS_SERVER`).
    pub async fn start() -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|listener| listener.local_addr())
            .expect("a free port")
            .port();
        let store = std::env::temp_dir().join(format!("linkd-nats-{}", Uuid::new_v4().simple()));
        let mut nats = Self {
            url: format!("nats://127.0.0.1:{port}"),
            port,
            store,
            child: None,
        };
        nats.resume().await;
        nats
    }

    /// Kills the server (its store stays).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server again on the same port and store.
    pub async fn resume(&mut self) {
        let binary = std::env::var("LINKD_TEST_NATS_SERVER")
            .unwrap_or_else(|_| "/usr/sbin/nats-server".to_owned());
        let child = std::process::Command::new(binary)
            .args([
                "-a",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-js",
                "-sd",
            ])
            .arg(&self.store)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("starting nats-server");
        self.child = Some(child);
        let addr = format!("127.0.0.1:{}", self.port);
        eventually(Duration::from_secs(10), "nats-server listening", || async {
            tokio::net::TcpStream::connect(&addr).await.ok().map(|_| ())
        })
        .await;
    }
}

impl Drop for OwnNats {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.store);
    }
}

/// Starts both services on `nats_url` (instead of the shared server).
pub async fn spawn_system_on(nats_url: String) -> TestApp {
    let database = TestDatabase::create("linkd_e2e")
        .await
        .expect("creating a test database");
    let stream = TestStream::new(nats_url.clone());
    let mut settings = test_settings(database.url.clone());
    settings.relay_enabled = true;
    settings.nats_url = nats_url;
    settings.stream = stream.name.clone();
    settings.subject_prefix = stream.prefix.clone();
    start(database, settings, Some(stream)).await
}

impl TestApp {
    /// Waits until the device read model matches the event store exactly: every device's
    /// last event applied once (guard = last sequence) and its linked/unlinked status right.
    pub async fn wait_until_read_model_is_exact(&self, within: Duration) {
        let read = self.read_pool();
        eventually(
            within,
            "the read model to match the event store",
            || async {
                let expected: Vec<(String, i64, String)> = sqlx::query_as(
                    "SELECT aggregate_id, max(sequence), \
                 (array_agg(event_type ORDER BY sequence) FILTER \
                   (WHERE event_type IN ('DeviceLinked', 'DeviceUnlinked')))[count(*) FILTER \
                   (WHERE event_type IN ('DeviceLinked', 'DeviceUnlinked'))] \
                 FROM events WHERE aggregate_type = 'device' GROUP BY aggregate_id \
                 ORDER BY aggregate_id",
                )
                .fetch_all(&self.pool)
                .await
                .ok()?;
                let actual: Vec<(String, i64, String)> = sqlx::query_as(
                    "SELECT p.aggregate_id, p.last_sequence, \
                 CASE d.status WHEN 'linked' THEN 'DeviceLinked' ELSE 'DeviceUnlinked' END \
                 FROM projector_positions p JOIN devices d ON d.device_id::text = p.aggregate_id \
                 WHERE p.projector = 'devices' AND p.aggregate_type = 'device' \
                 ORDER BY p.aggregate_id",
                )
                .fetch_all(&read)
                .await
                .ok()?;
                (expected == actual && !expected.is_empty()).then_some(())
            },
        )
        .await;
    }
}

/// Starts both services with the email worker sending through `email`.
pub async fn spawn_system_with_mail(email: projection_service::email::EmailSettings) -> TestApp {
    let database = TestDatabase::create("linkd_e2e")
        .await
        .expect("creating a test database");
    let stream = TestStream::new(nats_url());
    let mut settings = test_settings(database.url.clone());
    settings.relay_enabled = true;
    settings.stream = stream.name.clone();
    settings.subject_prefix = stream.prefix.clone();
    start_with_email(database, settings, Some(stream), Some(email)).await
}
