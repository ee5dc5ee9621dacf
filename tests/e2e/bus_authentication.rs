//! The bus is authenticated (issue 16, fourth point; ADR 0022): the relay signs every message,
//! and the read side applies only what its key signed. A stranger who can publish on the
//! stream's subjects changes no read model and sends no email; what they published is parked
//! with the reason, counted and logged.

use std::time::Duration;

use async_nats::jetstream;
use e2e::bus::BusMessage;
use e2e::mail::SmtpSink;
use e2e::metrics::scrape;
use e2e::{TestApp, bearer, spawn_system_with_mail_and};
use prost::Message as _;
use proto::v1::event_envelope::Event;
use proto::v1::{self, EventEnvelope};
use service_kit::bus_signing::{BusSigner, KEY_ID_HEADER, SIGNATURE_HEADER, Signed};

const WITHIN: Duration = Duration::from_secs(30);

fn now() -> Option<prost_types::Timestamp> {
    Some(prost_types::Timestamp {
        seconds: chrono::Utc::now().timestamp(),
        nanos: 0,
    })
}

/// `AccountRegistered` for `account`, as the relay would publish it.
fn registered(account: &str) -> EventEnvelope {
    EventEnvelope {
        event_id: format!("account/{account}/1"),
        global_position: 1_000_001,
        aggregate_type: "account".into(),
        aggregate_id: account.into(),
        sequence: 1,
        event_type: "AccountRegistered".into(),
        occurred_at: now(),
        account_id: account.into(),
        actor: "system".into(),
        request_id: "forged".into(),
        traceparent: String::new(),
        data_subject: String::new(),
        event_version: "1".into(),
        opaque_payload: Vec::new(),
        event: Some(Event::AccountRegistered(v1::AccountRegistered {
            email: format!("{account}@attacker.example"),
            language: "en".into(),
            at: now(),
        })),
    }
}

/// `DeviceLinked` for a new device of `account`: were it applied, the holder would see a
/// device they never linked and get an email about it.
fn linked(account: &str) -> EventEnvelope {
    let device = uuid::Uuid::new_v4().to_string();
    EventEnvelope {
        event_id: format!("device/{device}/1"),
        global_position: 1_000_002,
        aggregate_type: "device".into(),
        aggregate_id: device,
        sequence: 1,
        event_type: "DeviceLinked".into(),
        occurred_at: now(),
        account_id: account.into(),
        actor: "device".into(),
        request_id: "forged".into(),
        traceparent: String::new(),
        data_subject: String::new(),
        event_version: "1".into(),
        opaque_payload: Vec::new(),
        event: Some(Event::DeviceLinked(v1::DeviceLinked {
            link_id: uuid::Uuid::new_v4().to_string(),
            device_name: "Mallory's phone".into(),
            method: v1::LinkMethod::Qr.into(),
            at: now(),
            ..Default::default()
        })),
    }
}

/// `envelope` as the relay would publish it, with a message id of its own.
fn message(app: &TestApp, envelope: &EventEnvelope) -> BusMessage {
    let stream = app.stream.as_ref().unwrap();
    BusMessage {
        subject: format!(
            "{}.{}.{}",
            stream.prefix, envelope.aggregate_type, envelope.event_type
        ),
        message_id: format!("{}/forged", envelope.event_id),
        global_position: envelope.global_position.to_string(),
        tx_id: "1".into(),
        payload: envelope.encode_to_vec(),
    }
}

async fn context(app: &TestApp) -> jetstream::Context {
    let stream = app.stream.as_ref().unwrap();
    jetstream::new(async_nats::connect(&stream.nats_url).await.unwrap())
}

fn stranger() -> BusSigner {
    let (private, _) = linkctl::dev::key_pair_pem().unwrap();
    BusSigner::from_pem(&private).unwrap()
}

