//! The rules no shortcut may break (DESIGN §4): nothing lost between PostgreSQL and the read
//! models, whatever is killed when; duplicates absorbed.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_nats::jetstream;
use e2e::bus::BusMessage;
use e2e::{
    OwnNats, TestApp, run_command_service, spawn_read_side_with, spawn_system, spawn_system_on,
};

const WITHIN: Duration = Duration::from_secs(30);

async fn link_some(app: &mut TestApp, account: &str, count: usize) {
    for _ in 0..count {
        app.link_by_qr(account).await;
    }
}

async fn read_model(app: &TestApp) -> Vec<(String, String, String, bool, Option<String>)> {
    sqlx::query_as(
        "SELECT device_id::text, account_id, status, biometrics_enabled, unlink_reason \
         FROM devices ORDER BY device_id",
    )
    .fetch_all(&app.read_pool())
    .await
    .unwrap()
}

#[tokio::test]
async fn events_committed_while_no_relay_runs_arrive_once_it_does() {
    // Arrange: the relay is down (killed between commit and publish) while commands succeed.
    let mut app = e2e::spawn_system_with(|settings| settings.relay_enabled = false).await;
    app.register("anna").await;
    link_some(&mut app, "anna", 3).await;

    // Act: a command service with a relay starts.
    app.restart_command_service(|settings| settings.relay_enabled = true, None)
        .await;

    // Assert
    app.wait_until_read_model_is_exact(WITHIN).await;
    assert_eq!(read_model(&app).await.len(), 3);
}

#[tokio::test]
async fn a_relay_killed_after_publishing_but_before_its_checkpoint_loses_and_doubles_nothing() {
    // Arrange: the relay will stop once between publishing and saving its checkpoint.
    let mut app = e2e::spawn_system_with(|settings| settings.relay_enabled = false).await;
    let crash = Arc::new(AtomicBool::new(true));
    app.restart_command_service(
        |settings| settings.relay_enabled = true,
        Some(crash.clone()),
    )
    .await;

    // Act
    app.register("anna").await;
    link_some(&mut app, "anna", 3).await;

    // Assert: it crashed, restarted, republished; the read model is exact.
    app.wait_until_read_model_is_exact(WITHIN).await;
    assert!(!crash.load(Ordering::SeqCst), "the crash point was reached");
    link_some(&mut app, "anna", 1).await;
    app.wait_until_read_model_is_exact(WITHIN).await;
    assert_eq!(read_model(&app).await.len(), 4);
}

#[tokio::test]
async fn nats_down_while_commands_are_accepted_loses_nothing() {
    // Arrange: a NATS server of this test's own.
    let mut nats = OwnNats::start().await;
    let mut app = spawn_system_on(nats.url.clone()).await;
    app.register("anna").await;
    link_some(&mut app, "anna", 2).await;
    app.wait_until_read_model_is_exact(WITHIN).await;

    // Act: NATS stops; commands go on; NATS comes back.
    nats.stop();
    link_some(&mut app, "anna", 3).await;
    let annas = app.link_by_qr("anna").await;
    app.device
        .unlink_this_device(e2e::bearer(Default::default(), &annas.credential))
        .await
        .unwrap();
    nats.resume().await;

    // Assert
    app.wait_until_read_model_is_exact(Duration::from_secs(60))
        .await;
    let linked = read_model(&app)
        .await
        .into_iter()
        .filter(|row| row.2 == "linked")
        .count();
    assert_eq!(linked, 5);
}

