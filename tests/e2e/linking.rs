use e2e::{CODE, TestApp, bearer, spawn_app};
use proto::v1::{LinkMethod, SetBiometricsRequest, VerifySecretCodeRequest};
use tonic::Code;
use uuid::Uuid;

async fn verify(app: &mut TestApp, credential: &str, code: &str) -> Result<bool, tonic::Status> {
    let request = VerifySecretCodeRequest {
        secret_code: code.into(),
        request_id: String::new(),
    };
    Ok(app
        .device
        .verify_secret_code(bearer(request, credential))
        .await?
        .into_inner()
        .verified)
}

#[tokio::test]
async fn both_link_methods_complete_and_the_device_is_linked() {
    // Arrange
    let mut app = spawn_app().await;
    app.register("anna").await;
    app.record_login("anna", "MOBILE-1").await;

    // Act
    let by_qr = app.link_by_qr("anna").await;
    let by_luxtrust = app.link_by_luxtrust("anna", "MOBILE-1").await;

    // Assert: each device holds a working credential and its secret code is the one set.
    for linked in [&by_qr, &by_luxtrust] {
        assert!(verify(&mut app, &linked.credential, CODE).await.unwrap());
        let request = SetBiometricsRequest {
            enabled: true,
            request_id: String::new(),
        };
        let reply = app
            .device
            .set_biometrics(bearer(request, &linked.credential))
            .await
            .unwrap();
        assert!(reply.into_inner().biometrics_enabled);
    }
    assert_eq!(app.events_of_type("DeviceLinked").await, 2);
    assert_eq!(app.events_of_type("QrConsumed").await, 1);
    assert_eq!(app.events_of_type("LuxTrustAuthenticated").await, 1);
    assert_eq!(app.events_of_type("BiometricsEnabled").await, 2);
    let methods: Vec<String> = sqlx::query_scalar(
        "SELECT payload->'DeviceLinked'->>'method' FROM events \
         WHERE event_type = 'DeviceLinked' ORDER BY global_position",
    )
    .fetch_all(&app.pool)
    .await
    .unwrap();
    assert_eq!(methods, ["Qr", "LuxTrust"]);
}

#[tokio::test]
async fn biometrics_can_be_skipped() {
    let mut app = spawn_app().await;
    app.register("anna").await;
    let linked = app.link_by_qr("anna").await;

    let request = SetBiometricsRequest {
        enabled: false,
        request_id: String::new(),
    };
    let reply = app
        .device
        .set_biometrics(bearer(request, &linked.credential))
        .await
        .unwrap();

    assert!(!reply.into_inner().biometrics_enabled);
    assert_eq!(app.events_of_type("BiometricsSkipped").await, 1);
}

#[tokio::test]
async fn a_device_linked_to_one_account_cannot_link_to_another_until_unlinked() {
    // Arrange
    let mut app = spawn_app().await;
    app.register("anna").await;
    app.register("bob").await;
    let device_id = Uuid::new_v4().to_string();
    let linked = app.link_device_by_qr("anna", &device_id).await.unwrap();

    // Act: the same device tries to link to Bob's account.
    let refused = app.link_device_by_qr("bob", &device_id).await.unwrap_err();

    // Assert
    assert_eq!(refused.code(), Code::FailedPrecondition, "{refused:?}");
    assert!(
        refused.message().contains("already linked"),
        "{}",
        refused.message()
    );

    // Act: once unlinked, it can link to Bob's account.
    app.device
        .unlink_this_device(bearer(Default::default(), &linked.credential))
        .await
        .unwrap();
    let relinked = app.link_device_by_qr("bob", &device_id).await.unwrap();
    assert_eq!(relinked.device_id, device_id);
    assert_eq!(app.events_of_type("DeviceLinked").await, 2);
}

