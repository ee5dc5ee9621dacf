//! Events of a newer version (issue 17, point 1): a stored event this build cannot read is
//! published opaque instead of stalling the relay, and every read model passes over an event
//! type it does not know, acknowledges and counts it, and applies the aggregate's later events.

use std::time::Duration;

use async_nats::jetstream;
use e2e::metrics::scrape;
use prost::Message as _;
use proto::v1::EventEnvelope;

const WITHIN: Duration = Duration::from_secs(30);

fn any_port() -> Option<std::net::SocketAddr> {
    Some("127.0.0.1:0".parse().unwrap())
}

#[tokio::test]
async fn an_event_written_by_a_newer_version_goes_out_opaque_and_the_read_models_go_past_it() {
    // Arrange: both services with metrics; anna's phone linked and projected.
    let mut app = e2e::spawn_system_with(|settings| settings.metrics_addr = any_port()).await;
    app.restart_read_side(|settings| settings.metrics_addr = any_port())
        .await;
    app.register("anna").await;
    let phone = app.link_by_qr("anna").await;
    let device = phone.device_id.clone();
    app.wait_until_read_model_is_exact(WITHIN).await;
    let (last, link_id): (i64, String) = sqlx::query_as(
        "SELECT max(sequence), max(payload::jsonb #>> '{DeviceLinked,link_id}') FROM events \
         WHERE aggregate_type = 'device' AND aggregate_id = $1",
    )
    .bind(&device)
    .fetch_one(&app.pool)
    .await
    .unwrap();

    // Act: a newer command service writes an event type this build does not know, then an
    // event it knows (the phone unlinked from the portal), both after the phone's history.
    let renamed = serde_json::json!({"DeviceRenamed": {
        "device_name": "sealed:v1:AAAA",
        "at": "2026-12-01T10:00:00Z"
    }});
    let unlinked = serde_json::to_value(domain::DeviceEvent::DeviceUnlinked {
        link_id: domain::LinkAttemptId(link_id.parse().unwrap()),
        account_id: domain::AccountId::parse("anna").unwrap(),
        reason: domain::UnlinkReason::FromPortal,
        at: chrono::Utc::now(),
        in_bulk: false,
    })
    .unwrap();
    let mut tx = app.pool.begin().await.unwrap();
    for (offset, event_type, version, payload) in [
        (1, "DeviceRenamed", "2", &renamed),
        (2, "DeviceUnlinked", "1", &unlinked),
    ] {
        sqlx::query(
            "INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type, \
             event_version, payload, metadata, data_subject) \
             SELECT aggregate_type, aggregate_id, $2, $3, $4, $5::json, metadata, data_subject \
             FROM events WHERE aggregate_type = 'device' AND aggregate_id = $1 AND sequence = 1",
        )
        .bind(&device)
        .bind(last + offset)
        .bind(event_type)
        .bind(version)
        .bind(payload.to_string())
        .execute(&mut *tx)
        .await
        .unwrap();
    }
    tx.commit().await.unwrap();
    // And life goes on for others.
    app.register("bob").await;
    app.link_by_qr("bob").await;

    // Assert: the phone is unlinked in the read model (its guard moved past the unknown event),
    // bob's phone is there, and nothing was parked.
    app.wait_until_read_model_is_exact(WITHIN).await;
    let read = app.read_pool();
    let status: String = sqlx::query_scalar("SELECT status FROM devices WHERE device_id = $1")
        .bind(uuid::Uuid::parse_str(&device).unwrap())
        .fetch_one(&read)
        .await
        .unwrap();
    assert_eq!(status, "unlinked");
    let guards: Vec<(String, i64)> = sqlx::query_as(
        "SELECT projector, last_sequence FROM projector_positions \
         WHERE aggregate_type = 'device' AND aggregate_id = $1 ORDER BY projector",
    )
    .bind(&device)
    .fetch_all(&read)
    .await
    .unwrap();
    let expected: Vec<(String, i64)> = ["audit", "devices", "notifier"]
        .into_iter()
        .map(|projector| (projector.to_owned(), last + 2))
        .collect();
    assert_eq!(guards, expected);
    let parked: i64 = sqlx::query_scalar("SELECT count(*) FROM dead_letters")
        .fetch_one(&read)
        .await
        .unwrap();
    assert_eq!(parked, 0, "an unknown event is passed over, not parked");
    let audited: Vec<String> = app
        .audited("anna")
        .await
        .into_iter()
        .filter(|event| event.aggregate_id == device)
        .map(|event| event.event_type)
        .collect();
    assert_eq!(audited.last().map(String::as_str), Some("DeviceUnlinked"));
    assert!(!audited.iter().any(|kind| kind == "DeviceRenamed"));

    // The stream holds the unknown event, opaque: its place, type, version and stored payload.
    let stream = app.stream.as_ref().unwrap();
    let context = jetstream::new(async_nats::connect(&stream.nats_url).await.unwrap());
    let source = context.get_stream(&stream.name).await.unwrap();
    let message = source
        .get_last_raw_message_by_subject(&format!("{}.device.DeviceRenamed", stream.prefix))
        .await
        .unwrap();
    let envelope = EventEnvelope::decode(message.payload.as_ref()).unwrap();
    assert_eq!(envelope.event_id, format!("device/{device}/{}", last + 1));
    assert_eq!(envelope.event_version, "2");
    assert!(envelope.event.is_none());
    assert!(
        envelope.data_subject.starts_with("account:"),
        "{envelope:?}"
    );
    let payload: serde_json::Value = serde_json::from_slice(&envelope.opaque_payload).unwrap();
    assert_eq!(payload, renamed);

    // Counted on both sides.
    let relay = scrape(app.command_metrics_addr()).await;
    assert_eq!(relay.count("linkd_relay_opaque_events_total"), 1.0);
    let consumer = scrape(app.read_metrics_addr()).await;
    assert_eq!(consumer.count("linkd_consumer_unknown_messages_total"), 1.0);
    assert_eq!(consumer.count("linkd_consumer_parked_messages_total"), 0.0);

    // This build's command side does not decide on a history it cannot read: it sends the
    // caller to an upgraded instance.
    let refused = app
        .device
        .unlink_this_device(e2e::bearer(
            proto::v1::UnlinkThisDeviceRequest::default(),
            &phone.credential,
        ))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::Unavailable, "{refused:?}");
    assert!(refused.message().contains("newer linkd"), "{refused:?}");

    // A rebuild passes over it the same way.
    let devices = |pool: sqlx::PgPool| async move {
        let rows: Vec<(String, String)> =
            sqlx::query_as("SELECT device_id::text, status FROM devices ORDER BY device_id")
                .fetch_all(&pool)
                .await
                .unwrap();
        rows
    };
    let live = devices(read.clone()).await;
    projection_service::rebuild::rebuild(
        &app.read_database_url(),
        &app.read_settings().consumers().unwrap(),
    )
    .await
    .unwrap();
    assert_eq!(devices(read).await, live);
    assert_eq!(live.len(), 2);
}

