//! Inactivity: a device unused for the configured period is unlinked (reason INACTIVE) after a
//! warning; a use after the warning calls it off; two schedulers expire each device once. Short
//! periods stand for days.

use std::time::Duration;

use e2e::mail::SmtpSink;
use e2e::{TestApp, bearer, eventually, run_command_service, spawn_app_with};
use tonic::Code;

const WITHIN: Duration = Duration::from_secs(30);

/// How long unused before the unlink, and how long before it the warning.
const AFTER: Duration = Duration::from_secs(12);
const WARNING: Duration = Duration::from_secs(10);

/// Unlinked after [`AFTER`] unused, warned [`WARNING`] before, looked at every 200 ms. The
/// window between warning and unlink is wide enough for a use to land in it on a loaded machine
/// (a secret-code check waits for the hashing pool).
fn short(settings: &mut command_service::Settings) {
    settings.lifecycle = command_service::lifecycle::LifecycleSettings {
        after: AFTER,
        warning: WARNING,
        every: Duration::from_millis(200),
    };
}

async fn reasons(app: &TestApp) -> Vec<String> {
    app.unlinks()
        .await
        .into_iter()
        .map(|(reason, _)| reason)
        .collect()
}

async fn verify(app: &TestApp, credential: &str) -> Result<(), tonic::Status> {
    let request = proto::v1::VerifySecretCodeRequest {
        secret_code: e2e::CODE.into(),
        request_id: String::new(),
    };
    let mut device = app.device.clone();
    device
        .verify_secret_code(bearer(request, credential))
        .await
        .map(|_| ())
}

#[tokio::test]
async fn an_unused_device_is_warned_then_unlinked() {
    // Arrange
    let sink = SmtpSink::start().await;
    let mut app = e2e::spawn_system_with_mail(sink.settings()).await;
    app.restart_command_service(short, None).await;
    app.register("anna").await;
    let phone = app.link_by_qr("anna").await;

    // Act: nobody uses it.
    eventually(WITHIN, "the warning", || async {
        (app.events_of_type("InactivityWarned").await == 1).then_some(())
    })
    .await;
    assert_eq!(
        app.events_of_type("DeviceUnlinked").await,
        0,
        "warned first"
    );
    eventually(WITHIN, "the unlink", || async {
        (app.events_of_type("DeviceUnlinked").await == 1).then_some(())
    })
    .await;

    // Assert: unlinked for inactivity, its credential refused, the holder warned by email.
    assert_eq!(reasons(&app).await, ["Inactive"]);
    let refused = verify(&app, &phone.credential).await.unwrap_err();
    assert_eq!(refused.code(), Code::Unauthenticated);
    let mails = sink.wait_for(3, WITHIN).await;
    assert!(
        mails.iter().any(|m| m.subject().contains("tre délié")),
        "{:?}",
        mails.iter().map(|m| m.subject()).collect::<Vec<_>>()
    );
}

#[tokio::test]
async fn a_device_used_after_the_warning_is_not_unlinked() {
    // Arrange: warned.
    let mut app = spawn_app_with(short).await;
    app.register("anna").await;
    let phone = app.link_by_qr("anna").await;
    eventually(WITHIN, "the warning", || async {
        (app.events_of_type("InactivityWarned").await == 1).then_some(())
    })
    .await;

    // Act: the holder unlocks the app.
    verify(&app, &phone.credential).await.unwrap();

    // Assert: past the time the warning named, still linked (a new warning may come later).
    tokio::time::sleep(WARNING + Duration::from_millis(500)).await;
    assert_eq!(app.events_of_type("DeviceUnlinked").await, 0);
    verify(&app, &phone.credential).await.unwrap();
}

#[tokio::test]
async fn two_schedulers_expire_each_device_once() {
    // Arrange: two instances, each with its scheduler, and three unused devices.
    let mut app = spawn_app_with(short).await;
    let _second = run_command_service(app.settings.clone(), None).await;
    app.register("anna").await;
    for _ in 0..3 {
        app.link_by_qr("anna").await;
    }

    // Act
    eventually(WITHIN, "every device unlinked", || async {
        (app.events_of_type("DeviceUnlinked").await == 3).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;

    // Assert
    assert_eq!(app.events_of_type("InactivityWarned").await, 3);
    assert_eq!(app.events_of_type("DeviceUnlinked").await, 3);
    assert_eq!(reasons(&app).await, ["Inactive"; 3]);
}
