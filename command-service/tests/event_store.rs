//! The event store, driven directly with domain commands on a scratch database: a state loaded
//! from a snapshot is the state a full replay gives, counters stay right across a snapshot, a
//! snapshot that does not fit is ignored, and postgres-es reads what linkd writes.
//!
//! Commands reach the store only through `Fixture::execute`, and states come out of it only
//! through `Fixture::load_and_replay` (events are read back with plain SQL), so that a change of
//! the store's API is a change here in one place.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a failed step should fail the test loudly"
)]

use std::collections::HashMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use command_service::sealing::{ERASED, Keks};
use command_service::store::snapshot::{self, SNAPSHOT_EVERY};
use command_service::store::{EventStore, Loaded, Metadata};
use cqrs_es::persist::PersistedEventStore;
use domain::{
    Account, AccountCommand, AccountId, Device, DeviceCommand, DeviceEvent, DeviceName,
    LinkAttemptId, LinkMethod, MAX_SECRET_CODE_FAILURES, Platform, UnlinkReason,
};
use postgres_es::PostgresEventRepository;
use sqlx::PgPool;
use testkit::{TestDatabase, eventually};
use uuid::Uuid;

const PEPPER: &[u8] = b"store-test-pepper-store-test-pepper";

/// The first KEK, and the one a rotation adds.
const KEK_1: [u8; 32] = [1; 32];
const KEK_2: [u8; 32] = [2; 32];

fn keks(lines: &[(&str, [u8; 32])]) -> Keks {
    use base64::Engine as _;
    let text: String = lines
        .iter()
        .map(|(id, key)| {
            format!(
                "{id} {}\n",
                base64::engine::general_purpose::STANDARD.encode(key)
            )
        })
        .collect();
    Keks::parse(&text).unwrap()
}

/// A migrated scratch event store, and one device linked to `anna` in it.
struct Fixture {
    store: EventStore,
    pool: PgPool,
    device_id: String,
    link_id: LinkAttemptId,
    /// Commands executed so far (each at its own instant).
    commands: i64,
    // Dropped last: the database outlives the pool.
    _database: TestDatabase,
}

impl Fixture {
    async fn with_linked_device() -> Self {
        let database = TestDatabase::create("linkd_store_test").await.unwrap();
        let pool = database.connect().await.unwrap();
        sqlx::migrate!("./migrations").run(&pool).await.unwrap();
        let mut fixture = Self {
            store: EventStore::new(pool.clone(), snapshot::key(PEPPER), keks(&[("k1", KEK_1)])),
            pool,
            device_id: Uuid::new_v4().to_string(),
            link_id: LinkAttemptId(Uuid::new_v4()),
            commands: 0,
            _database: database,
        };
        let link = DeviceCommand::Link {
            link_id: fixture.link_id,
            account_id: AccountId("anna".into()),
            device_name: DeviceName::parse("Anna's phone").unwrap(),
            method: LinkMethod::Qr,
            product: None,
            platform: Platform::Android,
            app_version: "2.4.1".into(),
            at: fixture.at(),
        };
        fixture.execute(link).await;
        fixture
    }

    fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// A new instant for each command, one second after the last.
    fn at(&mut self) -> DateTime<Utc> {
        self.commands += 1;
        DateTime::from_timestamp(1_800_000_000 + self.commands, 0).unwrap()
    }

    /// Executes `command` on the device, as the app's credential would; the state it left.
    async fn execute(&self, command: DeviceCommand) -> Device {
        let metadata = Metadata {
            actor: format!("device:{}", self.device_id),
            request_id: Uuid::new_v4().to_string(),
            account_id: Some("anna".into()),
        };
        let executed = match self.store.load::<Device>(&self.device_id).await {
            Ok(loaded) => self.store.execute(loaded, command.clone(), &metadata).await,
            Err(error) => Err(error),
        };
        match executed {
            Ok(executed) => executed.state,
            Err(error) => panic!("{command:?} failed: {error:?}"),
        }
    }

