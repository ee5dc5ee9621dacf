//! The holder's confirmation of a QR link (anti-phishing): a relayed QR code is seen in the
//! browser, declined or left to expire, and only the holder who sees the phone can confirm it.

use std::time::Duration;

use e2e::{TestApp, bearer, eventually, spawn_app, spawn_app_with, spawn_system};
use proto::v1::audit_service_client::AuditServiceClient;
use proto::v1::{
    DeclineLinkRequest, DeclineReason, GetLinkQrRequest, IssueLinkQrResponse, LinkMethod,
    LinkQrStage, LinkQrState, ListEventsRequest, Platform, ScanQrRequest, ScanQrResponse,
    StartLinkResponse, WatchLinkQrRequest,
};
use tonic::Code;
use tonic::codec::Streaming;
use uuid::Uuid;

/// A QR code of anna's and a phone (the attacker's, or anna's own) that scanned it.
struct Scanned {
    qr: IssueLinkQrResponse,
    start: StartLinkResponse,
    reply: ScanQrResponse,
}

async fn anna_scanned(app: &mut TestApp) -> Scanned {
    app.register("anna").await;
    let qr = app.issue_qr("anna").await;
    let start = app
        .start_link(&Uuid::new_v4().to_string(), LinkMethod::Qr)
        .await;
    let reply = app.scan(&start.link_token, &qr).await.unwrap();
    Scanned { qr, start, reply }
}

async fn watch(app: &mut TestApp, account: &str, qr_id: &str) -> Streaming<LinkQrState> {
    let request = WatchLinkQrRequest {
        qr_id: qr_id.into(),
    };
    app.portal
        .watch_link_qr(bearer(request, &app.citizen(account)))
        .await
        .unwrap()
        .into_inner()
}

/// The next state the stream sends (within 10 s), `None` once it ended.
async fn next(states: &mut Streaming<LinkQrState>) -> Option<LinkQrState> {
    match tokio::time::timeout(Duration::from_secs(10), states.message()).await {
        Ok(Ok(state)) => state,
        Ok(Err(status)) => panic!("the stream failed: {status:?}"),
        Err(_) => panic!("no state within 10 s"),
    }
}

fn stage(state: &LinkQrState) -> LinkQrStage {
    LinkQrStage::try_from(state.stage).unwrap()
}

async fn get(app: &mut TestApp, account: &str, qr_id: &str) -> Result<LinkQrState, tonic::Status> {
    let request = GetLinkQrRequest {
        qr_id: qr_id.into(),
    };
    app.portal
        .get_link_qr(bearer(request, &app.citizen(account)))
        .await
        .map(tonic::Response::into_inner)
}

async fn decline(
    app: &mut TestApp,
    account: &str,
    qr_id: &str,
) -> Result<LinkQrState, tonic::Status> {
    let request = DeclineLinkRequest {
        qr_id: qr_id.into(),
        request_id: String::new(),
    };
    app.portal
        .decline_link(bearer(request, &app.citizen(account)))
        .await
        .map(|reply| reply.into_inner().state.unwrap())
}

/// A second phone tries the same QR code: it is used up.
async fn assert_qr_dead(app: &mut TestApp, qr: &IssueLinkQrResponse) {
    let other = app
        .start_link(&Uuid::new_v4().to_string(), LinkMethod::Qr)
        .await;
    let refused = app.scan(&other.link_token, qr).await.unwrap_err();
    assert_eq!(refused.code(), Code::FailedPrecondition, "{refused:?}");
}