#[tokio::test]
async fn the_same_events_delivered_twice_leave_the_read_model_unchanged() {
    // Arrange
    let mut app = spawn_system().await;
    app.register("anna").await;
    link_some(&mut app, "anna", 3).await;
    let locked = app.link_by_qr("anna").await;
    for _ in 0..5 {
        let request = proto::v1::VerifySecretCodeRequest {
            secret_code: "000001".into(),
            request_id: String::new(),
        };
        app.device
            .verify_secret_code(e2e::bearer(request, &locked.credential))
            .await
            .unwrap();
    }
    app.wait_until_read_model_is_exact(WITHIN).await;
    let before = read_model(&app).await;

    // Act: every message of the stream published again under new ids (past JetStream's
    // duplicate window, this is what a republish from position 0 delivers).
    let stream = app.stream.as_ref().unwrap();
    let client = async_nats::connect(&stream.nats_url).await.unwrap();
    let context = jetstream::new(client);
    let mut source = context.get_stream(&stream.name).await.unwrap();
    let last = source.info().await.unwrap().state.last_sequence;
    for sequence in 1..=last {
        let message = source.get_raw_message(sequence).await.unwrap();
        let header = |name: &str| message.headers.get(name).unwrap().as_str().to_owned();
        BusMessage {
            subject: message.subject.to_string(),
            message_id: format!("{}/again", header("Nats-Msg-Id")),
            global_position: header("Linkd-Global-Position"),
            tx_id: header("Linkd-Tx-Id"),
            payload: message.payload.to_vec(),
        }
        .publish_as_relay(&context)
        .await;
    }
    let started = tokio::time::Instant::now();
    loop {
        let mut consumer: jetstream::consumer::PullConsumer =
            source.get_consumer("linkd-test-read-models").await.unwrap();
        let info = consumer.info().await.unwrap();
        if info.num_pending == 0 && info.num_ack_pending == 0 {
            break;
        }
        assert!(started.elapsed() < WITHIN, "the copies were not consumed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Assert: absorbed by the guards, not parked.
    assert_eq!(read_model(&app).await, before);
    app.wait_until_every_read_model_is_exact(WITHIN).await;
    let parked: i64 = sqlx::query_scalar("SELECT count(*) FROM dead_letters")
        .fetch_one(&app.read_pool())
        .await
        .unwrap();
    assert_eq!(parked, 0);
}

#[tokio::test]
async fn a_republish_from_position_zero_is_absorbed() {
    // Arrange
    let mut app = spawn_system().await;
    app.register("anna").await;
    link_some(&mut app, "anna", 2).await;
    app.wait_until_read_model_is_exact(WITHIN).await;
    let before = read_model(&app).await;
    let stream = app.stream.as_ref().unwrap();
    let client = async_nats::connect(&stream.nats_url).await.unwrap();
    let mut source = jetstream::new(client)
        .get_stream(&stream.name)
        .await
        .unwrap();
    let messages_before = source.info().await.unwrap().state.messages;

    // Act: the operator command, then more activity.
    let cursor = command_service::relay::republish_from(&app.pool, 0)
        .await
        .unwrap();
    assert_eq!(cursor, command_service::relay::Cursor::START);
    link_some(&mut app, "anna", 1).await;

    // Assert: the relay went through every event again (its checkpoint is back at the end),
    // JetStream dropped the copies (same Nats-Msg-Id), and the read model is unchanged.
    let last: (i64, i64) = sqlx::query_as(
        "SELECT tx_id::text::bigint, global_position FROM events \
         ORDER BY tx_id DESC, global_position DESC LIMIT 1",
    )
    .fetch_one(&app.pool)
    .await
    .unwrap();
    e2e::eventually(WITHIN, "the relay to go through every event again", || {
        let pool = app.pool.clone();
        async move {
            let at: (i64, i64) =
                sqlx::query_as("SELECT tx_id, global_position FROM relay_checkpoint")
                    .fetch_one(&pool)
                    .await
                    .ok()?;
            (at == last).then_some(())
        }
    })
    .await;
    app.wait_until_read_model_is_exact(WITHIN).await;
    let after = read_model(&app).await;
    assert_eq!(after.len(), before.len() + 1);
    assert!(before.iter().all(|row| after.contains(row)));
    let stored: i64 = sqlx::query_scalar("SELECT count(*) FROM events")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    let messages_after = source.info().await.unwrap().state.messages;
    assert!(messages_after > messages_before);
    assert_eq!(
        messages_after,
        u64::try_from(stored).unwrap(),
        "one message per event"
    );
}

#[tokio::test]
async fn two_instances_of_each_service_elect_one_relay_and_keep_read_models_exact() {
    // Arrange: a second command service and a second projection service on the same
    // databases and stream.
    let mut app = spawn_system().await;
    let second_command = run_command_service(app.settings.clone(), None).await;
    // The second one as the first: it opens sealed events and checks the relay's signatures
    // (without the KEK it could only NAK what it is handed, and the lag would be the test's).
    let _second_read = spawn_read_side_with(app.read_settings()).await;
    app.register("anna").await;
    app.register("bob").await;

    // Act: commands through both command services.
    let mut other = TestApp::clients_on(&second_command.channel);
    for round in 0..4 {
        app.link_by_qr("anna").await;
        let qr = app.issue_qr("bob").await;
        let start = app
            .start_link(&uuid::Uuid::new_v4().to_string(), proto::v1::LinkMethod::Qr)
            .await;
        let scanned = other
            .device
            .scan_qr(proto::v1::ScanQrRequest {
                link_token: start.link_token.clone(),
                qr_payload: qr.qr_payload,
                request_id: String::new(),
            })
            .await
            .unwrap()
            .into_inner();
        let confirm = proto::v1::ConfirmLinkRequest {
            qr_id: qr.qr_id,
            matching_code: scanned.matching_code,
            request_id: String::new(),
        };
        other
            .portal
            .confirm_link(e2e::bearer(confirm, &app.citizen("bob")))
            .await
            .unwrap();
        other
            .clone()
            .set_code(&start.link_token)
            .await
            .unwrap_or_else(|e| panic!("round {round}: {e}"));
    }

    // Assert: one relay leader holds the lock; the read model is exact.
    let leaders: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted \
         AND database = (SELECT oid FROM pg_database WHERE datname = current_database())",
    )
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!(leaders, 1);
    app.wait_until_every_read_model_is_exact(WITHIN).await;
    assert_eq!(read_model(&app).await.len(), 8);
    let duplicates: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM (SELECT device_id FROM devices GROUP BY device_id HAVING count(*) > 1) d",
    )
    .fetch_one(&app.read_pool())
    .await
    .unwrap();
    assert_eq!(duplicates, 0);
}