    /// The device as a command would see it (snapshot and the events after it), and as a full
    /// replay of its history gives it.
    async fn load_and_replay(&self) -> (Device, Device) {
        let loaded = self
            .store
            .load::<Device>(&self.device_id)
            .await
            .map(Loaded::into_state);
        let replayed = self.store.replay::<Device>(&self.device_id).await;
        match (loaded, replayed) {
            (Ok(loaded), Ok(replayed)) => (loaded, replayed),
            (loaded, replayed) => panic!("loading failed: {loaded:?}, replaying: {replayed:?}"),
        }
    }

    /// Toggles biometrics until the device's history holds `events` events.
    async fn grow_history(&mut self, events: i64) {
        let mut enabled = false;
        while self.sequence().await < events {
            enabled = !enabled;
            let at = self.at();
            let command = DeviceCommand::SetBiometrics {
                link_id: self.link_id,
                enabled,
                at,
            };
            self.execute(command).await;
        }
    }

    /// A secret code check that failed; the state it left.
    async fn wrong_code(&mut self) -> Device {
        let at = self.at();
        let command = DeviceCommand::RecordSecretCodeCheck {
            link_id: self.link_id,
            matches: false,
            at,
        };
        self.execute(command).await
    }

    async fn sequence(&self) -> i64 {
        sqlx::query_scalar(
            "SELECT coalesce(max(sequence), 0) FROM events \
             WHERE aggregate_type = 'device' AND aggregate_id = $1",
        )
        .bind(&self.device_id)
        .fetch_one(self.pool())
        .await
        .unwrap()
    }

    async fn snapshot_sequence(&self) -> Option<i64> {
        sqlx::query_scalar(
            "SELECT last_sequence FROM aggregate_snapshots \
             WHERE aggregate_type = 'device' AND aggregate_id = $1",
        )
        .bind(&self.device_id)
        .fetch_optional(self.pool())
        .await
        .unwrap()
    }

    /// Waits until the background snapshot write has left a snapshot `at_least` that recent.
    async fn wait_for_snapshot(&self, at_least: i64) -> i64 {
        eventually(Duration::from_secs(10), "the snapshot", || async {
            self.snapshot_sequence()
                .await
                .filter(|sequence| *sequence >= at_least)
        })
        .await
    }

    /// The device's events as linkd stored them, read with plain SQL.
    async fn stored_events(&self) -> Vec<(usize, DeviceEvent, HashMap<String, String>)> {
        let rows: Vec<(i64, String, String)> = sqlx::query_as(
            "SELECT sequence, payload::text, metadata::text FROM events \
             WHERE aggregate_type = 'device' AND aggregate_id = $1 ORDER BY sequence",
        )
        .bind(&self.device_id)
        .fetch_all(self.pool())
        .await
        .unwrap();
        rows.into_iter()
            .map(|(sequence, payload, metadata)| {
                (
                    usize::try_from(sequence).unwrap(),
                    serde_json::from_str(&payload).unwrap(),
                    serde_json::from_str(&metadata).unwrap(),
                )
            })
            .collect()
    }
}

#[tokio::test]
async fn the_failure_count_stays_right_across_a_snapshot() {
    // Arrange: two events short of the first snapshot.
    let mut device = Fixture::with_linked_device().await;
    device.grow_history(SNAPSHOT_EVERY - 2).await;
    assert_eq!(device.sequence().await, SNAPSHOT_EVERY - 2);

    // Act: two wrong codes reach the snapshot; three more load from it.
    for failures in 1..=2 {
        let state = device.wrong_code().await;
        assert_eq!(state.consecutive_failures(), failures);
        assert!(state.linked_account().is_some(), "{state:?}");
    }
    assert_eq!(
        device.wait_for_snapshot(SNAPSHOT_EVERY).await,
        SNAPSHOT_EVERY
    );
    for failures in 3..MAX_SECRET_CODE_FAILURES {
        let state = device.wrong_code().await;
        assert_eq!(state.consecutive_failures(), failures);
        assert!(state.linked_account().is_some(), "{state:?}");
    }

    // Assert: the fifth wrong code in a row, not the fourth or sixth, unlinks the device.
    let state = device.wrong_code().await;
    assert_eq!(state.linked_account(), None, "{state:?}");
    let events = device.stored_events().await;
    let last: Vec<&DeviceEvent> = events.iter().rev().take(2).map(|(_, e, _)| e).collect();
    assert!(
        matches!(
            last[..],
            [
                DeviceEvent::DeviceUnlinked {
                    reason: UnlinkReason::LockedOut,
                    ..
                },
                DeviceEvent::SecretCodeFailed {
                    consecutive_failures: MAX_SECRET_CODE_FAILURES,
                    ..
                },
            ]
        ),
        "{last:?}"
    );
    let (loaded, replayed) = device.load_and_replay().await;
    assert_eq!(loaded, replayed);
    assert_eq!(loaded.linked_account(), None, "{loaded:?}");
}