#[tokio::test]
async fn a_relayed_qr_code_shows_the_scanning_phone_and_the_holder_declines_it() {
    // Arrange: anna's browser follows her QR code; the attacker's phone scans the photo of it.
    let mut app = spawn_app().await;
    app.register("anna").await;
    let qr = app.issue_qr("anna").await;
    let mut states = watch(&mut app, "anna", &qr.qr_id).await;
    assert_eq!(
        stage(&next(&mut states).await.unwrap()),
        LinkQrStage::Issued
    );
    let mut start = TestApp::start_request(&Uuid::new_v4().to_string(), LinkMethod::Qr);
    start.device_name = "Support phone".into();
    start.device_model = "Galaxy S24".into();
    let start = app.device.start_link(start).await.unwrap().into_inner();
    let reply = app.scan(&start.link_token, &qr).await.unwrap();

    // The phone learns whose account it is about to be linked to, and the code to show.
    assert_eq!(reply.account_hint, "a***@example.lu");
    assert_eq!(reply.matching_code.len(), 2, "{reply:?}");
    assert!(reply.confirm_by.is_some());
    // The attacker cannot go on alone.
    let early = app.set_code(&start.link_token).await.unwrap_err();
    assert_eq!(early.code(), Code::FailedPrecondition, "{early:?}");

    // Act 1: the browser sees the scan, with the phone's details.
    let scanned = next(&mut states).await.unwrap();
    assert_eq!(stage(&scanned), LinkQrStage::Scanned);
    let by = scanned.scanned_by.clone().unwrap();
    assert_eq!(by.device_name, "Support phone");
    assert_eq!(by.device_model, "Galaxy S24");
    assert_eq!(by.platform, i32::from(Platform::Android));
    assert_eq!(by.app_version, "2.4.1");
    assert_eq!(by.client_address, "127.0.0.1");
    assert!(by.scanned_at.is_some());
    assert_eq!(scanned.confirm_by, reply.confirm_by);
    assert_eq!(scanned.matching_code_choices.len(), 3);
    assert!(scanned.matching_code_choices.contains(&reply.matching_code));

    // Act 2: the holder does not recognise it and declines.
    let declined = decline(&mut app, "anna", &qr.qr_id).await.unwrap();

    // Assert: declined everywhere, the phone cannot finish, nothing is linked, the QR is dead.
    assert_eq!(stage(&declined), LinkQrStage::Declined);
    assert_eq!(declined.decline_reason, i32::from(DeclineReason::ByHolder));
    let seen = next(&mut states).await.unwrap();
    assert_eq!(stage(&seen), LinkQrStage::Declined);
    assert!(
        next(&mut states).await.is_none(),
        "the stream ends at a final state"
    );
    let refused = app.set_code(&start.link_token).await.unwrap_err();
    assert_eq!(refused.code(), Code::Unauthenticated, "{refused:?}");
    assert_eq!(app.events_of_type("LinkDeclined").await, 1);
    assert_eq!(app.events_of_type("DeviceLinked").await, 0);
    assert_qr_dead(&mut app, &qr).await;
    // Declining again changes nothing; confirming now is refused.
    let again = decline(&mut app, "anna", &qr.qr_id).await.unwrap();
    assert_eq!(stage(&again), LinkQrStage::Declined);
    let late = app
        .confirm("anna", &qr.qr_id, &reply.matching_code)
        .await
        .unwrap_err();
    assert_eq!(late.code(), Code::FailedPrecondition, "{late:?}");
    assert_eq!(app.events_of_type("LinkDeclined").await, 1);
}

#[tokio::test]
async fn a_scan_nobody_confirms_dies_at_the_deadline() {
    // Arrange: three seconds to confirm (room for a loaded machine's first refusal).
    let mut app = spawn_app_with(|settings| {
        settings.qr_confirmation = Some(Duration::from_secs(3));
    })
    .await;
    let Scanned { qr, start, reply } = anna_scanned(&mut app).await;
    let waiting = app.set_code(&start.link_token).await.unwrap_err();
    assert_eq!(waiting.code(), Code::FailedPrecondition);
    assert!(
        waiting.message().contains("confirm it in the browser"),
        "{}",
        waiting.message()
    );

    // Act: the holder does nothing.
    tokio::time::sleep(Duration::from_millis(3200)).await;

    // Assert
    let refused = app.set_code(&start.link_token).await.unwrap_err();
    assert_eq!(refused.code(), Code::FailedPrecondition);
    assert!(
        refused.message().contains("did not confirm"),
        "{}",
        refused.message()
    );
    let dead = app.set_code(&start.link_token).await.unwrap_err();
    assert_eq!(
        dead.code(),
        Code::Unauthenticated,
        "the link token died: {dead:?}"
    );
    let late = app
        .confirm("anna", &qr.qr_id, &reply.matching_code)
        .await
        .unwrap_err();
    assert_eq!(late.code(), Code::FailedPrecondition, "{late:?}");
    let state = get(&mut app, "anna", &qr.qr_id).await.unwrap();
    assert_eq!(stage(&state), LinkQrStage::Expired);
    assert_eq!(app.events_of_type("DeviceLinked").await, 0);
    assert_eq!(app.events_of_type("LinkConfirmed").await, 0);
    assert_qr_dead(&mut app, &qr).await;
}