#[tokio::test]
async fn a_stranger_publishing_on_the_stream_changes_no_read_model_and_sends_no_email() {
    // Arrange: the relay signs and the read side checks (as deployed); Anna has one device.
    let sink = SmtpSink::start().await;
    let mut app = spawn_system_with_mail_and(sink.settings(), |_| {}).await;
    app.restart_read_side(|settings| {
        settings.metrics_addr = Some("127.0.0.1:0".parse().unwrap());
    })
    .await;
    app.register("anna").await;
    app.link_by_qr("anna").await;
    sink.wait_for(1, WITHIN).await;
    app.wait_until_every_read_model_is_exact(WITHIN).await;

    // Act: a stranger publishes an account of their own, unsigned; a device for Anna signed
    // with a key of their own; and a device for Anna signed with the relay's key but with
    // another body than the one signed.
    let context = context(&app).await;
    message(&app, &registered("mallory"))
        .publish(&context, None)
        .await;
    message(&app, &linked("anna"))
        .publish(&context, Some(&stranger()))
        .await;
    let genuine = message(&app, &linked("anna"));
    let mut swapped = genuine.clone();
    let mut other = linked("anna");
    other.event_id = format!("{}/again", other.event_id);
    swapped.payload = other.encode_to_vec();
    // The relay's signature of the genuine message, on the swapped body.
    let relay = e2e::bus_signer();
    let (key_id, signature) = relay.sign(&Signed {
        subject: &genuine.subject,
        message_id: &genuine.message_id,
        global_position: &genuine.global_position,
        tx_id: &genuine.tx_id,
        payload: &genuine.payload,
    });
    let mut headers = async_nats::HeaderMap::new();
    headers.insert("Nats-Msg-Id", swapped.message_id.as_str());
    headers.insert("Linkd-Global-Position", swapped.global_position.as_str());
    headers.insert("Linkd-Tx-Id", swapped.tx_id.as_str());
    headers.insert(KEY_ID_HEADER, key_id);
    headers.insert(SIGNATURE_HEADER, signature.as_str());
    context
        .publish_with_headers(swapped.subject.clone(), headers, swapped.payload.into())
        .await
        .unwrap()
        .await
        .unwrap();

    // Assert: all three parked as not the relay's, and counted.
    let parked = e2e::eventually(WITHIN, "the three messages parked", || async {
        let reasons: Vec<String> =
            sqlx::query_scalar("SELECT reason FROM dead_letters ORDER BY id")
                .fetch_all(&app.read_pool())
                .await
                .ok()?;
        (reasons.len() == 3).then_some(reasons)
    })
    .await;
    assert!(parked[0].contains("not signed"), "{parked:?}");
    assert!(parked[1].contains("unknown key"), "{parked:?}");
    assert!(parked[2].contains("does not verify"), "{parked:?}");
    let metrics = scrape(app.read_metrics_addr()).await;
    assert_eq!(
        metrics.value("linkd_consumer_forged_messages_total"),
        Some(3.0)
    );
    // No read model changed: each still matches the store exactly; Mallory is unknown and
    // Anna has her one device; no email but the genuine one.
    app.wait_until_every_read_model_is_exact(WITHIN).await;
    let mallory: i64 =
        sqlx::query_scalar("SELECT count(*) FROM email_accounts WHERE account_id = 'mallory'")
            .fetch_one(&app.read_pool())
            .await
            .unwrap();
    assert_eq!(mallory, 0);
    let devices = app
        .queries()
        .list_devices(bearer(
            proto::v1::ListDevicesRequest::default(),
            &app.citizen("anna"),
        ))
        .await
        .unwrap()
        .into_inner()
        .devices;
    assert_eq!(devices.len(), 1);
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(sink.messages().len(), 1, "no email about a forged device");
}

#[tokio::test]
async fn the_relay_does_not_trust_a_strangers_message_at_the_streams_tail() {
    // Arrange: a system with the metrics on; a stranger's message claiming a position far
    // ahead of the store is the stream's last.
    let mut app = e2e::spawn_system_with(|settings| {
        settings.metrics_addr = Some("127.0.0.1:0".parse().unwrap());
    })
    .await;
    app.register("anna").await;
    app.link_by_qr("anna").await;
    app.wait_until_every_read_model_is_exact(WITHIN).await;
    message(&app, &registered("mallory"))
        .publish(&context(&app).await, Some(&stranger()))
        .await;

    // Act: the relay takes the lead again (a restart) and reads the stream's tail.
    app.restart_command_service(|_| {}, None).await;
    app.link_by_qr("anna").await;

    // Assert: not taken for the relay's own, the message halts nothing; the link is published.
    app.wait_until_every_read_model_is_exact(WITHIN).await;
    let metrics = scrape(app.command_metrics_addr()).await;
    assert_eq!(metrics.value("linkd_relay_halted"), Some(0.0));
}
