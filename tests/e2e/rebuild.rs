use std::time::Duration;

use e2e::mail::SmtpSink;
use e2e::{bearer, spawn_system_with_mail};

/// Every row of every read model a rebuild replaces, and of the email outbox it must leave as
/// it is, as text, table by table.
async fn snapshot(pool: &sqlx::PgPool) -> Vec<(&'static str, Vec<String>)> {
    let mut tables = Vec::new();
    for (table, query) in [
        (
            "devices",
            "SELECT t::text FROM devices t ORDER BY device_id",
        ),
        (
            "projector_positions",
            "SELECT t::text FROM projector_positions t \
             ORDER BY projector, aggregate_type, aggregate_id",
        ),
        (
            "audit_heads",
            "SELECT t::text FROM audit_heads t ORDER BY account_id, aggregate_type, aggregate_id",
        ),
        (
            "email_accounts",
            "SELECT t::text FROM email_accounts t ORDER BY account_id",
        ),
        (
            "email_devices",
            "SELECT t::text FROM email_devices t ORDER BY device_id",
        ),
        (
            "email_outbox",
            "SELECT concat_ws('|', id, event_id, message_id, status, attempts) \
             FROM email_outbox ORDER BY id",
        ),
    ] {
        let rows: Vec<String> = sqlx::query_scalar(query).fetch_all(pool).await.unwrap();
        tables.push((table, rows));
    }
    tables
}

#[tokio::test]
async fn a_rebuild_from_position_zero_equals_the_live_read_models_and_sends_nothing_again() {
    // Arrange: links, biometrics, a verification, a lock-out and unlinks, each email sent.
    let sink = SmtpSink::start().await;
    let mut app = spawn_system_with_mail(sink.settings()).await;
    app.register("anna").await;
    app.record_login("anna", "MOBILE-1").await;
    let phone = app.link_by_qr("anna").await;
    let tablet = app.link_by_luxtrust("anna", "MOBILE-1").await;
    let locked = app.link_by_qr("anna").await;
    let biometrics = proto::v1::SetBiometricsRequest {
        enabled: true,
        request_id: String::new(),
    };
    app.device
        .set_biometrics(bearer(biometrics, &phone.credential))
        .await
        .unwrap();
    for code in [e2e::CODE, "000001", "000001", "000001", "000001", "000001"] {
        let request = proto::v1::VerifySecretCodeRequest {
            secret_code: code.into(),
            request_id: String::new(),
        };
        let credential = if code == e2e::CODE {
            &phone.credential
        } else {
            &locked.credential
        };
        app.device
            .verify_secret_code(bearer(request, credential))
            .await
            .unwrap();
    }
    app.device
        .unlink_this_device(bearer(Default::default(), &tablet.credential))
        .await
        .unwrap();
    app.wait_until_read_model_is_exact(Duration::from_secs(30))
        .await;
    let stored: i64 = sqlx::query_scalar("SELECT count(*) FROM events")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    // The notifier reads accounts' and devices' events only.
    let notified: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM events WHERE aggregate_type IN ('account', 'device')",
    )
    .fetch_one(&app.pool)
    .await
    .unwrap();
    let read = app.read_pool();
    // The other projectors' guards are carried over at the switch: wait until they are still.
    e2e::eventually(
        Duration::from_secs(30),
        "the notifier and the audit log to catch up",
        || async {
            let applied: Option<i64> = sqlx::query_scalar(
                "SELECT sum(last_sequence)::bigint FROM projector_positions \
                 WHERE projector IN ('notifier', 'audit')",
            )
            .fetch_one(&read)
            .await
            .ok()?;
            (applied == Some(stored + notified)).then_some(())
        },
    )
    .await;
    let outbox = |pool: sqlx::PgPool| async move {
        let pending: i64 =
            sqlx::query_scalar("SELECT count(*) FROM email_outbox WHERE status <> 'sent'")
                .fetch_one(&pool)
                .await
                .unwrap();
        pending
    };
    e2e::eventually(Duration::from_secs(30), "every email sent", || async {
        (outbox(app.read_pool()).await == 0).then_some(())
    })
    .await;
    let sent = sink.messages().len();
    assert!(sent >= 4, "{sent} emails");
    let live = snapshot(&app.read_pool()).await;
    for (table, rows) in &live {
        assert!(
            !rows.is_empty(),
            "{table} is empty: the test compares nothing"
        );
    }
    let indexes = |pool: sqlx::PgPool| async move {
        let names: Vec<String> = sqlx::query_scalar(
            "SELECT indexname FROM pg_indexes WHERE schemaname = 'public' \
             AND tablename IN ('devices', 'projector_positions') ORDER BY 1",
        )
        .fetch_all(&pool)
        .await
        .unwrap();
        names
    };
    let live_indexes = indexes(app.read_pool()).await;

    // What a rebuild killed halfway leaves: a schema with copies of the read models.
    sqlx::query("CREATE SCHEMA rebuild_0123456789abcdef0123456789abcdef")
        .execute(&read)
        .await
        .unwrap();
    sqlx::query(
        "CREATE TABLE rebuild_0123456789abcdef0123456789abcdef.email_accounts \
         AS SELECT * FROM email_accounts",
    )
    .execute(&read)
    .await
    .unwrap();
    // The notifier guarded every aggregate before it read accounts and devices only (ADR 0018):
    // such guards, left by an earlier version, must not stop the rebuild, which drops them.
    sqlx::query(
        "INSERT INTO projector_positions \
         SELECT 'notifier', aggregate_type, aggregate_id, last_sequence FROM projector_positions \
         WHERE projector = 'audit' AND aggregate_type IN ('link_qr', 'link_attempt')",
    )
    .execute(&read)
    .await
    .unwrap();
    // Damage every read model the rebuild replaces, as a bug or a lost table would.
    for damage in [
        "DELETE FROM audit_heads WHERE aggregate_id IN \
         (SELECT aggregate_id FROM audit_heads ORDER BY aggregate_id LIMIT 3)",
        "DELETE FROM email_accounts",
        "UPDATE email_devices SET name = 'damaged'",
        "UPDATE devices SET name = 'damaged'",
    ] {
        sqlx::query(damage).execute(&read).await.unwrap();
    }

    // Act
    let settings = app.read_settings();
    let rebuilt = projection_service::rebuild::rebuild(
        &app.read_database_url(),
        &settings.consumers().unwrap(),
    )
    .await
    .unwrap();

    // Assert: the same rows in every read model, the outbox untouched, and the live consumer
    // carries on with the new tables, its next email the only one sent since.
    assert!(rebuilt.events >= 12, "{rebuilt:?}");
    let after = snapshot(&app.read_pool()).await;
    for ((table, rebuilt), (_, live)) in after.iter().zip(&live) {
        assert_eq!(rebuilt, live, "{table}");
    }
    assert_eq!(
        indexes(app.read_pool()).await,
        live_indexes,
        "the rebuilt tables' indexes keep their names (migrations name them)"
    );
    app.link_by_qr("anna").await;
    app.wait_until_every_read_model_is_exact(Duration::from_secs(30))
        .await;
    let mails = sink.wait_for(sent + 1, Duration::from_secs(30)).await;
    assert_eq!(
        mails.len(),
        sent + 1,
        "one email for the new link, none again"
    );
    let schemas: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM pg_namespace WHERE nspname LIKE 'rebuild_%' OR nspname LIKE 'retired_%'",
    )
    .fetch_one(&app.read_pool())
    .await
    .unwrap();
    assert_eq!(
        schemas, 0,
        "the rebuild cleaned up after itself, and after the one killed before it"
    );
}

