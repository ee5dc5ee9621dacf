//! Erasure (issue 19, docs/adr/0025): after `EraseAccount`, no copy of the account's email
//! addresses, device names or serials is readable in the event store, the read models, the
//! outbox or the stream, while the history stays verifiable and answers with placeholders.

use std::time::Duration;

use async_nats::jetstream;
use base64::Engine as _;
use e2e::mail::SmtpSink;
use e2e::{TestApp, bearer, eventually, spawn_system, spawn_system_with_mail};
use proto::v1::audit_service_client::AuditServiceClient;
use proto::v1::{
    ChangeAccountEmailRequest, DevicesAtRequest, EraseAccountRequest, ListEventsRequest,
    RegisterAccountRequest, RevokeAllDevicesRequest, VerifyHistoryRequest,
};
use tonic::Code;

const WITHIN: Duration = Duration::from_secs(30);

/// Everything personal the test writes for anna, in clear.
const PERSONAL: [&str; 5] = [
    "anna@example.lu",
    "anna.new@example.lu",
    "Anna's phone",
    "LT-SERIAL-4242",
    "Pixel 8",
];

fn assert_none_readable(what: &str, text: &str) {
    for needle in PERSONAL {
        // A bytea column (a replay answer, a dead letter's payload) reads as hex in `::text`.
        let hex: String = needle.bytes().map(|b| format!("{b:02x}")).collect();
        assert!(!text.contains(&hex), "{what} holds {needle:?} in hex");
        let encoded = base64::engine::general_purpose::STANDARD.encode(needle);
        assert!(
            !text.contains(needle),
            "{what} still holds {needle:?}: {text}"
        );
        assert!(
            !text.contains(&encoded[..8]),
            "{what} holds {needle:?} in base64"
        );
    }
}

async fn erase(app: &mut TestApp, account: &str) -> Result<bool, tonic::Status> {
    let request = EraseAccountRequest {
        account_id: account.into(),
        request_id: String::new(),
    };
    let token = app.system();
    app.portal
        .erase_account(bearer(request, &token))
        .await
        .map(|answer| answer.into_inner().already_erased)
}

/// The portal back end unlinks every device of `account`.
async fn revoke_all(app: &mut TestApp, account: &str) {
    let revoke = RevokeAllDevicesRequest {
        account_id: account.into(),
        request_id: String::new(),
    };
    let token = app.system();
    app.portal
        .revoke_all_devices(bearer(revoke, &token))
        .await
        .unwrap();
}

/// Every text a copy could hide in: the command database's events, snapshots and replay
/// answers; every table of the read-model database; every message of the stream.
async fn everything(app: &TestApp) -> (String, String, String) {
    let command: String = sqlx::query_scalar(
        "SELECT coalesce((SELECT string_agg(payload::text || metadata::text, ' ') FROM events), '') \
             || coalesce((SELECT string_agg(payload::text, ' ') FROM aggregate_snapshots), '') \
             || coalesce((SELECT string_agg(r::text, ' ') FROM request_log r), '')",
    )
    .fetch_one(&app.pool)
    .await
    .unwrap();
    let tables: Vec<String> = sqlx::query_scalar(
        "SELECT table_name::text FROM information_schema.tables \
         WHERE table_schema = 'public' AND table_type = 'BASE TABLE'",
    )
    .fetch_all(&app.read_pool())
    .await
    .unwrap();
    let mut read = String::new();
    for table in tables {
        let rows: Option<String> = sqlx::query_scalar(&format!(
            "SELECT string_agg(t::text, ' ') FROM \"{table}\" t"
        ))
        .fetch_one(&app.read_pool())
        .await
        .unwrap();
        read.push_str(&rows.unwrap_or_default());
    }
    let stream = app.stream.as_ref().unwrap();
    let context = jetstream::new(async_nats::connect(&stream.nats_url).await.unwrap());
    let mut source = context.get_stream(&stream.name).await.unwrap();
    let info = source.info().await.unwrap();
    let mut published = String::new();
    for sequence in info.state.first_sequence..=info.state.last_sequence {
        let message = source.get_raw_message(sequence).await.unwrap();
        published.push_str(&String::from_utf8_lossy(&message.payload));
        published.push_str(&format!("{:?}", message.headers));
    }
    (command, read, published)
}

