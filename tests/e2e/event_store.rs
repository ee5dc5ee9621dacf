//! The event store's snapshots and format: a state loaded from a snapshot is the state a full
//! replay gives, counters stay right across a snapshot, a snapshot that does not fit is ignored,
//! and postgres-es reads what linkd writes.
use std::time::Duration;

use command_service::store::EventStore;
use command_service::store::snapshot::{self, SNAPSHOT_EVERY};
use cqrs_es::EventStore as _;
use cqrs_es::persist::PersistedEventStore;
use domain::Device;
use e2e::{Linked, TestApp, bearer, eventually, spawn_app};
use postgres_es::PostgresEventRepository;
use proto::v1::{SetBiometricsRequest, VerifySecretCodeRequest};

/// The event store as the service sees it (same snapshot key).
fn store_of(app: &TestApp) -> EventStore {
    EventStore::new(
        app.pool.clone(),
        snapshot::key(&app.settings.secret_code_pepper.0),
    )
}

async fn device_sequence(app: &TestApp, device_id: &str) -> i64 {
    sqlx::query_scalar(
        "SELECT coalesce(max(sequence), 0) FROM events \
         WHERE aggregate_type = 'device' AND aggregate_id = $1",
    )
    .bind(device_id)
    .fetch_one(&app.pool)
    .await
    .unwrap()
}

/// Toggles biometrics until the device's history holds `events` events.
async fn grow_history(app: &mut TestApp, linked: &Linked, events: i64) {
    let mut enabled = false;
    while device_sequence(app, &linked.device_id).await < events {
        enabled = !enabled;
        let request = SetBiometricsRequest {
            enabled,
            request_id: String::new(),
        };
        app.device
            .set_biometrics(bearer(request, &linked.credential))
            .await
            .unwrap();
    }
}

async fn snapshot_sequence(app: &TestApp, device_id: &str) -> Option<i64> {
    sqlx::query_scalar(
        "SELECT last_sequence FROM aggregate_snapshots \
         WHERE aggregate_type = 'device' AND aggregate_id = $1",
    )
    .bind(device_id)
    .fetch_optional(&app.pool)
    .await
    .unwrap()
}

async fn wrong_code(app: &mut TestApp, linked: &Linked) -> (u32, bool) {
    let request = VerifySecretCodeRequest {
        secret_code: "000001".into(),
        request_id: String::new(),
    };
    let reply = app
        .device
        .verify_secret_code(bearer(request, &linked.credential))
        .await
        .unwrap()
        .into_inner();
    (reply.attempts_remaining, reply.device_unlinked)
}

#[tokio::test]
async fn the_failure_count_stays_right_across_a_snapshot() {
    // Arrange: two events short of the first snapshot.
    let mut app = spawn_app().await;
    app.register("anna").await;
    let linked = app.link_by_qr("anna").await;
    grow_history(&mut app, &linked, SNAPSHOT_EVERY - 2).await;
    assert_eq!(
        device_sequence(&app, &linked.device_id).await,
        SNAPSHOT_EVERY - 2
    );

    // Act: two wrong codes reach the snapshot; three more load from it.
    assert_eq!(wrong_code(&mut app, &linked).await, (4, false));
    assert_eq!(wrong_code(&mut app, &linked).await, (3, false));
    let device_id = linked.device_id.clone();
    eventually(Duration::from_secs(10), "the snapshot", || async {
        snapshot_sequence(&app, &device_id)
            .await
            .filter(|sequence| *sequence == SNAPSHOT_EVERY)
    })
    .await;
    assert_eq!(wrong_code(&mut app, &linked).await, (2, false));
    assert_eq!(wrong_code(&mut app, &linked).await, (1, false));

    // Assert: the fifth wrong code in a row, not the fourth or sixth, unlinks the device.
    assert_eq!(wrong_code(&mut app, &linked).await, (0, true));
    let store = store_of(&app);
    let loaded: Device = store.load(&linked.device_id).await.unwrap().into_state();
    let replayed: Device = store.replay(&linked.device_id).await.unwrap();
    assert_eq!(loaded, replayed);
    assert!(loaded.linked_account().is_none());
}