#[tokio::test]
async fn the_holder_who_sees_the_phone_confirms_and_the_browser_follows_to_linked() {
    // Arrange
    let mut app = spawn_app().await;
    let Scanned { qr, start, reply } = anna_scanned(&mut app).await;
    let mut states = watch(&mut app, "anna", &qr.qr_id).await;
    assert_eq!(
        stage(&next(&mut states).await.unwrap()),
        LinkQrStage::Scanned
    );

    // Act: the holder types the code the phone shows; the phone sets its secret code.
    let confirmed = app
        .confirm("anna", &qr.qr_id, &reply.matching_code)
        .await
        .unwrap();
    let linked = app.set_code(&start.link_token).await.unwrap();

    // Assert: the browser saw confirmed, then linked, and the stream ended.
    assert_eq!(
        stage(confirmed.state.as_ref().unwrap()),
        LinkQrStage::Confirmed
    );
    let mut seen = Vec::new();
    while let Some(state) = next(&mut states).await {
        seen.push(stage(&state));
    }
    assert_eq!(seen.last(), Some(&LinkQrStage::Linked), "{seen:?}");
    assert!(
        seen.iter()
            .all(|s| matches!(s, LinkQrStage::Confirmed | LinkQrStage::Linked)),
        "{seen:?}"
    );
    let state = get(&mut app, "anna", &qr.qr_id).await.unwrap();
    assert_eq!(state.scanned_by.unwrap().device_id, linked.device_id);
    assert_eq!(app.events_of_type("LinkConfirmed").await, 1);
    assert_eq!(app.events_of_type("DeviceLinked").await, 1);
}

#[tokio::test]
async fn a_wrong_matching_code_declines_the_link_at_the_first_try() {
    // Arrange
    let mut app = spawn_app().await;
    let Scanned { qr, start, reply } = anna_scanned(&mut app).await;
    let wrong = if reply.matching_code == "42" {
        "43"
    } else {
        "42"
    };

    // Act
    let refused = app.confirm("anna", &qr.qr_id, wrong).await.unwrap_err();

    // Assert: one try; the right code no longer helps; the phone's token is dead.
    assert_eq!(refused.code(), Code::FailedPrecondition, "{refused:?}");
    assert!(
        refused.message().contains("wrong matching code"),
        "{}",
        refused.message()
    );
    let right = app
        .confirm("anna", &qr.qr_id, &reply.matching_code)
        .await
        .unwrap_err();
    assert_eq!(right.code(), Code::FailedPrecondition, "{right:?}");
    let dead = app.set_code(&start.link_token).await.unwrap_err();
    assert_eq!(dead.code(), Code::Unauthenticated, "{dead:?}");
    let state = get(&mut app, "anna", &qr.qr_id).await.unwrap();
    assert_eq!(stage(&state), LinkQrStage::Declined);
    assert_eq!(
        state.decline_reason,
        i32::from(DeclineReason::WrongMatchingCode)
    );
    assert_eq!(app.events_of_type("DeviceLinked").await, 0);
    assert_qr_dead(&mut app, &qr).await;
}

#[tokio::test]
async fn confirming_twice_is_idempotent() {
    let mut app = spawn_app().await;
    let Scanned { qr, start, reply } = anna_scanned(&mut app).await;

    for _ in 0..2 {
        let confirmed = app
            .confirm("anna", &qr.qr_id, &reply.matching_code)
            .await
            .unwrap();
        assert_eq!(
            stage(confirmed.state.as_ref().unwrap()),
            LinkQrStage::Confirmed
        );
    }

    assert_eq!(app.events_of_type("LinkConfirmed").await, 1);
    app.set_code(&start.link_token).await.unwrap();
    // After the link, the same confirmation still answers OK, with the linked state.
    let after = app
        .confirm("anna", &qr.qr_id, &reply.matching_code)
        .await
        .unwrap();
    assert_eq!(stage(after.state.as_ref().unwrap()), LinkQrStage::Linked);
    let too_late = decline(&mut app, "anna", &qr.qr_id).await.unwrap_err();
    assert_eq!(too_late.code(), Code::FailedPrecondition, "{too_late:?}");
}

