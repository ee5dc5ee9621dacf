use e2e::{bearer, spawn_app};
use proto::v1::{IssueLinkQrRequest, RegisterAccountRequest, UnlinkDevicesRequest};
use tonic::{Code, Request};

fn register(account_id: &str) -> RegisterAccountRequest {
    RegisterAccountRequest {
        account_id: account_id.into(),
        email: format!("{account_id}@example.lu"),
        language: "de".into(),
        request_id: String::new(),
    }
}

#[tokio::test]
async fn a_stale_auth_time_cannot_issue_a_qr_code_or_unlink() {
    // Arrange: Anna has a linked device; her session authenticated 301 seconds ago.
    let mut app = spawn_app().await;
    app.register("anna").await;
    let linked = app.link_by_qr("anna").await;
    let stale = app.keys.citizen_token("anna", 301).unwrap();

    // Act
    let qr = app
        .portal
        .issue_link_qr(bearer(IssueLinkQrRequest::default(), &stale))
        .await;
    let unlink = UnlinkDevicesRequest {
        device_ids: vec![linked.device_id],
        request_id: String::new(),
    };
    let unlinked = app.portal.unlink_devices(bearer(unlink, &stale)).await;

    // Assert
    for refused in [qr.unwrap_err(), unlinked.unwrap_err()] {
        assert_eq!(refused.code(), Code::PermissionDenied);
        assert!(
            refused.message().contains("re-authentication required"),
            "{}",
            refused.message()
        );
    }
    assert_eq!(
        app.events_of_type("QrIssued").await,
        1,
        "only the QR code of the setup"
    );
    assert_eq!(app.events_of_type("DeviceUnlinked").await, 0);
}

#[tokio::test]
async fn a_fresh_auth_time_within_the_limit_is_accepted() {
    let mut app = spawn_app().await;
    app.register("anna").await;
    let recent = app.keys.citizen_token("anna", 290).unwrap();

    let qr = app
        .portal
        .issue_link_qr(bearer(IssueLinkQrRequest::default(), &recent))
        .await;

    if let Err(status) = qr {
        panic!("a login 290 s old was refused: {status:?}");
    }
}

#[tokio::test]
async fn only_the_portal_back_end_registers_accounts() {
    let mut app = spawn_app().await;
    let citizen = app.citizen("anna");

    let refused = app
        .portal
        .register_account(bearer(register("anna"), &citizen))
        .await;
    assert_eq!(refused.unwrap_err().code(), Code::PermissionDenied);

    let anonymous = app
        .portal
        .register_account(Request::new(register("anna")))
        .await;
    assert_eq!(anonymous.unwrap_err().code(), Code::Unauthenticated);

    let forged = app
        .portal
        .register_account(bearer(register("anna"), "eyJhbGciOiJub25lIn0.e30."))
        .await;
    assert_eq!(forged.unwrap_err().code(), Code::Unauthenticated);
    assert_eq!(app.event_count().await, 0);
}

#[tokio::test]
async fn an_account_is_registered_once() {
    let mut app = spawn_app().await;
    app.register("anna").await;

    let system = app.system();
    let again = app
        .portal
        .register_account(bearer(register("anna"), &system))
        .await;

    assert_eq!(again.unwrap_err().code(), Code::AlreadyExists);
}

#[tokio::test]
async fn a_qr_code_needs_a_registered_account() {
    let mut app = spawn_app().await;
    let token = app.citizen("ghost");

    let refused = app
        .portal
        .issue_link_qr(bearer(IssueLinkQrRequest::default(), &token))
        .await;

    assert_eq!(refused.unwrap_err().code(), Code::NotFound);
}

#[tokio::test]
async fn a_token_signed_by_another_key_is_refused() {
    let mut app = spawn_app().await;
    app.register("anna").await;
    let (private, _) = linkctl::dev::key_pair_pem().unwrap();
    let impostor = linkctl::dev::DevKeys::from_pem(&private, &private).unwrap();
    let token = impostor.citizen_token("anna", 0).unwrap();

    let refused = app
        .portal
        .issue_link_qr(bearer(IssueLinkQrRequest::default(), &token))
        .await;

    assert_eq!(refused.unwrap_err().code(), Code::Unauthenticated);
}

#[tokio::test]
async fn only_the_portal_back_end_records_portal_logins() {
    let mut app = spawn_app().await;
    app.register("anna").await;
    let citizen = app.citizen("anna");
    let request = proto::v1::RecordPortalLoginRequest {
        account_id: "anna".into(),
        product: Some(proto::v1::LuxTrustProduct {
            kind: proto::v1::ProductKind::LuxtrustScan.into(),
            serial: "SCAN-1".into(),
        }),
        request_id: String::new(),
    };

    let refused = app
        .portal
        .record_portal_login(bearer(request, &citizen))
        .await;

    assert_eq!(refused.unwrap_err().code(), Code::PermissionDenied);
    assert_eq!(app.events_of_type("PortalLoginRecorded").await, 0);
}

#[tokio::test]
async fn the_portal_back_end_token_is_not_a_citizen_token() {
    let mut app = spawn_app().await;
    app.register("portal-backend").await;
    let system = app.system();

    let refused = app
        .portal
        .issue_link_qr(bearer(IssueLinkQrRequest::default(), &system))
        .await;

    assert_eq!(refused.unwrap_err().code(), Code::PermissionDenied);
}

#[tokio::test]
async fn a_luxtrust_assertion_is_not_a_portal_token() {
    let mut app = spawn_app().await;
    app.register("anna").await;
    let assertion = app
        .keys
        .luxtrust_assertion("anna", "mobile", "M-1", "nonce")
        .unwrap();

    let refused = app
        .portal
        .issue_link_qr(bearer(IssueLinkQrRequest::default(), &assertion))
        .await;

    assert_eq!(refused.unwrap_err().code(), Code::Unauthenticated);
}