#[tokio::test]
async fn a_snapshot_that_does_not_fit_is_ignored() {
    // Arrange: a history long enough for a snapshot, and three events after it. The snapshot
    // is saved in the background: the later events come once it is there, so no later command
    // (loading without it) takes another one that would replace it under the test's feet.
    let mut device = Fixture::with_linked_device().await;
    device.grow_history(SNAPSHOT_EVERY).await;
    device.wait_for_snapshot(SNAPSHOT_EVERY).await;
    device.grow_history(SNAPSHOT_EVERY + 3).await;
    let (loaded, truth) = device.load_and_replay().await;
    assert_eq!(loaded, truth);

    // Act + Assert: loads do use a snapshot that verifies (here one signed with the key).
    let (sequence, chain_hash, schema): (i64, Vec<u8>, String) =
        sqlx::query_as("SELECT last_sequence, chain_hash, schema FROM aggregate_snapshots")
            .fetch_one(device.pool())
            .await
            .unwrap();
    let forged = serde_json::to_string(&Device::default()).unwrap();
    let header = snapshot::Header {
        aggregate_type: "device",
        aggregate_id: &device.device_id,
        schema: &schema,
        last_sequence: sequence,
        chain_hash: &chain_hash,
    };
    let sign = |payload: &str| -> String {
        let mac = snapshot::mac(&snapshot::key(PEPPER), header, payload);
        mac.iter().map(|b| format!("{b:02x}")).collect()
    };
    let mac = sign(&forged);
    let loads = |set: String, payload: String| {
        let device = &device;
        async move {
            sqlx::query(&format!("UPDATE aggregate_snapshots SET {set}"))
                .bind(payload)
                .execute(device.pool())
                .await
                .unwrap();
            device.load_and_replay().await.0
        }
    };
    // (A snapshot in clear, as written before sealing, with no data subject.)
    let signed = format!("payload = $1::json, mac = '\\x{mac}', data_subject = NULL");
    assert_ne!(loads(signed, forged.clone()).await, truth);

    // One edited without the key (a failure count reset, say) fails its MAC: not used.
    let edited = format!("{forged} ");
    assert_eq!(loads("payload = $1::json".into(), edited).await, truth);

    // One that no longer deserialises is replaced by a full replay, even with a valid MAC (so
    // it is the deserialisation that refuses it, not the MAC check).
    let garbage = "\"garbage\"".to_owned();
    let signed_garbage = format!("payload = $1::json, mac = '\\x{}'", sign(&garbage));
    assert_eq!(loads(signed_garbage, garbage).await, truth);

    // A readable snapshot of another shape (an older build's) is not used either.
    let other_shape = "payload = $1::json, schema = 'v0:0000'".to_owned();
    assert_eq!(loads(other_shape, forged).await, truth);

    // And the device still works: its next command is decided on the true state (the forged,
    // unlinked one would refuse it: credential revoked).
    let at = device.at();
    let command = DeviceCommand::RecordSecretCodeCheck {
        link_id: device.link_id,
        matches: true,
        at,
    };
    let state = device.execute(command).await;
    assert_eq!(state.link_id(), Some(device.link_id), "{state:?}");
    let events = device.stored_events().await;
    assert!(
        matches!(
            events.last(),
            Some((_, DeviceEvent::SecretCodeVerified { .. }, _))
        ),
        "{:?}",
        events.last()
    );
}