#[tokio::test]
async fn a_device_refused_midway_is_not_linked_elsewhere() {
    // Two attempts for one device run side by side; only the first to set its code links.
    let mut app = spawn_app().await;
    app.register("anna").await;
    app.register("bob").await;
    let device_id = Uuid::new_v4().to_string();
    let qr_anna = app.issue_qr("anna").await;
    let qr_bob = app.issue_qr("bob").await;
    let first = app.start_link(&device_id, LinkMethod::Qr).await;
    let second = app.start_link(&device_id, LinkMethod::Qr).await;
    for (account, start, qr) in [("anna", &first, &qr_anna), ("bob", &second, &qr_bob)] {
        app.scan_and_confirm(account, &start.link_token, qr)
            .await
            .unwrap();
    }

    app.set_code(&first.link_token).await.unwrap();
    let refused = app.set_code(&second.link_token).await.unwrap_err();

    assert_eq!(refused.code(), Code::FailedPrecondition);
    assert_eq!(app.events_of_type("DeviceLinked").await, 1);
    let stored: i64 = sqlx::query_scalar("SELECT count(*) FROM device_credentials")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(stored, 1, "the refused link left no credential behind");
}

#[tokio::test]
async fn a_luxtrust_product_never_used_to_log_in_is_refused() {
    // Arrange: Anna logged in with Mobile serial MOBILE-1 only.
    let mut app = spawn_app().await;
    app.register("anna").await;
    app.record_login("anna", "MOBILE-1").await;
    let start = app
        .start_link(&Uuid::new_v4().to_string(), LinkMethod::Luxtrust)
        .await;

    // Act
    let refused = app
        .authenticate_luxtrust(&start, "anna", "MOBILE-2")
        .await
        .unwrap_err();

    // Assert
    assert_eq!(refused.code(), Code::FailedPrecondition);
    assert!(
        refused.message().contains("never been used to log in"),
        "{}",
        refused.message()
    );
    assert_eq!(app.events_of_type("LuxTrustAuthenticated").await, 0);
    let not_yet = app.set_code(&start.link_token).await.unwrap_err();
    assert_eq!(not_yet.code(), Code::FailedPrecondition);
}

#[tokio::test]
async fn the_app_cannot_link_to_an_account_the_portal_never_registered() {
    let mut app = spawn_app().await;
    let start = app
        .start_link(&Uuid::new_v4().to_string(), LinkMethod::Luxtrust)
        .await;

    let refused = app
        .authenticate_luxtrust(&start, "ghost", "MOBILE-1")
        .await
        .unwrap_err();

    assert_eq!(refused.code(), Code::FailedPrecondition);
    assert!(
        refused.message().contains("not registered"),
        "{}",
        refused.message()
    );
    assert_eq!(app.events_of_type("AccountRegistered").await, 0);
}

#[tokio::test]
async fn a_luxtrust_assertion_for_another_attempt_is_refused() {
    let mut app = spawn_app().await;
    app.register("anna").await;
    app.record_login("anna", "MOBILE-1").await;
    let mine = app
        .start_link(&Uuid::new_v4().to_string(), LinkMethod::Luxtrust)
        .await;
    let other = app
        .start_link(&Uuid::new_v4().to_string(), LinkMethod::Luxtrust)
        .await;
    let stolen = proto::v1::StartLinkResponse {
        link_token: mine.link_token,
        ..other
    };

    let refused = app
        .authenticate_luxtrust(&stolen, "anna", "MOBILE-1")
        .await
        .unwrap_err();

    assert_eq!(refused.code(), Code::PermissionDenied);
}