#[tokio::test]
async fn a_snapshot_that_does_not_fit_is_ignored() {
    // Arrange: a history long enough for a snapshot.
    let mut app = spawn_app().await;
    app.register("anna").await;
    let linked = app.link_by_qr("anna").await;
    grow_history(&mut app, &linked, SNAPSHOT_EVERY + 3).await;
    let device_id = linked.device_id.clone();
    eventually(Duration::from_secs(10), "the snapshot", || async {
        snapshot_sequence(&app, &device_id).await
    })
    .await;
    let store = store_of(&app);
    let truth: Device = store.replay(&linked.device_id).await.unwrap();
    assert_eq!(
        store
            .load::<Device>(&linked.device_id)
            .await
            .unwrap()
            .into_state(),
        truth
    );

    // Act + Assert: loads do use a snapshot that verifies (here one signed with the key).
    let (sequence, chain_hash, schema): (i64, Vec<u8>, String) =
        sqlx::query_as("SELECT last_sequence, chain_hash, schema FROM aggregate_snapshots")
            .fetch_one(&app.pool)
            .await
            .unwrap();
    let forged = serde_json::to_string(&Device::default()).unwrap();
    let key = snapshot::key(&app.settings.secret_code_pepper.0);
    let header = snapshot::Header {
        aggregate_type: "device",
        aggregate_id: &linked.device_id,
        schema: &schema,
        last_sequence: sequence,
        chain_hash: &chain_hash,
    };
    let mac = snapshot::mac(&key, header, &forged);
    let mac: String = mac.iter().map(|b| format!("{b:02x}")).collect();
    let loads = |set: String, payload: String| {
        let (pool, store, id) = (app.pool.clone(), &store, linked.device_id.clone());
        async move {
            sqlx::query(&format!("UPDATE aggregate_snapshots SET {set}"))
                .bind(payload)
                .execute(&pool)
                .await
                .unwrap();
            store.load::<Device>(&id).await.unwrap().into_state()
        }
    };
    let signed = format!("payload = $1::json, mac = '\\x{mac}'");
    assert_ne!(loads(signed, forged.clone()).await, truth);

    // One edited without the key (a failure count reset, say) fails its MAC: not used.
    let edited = format!("{forged} ");
    assert_eq!(loads("payload = $1::json".into(), edited).await, truth);

    // One that no longer deserialises is replaced by a full replay.
    let garbage = "\"garbage\"".to_owned();
    assert_eq!(loads("payload = $1::json".into(), garbage).await, truth);

    // A readable snapshot of another shape (an older build's) is not used either.
    let other_shape = "payload = $1::json, schema = 'v0:0000'".to_owned();
    assert_eq!(loads(other_shape, forged).await, truth);

    // And the device still works: its next command is decided on the true state.
    let request = VerifySecretCodeRequest {
        secret_code: e2e::CODE.into(),
        request_id: String::new(),
    };
    let reply = app
        .device
        .verify_secret_code(bearer(request, &linked.credential))
        .await
        .unwrap()
        .into_inner();
    assert!(reply.verified);
}

#[tokio::test]
async fn postgres_es_reads_what_linkd_writes() {
    // Arrange
    let mut app = spawn_app().await;
    app.register("anna").await;
    let linked = app.link_by_qr("anna").await;
    grow_history(&mut app, &linked, 5).await;

    // Act
    let ours = store_of(&app);
    let theirs: PersistedEventStore<PostgresEventRepository, Device> =
        PersistedEventStore::new_event_store(PostgresEventRepository::new(app.pool.clone()));
    let their_state = theirs.load_aggregate(&linked.device_id).await.unwrap();
    let their_events = theirs.load_events(&linked.device_id).await.unwrap();
    let rows: Vec<(i64, serde_json::Value, serde_json::Value)> = sqlx::query_as(
        "SELECT sequence, payload, metadata FROM events \
         WHERE aggregate_type = 'device' AND aggregate_id = $1 ORDER BY sequence",
    )
    .bind(&linked.device_id)
    .fetch_all(&app.pool)
    .await
    .unwrap();
    let our_events: Vec<(
        usize,
        domain::DeviceEvent,
        std::collections::HashMap<String, String>,
    )> = rows
        .into_iter()
        .map(|(sequence, payload, metadata)| {
            (
                usize::try_from(sequence).unwrap(),
                serde_json::from_value(payload).unwrap(),
                serde_json::from_value(metadata).unwrap(),
            )
        })
        .collect();

    // Assert
    assert_eq!(
        their_state.aggregate,
        ours.load::<Device>(&linked.device_id)
            .await
            .unwrap()
            .into_state()
    );
    assert_eq!(their_events.len(), 5);
    assert_eq!(our_events.len(), 5);
    for (theirs, ours) in their_events.iter().zip(&our_events) {
        assert_eq!(theirs.sequence, ours.0);
        assert_eq!(theirs.payload, ours.1);
        assert_eq!(theirs.metadata, ours.2);
        assert!(theirs.metadata.contains_key("actor"));
    }
}
