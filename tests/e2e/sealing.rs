//! Personal fields are stored and published sealed (ADR 0025): the event store and the stream
//! hold ciphertext where names, addresses and serials were, and the projection service opens
//! them with the data keys, so the read models show them in clear.

use std::time::Duration;

use async_nats::jetstream;
use base64::Engine as _;

const WITHIN: Duration = Duration::from_secs(20);

/// What the test writes that is personal, in clear.
const PERSONAL: [&str; 4] = [
    "Anna's phone",
    "anna@example.lu",
    "LT-SERIAL-4242",
    "Pixel 8",
];

fn assert_none_readable(what: &str, text: &str) {
    for needle in PERSONAL {
        let encoded = base64::engine::general_purpose::STANDARD.encode(needle);
        assert!(!text.contains(needle), "{what} holds {needle:?} in clear");
        // Base64 of a text starts at a three-byte boundary: its first 8 characters are enough.
        assert!(
            !text.contains(&encoded[..8]),
            "{what} holds {needle:?} in base64"
        );
    }
}

#[tokio::test]
async fn personal_fields_are_sealed_in_the_store_and_on_the_stream_and_read_in_clear() {
    // Arrange: anna registers, logs in with LuxTrust, and links a phone each way.
    let mut app = e2e::spawn_system().await;
    app.register("anna").await;
    app.record_login("anna", "LT-SERIAL-4242").await;
    app.link_by_luxtrust("anna", "LT-SERIAL-4242").await;
    app.link_by_qr("anna").await;
    app.wait_until_read_model_is_exact(WITHIN).await;

    // Act: every stored event and snapshot, every message on the stream, the read models, and
    // the audit log (read from the store, opened).
    let stored: String = sqlx::query_scalar(
        "SELECT coalesce((SELECT string_agg(payload::text || metadata::text, ' ') FROM events), '') \
             || coalesce((SELECT string_agg(payload::text, ' ') FROM aggregate_snapshots), '')",
    )
    .fetch_one(&app.pool)
    .await
    .unwrap();
    let stream = app.stream.as_ref().unwrap();
    let context = jetstream::new(async_nats::connect(&stream.nats_url).await.unwrap());
    let mut source = context.get_stream(&stream.name).await.unwrap();
    let last = source.info().await.unwrap().state.last_sequence;
    let mut published = String::new();
    for sequence in 1..=last {
        let message = source.get_raw_message(sequence).await.unwrap();
        published.push_str(&String::from_utf8_lossy(&message.payload));
        published.push_str(&format!("{:?}", message.headers));
    }
    let mut read: String = sqlx::query_scalar("SELECT string_agg(d::text, ' ') FROM devices d")
        .fetch_one(&app.read_pool())
        .await
        .unwrap();
    for event in app.audited("anna").await {
        read.push_str(&event.details_json);
    }

    // Assert
    assert!(last >= 10, "{last} messages");
    assert_none_readable("the event store", &stored);
    assert!(stored.contains("sealed:v1:"), "{stored}");
    assert_none_readable("the stream", &published);
    assert!(published.contains("sealed:v1:"));
    assert!(
        published.contains("account:anna"),
        "the envelope names its data subject"
    );
    for clear in ["Anna's phone", "LT-SERIAL-4242", "Pixel 8"] {
        assert!(
            read.contains(clear),
            "the read models lack {clear:?}: {read}"
        );
    }
}

#[tokio::test]
async fn a_service_without_the_kek_that_wraps_a_data_key_does_not_start() {
    // Arrange: an account whose data key the tests' KEK (`test-1`) wraps.
    let mut app = e2e::spawn_app().await;
    app.register("anna").await;
    let dir = std::env::temp_dir().join(format!("linkd-kek-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    let only_new = dir.join("kek");
    std::fs::write(
        &only_new,
        format!(
            "rotated-2 {}\n",
            base64::engine::general_purpose::STANDARD.encode([9_u8; 32])
        ),
    )
    .unwrap();
    let mut settings = app.settings.clone();
    settings.kek_file = only_new;
    settings.grpc_addr = "127.0.0.1:0".parse().unwrap();

    // Act
    let refused = command_service::Application::build(settings).await.err();

    // Assert: the start is refused, naming the missing KEK and the way out.
    let message = format!("{:#}", refused.expect("the start is refused"));
    assert!(message.contains("KEK 'test-1'"), "{message}");
    assert!(message.contains("rewrap-keys"), "{message}");
    std::fs::remove_dir_all(dir).unwrap();
}

#[tokio::test]
async fn a_kek_rotation_ends_with_both_services_running_without_the_old_kek() {
    // Arrange: anna's account and a phone, sealed under the tests' KEK (`test-1`).
    let mut app = e2e::spawn_system().await;
    app.register("anna").await;
    app.link_by_qr("anna").await;
    app.wait_until_read_model_is_exact(WITHIN).await;
    let old = std::fs::read_to_string(&app.settings.kek_file).unwrap();
    let dir = std::env::temp_dir().join(format!("linkd-kek-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    let new = format!(
        "rotated-2 {}\n",
        base64::engine::general_purpose::STANDARD.encode([9_u8; 32])
    );
    let (both, only_new) = (dir.join("both"), dir.join("only-new"));
    std::fs::write(&both, format!("{old}{new}")).unwrap();
    std::fs::write(&only_new, &new).unwrap();

    // Act: the new KEK made current (last in the file) on both services; every key rewrapped
    // as `command-service rewrap-keys` does; then the old KEK removed from both.
    app.restart_command_service(|s| s.kek_file = both.clone(), None)
        .await;
    app.restart_read_side(|s| s.kek_file = Some(both.clone()))
        .await;
    let keks = command_service::startup::load_keks(&app.settings, &app.pool)
        .await
        .unwrap();
    let rewrapped = command_service::store::rewrap_keys(&app.pool, &keks)
        .await
        .unwrap();
    app.restart_command_service(|s| s.kek_file = only_new.clone(), None)
        .await;
    app.restart_read_side(|s| s.kek_file = Some(only_new.clone()))
        .await;

    // Assert: the keys (anna's, her attempt's) are all under the new KEK; anna's account
    // loads and takes commands (her address opened under it); a second phone's name is
    // sealed under her rewrapped key and read in clear on the read side.
    assert!(rewrapped >= 2, "{rewrapped} keys rewrapped");
    let kek_ids: Vec<String> = sqlx::query_scalar("SELECT DISTINCT kek_id FROM data_keys")
        .fetch_all(&app.pool)
        .await
        .unwrap();
    assert_eq!(kek_ids, ["rotated-2"]);
    let change = proto::v1::ChangeAccountEmailRequest {
        account_id: "anna".into(),
        email: "anna.new@example.lu".into(),
        request_id: String::new(),
    };
    let system = app.system();
    app.portal
        .change_account_email(e2e::bearer(change, &system))
        .await
        .unwrap();
    app.link_by_qr("anna").await;
    app.wait_until_read_model_is_exact(WITHIN).await;
    let names: Vec<String> =
        sqlx::query_scalar("SELECT name FROM devices WHERE account_id = 'anna' ORDER BY name")
            .fetch_all(&app.read_pool())
            .await
            .unwrap();
    assert_eq!(names, ["Anna's phone", "Anna's phone"]);
    std::fs::remove_dir_all(dir).unwrap();
}