#[tokio::test]
async fn only_the_account_that_issued_the_qr_code_follows_or_answers_it() {
    // Arrange
    let mut app = spawn_app().await;
    app.register("bob").await;
    let Scanned { qr, reply, .. } = anna_scanned(&mut app).await;

    // Act + Assert: bob, with a fresh token, is refused on every call.
    let refused = get(&mut app, "bob", &qr.qr_id).await.unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied, "{refused:?}");
    let request = WatchLinkQrRequest {
        qr_id: qr.qr_id.clone(),
    };
    let refused = app
        .portal
        .watch_link_qr(bearer(request, &app.citizen("bob")))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied, "{refused:?}");
    let refused = app
        .confirm("bob", &qr.qr_id, &reply.matching_code)
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied, "{refused:?}");
    let refused = decline(&mut app, "bob", &qr.qr_id).await.unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied, "{refused:?}");

    // Unknown, malformed, and without re-authentication.
    let unknown = Uuid::new_v4().to_string();
    let refused = get(&mut app, "anna", &unknown).await.unwrap_err();
    assert_eq!(refused.code(), Code::NotFound, "{refused:?}");
    let refused = get(&mut app, "anna", "not-a-uuid").await.unwrap_err();
    assert_eq!(refused.code(), Code::InvalidArgument, "{refused:?}");
    let refused = app.confirm("anna", &qr.qr_id, "4x").await.unwrap_err();
    assert_eq!(refused.code(), Code::InvalidArgument, "{refused:?}");
    let stale = app.keys.citizen_token("anna", 3600).unwrap();
    let request = proto::v1::ConfirmLinkRequest {
        qr_id: qr.qr_id.clone(),
        matching_code: reply.matching_code.clone(),
        request_id: String::new(),
    };
    let refused = app
        .portal
        .confirm_link(bearer(request, &stale))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied, "{refused:?}");
    // Following needs no recent authentication.
    let request = GetLinkQrRequest {
        qr_id: qr.qr_id.clone(),
    };
    let state = app
        .portal
        .get_link_qr(bearer(request, &stale))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(stage(&state), LinkQrStage::Scanned);
    assert_eq!(app.events_of_type("LinkConfirmed").await, 0);
    assert_eq!(app.events_of_type("LinkDeclined").await, 0);
}

#[tokio::test]
async fn with_confirmation_off_a_scan_links_as_before() {
    let mut app = spawn_app_with(|settings| settings.qr_confirmation = None).await;
    let Scanned { qr, start, reply } = anna_scanned(&mut app).await;

    assert_eq!(reply.matching_code, "");
    assert_eq!(reply.confirm_by, None);
    assert_eq!(reply.account_hint, "a***@example.lu");
    let state = get(&mut app, "anna", &qr.qr_id).await.unwrap();
    assert_eq!(stage(&state), LinkQrStage::Scanned);
    assert_eq!(state.confirm_by, None);
    assert!(state.matching_code_choices.is_empty());
    let refused = app.confirm("anna", &qr.qr_id, "42").await.unwrap_err();
    assert_eq!(refused.code(), Code::FailedPrecondition, "{refused:?}");
    app.set_code(&start.link_token).await.unwrap();
}

#[tokio::test]
async fn a_luxtrust_link_names_the_account_before_the_secret_code() {
    let mut app = spawn_app().await;
    app.register("anna").await;
    app.record_login("anna", "LT-1").await;
    let start = app
        .start_link(&Uuid::new_v4().to_string(), LinkMethod::Luxtrust)
        .await;
    let assertion = app
        .keys
        .luxtrust_assertion("anna", "mobile", "LT-1", &start.luxtrust_nonce)
        .unwrap();
    let reply = app
        .device
        .authenticate_with_lux_trust(proto::v1::AuthenticateWithLuxTrustRequest {
            link_token: start.link_token.clone(),
            assertion,
            request_id: String::new(),
        })
        .await
        .unwrap()
        .into_inner();

    assert_eq!(reply.account_hint, "a***@example.lu");
    app.set_code(&start.link_token).await.unwrap();
}

