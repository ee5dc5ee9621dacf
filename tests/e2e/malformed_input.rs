use e2e::{TestApp, assert_invalid, bearer, spawn_app};
use proto::v1::{
    AuthenticateWithLuxTrustRequest, LinkMethod, RecordPortalLoginRequest, RegisterAccountRequest,
    ScanQrRequest, SetSecretCodeRequest, StartLinkRequest, UnlinkDevicesRequest,
    VerifySecretCodeRequest,
};
use tonic::Code;
use uuid::Uuid;

fn start(adjust: impl FnOnce(&mut StartLinkRequest)) -> StartLinkRequest {
    let mut request = TestApp::start_request(&Uuid::new_v4().to_string(), LinkMethod::Qr);
    adjust(&mut request);
    request
}

#[tokio::test]
async fn malformed_start_link_requests_are_invalid_and_write_no_event() {
    let mut app = spawn_app().await;
    let cases: Vec<(&str, StartLinkRequest)> = vec![
        (
            "empty device name",
            start(|r| r.device_name = String::new()),
        ),
        ("blank device name", start(|r| r.device_name = "   ".into())),
        (
            "65-character device name",
            start(|r| r.device_name = "x".repeat(65)),
        ),
        (
            "control character in name",
            start(|r| r.device_name = "my\u{1b}phone".into()),
        ),
        (
            "newline in name",
            start(|r| r.device_name = "my\nphone".into()),
        ),
        (
            "device id not a UUID",
            start(|r| r.device_id = "phone-1".into()),
        ),
        ("empty device id", start(|r| r.device_id = String::new())),
        ("unspecified method", start(|r| r.method = 0)),
        ("unknown method", start(|r| r.method = 99)),
        ("unknown platform", start(|r| r.platform = 7)),
        ("negative platform", start(|r| r.platform = -1)),
        (
            "empty app version",
            start(|r| r.app_version = String::new()),
        ),
        (
            "app version with spaces",
            start(|r| r.app_version = "1.0 beta".into()),
        ),
        (
            "request id not a UUID",
            start(|r| r.request_id = "abc".into()),
        ),
        (
            "oversized device name",
            start(|r| r.device_name = "x".repeat(60 * 1024)),
        ),
    ];
    for (case, request) in cases {
        assert_invalid(case, app.device.start_link(request).await);
    }
    assert_eq!(app.event_count().await, 0);
}

#[tokio::test]
async fn an_oversized_message_is_refused_before_decoding() {
    let mut app = spawn_app().await;

    let request = start(|r| r.device_name = "x".repeat(200 * 1024));
    let refused = app.device.start_link(request).await.unwrap_err();

    assert_eq!(refused.code(), Code::InvalidArgument, "{refused:?}");
    assert!(
        refused.message().contains("64 KiB"),
        "{}",
        refused.message()
    );
    assert_eq!(app.event_count().await, 0);
}

#[tokio::test]
async fn malformed_secret_codes_and_tokens_are_invalid_and_write_no_event() {
    // Arrange: an authenticated attempt, so that only the field under test is wrong.
    let mut app = spawn_app().await;
    app.register("anna").await;
    let begun = app.authenticated_qr_attempt("anna").await;
    let events_before = app.event_count().await;
    let code = |secret_code: &str| SetSecretCodeRequest {
        link_token: begun.link_token.clone(),
        secret_code: secret_code.into(),
        request_id: String::new(),
    };

    // Act + Assert
    for bad in [
        "12a456",
        "1234567",
        "12345",
        "",
        "123456",
        "111111",
        "654321",
        " 48291",
        "４８２９１３",
    ] {
        assert_invalid(
            &format!("secret code {bad:?}"),
            app.device.set_secret_code(code(bad)).await,
        );
    }
    let garbage_link = SetSecretCodeRequest {
        link_token: "garbage".into(),
        ..code("482913")
    };
    assert_invalid(
        "garbage link token",
        app.device.set_secret_code(garbage_link).await,
    );
    let garbage_qr = ScanQrRequest {
        link_token: begun.link_token.clone(),
        qr_payload: "https://evil.example/qr".into(),
        request_id: String::new(),
    };
    assert_invalid("garbage QR payload", app.device.scan_qr(garbage_qr).await);
    let garbage_assertion = AuthenticateWithLuxTrustRequest {
        link_token: begun.link_token.clone(),
        assertion: "not-a-jws".into(),
        request_id: String::new(),
    };
    assert_invalid(
        "garbage assertion",
        app.device
            .authenticate_with_lux_trust(garbage_assertion)
            .await,
    );
    assert_eq!(app.event_count().await, events_before);
}

#[tokio::test]
async fn malformed_portal_requests_are_invalid_and_write_no_event() {
    let mut app = spawn_app().await;
    let system = app.system();
    let register = |account_id: &str, email: &str, language: &str| RegisterAccountRequest {
        account_id: account_id.into(),
        email: email.into(),
        language: language.into(),
        request_id: String::new(),
    };
    for (case, request) in [
        ("empty account id", register("", "a@example.lu", "fr")),
        (
            "account id with spaces",
            register("an na", "a@example.lu", "fr"),
        ),
        ("email without @", register("anna", "anna.example.lu", "fr")),
        ("unknown language", register("anna", "a@example.lu", "lb")),
    ] {
        assert_invalid(
            case,
            app.portal.register_account(bearer(request, &system)).await,
        );
    }
    let no_product = RecordPortalLoginRequest {
        account_id: "anna".into(),
        product: None,
        request_id: String::new(),
    };
    assert_invalid(
        "no product",
        app.portal
            .record_portal_login(bearer(no_product, &system))
            .await,
    );
    let unknown_kind = RecordPortalLoginRequest {
        account_id: "anna".into(),
        product: Some(proto::v1::LuxTrustProduct {
            kind: 42,
            serial: "S".into(),
        }),
        request_id: String::new(),
    };
    assert_invalid(
        "unknown product kind",
        app.portal
            .record_portal_login(bearer(unknown_kind, &system))
            .await,
    );
    let citizen = app.citizen("anna");
    let unlink = |ids: Vec<String>| UnlinkDevicesRequest {
        device_ids: ids,
        request_id: String::new(),
        ..Default::default()
    };
    assert_invalid(
        "no device ids",
        app.portal
            .unlink_devices(bearer(unlink(vec![]), &citizen))
            .await,
    );
    assert_invalid(
        "device id not a UUID",
        app.portal
            .unlink_devices(bearer(unlink(vec!["x".into()]), &citizen))
            .await,
    );
    let same = Uuid::new_v4().to_string();
    assert_invalid(
        "the same device twice",
        app.portal
            .unlink_devices(bearer(unlink(vec![same.clone(), same]), &citizen))
            .await,
    );
    assert_eq!(app.event_count().await, 0);
}

#[tokio::test]
async fn a_malformed_code_to_verify_is_invalid_and_not_counted() {
    let mut app = spawn_app().await;
    app.register("anna").await;
    let linked = app.link_by_qr("anna").await;

    let request = VerifySecretCodeRequest {
        secret_code: "12a456".into(),
        request_id: String::new(),
    };
    let outcome = app
        .device
        .verify_secret_code(bearer(request, &linked.credential))
        .await;

    assert_invalid("secret code 12a456", outcome);
    assert_eq!(app.events_of_type("SecretCodeFailed").await, 0);
}
