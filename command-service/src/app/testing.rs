//! Use cases on a scratch event store, for their tests (no gRPC, no keys that sign anything).

use domain::Platform;
use domain::{AccountId, Device, DeviceCommand, DeviceId, DeviceName, LinkAttemptId, LinkMethod};
use identity::{Checks, KeySet};
use testkit::TestDatabase;

use super::{App, Lifetimes};
use crate::credentials::Credentials;
use crate::hashing::CodeHasher;
use crate::store::{EventStore, Metadata, snapshot};

/// Some Ed25519 public key: the use cases under test verify no token.
const SOME_PUBLIC_KEY: &str = "-----BEGIN PUBLIC KEY-----
MCowBQYDK2VwAyEAAQIDBAUGBwgJCgsMDQ4PEBESExQVFhcYGRobHB0eHyA=
-----END PUBLIC KEY-----
";

const PEPPER: &[u8] = b"use-case-tests-pepper-0123456789";

/// An App on a migrated scratch database (dropped with the returned guard).
pub(crate) async fn app() -> (App, TestDatabase) {
    let database = TestDatabase::create("linkd_usecase_test")
        .await
        .unwrap_or_else(|e| panic!("creating a scratch database: {e:#}"));
    let pool = database
        .connect()
        .await
        .unwrap_or_else(|e| panic!("connecting: {e:#}"));
    if let Err(error) = sqlx::migrate!("./migrations").run(&pool).await {
        panic!("migrating: {error}");
    }
    let keys = |audience: &str| {
        let checks = Checks {
            audience: audience.into(),
            issuer: "tests".into(),
            max_lifetime_seconds: 60,
        };
        KeySet::from_pem(SOME_PUBLIC_KEY, checks).unwrap_or_else(|e| panic!("keys: {e:#}"))
    };
    let app = App {
        store: EventStore::new(
            pool.clone(),
            snapshot::key(PEPPER),
            crate::sealing::Keks::single("test", [7; 32]),
        ),
        credentials: Credentials::new(pool.clone()),
        idp: keys("portal"),
        luxtrust: keys("luxtrust"),
        hasher: CodeHasher::new(PEPPER.to_vec(), 8).unwrap_or_else(|e| panic!("hasher: {e}")),
        lifetimes: Lifetimes {
            qr: chrono::Duration::seconds(120),
            link_attempt: chrono::Duration::seconds(600),
            reauth_max_age: chrono::Duration::seconds(300),
            confirmation: Some(chrono::Duration::seconds(120)),
            use_record_every: chrono::Duration::seconds(60),
        },
        matching_key: crate::matching::key(PEPPER),
        device_cap: 5,
        limits: crate::limits::RateLimits::new(crate::limits::Policy::default(), pool.clone()),
    };
    (app, database)
}

/// Executes `command` on `device`, as if some call had.
pub(crate) async fn on_device(app: &App, device: DeviceId, command: DeviceCommand) {
    let metadata = Metadata {
        actor: "test".into(),
        request_id: "test".into(),
        account_id: None,
    };
    let outcome = match app.store.load::<Device>(&device.to_string()).await {
        Ok(loaded) => app
            .store
            .execute(loaded, command, &metadata)
            .await
            .map(|_| ()),
        Err(error) => Err(error),
    };
    if let Err(error) = outcome {
        panic!("{error:?}");
    }
}

/// The command that links `device` to `account` by `link`.
pub(crate) fn link(link: LinkAttemptId, account: &str) -> DeviceCommand {
    DeviceCommand::Link {
        link_id: link,
        account_id: AccountId(account.into()),
        device_name: DeviceName::parse("Anna's phone").unwrap_or_else(|e| panic!("{e}")),
        method: LinkMethod::Qr,
        product: None,
        platform: Platform::Android,
        app_version: "1.0".into(),
        at: chrono::Utc::now(),
    }
}
