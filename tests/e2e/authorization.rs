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
        ..Default::default()
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

#[tokio::test]
async fn portal_tokens_with_bad_time_claims_or_issuer_are_unauthenticated_on_both_services() {
    // Arrange
    let mut app = e2e::spawn_system().await;
    app.register("anna").await;
    let now = chrono::Utc::now().timestamp();
    let good = serde_json::json!({
        "sub": "anna", "aud": linkctl::dev::PORTAL_AUDIENCE, "iss": linkctl::dev::PORTAL_ISSUER,
        "iat": now, "exp": now + 300, "auth_time": now,
    });
    let with = |name: &str, value: serde_json::Value| {
        let mut claims = good.clone();
        claims[name] = value;
        claims
    };
    let mut without_iat = good.clone();
    without_iat.as_object_mut().unwrap().remove("iat");
    let cases = [
        (
            "nbf in the future",
            with("nbf", serde_json::json!(now + 600)),
        ),
        ("iat missing", without_iat),
        (
            "older than the maximum lifetime",
            with("iat", serde_json::json!(now - 7200)),
        ),
        (
            "living longer than the maximum",
            with("exp", serde_json::json!(now + 7200)),
        ),
        (
            "wrong issuer",
            with("iss", serde_json::json!("https://evil.example")),
        ),
    ];
    let events = app.event_count().await;

    for (case, claims) in cases {
        // Act
        let token = app.keys.portal_token_with(&claims).unwrap();
        let issued = app
            .portal
            .issue_link_qr(bearer(IssueLinkQrRequest::default(), &token))
            .await;
        let listed = app
            .queries()
            .list_devices(bearer(proto::v1::ListDevicesRequest::default(), &token))
            .await;

        // Assert
        for (service, outcome) in [
            ("command", issued.map(|_| ())),
            ("query", listed.map(|_| ())),
        ] {
            match outcome {
                Err(status) => {
                    assert_eq!(
                        status.code(),
                        Code::Unauthenticated,
                        "{case}, {service}: {status:?}"
                    );
                }
                Ok(()) => panic!("{case}: accepted by the {service} service"),
            }
        }
    }
    let token = app.keys.portal_token_with(&good).unwrap();
    let control = app
        .portal
        .issue_link_qr(bearer(IssueLinkQrRequest::default(), &token))
        .await;
    if let Err(status) = control {
        panic!("the well-formed token was refused: {status:?}");
    }
    assert_eq!(
        app.event_count().await,
        events + 1,
        "only the control call wrote"
    );
}

#[tokio::test]
async fn a_luxtrust_assertion_from_another_issuer_is_unauthenticated() {
    // Arrange: an attempt for the LuxTrust method, and an assertion right in all but its issuer.
    let mut app = spawn_app().await;
    app.register("anna").await;
    app.record_login("anna", "LT-1").await;
    let start = app
        .start_link(
            &uuid::Uuid::new_v4().to_string(),
            proto::v1::LinkMethod::Luxtrust,
        )
        .await;
    let now = chrono::Utc::now().timestamp();
    let claims = serde_json::json!({
        "sub": "anna", "aud": linkctl::dev::LUXTRUST_AUDIENCE, "iss": "https://evil.example",
        "iat": now, "exp": now + 120, "product_kind": "mobile", "product_serial": "LT-1",
        "nonce": start.luxtrust_nonce,
    });
    let events = app.event_count().await;

    // Act
    let request = proto::v1::AuthenticateWithLuxTrustRequest {
        link_token: start.link_token,
        assertion: app.keys.luxtrust_assertion_with(&claims).unwrap(),
        request_id: String::new(),
    };
    let refused = app.device.authenticate_with_lux_trust(request).await;

    // Assert
    match refused {
        Err(status) => {
            assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
            assert!(status.message().contains("issuer"), "{status:?}");
        }
        Ok(answer) => panic!("accepted: {answer:?}"),
    }
    assert_eq!(app.event_count().await, events);
}

#[tokio::test]
async fn only_the_portal_back_end_erases_accounts() {
    // Arrange: anna, no device linked (an erasure would go through for the back end).
    let mut app = spawn_app().await;
    app.register("anna").await;
    let erase = || proto::v1::EraseAccountRequest {
        account_id: "anna".into(),
        request_id: String::new(),
    };
    let events = app.event_count().await;

    // Act + Assert: the holder herself, an auditor and nobody are refused, and nothing is
    // erased.
    let citizen = app.citizen("anna");
    let by_holder = app.portal.erase_account(bearer(erase(), &citizen)).await;
    assert_eq!(by_holder.unwrap_err().code(), Code::PermissionDenied);
    let auditor = app.keys.auditor_token().unwrap();
    let by_auditor = app.portal.erase_account(bearer(erase(), &auditor)).await;
    assert_eq!(by_auditor.unwrap_err().code(), Code::PermissionDenied);
    let anonymous = app.portal.erase_account(Request::new(erase())).await;
    assert_eq!(anonymous.unwrap_err().code(), Code::Unauthenticated);
    assert_eq!(app.event_count().await, events);
    let erased: i64 = sqlx::query_scalar("SELECT count(*) FROM data_keys WHERE wrapped IS NULL")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(erased, 0);
}