#[tokio::test]
async fn the_emails_of_events_the_live_notifier_had_not_reached_go_out_once() {
    // Arrange: anna registered and projected; then the projection service stops, and a phone
    // is linked while it is down.
    let sink = SmtpSink::start().await;
    let mut app = spawn_system_with_mail(sink.settings()).await;
    app.register("anna").await;
    let live = app.read_pool();
    e2e::eventually(
        Duration::from_secs(30),
        "anna's address projected",
        || async {
            let known: i64 = sqlx::query_scalar("SELECT count(*) FROM email_accounts")
                .fetch_one(&live)
                .await
                .ok()?;
            (known == 1).then_some(())
        },
    )
    .await;
    let settings = app.read_settings();
    app.read
        .take()
        .unwrap()
        .stop_gracefully(Duration::from_secs(10))
        .await;
    app.link_by_qr("anna").await;
    let stored: i64 = sqlx::query_scalar("SELECT count(*) FROM events")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    let stream = app.stream.as_ref().unwrap();
    let context = async_nats::jetstream::new(async_nats::connect(&stream.nats_url).await.unwrap());
    e2e::eventually(Duration::from_secs(30), "every event published", || async {
        let mut source = context.get_stream(&stream.name).await.ok()?;
        let messages = source.info().await.ok()?.state.messages;
        (messages == u64::try_from(stored).unwrap()).then_some(())
    })
    .await;
    let read = sqlx::PgPool::connect(&app.read_database_url())
        .await
        .unwrap();
    let queued = |read: sqlx::PgPool| async move {
        let rows: Vec<(String, String)> =
            sqlx::query_as("SELECT event_id, kind FROM email_outbox ORDER BY id")
                .fetch_all(&read)
                .await
                .unwrap();
        rows
    };
    assert!(
        queued(read.clone()).await.is_empty(),
        "nothing queued while it was down"
    );

    // Act: the rebuild reads the link (the live notifier has not), then the service resumes.
    let rebuilt = projection_service::rebuild::rebuild(
        &app.read_database_url(),
        &settings.consumers().unwrap(),
    )
    .await
    .unwrap();
    let outbox = queued(read.clone()).await;
    app.read = Some(e2e::spawn_read_side_with(settings).await);

    // Assert: the link's email was handed to the live outbox and goes out once.
    assert_eq!(rebuilt.events, u64::try_from(stored).unwrap());
    assert_eq!(outbox.len(), 1, "{outbox:?}");
    assert_eq!(outbox[0].1, "device_linked");
    app.wait_until_every_read_model_is_exact(Duration::from_secs(30))
        .await;
    let mails = sink.wait_for(1, Duration::from_secs(30)).await;
    assert_eq!(mails.len(), 1);
    e2e::eventually(Duration::from_secs(30), "the email marked sent", || async {
        let sent: i64 =
            sqlx::query_scalar("SELECT count(*) FROM email_outbox WHERE status = 'sent'")
                .fetch_one(&read)
                .await
                .ok()?;
        (sent == 1).then_some(())
    })
    .await;
    assert_eq!(
        queued(read).await.len(),
        1,
        "the live notifier did not queue it again"
    );
}
