use std::time::Duration;

use e2e::{bearer, spawn_system};

async fn snapshot(pool: &sqlx::PgPool) -> (Vec<String>, Vec<String>) {
    let devices: Vec<String> =
        sqlx::query_scalar("SELECT d::text FROM devices d ORDER BY device_id")
            .fetch_all(pool)
            .await
            .unwrap();
    let guards: Vec<String> = sqlx::query_scalar(
        "SELECT p::text FROM projector_positions p ORDER BY projector, aggregate_type, aggregate_id",
    )
    .fetch_all(pool)
    .await
    .unwrap();
    (devices, guards)
}

#[tokio::test]
async fn a_rebuild_from_position_zero_equals_the_live_read_models() {
    // Arrange: links, biometrics, a verification, a lock-out and unlinks.
    let mut app = spawn_system().await;
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
            (applied == Some(2 * stored)).then_some(())
        },
    )
    .await;
    let live = snapshot(&app.read_pool()).await;
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

    // Act
    let settings = app.read_settings();
    let rebuilt = projection_service::rebuild::rebuild(
        &app.read_database_url(),
        &settings.consumers().unwrap(),
    )
    .await
    .unwrap();

    // Assert: the same rows, and the live consumer carries on with the new tables.
    assert!(rebuilt.events >= 12, "{rebuilt:?}");
    assert_eq!(snapshot(&app.read_pool()).await, live);
    assert_eq!(
        indexes(app.read_pool()).await,
        live_indexes,
        "the rebuilt tables' indexes keep their names (migrations name them)"
    );
    app.link_by_qr("anna").await;
    app.wait_until_read_model_is_exact(Duration::from_secs(30))
        .await;
    let schemas: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM pg_namespace WHERE nspname LIKE 'rebuild_%' OR nspname LIKE 'retired_%'",
    )
    .fetch_one(&app.read_pool())
    .await
    .unwrap();
    assert_eq!(schemas, 0, "the rebuild cleaned up after itself");
}