#[tokio::test]
async fn set_secret_code_racing_ten_times_on_one_attempt_links_with_exactly_one_credential() {
    // Arrange: an authenticated attempt.
    let mut app = spawn_app().await;
    app.register("anna").await;
    let start = app.authenticated_qr_attempt("anna").await;

    // Act: ten calls at once (no request_id), as a double-tapping app or a replaying attacker.
    let calls: Vec<_> = (0..10)
        .map(|_| {
            let clients = app.clone_clients();
            let token = start.link_token.clone();
            tokio::spawn(async move { clients.set_code(&token).await })
        })
        .collect();
    let mut linked = Vec::new();
    let mut refused = Vec::new();
    for call in calls {
        match call.await.unwrap() {
            Ok(answer) => linked.push(answer),
            Err(status) => refused.push(status),
        }
    }

    // Assert: exactly one call linked the device; the others were refused and changed nothing;
    // the one credential works.
    assert_eq!(linked.len(), 1, "refused: {refused:?}");
    for status in &refused {
        assert!(
            matches!(
                status.code(),
                Code::Aborted
                    | Code::Unauthenticated
                    | Code::FailedPrecondition
                    | Code::ResourceExhausted
            ),
            "{status:?}"
        );
    }
    assert_eq!(app.events_of_type("DeviceLinked").await, 1);
    assert_eq!(app.events_of_type("LinkCompleted").await, 1);
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM device_credentials")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(rows, 1, "no loser left or removed a credential");
    let verified = verify(&mut app, &linked[0].credential, CODE).await;
    assert!(matches!(verified, Ok(true)), "{verified:?}");
}

#[tokio::test]
async fn after_the_link_its_token_is_dead_and_no_secret_code_is_evaluated() {
    // Arrange: a completed link.
    let mut app = spawn_app().await;
    app.register("anna").await;
    let start = app.authenticated_qr_attempt("anna").await;
    app.set_code(&start.link_token).await.unwrap();
    let qr = app.issue_qr("anna").await;

    // Act: seven wrong codes, then the right one, with the link token; and the other steps.
    let mut answers = Vec::new();
    for code in [
        "591372", "591373", "591374", "591375", "591376", "591377", "591378", CODE,
    ] {
        let retry = proto::v1::SetSecretCodeRequest {
            link_token: start.link_token.clone(),
            secret_code: code.into(),
            request_id: String::new(),
        };
        answers.push(app.device.set_secret_code(retry).await.map(|_| ()));
    }
    let scan = proto::v1::ScanQrRequest {
        link_token: start.link_token.clone(),
        qr_payload: qr.qr_payload,
        request_id: String::new(),
    };
    answers.push(app.device.scan_qr(scan).await.map(|_| ()));
    let luxtrust = proto::v1::AuthenticateWithLuxTrustRequest {
        link_token: start.link_token.clone(),
        assertion: app
            .keys
            .luxtrust_assertion("anna", "mobile", "LT-1", &start.luxtrust_nonce)
            .unwrap(),
        request_id: String::new(),
    };
    answers.push(
        app.device
            .authenticate_with_lux_trust(luxtrust)
            .await
            .map(|_| ()),
    );

    // Assert: every call is UNAUTHENTICATED; no credential came back and no code was counted.
    for answer in &answers {
        match answer {
            Err(status) => assert_eq!(status.code(), Code::Unauthenticated, "{status:?}"),
            Ok(()) => panic!("a dead link token was accepted"),
        }
    }
    assert_eq!(app.events_of_type("SecretCodeFailed").await, 0);
    assert_eq!(app.events_of_type("SecretCodeVerified").await, 0);
}

#[tokio::test]
async fn a_link_token_past_its_expiry_is_refused() {
    // Arrange: attempts live one second.
    let mut app = e2e::spawn_app_with(|settings| {
        settings.link_attempt_ttl = std::time::Duration::from_secs(1);
    })
    .await;
    app.register("anna").await;
    let qr = app.issue_qr("anna").await;
    let start = app
        .start_link(&Uuid::new_v4().to_string(), LinkMethod::Qr)
        .await;
    let events = app.event_count().await;

    // Act
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    let scan = proto::v1::ScanQrRequest {
        link_token: start.link_token.clone(),
        qr_payload: qr.qr_payload,
        request_id: String::new(),
    };
    let refused = app.device.scan_qr(scan).await;

    // Assert
    match refused {
        Err(status) => {
            assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
            assert!(status.message().contains("expired"), "{status:?}");
        }
        Ok(answer) => panic!("an expired link token was accepted: {answer:?}"),
    }
    assert_eq!(app.event_count().await, events, "nothing written");
}

