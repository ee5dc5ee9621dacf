//! Confirmation emails and notices, through a real SMTP server (scripts/smtp-sink.py).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use e2e::mail::SmtpSink;
use e2e::{TestApp, bearer, spawn_system_with_mail};
use proto::v1::LinkMethod;

const WITHIN: Duration = Duration::from_secs(30);

async fn outbox(app: &TestApp) -> Vec<(String, String, String, i32)> {
    sqlx::query_as("SELECT kind, recipient, status, attempts FROM email_outbox ORDER BY id")
        .fetch_all(&app.read_pool())
        .await
        .unwrap()
}

#[tokio::test]
async fn one_link_sends_exactly_one_confirmation_in_the_accounts_language() {
    // Arrange: Anna's account is in French.
    let sink = SmtpSink::start().await;
    let mut app = spawn_system_with_mail(sink.settings()).await;
    app.register("anna").await;

    // Act
    app.link_by_qr("anna").await;

    // Assert
    let mails = sink.wait_for(1, WITHIN).await;
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(sink.messages().len(), 1, "exactly one email");
    let mail = &mails[0];
    assert_eq!(
        mail.header("X-Envelope-To").as_deref(),
        Some("anna@example.lu")
    );
    assert!(
        mail.header("From")
            .unwrap()
            .contains("usermanagement@security.public.lu")
    );
    assert!(
        mail.header("Message-ID")
            .is_some_and(|id| id.ends_with("@security.public.lu>"))
    );
    let subject = mail.subject();
    assert!(
        !subject.contains("Anna's phone"),
        "no device name: {subject}"
    );
    assert!(subject.contains("couplé"), "in French: {subject}");
    assert!(mail.body_contains("Anna's phone"), "the name, in the body");
    assert!(mail.body_contains("code QR"), "the link method, in French");
    assert!(
        mail.body_contains("Délier mon appareil"),
        "what to do if it was not you"
    );
    assert!(mail.body_contains("<html"), "an HTML part too");
}

#[tokio::test]
async fn each_way_of_unlinking_sends_its_notice_with_its_reason() {
    // Arrange: three devices.
    let sink = SmtpSink::start().await;
    let mut app = spawn_system_with_mail(sink.settings()).await;
    app.register("anna").await;
    let lost = app.link_by_qr("anna").await;
    let own = app.link_by_qr("anna").await;
    let guessed = app.link_by_qr("anna").await;
    sink.wait_for(3, WITHIN).await;

    // Act: from the portal, from the device, and by five wrong codes.
    let request = proto::v1::UnlinkDevicesRequest {
        device_ids: vec![lost.device_id.clone()],
        request_id: String::new(),
        ..Default::default()
    };
    app.portal
        .unlink_devices(bearer(request, &app.citizen("anna")))
        .await
        .unwrap();
    app.device
        .unlink_this_device(bearer(Default::default(), &own.credential))
        .await
        .unwrap();
    for _ in 0..5 {
        let request = proto::v1::VerifySecretCodeRequest {
            secret_code: "000001".into(),
            request_id: String::new(),
        };
        app.device
            .verify_secret_code(bearer(request, &guessed.credential))
            .await
            .unwrap();
    }

    // Assert
    let mails = sink.wait_for(6, WITHIN).await;
    let notices: Vec<_> = mails
        .iter()
        .filter(|m| m.subject().contains("délié"))
        .collect();
    assert_eq!(notices.len(), 3);
    for reason in [
        "depuis votre compte MyGuichet.lu dans le navigateur",
        "depuis l'appareil lui-même",
        "un code secret erroné a été saisi 5 fois de suite",
    ] {
        assert!(
            notices.iter().any(|m| m.body_contains(reason)),
            "a notice saying: {reason}"
        );
    }
}