#[tokio::test]
async fn a_history_written_in_the_old_shape_loads_projects_and_audits_in_the_new_one() {
    // Arrange: anna's phone linked, then two wrong codes stored as linkd stored them before
    // `SecretCodeFailed` version 2 (no `attempts_left`).
    let mut app = e2e::spawn_system().await;
    app.register("anna").await;
    let phone = app.link_by_qr("anna").await;
    let device = phone.device_id.clone();
    let last: i64 = sqlx::query_scalar(
        "SELECT max(sequence) FROM events WHERE aggregate_type = 'device' AND aggregate_id = $1",
    )
    .bind(&device)
    .fetch_one(&app.pool)
    .await
    .unwrap();
    for failures in [1, 2] {
        let old_shape = serde_json::json!({"SecretCodeFailed": {
            "consecutive_failures": failures,
            "at": chrono::Utc::now(),
        }});
        sqlx::query(
            "INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type, \
             event_version, payload, metadata, data_subject) \
             SELECT aggregate_type, aggregate_id, $2, 'SecretCodeFailed', '1', $3::json, \
                    metadata, data_subject \
             FROM events WHERE aggregate_type = 'device' AND aggregate_id = $1 AND sequence = 1",
        )
        .bind(&device)
        .bind(last + failures)
        .bind(old_shape.to_string())
        .execute(&app.pool)
        .await
        .unwrap();
    }

    // Act: three more wrong codes through the API; each loads the phone's history, the old
    // events upcast.
    let mut answers = Vec::new();
    for _ in 0..3 {
        let request = proto::v1::VerifySecretCodeRequest {
            secret_code: "000001".into(),
            request_id: String::new(),
        };
        answers.push(
            app.device
                .verify_secret_code(e2e::bearer(request, &phone.credential))
                .await
                .unwrap()
                .into_inner(),
        );
    }

    // Assert, command side: the count went on from the stored two, and the fifth locked out.
    let remaining: Vec<(u32, bool)> = answers
        .iter()
        .map(|a| (a.attempts_remaining, a.device_unlinked))
        .collect();
    assert_eq!(remaining, [(2, false), (1, false), (0, true)]);
    let stored: Vec<(String, String)> = sqlx::query_as(
        "SELECT event_version, payload::text FROM events WHERE aggregate_type = 'device' \
         AND aggregate_id = $1 AND event_type = 'SecretCodeFailed' ORDER BY sequence",
    )
    .bind(&device)
    .fetch_all(&app.pool)
    .await
    .unwrap();
    let versions: Vec<&str> = stored.iter().map(|(v, _)| v.as_str()).collect();
    assert_eq!(versions, ["1", "1", "2", "2", "2"], "{stored:?}");
    assert!(
        !stored[0].1.contains("attempts_left"),
        "the old rows stay as they were"
    );

    // The read side and the audit: every failure with its attempts left, the old ones computed.
    app.wait_until_every_read_model_is_exact(WITHIN).await;
    let details: Vec<serde_json::Value> = app
        .audited("anna")
        .await
        .into_iter()
        .filter(|event| event.aggregate_id == device && event.event_type == "SecretCodeFailed")
        .map(|event| serde_json::from_str(&event.details_json).unwrap())
        .collect();
    let left: Vec<(u64, u64)> = details
        .iter()
        .map(|d| {
            (
                d["consecutive_failures"].as_u64().unwrap(),
                d["attempts_left"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(left, [(1, 4), (2, 3), (3, 2), (4, 1), (5, 0)]);
    let auditor = app.keys.auditor_token().unwrap();
    let listed = proto::v1::audit_service_client::AuditServiceClient::new(
        app.read.as_ref().unwrap().channel.clone(),
    )
    .list_events(e2e::bearer(
        proto::v1::ListEventsRequest {
            account_id: "anna".into(),
            ..Default::default()
        },
        &auditor,
    ))
    .await
    .unwrap()
    .into_inner()
    .events;
    let failures: Vec<&str> = listed
        .iter()
        .filter(|e| e.event_type == "SecretCodeFailed")
        .map(|e| e.details_json.as_str())
        .collect();
    assert_eq!(failures.len(), 5);
    assert!(failures[0].contains("\"attempts_left\":4"), "{failures:?}");

    // On the stream: the stored version, and the current shape.
    let stream = app.stream.as_ref().unwrap();
    let context = jetstream::new(async_nats::connect(&stream.nats_url).await.unwrap());
    let source = context.get_stream(&stream.name).await.unwrap();
    let mut found = None;
    let last_message = source.clone().info().await.unwrap().state.last_sequence;
    for sequence in 1..=last_message {
        let message = source.get_raw_message(sequence).await.unwrap();
        let envelope = EventEnvelope::decode(message.payload.as_ref()).unwrap();
        if envelope.event_id == format!("device/{device}/{}", last + 1) {
            found = Some(envelope);
        }
    }
    let envelope = found.expect("the old event on the stream");
    assert_eq!(envelope.event_version, "1");
    let Some(proto::v1::event_envelope::Event::SecretCodeFailed(failed)) = envelope.event else {
        panic!("{envelope:?}");
    };
    assert_eq!(
        (failed.consecutive_failures, failed.attempts_left),
        (1, Some(4))
    );
}

#[tokio::test]
async fn an_event_whose_sealed_fields_do_not_open_is_parked_and_its_aggregate_goes_on() {
    // Arrange: anna registered and projected.
    let mut app = e2e::spawn_system().await;
    app.register("anna").await;
    app.link_by_qr("anna").await;
    app.wait_until_every_read_model_is_exact(WITHIN).await;
    let last: i64 = sqlx::query_scalar(
        "SELECT max(sequence) FROM events WHERE aggregate_type = 'account' AND aggregate_id = 'anna'",
    )
    .fetch_one(&app.pool)
    .await
    .unwrap();

    // Act: an address change whose sealed fields were damaged (they open under no key), then
    // an event of hers without personal fields.
    let damaged = serde_json::json!({"AccountEmailChanged": {
        "old_email": "sealed:v1:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
        "new_email": "sealed:v1:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
        "at": chrono::Utc::now(),
    }});
    let after = serde_json::to_value(domain::AccountEvent::DevicesUnlinkedTogether {
        device_ids: Vec::new(),
        reason: domain::UnlinkReason::FromPortal,
        at: chrono::Utc::now(),
    })
    .unwrap();
    for (offset, event_type, payload) in [
        (1, "AccountEmailChanged", &damaged),
        (2, "DevicesUnlinkedTogether", &after),
    ] {
        sqlx::query(
            "INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type, \
             event_version, payload, metadata, data_subject) \
             SELECT aggregate_type, aggregate_id, $1, $2, '1', $3::json, metadata, data_subject \
             FROM events WHERE aggregate_type = 'account' AND aggregate_id = 'anna' \
             AND sequence = 1",
        )
        .bind(last + offset)
        .bind(event_type)
        .bind(payload.to_string())
        .execute(&app.pool)
        .await
        .unwrap();
    }

    // Assert: parked for each read model that reads it, with the reason; the event after it
    // applied (guards at the end, the audit log has it).
    let read = app.read_pool();
    let expected_guard = last + 2;
    e2e::eventually(
        WITHIN,
        "the audit log and notifier past the damaged event",
        || async {
            let guards: Vec<i64> = sqlx::query_scalar(
                "SELECT last_sequence FROM projector_positions WHERE aggregate_type = 'account' \
             AND aggregate_id = 'anna' ORDER BY projector",
            )
            .fetch_all(&read)
            .await
            .ok()?;
            (guards == [expected_guard, expected_guard]).then_some(())
        },
    )
    .await;
    let parked: Vec<(String, String, String)> =
        sqlx::query_as("SELECT projector, event_id, reason FROM dead_letters ORDER BY projector")
            .fetch_all(&read)
            .await
            .unwrap();
    let damaged_id = format!("account/anna/{}", last + 1);
    let projectors: Vec<&str> = parked.iter().map(|(p, _, _)| p.as_str()).collect();
    assert_eq!(projectors, ["audit", "notifier"], "{parked:?}");
    assert!(
        parked.iter().all(|(_, id, _)| *id == damaged_id),
        "{parked:?}"
    );
    let audited = account_events(&app).await;
    assert_eq!(
        audited.last().map(String::as_str),
        Some("DevicesUnlinkedTogether")
    );
    assert!(!audited.iter().any(|t| t == "AccountEmailChanged"));

    // A rebuild parks nothing more and reaches the same place.
    projection_service::rebuild::rebuild(
        &app.read_database_url(),
        &app.read_settings().consumers().unwrap(),
    )
    .await
    .unwrap();
    let again: i64 = sqlx::query_scalar("SELECT count(*) FROM dead_letters")
        .fetch_one(&read)
        .await
        .unwrap();
    assert_eq!(again, 2);
    let audited_again = account_events(&app).await;
    assert_eq!(audited_again, audited);
}

/// The types of the events of anna's account aggregate in her audit log.
async fn account_events(app: &e2e::TestApp) -> Vec<String> {
    app.audited("anna")
        .await
        .into_iter()
        .filter(|event| event.aggregate_id == "anna")
        .map(|event| event.event_type)
        .collect()
}