#[tokio::test]
async fn behind_a_trusted_proxy_the_forwarded_address_is_shown() {
    // Arrange: one trusted proxy appends the client's address; the client forged another.
    let mut app = spawn_app_with(|settings| settings.trusted_proxy_hops = 1).await;
    app.register("anna").await;
    let qr = app.issue_qr("anna").await;
    let start = app
        .start_link(&Uuid::new_v4().to_string(), LinkMethod::Qr)
        .await;
    let mut request = tonic::Request::new(ScanQrRequest {
        link_token: start.link_token.clone(),
        qr_payload: qr.qr_payload.clone(),
        request_id: String::new(),
    });
    request.metadata_mut().insert(
        "x-forwarded-for",
        "203.0.113.9, 198.51.100.23".parse().unwrap(),
    );

    // Act
    app.device.scan_qr(request).await.unwrap();

    // Assert: the address the trusted proxy saw, not the forged one.
    let state = get(&mut app, "anna", &qr.qr_id).await.unwrap();
    assert_eq!(state.scanned_by.unwrap().client_address, "198.51.100.23");
}

#[tokio::test]
async fn open_watches_are_bounded_and_a_closed_one_frees_its_place() {
    // Arrange: one watch at a time.
    let mut app = spawn_app_with(|settings| settings.max_qr_watches = 1).await;
    app.register("anna").await;
    let qr = app.issue_qr("anna").await;
    let first = watch(&mut app, "anna", &qr.qr_id).await;

    // Act + Assert: a second is refused while the first is open.
    let request = WatchLinkQrRequest {
        qr_id: qr.qr_id.clone(),
    };
    let refused = app
        .portal
        .watch_link_qr(bearer(request.clone(), &app.citizen("anna")))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");

    // Closing the first frees its place (the server notices within a poll).
    drop(first);
    let portal = app.portal.clone();
    let token = app.citizen("anna");
    eventually(Duration::from_secs(10), "the watch to be freed", || {
        let mut portal = portal.clone();
        let request = bearer(request.clone(), &token);
        async move { portal.watch_link_qr(request).await.ok().map(|_| ()) }
    })
    .await;
}

#[tokio::test]
async fn confirmations_and_declines_reach_the_bus_and_the_audit_log() {
    // Arrange: one link declined with a wrong code, one confirmed and linked.
    let mut app = spawn_system().await;
    let Scanned { qr, reply, .. } = anna_scanned(&mut app).await;
    let wrong = if reply.matching_code == "42" {
        "43"
    } else {
        "42"
    };
    app.confirm("anna", &qr.qr_id, wrong).await.unwrap_err();
    app.link_by_qr("anna").await;

    // Act: the audit log, once caught up.
    let auditor = app.keys.auditor_token().unwrap();
    let channel = app.read.as_ref().unwrap().channel.clone();
    let events = eventually(Duration::from_secs(30), "the audit log", || {
        let mut audits = AuditServiceClient::new(channel.clone());
        let request = bearer(
            ListEventsRequest {
                account_id: "anna".into(),
                page_size: 100,
                ..Default::default()
            },
            &auditor,
        );
        async move {
            let events = audits.list_events(request).await.ok()?.into_inner().events;
            events
                .iter()
                .any(|e| e.event_type == "DeviceLinked")
                .then_some(events)
        }
    })
    .await;

    // Assert
    let declined = events
        .iter()
        .find(|e| e.event_type == "LinkDeclined")
        .expect("LinkDeclined in the audit log");
    assert!(
        declined.details_json.contains("wrong_matching_code"),
        "{}",
        declined.details_json
    );
    assert_eq!(declined.actor, "citizen:anna");
    assert!(events.iter().any(|e| e.event_type == "LinkConfirmed"));
    let accepted = events
        .iter()
        .find(|e| e.event_type == "QrAccepted")
        .unwrap();
    assert!(
        accepted
            .details_json
            .contains("\"confirmation_required\":true"),
        "{}",
        accepted.details_json
    );
}