#[tokio::test]
async fn postgres_es_reads_what_linkd_writes() {
    // Arrange
    let mut device = Fixture::with_linked_device().await;
    device.grow_history(5).await;

    // Act
    let theirs: PersistedEventStore<PostgresEventRepository, Device> =
        PersistedEventStore::new_event_store(PostgresEventRepository::new(device.pool().clone()));
    let their_state = cqrs_es::EventStore::load_aggregate(&theirs, &device.device_id)
        .await
        .unwrap();
    let their_events: Vec<(usize, DeviceEvent, HashMap<String, String>)> =
        cqrs_es::EventStore::load_events(&theirs, &device.device_id)
            .await
            .unwrap()
            .into_iter()
            .map(|envelope| (envelope.sequence, envelope.payload, envelope.metadata))
            .collect();
    let our_events = device.stored_events().await;

    // Assert: the same state (but for the device's name, which a reader without the data key
    // sees sealed), and the same five events, one by one.
    let ours = device.load_and_replay().await.0;
    assert_eq!(their_state.aggregate.link_id(), ours.link_id());
    assert_eq!(
        their_state.aggregate.linked_account(),
        ours.linked_account()
    );
    assert_eq!(
        their_state.aggregate.consecutive_failures(),
        ours.consecutive_failures()
    );
    assert_eq!(their_events.len(), 5, "{their_events:#?}");
    assert_eq!(our_events.len(), 5, "{our_events:#?}");
    assert_eq!(their_events, our_events);
    for (_, _, metadata) in &our_events {
        assert!(metadata.contains_key("actor"), "{metadata:?}");
    }
}

#[tokio::test]
async fn a_command_that_lost_the_race_is_decided_again_on_the_new_state() {
    // Arrange: two loads of the same device, as two concurrent calls would make them.
    let mut device = Fixture::with_linked_device().await;
    let first = device
        .store
        .load::<Device>(&device.device_id)
        .await
        .unwrap();
    let stale = device
        .store
        .load::<Device>(&device.device_id)
        .await
        .unwrap();
    let metadata = Metadata {
        actor: "test".into(),
        request_id: Uuid::new_v4().to_string(),
        account_id: Some("anna".into()),
    };
    let (on, off) = (device.at(), device.at());
    let enable = DeviceCommand::SetBiometrics {
        link_id: device.link_id,
        enabled: true,
        at: on,
    };
    let disable = DeviceCommand::SetBiometrics {
        link_id: device.link_id,
        enabled: false,
        at: off,
    };

    // Act: the first commits; the second was loaded before it, so its commit conflicts.
    let enabled = device.store.execute(first, enable, &metadata).await;
    let disabled = device.store.execute(stale, disable, &metadata).await;

    // Assert: the second was decided again on the state the first left (biometrics on, so
    // turning them off is "disabled"); on its stale load (never chosen) it would be "skipped".
    if let Err(error) = enabled.and(disabled) {
        panic!("a command failed: {error:?}");
    }
    let events = device.stored_events().await;
    let kinds: Vec<&DeviceEvent> = events.iter().map(|(_, event, _)| event).collect();
    assert!(
        matches!(
            kinds.as_slice(),
            [
                DeviceEvent::DeviceLinked { .. },
                DeviceEvent::BiometricsEnabled { .. },
                DeviceEvent::BiometricsDisabled { .. }
            ]
        ),
        "{kinds:?}"
    );
}

