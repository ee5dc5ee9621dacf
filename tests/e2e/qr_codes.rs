use std::time::Duration;

use e2e::{spawn_app, spawn_app_with};
use proto::v1::{LinkMethod, ScanQrRequest};
use tonic::Code;
use uuid::Uuid;

fn scan(link_token: &str, qr_payload: &str) -> ScanQrRequest {
    ScanQrRequest {
        link_token: link_token.into(),
        qr_payload: qr_payload.into(),
        request_id: String::new(),
    }
}

#[tokio::test]
async fn a_qr_code_is_issued_with_an_svg_and_an_expiry() {
    let mut app = spawn_app().await;
    app.register("anna").await;

    let qr = app.issue_qr("anna").await;

    assert!(qr.qr_svg.contains("<svg"), "an SVG image");
    assert!(qr.qr_payload.starts_with("linkd-qr1."));
    let expires_at = qr.expires_at.unwrap().seconds;
    let in_two_minutes = chrono::Utc::now().timestamp() + 120;
    assert!(
        (in_two_minutes - 5..=in_two_minutes).contains(&expires_at),
        "{expires_at}"
    );
    let stored: Vec<u8> =
        sqlx::query_scalar("SELECT token_hash FROM bearer_tokens WHERE kind = 'qr'")
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert_eq!(stored.len(), 32, "only a SHA-256 of the token is stored");
    let events: String = sqlx::query_scalar("SELECT string_agg(payload::text, ' ') FROM events")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    let secret_part = qr.qr_payload.rsplit('.').next().unwrap();
    assert!(
        !events.contains(secret_part),
        "the QR token never enters an event"
    );
}

#[tokio::test]
async fn a_used_qr_code_is_refused() {
    // Arrange: one device linked with the QR code.
    let mut app = spawn_app().await;
    app.register("anna").await;
    let qr = app.issue_qr("anna").await;
    let first = app
        .start_link(&Uuid::new_v4().to_string(), LinkMethod::Qr)
        .await;
    app.scan_and_confirm("anna", &first.link_token, &qr)
        .await
        .unwrap();
    app.set_code(&first.link_token).await.unwrap();

    // Act: a second device scans the same code.
    let second = app
        .start_link(&Uuid::new_v4().to_string(), LinkMethod::Qr)
        .await;
    let refused = app
        .device
        .scan_qr(scan(&second.link_token, &qr.qr_payload))
        .await
        .unwrap_err();

    // Assert
    assert_eq!(refused.code(), Code::FailedPrecondition);
    assert!(
        refused.message().contains("already been used"),
        "{}",
        refused.message()
    );
    assert_eq!(app.events_of_type("QrConsumed").await, 1);
}

#[tokio::test]
async fn twenty_devices_scanning_one_qr_code_at_once_give_one_scanned_attempt_and_one_link() {
    // Arrange: twenty devices, each with its own link attempt, and one QR code.
    let mut app = spawn_app().await;
    app.register("anna").await;
    let qr = app.issue_qr("anna").await;
    let mut starts = Vec::new();
    for _ in 0..20 {
        starts.push(
            app.start_link(&Uuid::new_v4().to_string(), LinkMethod::Qr)
                .await,
        );
    }

    // Act: all scan at once.
    let mut tasks = tokio::task::JoinSet::new();
    for start in starts {
        let mut device = app.device.clone();
        let payload = qr.qr_payload.clone();
        tasks.spawn(async move {
            let scanned = device.scan_qr(scan(&start.link_token, &payload)).await;
            (start.link_token, scanned.map(tonic::Response::into_inner))
        });
    }
    let mut scanned = Vec::new();
    let mut losers = Vec::new();
    let mut refusals = Vec::new();
    while let Some(outcome) = tasks.join_next().await {
        match outcome.unwrap() {
            (link_token, Ok(reply)) => scanned.push((link_token, reply)),
            (link_token, Err(status)) => {
                refusals.push(status.code());
                losers.push(link_token);
            }
        }
    }

    // Assert: one scanned attempt, which the holder confirms and which links; no other can.
    assert_eq!(scanned.len(), 1, "refusals: {refusals:?}");
    assert!(
        refusals
            .iter()
            .all(|code| matches!(code, Code::FailedPrecondition | Code::Aborted)),
        "{refusals:?}"
    );
    assert_eq!(app.events_of_type("QrAccepted").await, 1);
    let (winner, reply) = scanned.pop().unwrap();
    app.confirm("anna", &qr.qr_id, &reply.matching_code)
        .await
        .unwrap();
    app.set_code(&winner).await.unwrap();
    for loser in losers {
        let refused = app.set_code(&loser).await.unwrap_err();
        assert_eq!(refused.code(), Code::FailedPrecondition, "{refused:?}");
    }
    assert_eq!(app.events_of_type("DeviceLinked").await, 1);
    assert_eq!(app.events_of_type("QrConsumed").await, 1);
}

#[tokio::test]
async fn an_expired_qr_code_is_refused() {
    // Arrange: QR codes live one second.
    let mut app = spawn_app_with(|settings| settings.qr_ttl = Duration::from_secs(1)).await;
    app.register("anna").await;
    let qr = app.issue_qr("anna").await;
    let start = app
        .start_link(&Uuid::new_v4().to_string(), LinkMethod::Qr)
        .await;

    // Act
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let refused = app
        .device
        .scan_qr(scan(&start.link_token, &qr.qr_payload))
        .await
        .unwrap_err();

    // Assert
    assert_eq!(refused.code(), Code::FailedPrecondition);
    assert!(
        refused.message().contains("expired"),
        "{}",
        refused.message()
    );
    assert_eq!(app.events_of_type("QrConsumed").await, 0);
}

#[tokio::test]
async fn a_qr_code_is_not_used_up_by_an_attempt_that_cannot_use_it() {
    // A LuxTrust attempt scanning a QR code is refused, and the code stays usable.
    let mut app = spawn_app().await;
    app.register("anna").await;
    let qr = app.issue_qr("anna").await;
    let luxtrust = app
        .start_link(&Uuid::new_v4().to_string(), LinkMethod::Luxtrust)
        .await;

    let refused = app
        .device
        .scan_qr(scan(&luxtrust.link_token, &qr.qr_payload))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::FailedPrecondition);

    let start = app
        .start_link(&Uuid::new_v4().to_string(), LinkMethod::Qr)
        .await;
    app.device
        .scan_qr(scan(&start.link_token, &qr.qr_payload))
        .await
        .unwrap();
}

#[tokio::test]
async fn a_forged_qr_code_is_not_found() {
    let mut app = spawn_app().await;
    app.register("anna").await;
    let qr = app.issue_qr("anna").await;
    let start = app
        .start_link(&Uuid::new_v4().to_string(), LinkMethod::Qr)
        .await;
    // Same QR id, different secret.
    let forged = format!("linkd-qr1.{}.{}", qr.qr_id, "A".repeat(43));

    let refused = app
        .device
        .scan_qr(scan(&start.link_token, &forged))
        .await
        .unwrap_err();

    assert_eq!(refused.code(), Code::NotFound);
    assert_eq!(app.events_of_type("QrConsumed").await, 0);
}
