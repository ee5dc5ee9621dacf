//! The device cap: an account links at most `LINKD_MAX_DEVICES_PER_ACCOUNT` devices; past it the
//! link is refused before the secret code is set, naming the least recently used device to the
//! holder; two devices racing for the last place get exactly one.

use e2e::{TestApp, bearer, spawn_app_with};
use proto::v1::{LinkMethod, UnlinkDevicesRequest, VerifySecretCodeRequest};
use tonic::Code;
use tonic_types::StatusExt as _;
use uuid::Uuid;

async fn capped(cap: u32) -> TestApp {
    spawn_app_with(move |settings| settings.max_devices_per_account = cap).await
}

/// The device a DEVICE_LIMIT refusal names.
fn named_device(status: &tonic::Status) -> String {
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
    let failure = status
        .get_details_precondition_failure()
        .unwrap_or_else(|| panic!("no PreconditionFailure in {status:?}"));
    let violation = &failure.violations[0];
    assert_eq!(violation.r#type, "DEVICE_LIMIT");
    violation
        .subject
        .strip_prefix("devices/")
        .unwrap()
        .to_owned()
}

#[tokio::test]
async fn past_the_cap_a_link_is_refused_naming_the_least_recently_used_device() {
    // Arrange: the default cap of 5, reached; the first device is the least recently used.
    let mut app = capped(5).await;
    app.register("anna").await;
    let first = app.link_by_qr("anna").await;
    for _ in 0..4 {
        let linked = app.link_by_qr("anna").await;
        let verify = VerifySecretCodeRequest {
            secret_code: e2e::CODE.into(),
            request_id: String::new(),
        };
        app.device
            .verify_secret_code(bearer(verify, &linked.credential))
            .await
            .unwrap();
    }

    // Act: a sixth phone scans; a LuxTrust link tries too.
    let qr = app.issue_qr("anna").await;
    let start = app
        .start_link(&Uuid::new_v4().to_string(), LinkMethod::Qr)
        .await;
    let scanned = app.scan(&start.link_token, &qr).await;
    app.record_login("anna", "LT-1").await;
    let luxtrust = app
        .start_link(&Uuid::new_v4().to_string(), LinkMethod::Luxtrust)
        .await;
    let authenticated = app.authenticate_luxtrust(&luxtrust, "anna", "LT-1").await;

    // Assert: the scanning phone is refused without names, and the QR code is not used up; the
    // holder (LuxTrust) is told which device to replace; nothing was linked.
    let refused = scanned.unwrap_err();
    assert_eq!(refused.code(), Code::FailedPrecondition, "{refused:?}");
    assert!(refused.get_details_precondition_failure().is_none());
    assert!(
        refused.message().contains("5 devices"),
        "{}",
        refused.message()
    );
    assert_eq!(named_device(&authenticated.unwrap_err()), first.device_id);
    assert_eq!(app.events_of_type("QrConsumed").await, 5);
    assert_eq!(app.events_of_type("DeviceLinked").await, 5);

    // Replacing it: unlink the first, and the sixth phone links with the same QR code.
    let unlink = UnlinkDevicesRequest {
        device_ids: vec![first.device_id.clone()],
        request_id: String::new(),
        ..Default::default()
    };
    app.portal
        .unlink_devices(bearer(unlink, &app.citizen("anna")))
        .await
        .unwrap();
    app.scan_and_confirm("anna", &start.link_token, &qr)
        .await
        .unwrap();
    app.set_code(&start.link_token).await.unwrap();
    assert_eq!(app.events_of_type("DeviceLinked").await, 6);
}

#[tokio::test]
async fn two_devices_racing_for_the_last_place_get_exactly_one() {
    // Arrange: a cap of 2, one linked, and two attempts ready to set their codes.
    let mut app = capped(2).await;
    app.register("anna").await;
    app.link_by_qr("anna").await;
    let one = app.authenticated_qr_attempt("anna").await;
    let other = app.authenticated_qr_attempt("anna").await;

    // Act: both set their codes at once.
    let (a, b) = tokio::join!(
        app.clone_clients().set_code(&one.link_token),
        app.clone_clients().set_code(&other.link_token)
    );

    // Assert
    let outcomes = [a, b];
    let linked = outcomes.iter().filter(|o| o.is_ok()).count();
    assert_eq!(linked, 1, "{outcomes:?}");
    let refused = outcomes.into_iter().find_map(Result::err).unwrap();
    named_device(&refused);
    assert_eq!(app.events_of_type("DeviceLinked").await, 2);
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM device_credentials")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(rows, 2);
}