#[tokio::test]
async fn emails_queued_while_smtp_is_down_longer_than_the_old_retry_window_all_arrive() {
    // Arrange: the schedule of a deployment (backoff doubling to a ceiling, given up only after
    // a long wait), with short delays.
    let mut sink = SmtpSink::start().await;
    let mut settings = sink.settings();
    settings.retry_base = Duration::from_millis(50);
    settings.retry_max_delay = Duration::from_millis(200);
    settings.give_up_after = Duration::from_secs(120);
    let mut app = spawn_system_with_mail(settings).await;
    app.register("anna").await;

    // Act: the relay host is down while three devices are linked, for longer than the old
    // schedule's eight attempts, then comes back.
    sink.stop();
    for _ in 0..3 {
        app.link_by_qr("anna").await;
    }
    e2e::eventually(WITHIN, "every email past eight failed attempts", || async {
        let rows = outbox(&app).await;
        (rows.len() == 3 && rows.iter().all(|row| row.2 == "pending" && row.3 > 8)).then_some(())
    })
    .await;
    // An operator sees when each is tried next.
    let listed = linkctl::admin::emails(&app.read_pool(), "pending", 10)
        .await
        .unwrap();
    assert_eq!(listed.len(), 3);
    assert!(
        listed
            .iter()
            .all(|row| row.next_attempt_at > row.created_at)
    );
    sink.resume().await;

    // Assert
    sink.wait_for(3, Duration::from_secs(60)).await;
    e2e::eventually(WITHIN, "all marked sent", || async {
        outbox(&app)
            .await
            .iter()
            .all(|row| row.2 == "sent")
            .then_some(())
    })
    .await;
    assert_eq!(sink.messages().len(), 3);
}

#[tokio::test]
async fn a_crash_after_sending_may_repeat_an_email_with_the_same_message_id_but_loses_none() {
    // Arrange: the worker stops once between sending and marking sent.
    let sink = SmtpSink::start().await;
    let crash = Arc::new(AtomicBool::new(true));
    let mut settings = sink.settings();
    settings.crash_after_send = Some(crash.clone());
    let mut app = spawn_system_with_mail(settings).await;
    app.register("anna").await;

    // Act
    app.link_by_qr("anna").await;
    app.link_by_qr("anna").await;

    // Assert
    e2e::eventually(WITHIN, "both marked sent", || async {
        let rows = outbox(&app).await;
        (rows.len() == 2 && rows.iter().all(|row| row.2 == "sent")).then_some(())
    })
    .await;
    assert!(!crash.load(Ordering::SeqCst), "the crash point was reached");
    let mails = sink.messages();
    let mut ids: Vec<String> = mails
        .iter()
        .filter_map(|m| m.header("Message-ID"))
        .collect();
    assert_eq!(mails.len(), 3, "one email repeated");
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 2, "the repeat has the same Message-ID");
}

#[tokio::test]
async fn a_refused_recipient_is_recorded_as_failed_and_the_others_still_go_out() {
    // Arrange: one account whose mailbox the relay refuses.
    let sink = SmtpSink::start().await;
    let mut app = spawn_system_with_mail(sink.settings()).await;
    app.register("bounce-bob").await;
    app.register("anna").await;

    // Act
    let linked = std::time::Instant::now();
    app.link_by_qr("bounce-bob").await;
    app.link_by_qr("anna").await;

    // Assert: retried until it had waited two seconds (the sink's give_up_after), then failed.
    sink.wait_for(1, WITHIN).await;
    let failed = e2e::eventually(WITHIN, "the refused email marked failed", || async {
        let rows: Vec<(String, i32, Option<String>)> = sqlx::query_as(
            "SELECT recipient, attempts, last_error FROM email_outbox WHERE status = 'failed'",
        )
        .fetch_all(&app.read_pool())
        .await
        .ok()?;
        (!rows.is_empty()).then_some(rows)
    })
    .await;
    assert_eq!(failed.len(), 1);
    assert_eq!(failed[0].0, "bounce-bob@example.lu");
    assert!(failed[0].1 >= 3, "retried first: {failed:?}");
    let waited = linked.elapsed();
    assert!(
        waited >= Duration::from_secs(2),
        "given up only after give_up_after (2 s): {waited:?}"
    );
    assert!(
        failed[0].2.as_deref().unwrap_or_default().contains("550"),
        "{failed:?}"
    );
    let delivered = sink.messages();
    assert_eq!(delivered.len(), 1);
    // Operators see it and can queue it again.
    let listed = linkctl::admin::emails(&app.read_pool(), "failed", 10)
        .await
        .unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].recipient, "bounce-bob@example.lu");
    assert!(
        linkctl::admin::retry_email(&app.read_pool(), listed[0].id)
            .await
            .unwrap()
    );
    assert!(
        !linkctl::admin::retry_email(&app.read_pool(), listed[0].id)
            .await
            .unwrap()
    );
    assert_eq!(
        delivered[0].header("X-Envelope-To").as_deref(),
        Some("anna@example.lu")
    );
}