#[tokio::test]
async fn hostile_input_to_the_new_fields_is_invalid_and_writes_nothing() {
    // Arrange
    let mut app = spawn_app().await;
    let Scanned { qr, .. } = anna_scanned(&mut app).await;
    let before = app.event_count().await;
    let over_long = "9".repeat(70_000);

    // Act + Assert: NUL, garbage and over-long text in every new field.
    for qr_id in ["\0", "67e55044-10b1-426f-9247-bb680e5fe0c8\0", "x"] {
        e2e::assert_invalid(qr_id, get(&mut app, "anna", qr_id).await);
        e2e::assert_invalid(qr_id, decline(&mut app, "anna", qr_id).await);
        let request = WatchLinkQrRequest {
            qr_id: qr_id.into(),
        };
        let watched = app
            .portal
            .watch_link_qr(bearer(request, &app.citizen("anna")))
            .await
            .map(|_| ());
        e2e::assert_invalid(qr_id, watched);
    }
    for code in ["\0\0", "4\0", "", " ", "٤٧", over_long.as_str()] {
        let confirmed = app.confirm("anna", &qr.qr_id, code).await;
        e2e::assert_invalid(code, confirmed);
    }
    for address in ["\0", "localhost", "192.0.2.1:443", over_long.as_str()] {
        let request = proto::v1::IssueLinkQrRequest {
            browser_address: address.into(),
            ..Default::default()
        };
        let issued = app
            .portal
            .issue_link_qr(bearer(request, &app.citizen("anna")))
            .await;
        e2e::assert_invalid(address, issued);
    }
    for model in ["Pixel\0", "\u{7}", &"m".repeat(65)] {
        let mut start = TestApp::start_request(&Uuid::new_v4().to_string(), LinkMethod::Qr);
        start.device_model = model.into();
        e2e::assert_invalid(model, app.device.start_link(start).await);
    }
    assert_eq!(app.event_count().await, before);
}

#[tokio::test]
async fn an_open_watch_does_not_hold_up_a_shutdown() {
    // Arrange: a watch open on a QR code nobody scans (it would run for two minutes).
    let mut app = spawn_app().await;
    app.register("anna").await;
    let qr = app.issue_qr("anna").await;
    let mut states = watch(&mut app, "anna", &qr.qr_id).await;
    assert_eq!(
        stage(&next(&mut states).await.unwrap()),
        LinkQrStage::Issued
    );

    // Act
    let stopped = app
        .stop_command_service_gracefully(Duration::from_secs(10))
        .await;

    // Assert: the drain finished, and the watcher was told to open a new watch.
    assert!(stopped, "the shutdown waited for the open watch");
    let ended = tokio::time::timeout(Duration::from_secs(5), states.message())
        .await
        .unwrap();
    assert_eq!(ended.unwrap_err().code(), Code::Unavailable);
}

#[tokio::test]
async fn a_qr_code_consumed_by_an_attempt_bound_elsewhere_cannot_confirm_it() {
    // Arrange: the attacker's phone scans the victim's QR code, and, racing it, the attacker's
    // own QR code on the same attempt. The race's outcome is built directly: the attacker's
    // code consumed by the attempt that accepted the victim's.
    let mut app = spawn_app().await;
    app.register("mallory").await;
    let Scanned { qr, start, reply } = anna_scanned(&mut app).await;
    let own = app.issue_qr("mallory").await;
    let attempt_id: uuid::Uuid = start.link_token.split('.').nth(1).unwrap().parse().unwrap();
    let store = command_service::store::EventStore::new(
        app.pool.clone(),
        command_service::store::snapshot::key(&app.settings.secret_code_pepper.0),
        command_service::sealing::Keks::load(&app.settings.kek_file).unwrap(),
    );
    let consumed = store.load::<domain::LinkQr>(&own.qr_id).await.unwrap();
    let metadata = command_service::store::Metadata {
        actor: "app:race".into(),
        request_id: "race".into(),
        account_id: Some("mallory".into()),
    };
    let device_id = store
        .load::<domain::LinkAttempt>(&attempt_id.to_string())
        .await
        .unwrap()
        .state()
        .device_id()
        .unwrap();
    store
        .execute(
            consumed,
            domain::LinkQrCommand::Consume {
                attempt_id: domain::LinkAttemptId(attempt_id),
                device_id,
                at: chrono::Utc::now(),
            },
            &metadata,
        )
        .await
        .unwrap();

    // Act + Assert: through their own QR code the attacker sees nothing to confirm, and no code
    // confirms or declines anything.
    let state = get(&mut app, "mallory", &own.qr_id).await.unwrap();
    assert_eq!(stage(&state), LinkQrStage::Void, "{state:?}");
    assert!(state.matching_code_choices.is_empty());
    for code in 10..100 {
        let refused = app
            .confirm("mallory", &own.qr_id, &code.to_string())
            .await
            .unwrap_err();
        assert_eq!(refused.code(), Code::FailedPrecondition, "{refused:?}");
    }
    let refused = decline(&mut app, "mallory", &own.qr_id).await.unwrap_err();
    assert_eq!(refused.code(), Code::FailedPrecondition, "{refused:?}");
    assert_eq!(app.events_of_type("LinkConfirmed").await, 0);
    assert_eq!(app.events_of_type("LinkDeclined").await, 0);
    let waiting = app.set_code(&start.link_token).await.unwrap_err();
    assert_eq!(waiting.code(), Code::FailedPrecondition, "{waiting:?}");
    // Only anna, with the code the phone shows, can let it go on.
    let anna = get(&mut app, "anna", &qr.qr_id).await.unwrap();
    assert_eq!(stage(&anna), LinkQrStage::Scanned);
    assert!(anna.matching_code_choices.contains(&reply.matching_code));
}

