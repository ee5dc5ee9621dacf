use e2e::{CODE, bearer, spawn_app};
use proto::v1::VerifySecretCodeRequest;
use tonic::Code;

fn code(secret_code: &str) -> VerifySecretCodeRequest {
    VerifySecretCodeRequest {
        secret_code: secret_code.into(),
        request_id: String::new(),
    }
}

#[tokio::test]
async fn five_wrong_secret_codes_unlink_the_device() {
    // Arrange
    let mut app = spawn_app().await;
    app.register("anna").await;
    let linked = app.link_by_qr("anna").await;

    // Act + Assert: four wrong codes count down.
    for remaining in (1..=4).rev() {
        let reply = app
            .device
            .verify_secret_code(bearer(code("000001"), &linked.credential))
            .await
            .unwrap()
            .into_inner();
        assert!(!reply.verified);
        assert_eq!(reply.attempts_remaining, remaining);
        assert!(!reply.device_unlinked);
    }
    // The fifth unlinks the device.
    let fifth = app
        .device
        .verify_secret_code(bearer(code("000001"), &linked.credential))
        .await
        .unwrap()
        .into_inner();
    assert!(!fifth.verified);
    assert!(fifth.device_unlinked);

    // Even the right code is refused now: the credential is revoked.
    let refused = app
        .device
        .verify_secret_code(bearer(code(CODE), &linked.credential))
        .await;
    assert_eq!(refused.unwrap_err().code(), Code::Unauthenticated);
    let reason: String = sqlx::query_scalar(
        "SELECT payload->'DeviceUnlinked'->>'reason' FROM events WHERE event_type = 'DeviceUnlinked'",
    )
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!(reason, "LockedOut");
    assert_eq!(app.events_of_type("SecretCodeFailed").await, 5);
}

#[tokio::test]
async fn a_right_secret_code_resets_the_count() {
    let mut app = spawn_app().await;
    app.register("anna").await;
    let linked = app.link_by_qr("anna").await;
    for _ in 0..4 {
        app.device
            .verify_secret_code(bearer(code("000001"), &linked.credential))
            .await
            .unwrap();
    }

    let right = app
        .device
        .verify_secret_code(bearer(code(CODE), &linked.credential))
        .await;
    assert!(right.unwrap().into_inner().verified);

    let wrong = app
        .device
        .verify_secret_code(bearer(code("000001"), &linked.credential))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(wrong.attempts_remaining, 4);
}

#[tokio::test]
async fn parallel_wrong_guesses_cannot_outrun_the_lockout() {
    // Arrange
    let mut app = spawn_app().await;
    app.register("anna").await;
    let linked = app.link_by_qr("anna").await;

    // Act: twelve wrong guesses at once.
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..12 {
        let mut device = app.device.clone();
        let credential = linked.credential.clone();
        tasks.spawn(async move {
            device
                .verify_secret_code(bearer(code("000001"), &credential))
                .await
        });
    }
    let mut answered_wrong: i64 = 0;
    while let Some(outcome) = tasks.join_next().await {
        if let Ok(reply) = outcome.unwrap() {
            assert!(!reply.into_inner().verified);
            answered_wrong += 1;
        }
    }

    // Assert: no more than five verdicts were given, each one recorded.
    assert!(answered_wrong <= 5, "{answered_wrong} verdicts");
    assert_eq!(app.events_of_type("SecretCodeFailed").await, answered_wrong);
    // Calls that lost every race got no verdict; guessing on, the sixth wrong code never counts.
    for _ in answered_wrong..5 {
        app.device
            .verify_secret_code(bearer(code("000001"), &linked.credential))
            .await
            .unwrap();
    }
    assert_eq!(app.events_of_type("SecretCodeFailed").await, 5);
    let refused = app
        .device
        .verify_secret_code(bearer(code(CODE), &linked.credential))
        .await;
    assert_eq!(refused.unwrap_err().code(), Code::Unauthenticated);
}

#[tokio::test]
async fn the_secret_code_is_stored_only_as_a_peppered_argon2id_verifier() {
    let mut app = spawn_app().await;
    app.register("anna").await;
    app.link_by_qr("anna").await;

    let verifier: String = sqlx::query_scalar("SELECT code_verifier FROM device_credentials")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    let events: String = sqlx::query_scalar("SELECT string_agg(payload::text, ' ') FROM events")
        .fetch_one(&app.pool)
        .await
        .unwrap();

    assert!(verifier.starts_with("$argon2id$"), "{verifier}");
    assert!(!verifier.contains(CODE));
    assert!(!events.contains(CODE), "the code never enters an event");
}