#[tokio::test]
async fn a_changed_email_address_is_announced_to_the_old_and_the_new_one() {
    let sink = SmtpSink::start().await;
    let mut app = spawn_system_with_mail(sink.settings()).await;
    let system = app.system();
    let register = proto::v1::RegisterAccountRequest {
        account_id: "hans".into(),
        email: "hans@example.lu".into(),
        language: "de".into(),
        request_id: String::new(),
    };
    app.portal
        .register_account(bearer(register, &system))
        .await
        .unwrap();

    let change = proto::v1::ChangeAccountEmailRequest {
        account_id: "hans".into(),
        email: "hans@post.lu".into(),
        request_id: String::new(),
    };
    app.portal
        .change_account_email(bearer(change, &system))
        .await
        .unwrap();
    app.link_by_qr("hans").await;

    let mails = sink.wait_for(3, WITHIN).await;
    let to = |m: &e2e::mail::Mail| m.header("X-Envelope-To").unwrap_or_default();
    assert!(
        mails
            .iter()
            .any(|m| to(m) == "hans@example.lu" && m.body_contains("hans@post.lu"))
    );
    assert!(
        mails
            .iter()
            .any(|m| to(m) == "hans@post.lu" && m.subject().contains("Adresse"))
    );
    let linked = mails
        .iter()
        .find(|m| m.subject().contains("gekoppelt"))
        .expect("German");
    assert_eq!(
        to(linked),
        "hans@post.lu",
        "the confirmation goes to the current address"
    );
}

#[tokio::test]
async fn three_workers_at_once_send_each_email_exactly_once() {
    // Arrange: the service's own worker and two more on the same outbox (several instances).
    let sink = SmtpSink::start().await;
    let mut app = spawn_system_with_mail(sink.settings()).await;
    let mut workers = Vec::new();
    for _ in 0..2 {
        workers.push(tokio::spawn(projection_service::email::run(
            app.read_pool(),
            sink.settings(),
            projection_service::email::EmailMetrics::default(),
        )));
    }
    app.register("anna").await;

    // Act: eight links, eight confirmations.
    for _ in 0..8 {
        app.link_by_qr("anna").await;
    }

    // Assert
    sink.wait_for(8, WITHIN).await;
    tokio::time::sleep(Duration::from_millis(800)).await;
    let mut ids: Vec<String> = sink
        .messages()
        .iter()
        .filter_map(|mail| mail.header("Message-ID"))
        .collect();
    ids.sort();
    let sent = ids.len();
    ids.dedup();
    assert_eq!((sent, ids.len()), (8, 8), "each email once: {ids:?}");
    assert!(
        outbox(&app)
            .await
            .iter()
            .all(|(_, _, status, attempts)| status == "sent" && *attempts == 1)
    );
    for worker in workers {
        worker.abort();
    }
}

#[tokio::test]
async fn a_device_name_made_to_look_like_an_instruction_is_quoted_as_data() {
    // Arrange: a phisher names their phone to continue the email's sentence with a link.
    let sink = SmtpSink::start().await;
    let mut app = spawn_system_with_mail(sink.settings()).await;
    app.register("anna").await;
    let qr = app.issue_qr("anna").await;
    let mut start = TestApp::start_request(&uuid::Uuid::new_v4().to_string(), LinkMethod::Qr);
    start.device_name = "x\". Verify at https://myguichet-secure.eu".into();
    let start = app.device.start_link(start).await.unwrap().into_inner();
    app.scan_and_confirm("anna", &start.link_token, &qr)
        .await
        .unwrap();

    // Act
    app.set_code(&start.link_token).await.unwrap();

    // Assert: no link anywhere, the quotes hold, the subject names no device.
    let mails = sink.wait_for(1, WITHIN).await;
    let mail = &mails[0];
    let subject = mail.subject();
    assert!(!subject.contains("Verify"), "{subject}");
    for link in ["https://", "myguichet-secure.eu", "<a ", "href"] {
        assert!(!mail.body_contains(link), "{link:?} in {}", mail.raw);
    }
    assert!(
        mail.body_contains("https[:]//myguichet-secure[.]eu"),
        "the name is shown, defused: {}",
        mail.raw
    );
    assert!(
        !mail.body_contains("x\". Verify"),
        "the quote cannot be closed"
    );
}
