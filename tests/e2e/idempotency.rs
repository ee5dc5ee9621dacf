use e2e::{TestApp, bearer, spawn_app};
use proto::v1::{
    IssueLinkQrRequest, LinkMethod, SetSecretCodeRequest, StartLinkRequest, StartLinkResponse,
};
use tonic::Code;
use uuid::Uuid;

#[tokio::test]
async fn a_retried_request_id_writes_no_second_event() {
    // Arrange
    let mut app = spawn_app().await;
    let request_id = Uuid::new_v4().to_string();
    let mut request = TestApp::start_request(&Uuid::new_v4().to_string(), LinkMethod::Qr);
    request.request_id = request_id.clone();

    // Act
    let first = app
        .device
        .start_link(request.clone())
        .await
        .unwrap()
        .into_inner();
    let events_after_first = app.event_count().await;
    let second = app.device.start_link(request).await.unwrap().into_inner();

    // Assert: the same answer, and no new event.
    assert_eq!(first, second);
    assert_eq!(app.event_count().await, events_after_first);
    assert_eq!(events_after_first, 1);
}

#[tokio::test]
async fn a_retried_qr_request_returns_the_same_qr_code() {
    let mut app = spawn_app().await;
    app.register("anna").await;
    let token = app.citizen("anna");
    let request = IssueLinkQrRequest {
        request_id: Uuid::new_v4().to_string(),
        ..Default::default()
    };

    let first = app
        .portal
        .issue_link_qr(bearer(request.clone(), &token))
        .await
        .unwrap();
    let second = app
        .portal
        .issue_link_qr(bearer(request, &token))
        .await
        .unwrap();

    assert_eq!(first.into_inner(), second.into_inner());
    assert_eq!(app.events_of_type("QrIssued").await, 1);
    let stored: Vec<Vec<u8>> = sqlx::query_scalar("SELECT response FROM request_log")
        .fetch_all(&app.pool)
        .await
        .unwrap();
    assert_eq!(stored.len(), 1);
    assert!(
        !String::from_utf8_lossy(&stored[0]).contains("linkd-qr1"),
        "the stored answer is encrypted"
    );
}

#[tokio::test]
async fn a_retried_secret_code_returns_the_same_credential() {
    let mut app = spawn_app().await;
    app.register("anna").await;
    let start = app.authenticated_qr_attempt("anna").await;
    let request = SetSecretCodeRequest {
        link_token: start.link_token,
        secret_code: e2e::CODE.into(),
        request_id: Uuid::new_v4().to_string(),
    };

    let first = app
        .device
        .set_secret_code(request.clone())
        .await
        .unwrap()
        .into_inner();
    let second = app
        .device
        .set_secret_code(request)
        .await
        .unwrap()
        .into_inner();

    assert_eq!(first.device_credential, second.device_credential);
    assert_eq!(app.events_of_type("DeviceLinked").await, 1);
}

#[tokio::test]
async fn a_request_id_reused_for_another_request_is_refused() {
    // Arrange: one device, two different StartLink requests under one request_id.
    let mut app = spawn_app().await;
    let request_id = Uuid::new_v4().to_string();
    let device_id = Uuid::new_v4().to_string();
    let mut first = TestApp::start_request(&device_id, LinkMethod::Qr);
    first.request_id = request_id.clone();
    let mut other = TestApp::start_request(&device_id, LinkMethod::Qr);
    other.device_name = "Another name".into();
    other.request_id = request_id;

    // Act
    app.device.start_link(first).await.unwrap();
    let refused = app.device.start_link(other).await.unwrap_err();

    // Assert
    assert_eq!(refused.code(), Code::InvalidArgument);
    assert_eq!(app.event_count().await, 1);
}

#[tokio::test]
async fn another_callers_request_id_does_not_block() {
    // Arrange: anna's request_id, learnt by bob (and by another device's app).
    let mut app = spawn_app().await;
    app.register("anna").await;
    app.register("bob").await;
    let request_id = Uuid::new_v4().to_string();
    let request = IssueLinkQrRequest {
        request_id: request_id.clone(),
        ..Default::default()
    };
    let mut starts = Vec::new();
    for _ in 0..2 {
        let mut start = TestApp::start_request(&Uuid::new_v4().to_string(), LinkMethod::Qr);
        start.request_id = request_id.clone();
        starts.push(start);
    }

    // Act: bob and the other device use it first; then anna and the first device.
    let bobs = app
        .portal
        .issue_link_qr(bearer(request.clone(), &app.citizen("bob")))
        .await;
    let annas = app
        .portal
        .issue_link_qr(bearer(request, &app.citizen("anna")))
        .await;
    let mut started = Vec::new();
    for start in starts {
        started.push(app.device.start_link(start).await);
    }

    // Assert: each got an answer of its own.
    let (bobs, annas) = match (bobs, annas) {
        (Ok(bobs), Ok(annas)) => (bobs.into_inner(), annas.into_inner()),
        (bobs, annas) => panic!("bob: {bobs:?}, anna: {annas:?}"),
    };
    assert_ne!(bobs.qr_id, annas.qr_id);
    for answer in &started {
        if let Err(status) = answer {
            panic!("a StartLink was blocked by another device's request_id: {status:?}");
        }
    }
    assert_eq!(app.events_of_type("QrIssued").await, 2);
    assert_eq!(app.events_of_type("LinkRequested").await, 2);
}