/// The devices read model, row by row.
async fn device_rows(app: &TestApp) -> Vec<String> {
    sqlx::query_scalar("SELECT d::text FROM devices d ORDER BY device_id")
        .fetch_all(&app.read_pool())
        .await
        .unwrap()
}

/// The audit witness, the notifier's addresses and device names, and the outbox, as text.
async fn other_read_models(app: &TestApp) -> Vec<String> {
    sqlx::query_scalar(
        "SELECT t FROM (SELECT a::text AS t FROM audit_heads a \
         UNION ALL SELECT e::text FROM email_accounts e \
         UNION ALL SELECT d::text FROM email_devices d \
         UNION ALL SELECT o.event_id FROM email_outbox o) x ORDER BY t",
    )
    .fetch_all(&app.read_pool())
    .await
    .unwrap()
}

#[tokio::test]
async fn an_erased_account_leaves_no_readable_personal_data_and_a_verifiable_history() {
    // Arrange: anna links a phone with LuxTrust and one by QR code, changes her address (a
    // call with a request id, whose answer is kept for replays); emails go to an SMTP sink.
    let sink = SmtpSink::start().await;
    let mut app = spawn_system_with_mail(sink.settings()).await;
    app.register("anna").await;
    app.record_login("anna", "LT-SERIAL-4242").await;
    let luxtrust = app.link_by_luxtrust("anna", "LT-SERIAL-4242").await;
    let qr = app.link_by_qr("anna").await;
    let system = app.system();
    let change = ChangeAccountEmailRequest {
        account_id: "anna".into(),
        email: "anna.new@example.lu".into(),
        request_id: uuid::Uuid::new_v4().to_string(),
    };
    app.portal
        .change_account_email(bearer(change, &system))
        .await
        .unwrap();
    let linked_at = chrono::Utc::now();

    // Act + Assert: refused while a device is linked, and nothing erased.
    let refused = erase(&mut app, "anna").await.unwrap_err();
    assert_eq!(refused.code(), Code::FailedPrecondition, "{refused:?}");
    assert!(
        refused.message().contains("2 device(s) are still linked"),
        "{refused:?}"
    );
    revoke_all(&mut app, "anna").await;
    app.wait_until_read_model_is_exact(WITHIN).await;
    assert!(everything(&app).await.1.contains("Anna's phone"));
    // Every email for her sent (two links, the unlink of both), and kept in the outbox.
    let read = app.read_pool();
    eventually(WITHIN, "anna's emails to be sent", || async {
        let (sent, other): (i64, i64) = sqlx::query_as(
            "SELECT count(*) FILTER (WHERE status = 'sent'), \
                    count(*) FILTER (WHERE status <> 'sent') FROM email_outbox",
        )
        .fetch_one(&read)
        .await
        .ok()?;
        (sent >= 3 && other == 0).then_some(())
    })
    .await;
    let mailed = sink.messages().len();
    assert!(mailed >= 3, "{mailed} emails delivered");
    let replays: i64 = sqlx::query_scalar("SELECT count(*) FROM request_log")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(replays, 1);
    let unknown = erase(&mut app, "nobody").await.unwrap_err();
    assert_eq!(unknown.code(), Code::NotFound, "{unknown:?}");

    // Act: erase, twice.
    assert!(
        !erase(&mut app, "anna").await.unwrap(),
        "the first erasure erases"
    );
    assert!(
        erase(&mut app, "anna").await.unwrap(),
        "the second one is a no-op"
    );
    let read = app.read_pool();
    eventually(WITHIN, "the read side to forget anna", || async {
        let address: Option<String> =
            sqlx::query_scalar("SELECT email FROM email_accounts WHERE account_id = 'anna'")
                .fetch_optional(&read)
                .await
                .ok()?;
        address.is_none().then_some(())
    })
    .await;
    app.wait_until_read_model_is_exact(WITHIN).await;
    // Her sent emails are gone from the outbox, and nothing more is mailed to her.
    let outbox: i64 = sqlx::query_scalar("SELECT count(*) FROM email_outbox")
        .fetch_one(&read)
        .await
        .unwrap();
    assert_eq!(outbox, 0);
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(sink.messages().len(), mailed, "no email after the erasure");

    // Assert: nothing readable anywhere.
    let (command, read_models, stream) = everything(&app).await;
    assert_none_readable("the event store", &command);
    assert_none_readable("the read models", &read_models);
    assert_none_readable("the stream", &stream);
    // (The stream still holds the ciphertext: the search above did look at sealed fields.)
    assert!(stream.contains("sealed:v1:"));
    // Every key of anna's is gone: her account's, and those of the LuxTrust and QR attempts
    // that sealed their first events before they knew her; AccountErased names the attempts.
    let keys: Vec<(String, bool)> =
        sqlx::query_as("SELECT subject, wrapped IS NULL FROM data_keys ORDER BY subject")
            .fetch_all(&app.pool)
            .await
            .unwrap();
    assert_eq!(keys.len(), 3, "{keys:?}");
    assert!(keys.iter().all(|(_, erased)| *erased), "{keys:?}");
    let named: String = sqlx::query_scalar(
        "SELECT payload->'AccountErased'->>'link_attempt_ids' FROM events \
         WHERE event_type = 'AccountErased'",
    )
    .fetch_one(&app.pool)
    .await
    .unwrap();
    for (subject, _) in keys.iter().filter(|(s, _)| s.starts_with("link_attempt:")) {
        assert!(
            named.contains(&subject["link_attempt:".len()..]),
            "{named} lacks {subject}"
        );
    }

    // The history: intact, and answering with placeholders.
    let auditor = app.keys.auditor_token().unwrap();
    let mut audits = AuditServiceClient::new(app.read.as_ref().unwrap().channel.clone());
    let verdict = audits
        .verify_history(bearer(
            VerifyHistoryRequest {
                account_id: "anna".into(),
            },
            &auditor,
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(verdict.intact, "{verdict:?}");
    let listed = audits
        .list_events(bearer(
            ListEventsRequest {
                account_id: "anna".into(),
                page_size: 500,
                ..Default::default()
            },
            &auditor,
        ))
        .await
        .unwrap()
        .into_inner()
        .events;
    let types: Vec<&str> = listed.iter().map(|e| e.event_type.as_str()).collect();
    assert!(
        types.contains(&"DeviceLinked") && types.contains(&"AccountErased"),
        "{types:?}"
    );
    let facts: String = listed.iter().map(|e| e.details_json.as_str()).collect();
    assert!(facts.contains("[erased]"), "{facts}");
    assert_none_readable("ListEvents", &facts);
    let then = audits
        .devices_at(bearer(
            DevicesAtRequest {
                account_id: "anna".into(),
                at: Some(prost_types::Timestamp {
                    seconds: linked_at.timestamp(),
                    nanos: i32::try_from(linked_at.timestamp_subsec_nanos()).unwrap(),
                }),
            },
            &auditor,
        ))
        .await
        .unwrap()
        .into_inner()
        .devices;
    let mut ids: Vec<&str> = then.iter().map(|d| d.device_id.as_str()).collect();
    ids.sort_unstable();
    let mut expected = [luxtrust.device_id.as_str(), qr.device_id.as_str()];
    expected.sort_unstable();
    assert_eq!(ids, expected);
    assert!(then.iter().all(|d| d.name == "[erased]"), "{then:?}");

    // A rebuild from the stream reproduces the same erased rows in every read model.
    let live = device_rows(&app).await;
    let others = other_read_models(&app).await;
    let settings = app.read_settings();
    projection_service::rebuild::rebuild(&app.read_database_url(), &settings.consumers().unwrap())
        .await
        .unwrap();
    let rebuilt = device_rows(&app).await;
    assert_eq!(rebuilt, live);
    assert_eq!(rebuilt.len(), 2);
    assert_none_readable("the rebuilt devices", &rebuilt.join(" "));
    let rebuilt_others = other_read_models(&app).await;
    assert_eq!(rebuilt_others, others);
    // The witness of her account, her two phones, their attempts and QR code are there.
    assert!(rebuilt_others.len() >= 6, "{rebuilt_others:?}");
    assert!(
        rebuilt_others
            .iter()
            .any(|row| row.starts_with("(anna,account,anna,")),
        "{rebuilt_others:?}"
    );
    assert_none_readable(
        "the rebuilt audit witness and notifier",
        &rebuilt_others.join(" "),
    );

    // The id cannot be registered again, nor linked to.
    let again = RegisterAccountRequest {
        account_id: "anna".into(),
        email: "anna@example.lu".into(),
        language: "fr".into(),
        request_id: String::new(),
    };
    let refused = app
        .portal
        .register_account(bearer(again, &system))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::FailedPrecondition, "{refused:?}");
}

#[tokio::test]
async fn a_link_in_flight_when_the_account_is_erased_cannot_complete() {
    // Arrange: a phone scanned anna's QR code and she confirmed it, but its secret code is not
    // set yet (no device slot claimed): the erasure goes through.
    let mut app = spawn_system().await;
    app.register("anna").await;
    let attempt = app.authenticated_qr_attempt("anna").await;
    assert!(!erase(&mut app, "anna").await.unwrap());

    // Act
    let refused = app.set_code(&attempt.link_token).await.unwrap_err();

    // Assert: refused under the device-slot lock, and nothing linked.
    assert_eq!(refused.code(), Code::FailedPrecondition, "{refused:?}");
    assert!(refused.message().contains("erased"), "{refused:?}");
    let linked: i64 = sqlx::query_scalar("SELECT count(*) FROM device_credentials")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(linked, 0);
    let device_events: i64 =
        sqlx::query_scalar("SELECT count(*) FROM events WHERE aggregate_type = 'device'")
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert_eq!(device_events, 0);
}

#[tokio::test]
async fn a_qr_code_issued_before_the_erasure_links_nothing_after_it() {
    // Arrange: a QR code shown in anna's browser, then her account erased.
    let mut app = spawn_system().await;
    app.register("anna").await;
    let qr = app.issue_qr("anna").await;
    assert!(!erase(&mut app, "anna").await.unwrap());
    let start = app
        .start_link(&uuid::Uuid::new_v4().to_string(), proto::v1::LinkMethod::Qr)
        .await;

    // Act: a phone scans it.
    let refused = app
        .scan(&start.link_token, &qr)
        .await
        .expect_err("a scan after the erasure is refused");

    // Assert: a precondition the caller can read, and nothing written for the account.
    assert_eq!(refused.code(), Code::FailedPrecondition, "{refused:?}");
    assert!(refused.message().contains("erased"), "{refused:?}");
}

#[tokio::test]
async fn an_erasure_the_live_notifier_had_not_reached_before_a_rebuild_still_clears_the_outbox() {
    // Arrange: anna's phone linked, its email queued; then the projection service stops, and
    // her devices are revoked and her account erased while it is down.
    let mut app = spawn_system().await;
    app.register("anna").await;
    app.link_by_qr("anna").await;
    app.wait_until_every_read_model_is_exact(WITHIN).await;
    let read = app.read_pool();
    let queued: i64 = sqlx::query_scalar("SELECT count(*) FROM email_outbox")
        .fetch_one(&read)
        .await
        .unwrap();
    assert!(queued >= 1, "the link's email is queued");
    let settings = app.read_settings();
    app.read.take().unwrap().stop_gracefully(WITHIN).await;
    revoke_all(&mut app, "anna").await;
    assert!(!erase(&mut app, "anna").await.unwrap());
    let stored: i64 = sqlx::query_scalar("SELECT count(*) FROM events")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    let stream = app.stream.as_ref().unwrap();
    let context = jetstream::new(async_nats::connect(&stream.nats_url).await.unwrap());
    eventually(WITHIN, "every event published", || async {
        let mut source = context.get_stream(&stream.name).await.ok()?;
        let messages = source.info().await.ok()?.state.messages;
        (messages == u64::try_from(stored).unwrap()).then_some(())
    })
    .await;

    // Act: the rebuild applies the erasure before the live notifier does (it never will: the
    // rebuilt guards are past it).
    projection_service::rebuild::rebuild(&app.read_database_url(), &settings.consumers().unwrap())
        .await
        .unwrap();

    // Assert: nothing of anna's is left in the live outbox, sent or not.
    let left: Vec<String> = sqlx::query_scalar("SELECT event_id FROM email_outbox")
        .fetch_all(&read)
        .await
        .unwrap();
    assert!(left.is_empty(), "{left:?}");
}

/// The data key of the link attempt that started linking `device_id`, and whether it is
/// destroyed and whether the sweeper marked it kept.
async fn attempt_key(app: &TestApp, device_id: &str) -> (String, bool, bool) {
    sqlx::query_as(
        "SELECT k.subject, k.wrapped IS NULL, k.kept FROM data_keys k \
         JOIN events e ON k.subject = 'link_attempt:' || e.aggregate_id \
         WHERE e.event_type = 'LinkRequested' \
           AND e.payload -> 'LinkRequested' ->> 'device_id' = $1",
    )
    .bind(device_id)
    .fetch_one(&app.pool)
    .await
    .unwrap()
}

#[tokio::test]
async fn the_keys_of_attempts_that_never_named_an_account_are_destroyed_after_their_period() {
    // Arrange: four phones start linking by QR code; one scans anna's code (its attempt names
    // her account), one scans bob's, whose key is then destroyed as if an erasure had missed
    // that attempt; two never scan. All but one of the attempts are made two days old.
    let mut app = e2e::spawn_app().await;
    app.register("anna").await;
    app.register("bob").await;
    let qr = app.issue_qr("anna").await;
    let bobs_qr = app.issue_qr("bob").await;
    let phones: [String; 4] = std::array::from_fn(|_| uuid::Uuid::new_v4().to_string());
    let [abandoned, claimed, recent, orphaned] =
        [&phones[0], &phones[1], &phones[2], &phones[3]].map(String::as_str);
    for device in [abandoned, claimed, recent, orphaned] {
        let start = app.start_link(device, proto::v1::LinkMethod::Qr).await;
        if device == claimed {
            app.scan(&start.link_token, &qr).await.unwrap();
        }
        if device == orphaned {
            app.scan(&start.link_token, &bobs_qr).await.unwrap();
        }
    }
    sqlx::query(
        "UPDATE data_keys SET wrapped = NULL, erased_at = now() WHERE subject = 'account:bob'",
    )
    .execute(&app.pool)
    .await
    .unwrap();
    for device in [abandoned, claimed, orphaned] {
        let (subject, ..) = attempt_key(&app, device).await;
        sqlx::query(
            "UPDATE data_keys SET created_at = now() - interval '2 days' WHERE subject = $1",
        )
        .bind(subject)
        .execute(&app.pool)
        .await
        .unwrap();
    }
    let periods = command_service::sweeper::Periods {
        replays: Duration::from_secs(24 * 3600),
        abandoned_after: Duration::from_secs(3600),
        unclaimed_attempt_keys: Duration::from_secs(24 * 3600),
    };

    // Act
    let swept = command_service::sweeper::sweep(&app.pool, &periods)
        .await
        .unwrap()
        .expect("no other instance sweeps");

    // Assert: the abandoned attempt's key and the one whose account's key is gone are
    // destroyed; the claimed one is kept for anna's erasure (and marked, so that it is not
    // examined again); the recent one waits.
    assert_eq!(swept.attempt_keys, 2, "{swept:?}");
    assert!(matches!(
        attempt_key(&app, orphaned).await,
        (_, true, false)
    ));
    assert!(matches!(
        attempt_key(&app, abandoned).await,
        (_, true, false)
    ));
    assert!(matches!(attempt_key(&app, claimed).await, (_, false, true)));
    assert!(matches!(attempt_key(&app, recent).await, (_, false, false)));
    let again = command_service::sweeper::sweep(&app.pool, &periods)
        .await
        .unwrap()
        .expect("no other instance sweeps");
    assert_eq!(again.attempt_keys, 0, "{again:?}");
    // The abandoned attempt's phone details are unreadable: its key row says when.
    let erased_at: Option<chrono::DateTime<chrono::Utc>> =
        sqlx::query_scalar("SELECT erased_at FROM data_keys WHERE subject = $1")
            .bind(attempt_key(&app, abandoned).await.0)
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert!(erased_at.is_some());
    // Anna's erasure still reaches the kept key.
    assert!(!erase(&mut app, "anna").await.unwrap());
    assert!(matches!(attempt_key(&app, claimed).await, (_, true, true)));
}