#[tokio::test]
async fn a_device_relinked_after_unlinking_does_not_accept_its_old_credential() {
    // Arrange: a device linked, unlinked, then linked again.
    let mut app = spawn_app().await;
    app.register("anna").await;
    let device_id = Uuid::new_v4().to_string();
    let old = app.link_device_by_qr("anna", &device_id).await.unwrap();
    app.device
        .unlink_this_device(bearer(Default::default(), &old.credential))
        .await
        .unwrap();
    let new = app.link_device_by_qr("anna", &device_id).await.unwrap();

    // Act + Assert
    let refused = verify(&mut app, &old.credential, CODE).await.unwrap_err();
    assert_eq!(refused.code(), Code::Unauthenticated);
    assert!(verify(&mut app, &new.credential, CODE).await.unwrap());
}

#[tokio::test]
async fn device_calls_without_a_credential_are_unauthenticated() {
    let mut app = spawn_app().await;

    let request = VerifySecretCodeRequest {
        secret_code: CODE.into(),
        request_id: String::new(),
    };
    let missing = app.device.verify_secret_code(request).await.unwrap_err();
    let garbage = app
        .device
        .set_biometrics(bearer(SetBiometricsRequest::default(), "dc1.nonsense"))
        .await
        .unwrap_err();

    assert_eq!(missing.code(), Code::Unauthenticated);
    assert!(
        missing.message().contains("missing device credential"),
        "{}",
        missing.message()
    );
    assert_eq!(garbage.code(), Code::Unauthenticated);
}

#[tokio::test]
async fn no_secret_is_stored_in_clear() {
    // Arrange + Act: a link with request ids, so that answers are kept for replays too.
    let mut app = spawn_app().await;
    app.register("anna").await;
    let token = app.citizen("anna");
    let qr_request = proto::v1::IssueLinkQrRequest {
        request_id: Uuid::new_v4().to_string(),
        ..Default::default()
    };
    let qr = app
        .portal
        .issue_link_qr(bearer(qr_request, &token))
        .await
        .unwrap()
        .into_inner();
    let mut start_request = TestApp::start_request(&Uuid::new_v4().to_string(), LinkMethod::Qr);
    start_request.request_id = Uuid::new_v4().to_string();
    let start = app
        .device
        .start_link(start_request)
        .await
        .unwrap()
        .into_inner();
    let scanned = app
        .device
        .scan_qr(proto::v1::ScanQrRequest {
            link_token: start.link_token.clone(),
            qr_payload: qr.qr_payload.clone(),
            request_id: Uuid::new_v4().to_string(),
        })
        .await
        .unwrap()
        .into_inner();
    app.confirm("anna", &qr.qr_id, &scanned.matching_code)
        .await
        .unwrap();
    let linked = app
        .device
        .set_secret_code(proto::v1::SetSecretCodeRequest {
            link_token: start.link_token.clone(),
            secret_code: CODE.into(),
            request_id: Uuid::new_v4().to_string(),
        })
        .await
        .unwrap()
        .into_inner();

    // Assert: no secret part appears anywhere in the database.
    let dump: String = sqlx::query_scalar(
        "SELECT concat_ws(' ', \
           (SELECT string_agg(payload::text || metadata::text, ' ') FROM events), \
           (SELECT string_agg(encode(token_hash, 'escape'), ' ') FROM bearer_tokens), \
           (SELECT string_agg(encode(credential_hash, 'escape') || code_verifier, ' ') \
              FROM device_credentials), \
           (SELECT string_agg(encode(response, 'escape'), ' ') FROM request_log))",
    )
    .fetch_one(&app.pool)
    .await
    .unwrap();
    let secret = |token: &str| token.rsplit('.').next().unwrap().to_owned();
    for (what, value) in [
        ("QR token", secret(&qr.qr_payload)),
        ("link token", secret(&start.link_token)),
        ("device credential", secret(&linked.device_credential)),
        ("secret code", CODE.to_owned()),
    ] {
        assert!(!dump.contains(&value), "the {what} is stored in clear");
    }
}