#[tokio::test]
async fn a_failed_call_can_be_retried_with_the_same_request_id() {
    let mut app = spawn_app().await;
    let token = app.citizen("late-registrant");
    let request = IssueLinkQrRequest {
        request_id: Uuid::new_v4().to_string(),
        ..Default::default()
    };

    let refused = app
        .portal
        .issue_link_qr(bearer(request.clone(), &token))
        .await;
    assert_eq!(refused.unwrap_err().code(), Code::NotFound);
    app.register("late-registrant").await;
    let token = app.citizen("late-registrant");

    let retried = app.portal.issue_link_qr(bearer(request, &token)).await;
    if let Err(status) = retried {
        panic!("the retry after registering was refused: {status:?}");
    }
}

#[tokio::test]
async fn a_request_id_must_be_a_uuid() {
    let mut app = spawn_app().await;
    let mut request = TestApp::start_request(&Uuid::new_v4().to_string(), LinkMethod::Qr);
    request.request_id = "retry-1".into();

    let refused = app.device.start_link(request).await.unwrap_err();

    assert_eq!(refused.code(), Code::InvalidArgument);
    assert_eq!(app.event_count().await, 0);
}

/// A StartLink for a new device with a request id of its own, and its answer.
async fn start_with_request_id(app: &TestApp) -> (StartLinkRequest, StartLinkResponse) {
    let mut request = TestApp::start_request(&Uuid::new_v4().to_string(), LinkMethod::Qr);
    request.request_id = Uuid::new_v4().to_string();
    let mut device = app.device.clone();
    let answer = device
        .start_link(request.clone())
        .await
        .unwrap()
        .into_inner();
    (request, answer)
}

#[tokio::test]
async fn replay_answers_past_their_period_are_swept_by_one_instance_and_the_rest_still_replay() {
    // Arrange: two StartLink calls with request ids; the first one's answer made three hours
    // old, with a retention of two hours.
    let mut app = spawn_app().await;
    let mut requests = Vec::new();
    for _ in 0..2 {
        requests.push(start_with_request_id(&app).await);
    }
    sqlx::query(
        "UPDATE request_log SET created_at = now() - interval '3 hours' \
         WHERE created_at = (SELECT min(created_at) FROM request_log)",
    )
    .execute(&app.pool)
    .await
    .unwrap();
    let periods = command_service::sweeper::Periods {
        replays: std::time::Duration::from_secs(2 * 3600),
        abandoned_after: std::time::Duration::from_secs(3600),
        unclaimed_attempt_keys: std::time::Duration::from_secs(24 * 3600),
    };

    // Act + Assert: while another instance holds the round, nothing is swept.
    let mut other = app.pool.begin().await.unwrap();
    let held: bool =
        sqlx::query_scalar("SELECT pg_try_advisory_xact_lock(x'6c696e6b73776565'::bigint)")
            .fetch_one(&mut *other)
            .await
            .unwrap();
    assert!(held);
    let skipped = command_service::sweeper::sweep(&app.pool, &periods)
        .await
        .unwrap();
    assert_eq!(skipped, None);
    other.commit().await.unwrap();
    let swept = command_service::sweeper::sweep(&app.pool, &periods)
        .await
        .unwrap()
        .expect("the round is free again");

    // Exactly the old answer went; the younger call still replays its first answer and
    // writes nothing.
    assert_eq!(swept.replays, 1, "{swept:?}");
    let left: i64 = sqlx::query_scalar("SELECT count(*) FROM request_log")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(left, 1);
    let events = app.event_count().await;
    let (request, answer) = requests.pop().unwrap();
    let again = app.device.start_link(request).await.unwrap().into_inner();
    assert_eq!(again, answer);
    assert_eq!(app.event_count().await, events);
}

#[tokio::test]
async fn a_request_id_whose_answer_is_past_its_period_runs_again() {
    // Arrange: a StartLink with a request id, its answer made older than the replay period (24
    // hours by default) but not yet swept.
    let mut app = spawn_app().await;
    let (request, first) = start_with_request_id(&app).await;
    sqlx::query("UPDATE request_log SET created_at = now() - interval '25 hours'")
        .execute(&app.pool)
        .await
        .unwrap();
    let events = app.event_count().await;

    // Act
    let again = app
        .device
        .start_link(request.clone())
        .await
        .unwrap()
        .into_inner();
    let replayed = app.device.start_link(request).await.unwrap().into_inner();

    // Assert: the call ran again (a new link attempt, one more event), the key now holds the
    // new answer, and it replays that one.
    assert_ne!(again.link_token, first.link_token);
    assert_eq!(app.event_count().await, events + 1);
    assert_eq!(replayed, again);
    let rows: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM request_log WHERE created_at > now() - interval '1 hour'",
    )
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!(rows, 1);
}