#[tokio::test]
async fn a_poison_message_is_parked_with_its_reason_and_the_rest_goes_on() {
    // Arrange
    let mut app = spawn_system().await;
    app.register("anna").await;
    app.link_by_qr("anna").await;
    app.wait_until_read_model_is_exact(WITHIN).await;

    // Act: garbage on a device subject, signed by the relay's key (a relay bug, say), then
    // more real events.
    let stream = app.stream.as_ref().unwrap();
    let client = async_nats::connect(&stream.nats_url).await.unwrap();
    BusMessage {
        subject: format!("{}.device.DeviceLinked", stream.prefix),
        message_id: "garbage".into(),
        global_position: "1".into(),
        tx_id: "1".into(),
        payload: b"not protobuf".to_vec(),
    }
    .publish_as_relay(&jetstream::new(client))
    .await;
    app.link_by_qr("anna").await;

    // Assert
    app.wait_until_read_model_is_exact(WITHIN).await;
    let parked: Vec<(String, String)> =
        sqlx::query_as("SELECT projector, reason FROM dead_letters ORDER BY projector")
            .fetch_all(&app.read_pool())
            .await
            .unwrap();
    let projectors: Vec<&str> = parked
        .iter()
        .map(|(projector, _)| projector.as_str())
        .collect();
    assert_eq!(
        projectors,
        ["linkd-test-read-models"],
        "the consumer parks it once, for every read model"
    );
    assert!(
        parked
            .iter()
            .all(|(_, reason)| reason.contains("not an EventEnvelope")),
        "{parked:?}"
    );
    assert_eq!(read_model(&app).await.len(), 2);
}

/// The backend holding the relay's leader lock (`relay.rs`, `LEADER_LOCK`), if one does.
async fn relay_leader(app: &TestApp) -> Option<i32> {
    sqlx::query_scalar(
        "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted \
         AND classid = x'6c696e6b'::bigint AND objid = x'64526c79'::bigint AND objsubid = 1 \
         AND database = (SELECT oid FROM pg_database WHERE datname = current_database())",
    )
    .fetch_optional(&app.pool)
    .await
    .unwrap()
}

#[tokio::test]
async fn a_relay_whose_lock_connection_dies_stops_and_leads_again_without_losing_an_event() {
    // Arrange: a relay leading, with events published.
    let mut app = spawn_system().await;
    app.register("anna").await;
    link_some(&mut app, "anna", 2).await;
    app.wait_until_read_model_is_exact(WITHIN).await;
    let first = e2e::eventually(WITHIN, "a relay to lead", || relay_leader(&app)).await;

    // Act: its lock connection is cut (the lock goes with it) while nothing else happens.
    let cut: bool = sqlx::query_scalar("SELECT pg_terminate_backend($1)")
        .bind(first)
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert!(cut);

    // Assert: the relay notices without being woken, takes the lock again on a new
    // connection, and what is written next arrives, once.
    let again = e2e::eventually(WITHIN, "the relay to lead again", || async {
        relay_leader(&app).await.filter(|pid| *pid != first)
    })
    .await;
    assert_ne!(again, first);
    link_some(&mut app, "anna", 2).await;
    app.wait_until_read_model_is_exact(WITHIN).await;
    assert_eq!(read_model(&app).await.len(), 4);
}