#[tokio::test]
async fn two_aggregates_that_change_together_commit_in_one_transaction_or_not_at_all() {
    // Arrange: a second device; both loaded, then another writer appends to the second.
    let mut device = Fixture::with_linked_device().await;
    let other_id = Uuid::new_v4().to_string();
    let other_link = LinkAttemptId(Uuid::new_v4());
    let metadata = Metadata {
        actor: "test".into(),
        request_id: Uuid::new_v4().to_string(),
        account_id: Some("anna".into()),
    };
    let link = DeviceCommand::Link {
        link_id: other_link,
        account_id: AccountId("anna".into()),
        device_name: DeviceName::parse("Anna's tablet").unwrap(),
        method: LinkMethod::Qr,
        product: None,
        platform: Platform::Ios,
        app_version: "2.4.1".into(),
        at: device.at(),
    };
    let fresh = device.store.load::<Device>(&other_id).await.unwrap();
    device.store.execute(fresh, link, &metadata).await.unwrap();
    let first = device
        .store
        .load::<Device>(&device.device_id)
        .await
        .unwrap();
    let stale = device.store.load::<Device>(&other_id).await.unwrap();
    let meanwhile = device.store.load::<Device>(&other_id).await.unwrap();
    let enable = |link_id, at| DeviceCommand::SetBiometrics {
        link_id,
        enabled: true,
        at,
    };
    let (at, other_at, pair_at) = (device.at(), device.at(), device.at());
    device
        .store
        .execute(meanwhile, enable(other_link, other_at), &metadata)
        .await
        .unwrap();

    // Act: the pair's first commit conflicts on the second device, and is decided again.
    let disable = DeviceCommand::SetBiometrics {
        link_id: other_link,
        enabled: false,
        at: pair_at,
    };
    let (mine, other) = device
        .store
        .execute_pair(
            (first, enable(device.link_id, at)),
            (stale, disable),
            &metadata,
        )
        .await
        .unwrap();

    // Assert: one event each, in one transaction (the conflict wrote nothing of the first).
    assert_eq!((mine.position.sequence, other.position.sequence), (2, 3));
    let written: Vec<(String, i64, String, i64)> = sqlx::query_as(
        "SELECT aggregate_id, sequence, event_type, tx_id::text::bigint FROM events \
         WHERE (aggregate_id, sequence) IN (($1, 2), ($2, 3)) ORDER BY aggregate_id = $2",
    )
    .bind(&device.device_id)
    .bind(&other_id)
    .fetch_all(device.pool())
    .await
    .unwrap();
    assert_eq!(written.len(), 2, "{written:?}");
    assert_eq!(written[0].2, "BiometricsEnabled");
    assert_eq!(written[1].2, "BiometricsDisabled");
    assert_eq!(written[0].3, written[1].3, "one transaction: {written:?}");
    let mine_events: i64 =
        sqlx::query_scalar("SELECT count(*) FROM events WHERE aggregate_id = $1")
            .bind(&device.device_id)
            .fetch_one(device.pool())
            .await
            .unwrap();
    assert_eq!(mine_events, 2, "the conflicting try left nothing behind");
}

impl Fixture {
    /// Another store over the same database, with other KEKs.
    fn store_with(&self, keks: Keks) -> EventStore {
        EventStore::new(self.pool.clone(), snapshot::key(PEPPER), keks)
    }

    /// Every stored byte that could hold the device's name: events and snapshots.
    async fn stored_text(&self) -> String {
        sqlx::query_scalar(
            "SELECT coalesce((SELECT string_agg(payload::text, ' ') FROM events), '') || \
                    coalesce((SELECT string_agg(payload::text, ' ') FROM aggregate_snapshots), '')",
        )
        .fetch_one(self.pool())
        .await
        .unwrap()
    }
}

impl Fixture {
    /// Waits until the background snapshot write has left a snapshot of the account.
    async fn wait_for_account_snapshot(&self) {
        eventually(
            Duration::from_secs(10),
            "the account's snapshot",
            || async {
                sqlx::query_scalar::<_, i64>(
                "SELECT last_sequence FROM aggregate_snapshots WHERE aggregate_type = 'account'",
            )
            .fetch_optional(self.pool())
            .await
            .unwrap()
            },
        )
        .await;
    }

    /// Registers `anna` with `anna@example.lu`, then changes her address `changes` times
    /// (`anna+N@example.lu`); her account as the last command left it.
    async fn account_with_changes(&self, changes: u32) -> Account {
        let metadata = Metadata {
            actor: "system:portal".into(),
            request_id: Uuid::new_v4().to_string(),
            account_id: Some("anna".into()),
        };
        let mut commands = vec![AccountCommand::Register {
            email: "anna@example.lu".into(),
            language: "fr".into(),
            at: Utc::now(),
        }];
        commands.extend((1..=changes).map(|n| AccountCommand::ChangeEmail {
            email: format!("anna+{n}@example.lu"),
            at: Utc::now(),
        }));
        let mut state = Account::default();
        for command in commands {
            let loaded = self.store.load::<Account>("anna").await.unwrap();
            state = self
                .store
                .execute(loaded, command, &metadata)
                .await
                .unwrap()
                .state;
        }
        state
    }
}