#[tokio::test]
async fn a_scan_that_asked_no_confirmation_cannot_link_once_it_is_required() {
    // Arrange: scanned while confirmation was off (before the upgrade, say).
    let mut app = spawn_app_with(|settings| settings.qr_confirmation = None).await;
    let Scanned { start, reply, .. } = anna_scanned(&mut app).await;
    assert_eq!(reply.matching_code, "");

    // Act: the service now requires confirmation.
    app.restart_command_service(
        |settings| settings.qr_confirmation = Some(Duration::from_secs(120)),
        None,
    )
    .await;
    let refused = app.set_code(&start.link_token).await.unwrap_err();

    // Assert
    assert_eq!(refused.code(), Code::FailedPrecondition, "{refused:?}");
    assert!(
        refused
            .message()
            .contains("without asking the account holder"),
        "{}",
        refused.message()
    );
    assert_eq!(app.events_of_type("DeviceLinked").await, 0);
}

#[tokio::test]
async fn the_confirmation_deadline_never_outlives_the_attempt() {
    let mut app = spawn_app_with(|settings| {
        settings.link_attempt_ttl = Duration::from_secs(30);
        settings.qr_confirmation = Some(Duration::from_secs(120));
    })
    .await;
    let Scanned { qr, start, reply } = anna_scanned(&mut app).await;

    let confirm_by = reply.confirm_by.unwrap();
    let attempt_ends = start.expires_at.unwrap();
    assert!(
        (confirm_by.seconds, confirm_by.nanos) <= (attempt_ends.seconds, attempt_ends.nanos),
        "{confirm_by:?} after {attempt_ends:?}"
    );
    let state = get(&mut app, "anna", &qr.qr_id).await.unwrap();
    assert_eq!(state.confirm_by, reply.confirm_by);
}

#[tokio::test]
async fn one_account_cannot_take_every_watch() {
    // Arrange
    let mut app = spawn_app().await;
    app.register("anna").await;
    app.register("bob").await;
    let qr = app.issue_qr("anna").await;
    let mut open = Vec::new();
    for _ in 0..3 {
        open.push(watch(&mut app, "anna", &qr.qr_id).await);
    }

    // Act
    let request = WatchLinkQrRequest {
        qr_id: qr.qr_id.clone(),
    };
    let fourth = app
        .portal
        .watch_link_qr(bearer(request, &app.citizen("anna")))
        .await;

    // Assert: anna's fourth is refused; bob still gets his.
    let refused = fourth.unwrap_err();
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
    let bobs = app.issue_qr("bob").await;
    let mut states = watch(&mut app, "bob", &bobs.qr_id).await;
    assert_eq!(
        stage(&next(&mut states).await.unwrap()),
        LinkQrStage::Issued
    );
}