#[tokio::test]
async fn personal_fields_are_stored_sealed_and_load_in_clear() {
    // Arrange: an account history long enough for a snapshot, and a linked device.
    let device = Fixture::with_linked_device().await;
    let account = device
        .account_with_changes(u32::try_from(SNAPSHOT_EVERY).unwrap())
        .await;
    device.wait_for_account_snapshot().await;

    // Act
    let stored = device.stored_text().await;
    let loaded = device.store.load::<Account>("anna").await.unwrap();
    let replayed = device.store.replay::<Account>("anna").await.unwrap();

    // Assert: nothing of the name or the addresses, in clear or in base64, in events or
    // snapshots; the state has them back, from the snapshot and from the events alike.
    for needle in [
        "Anna's phone",
        "QW5uYSdzIHBob25l",
        "example.lu",
        "ZXhhbXBsZS5sd",
    ] {
        assert!(!stored.contains(needle), "{needle} in {stored}");
    }
    assert!(stored.contains("sealed:v1:"), "{stored}");
    assert_eq!(account.email(), format!("anna+{SNAPSHOT_EVERY}@example.lu"));
    assert_eq!(loaded.state(), &account);
    assert_eq!(replayed, account);
    let subjects: Vec<String> =
        sqlx::query_scalar("SELECT DISTINCT data_subject FROM events ORDER BY 1")
            .fetch_all(device.pool())
            .await
            .unwrap();
    assert_eq!(subjects, ["account:anna"]);
}

#[tokio::test]
async fn an_erased_key_loads_placeholders_and_the_aggregate_still_works() {
    // Arrange: a snapshot and events after it, then the account's key erased.
    let device = Fixture::with_linked_device().await;
    device
        .account_with_changes(u32::try_from(SNAPSHOT_EVERY + 2).unwrap())
        .await;
    device.wait_for_account_snapshot().await;
    let erased = sqlx::query(
        "UPDATE data_keys SET wrapped = NULL, erased_at = now() WHERE subject = 'account:anna'",
    )
    .execute(device.pool())
    .await
    .unwrap();
    assert_eq!(erased.rows_affected(), 1);

    // Act: a fresh store (nothing cached) loads.
    let store = device.store_with(keks(&[("k1", KEK_1)]));
    let loaded = store.load::<Account>("anna").await.unwrap();
    let replayed = store.replay::<Account>("anna").await.unwrap();
    let device_state = store.load::<Device>(&device.device_id).await.unwrap();

    // Assert: the placeholder, from a full replay (the sealed snapshot no longer opens), and the
    // rest of the state intact; the device (no personal field in its state) unaffected.
    assert_eq!(loaded.state().email(), ERASED);
    assert!(loaded.state().is_registered());
    assert_eq!(loaded.state(), &replayed);
    assert_eq!(device_state.state().link_id(), Some(device.link_id));
}

#[tokio::test]
async fn events_sealed_under_one_kek_load_after_a_rotation_and_a_rewrap() {
    // Arrange: a history written under KEK k1.
    let mut device = Fixture::with_linked_device().await;
    device.grow_history(4).await;
    let truth = device.load_and_replay().await.0;

    // Act + Assert: with k2 added (and current), k1's keys still open, and new keys are k2's.
    let rotated = keks(&[("k1", KEK_1), ("k2", KEK_2)]);
    let store = device.store_with(rotated.clone());
    assert_eq!(
        store
            .load::<Device>(&device.device_id)
            .await
            .unwrap()
            .into_state(),
        truth
    );

    // Without k1, a key wrapped under it cannot be opened: a clear error, never a placeholder.
    let error = device
        .store_with(keks(&[("k2", KEK_2)]))
        .load::<Device>(&device.device_id)
        .await
        .unwrap_err();
    assert!(error.to_string().contains("KEK 'k1'"), "{error}");

    // After a rewrap every key is k2's, and k1 can go; a key another transaction holds (an
    // erasure, the sweeper) is waited for, not skipped and reported done.
    let mut holder = device.pool().begin().await.unwrap();
    sqlx::query("SELECT subject FROM data_keys FOR UPDATE")
        .execute(&mut *holder)
        .await
        .unwrap();
    let rewrap = tokio::spawn({
        let pool = device.pool().clone();
        let rotated = rotated.clone();
        async move { command_service::store::rewrap_keys(&pool, &rotated).await }
    });
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    assert!(
        !rewrap.is_finished(),
        "the rewrap returned with a key left under k1"
    );
    holder.commit().await.unwrap();
    let rewrapped = rewrap.await.unwrap().unwrap();
    assert_eq!(rewrapped, 1);
    assert_eq!(
        command_service::store::rewrap_keys(device.pool(), &rotated)
            .await
            .unwrap(),
        0
    );
    let only_k2 = device.store_with(keks(&[("k2", KEK_2)]));
    assert_eq!(
        only_k2
            .load::<Device>(&device.device_id)
            .await
            .unwrap()
            .into_state(),
        truth
    );
    let kek_ids: Vec<String> = sqlx::query_scalar("SELECT DISTINCT kek_id FROM data_keys")
        .fetch_all(device.pool())
        .await
        .unwrap();
    assert_eq!(kek_ids, ["k2"]);
}

/// Registers `account` through `store` (its first event).
async fn register(store: &EventStore, account: &str) -> Result<Account, String> {
    let metadata = Metadata {
        actor: "system:portal".into(),
        request_id: Uuid::new_v4().to_string(),
        account_id: Some(account.into()),
    };
    let register = AccountCommand::Register {
        email: format!("{account}@example.lu"),
        language: "fr".into(),
        at: Utc::now(),
    };
    let loaded = store
        .load::<Account>(account)
        .await
        .map_err(|e| format!("{e:?}"))?;
    store
        .execute(loaded, register, &metadata)
        .await
        .map(|executed| executed.state)
        .map_err(|e| format!("{e:?}"))
}

#[tokio::test]
async fn a_new_subjects_key_goes_in_with_its_first_events_and_an_existing_one_is_used() {
    // Arrange: anna's key exists already (her device's link named her before she registered);
    // a store that has cached nothing.
    let device = Fixture::with_linked_device().await;
    let store = device.store_with(keks(&[("k1", KEK_1)]));

    // Act
    let anna = register(&store, "anna").await.unwrap();
    let bob = register(&store, "bob").await.unwrap();

    // Assert: anna registered under her existing key (one key row); bob's key was written by
    // the transaction that wrote his first event; both load in clear through a fresh store.
    assert_eq!(anna.email(), "anna@example.lu");
    assert_eq!(bob.email(), "bob@example.lu");
    let keys: Vec<String> = sqlx::query_scalar("SELECT subject FROM data_keys ORDER BY 1")
        .fetch_all(device.pool())
        .await
        .unwrap();
    assert_eq!(keys, ["account:anna", "account:bob"]);
    let together: bool = sqlx::query_scalar(
        "SELECT k.xmin::text = e.xmin::text FROM data_keys k JOIN events e \
         ON e.aggregate_type = 'account' AND e.aggregate_id = 'bob' AND e.sequence = 1 \
         WHERE k.subject = 'account:bob'",
    )
    .fetch_one(device.pool())
    .await
    .unwrap();
    assert!(together, "bob's key and first event in one transaction");
    let fresh = device.store_with(keks(&[("k1", KEK_1)]));
    for (account, email) in [("anna", "anna@example.lu"), ("bob", "bob@example.lu")] {
        let loaded = fresh.load::<Account>(account).await.unwrap();
        assert_eq!(loaded.state().email(), email);
    }
    let anna_events: i64 =
        sqlx::query_scalar("SELECT count(*) FROM events WHERE aggregate_id = 'anna'")
            .fetch_one(device.pool())
            .await
            .unwrap();
    assert_eq!(anna_events, 1);
}
