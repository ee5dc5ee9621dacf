//! Bounded work: the secret-code hashing pool (one job per device or link attempt, a bound on the
//! jobs held), the server's limit on calls in progress, and its per-call timeout.

use std::time::{Duration, Instant};

use e2e::{bearer, spawn_app, spawn_app_with};
use proto::v1::{RegisterAccountRequest, VerifySecretCodeRequest};
use service_kit::grpc::Limits;
use tonic::Code;
use tonic_types::StatusExt as _;

fn verify_request(credential: &str) -> tonic::Request<VerifySecretCodeRequest> {
    let request = VerifySecretCodeRequest {
        secret_code: e2e::CODE.into(),
        request_id: String::new(),
    };
    bearer(request, credential)
}

/// `RESOURCE_EXHAUSTED` with a `RetryInfo` delay.
fn assert_retry_later(status: &tonic::Status) {
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    let retry = status.get_details_retry_info();
    assert!(
        retry.is_some_and(|info| info.retry_delay.is_some_and(|d| d > Duration::ZERO)),
        "no RetryInfo in {status:?}"
    );
}

#[tokio::test]
async fn one_device_hammering_its_secret_code_does_not_starve_other_accounts() {
    // Arrange: a linked device, and four other accounts about to link.
    let mut app = spawn_app().await;
    app.register("mallory").await;
    let hammer = app.link_by_qr("mallory").await;
    let mut others = Vec::new();
    for n in 0..4 {
        let account = format!("citizen-{n}");
        app.register(&account).await;
        others.push((
            account.clone(),
            app.authenticated_qr_attempt(&account).await,
        ));
    }

    // Act: 64 loops of VerifySecretCode from the one device, while the others set their codes.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut loops = tokio::task::JoinSet::new();
    for _ in 0..64 {
        let mut device = app.device.clone();
        let credential = hammer.credential.clone();
        let stop = stop.clone();
        loops.spawn(async move {
            let (mut verdicts, mut refused) = (0_u32, Vec::new());
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                match device.verify_secret_code(verify_request(&credential)).await {
                    Ok(_) => verdicts += 1,
                    Err(status) => refused.push(status),
                }
            }
            (verdicts, refused)
        });
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut latencies = Vec::new();
    for (account, start) in &others {
        let started = Instant::now();
        let mut request = tonic::Request::new(proto::v1::SetSecretCodeRequest {
            link_token: start.link_token.clone(),
            secret_code: e2e::CODE.into(),
            request_id: String::new(),
        });
        request.set_timeout(Duration::from_secs(10));
        let linked = app.device.set_secret_code(request).await;
        latencies.push(started.elapsed());
        assert!(linked.is_ok(), "{account}: {linked:?}");
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (mut verdicts, mut refusals) = (0, Vec::new());
    while let Some(outcome) = loops.join_next().await {
        let (v, r) = outcome.unwrap();
        verdicts += v;
        refusals.extend(r);
    }

    // Assert: every other account linked in time; the hammering device got answers one at a
    // time, the rest refused at once with a retry delay.
    #[allow(clippy::print_stdout, reason = "the figures the issue's note quotes")]
    {
        println!("SetSecretCode latencies under a 64-loop hammer: {latencies:?}");
        println!("hammer: {verdicts} verdicts, {} refusals", refusals.len());
    }
    assert!(verdicts > 0);
    assert!(!refusals.is_empty(), "the hammer was never refused");
    for status in &refusals {
        assert_retry_later(status);
    }
    assert_eq!(app.events_of_type("DeviceLinked").await, 5);
}

#[tokio::test]
async fn calls_beyond_the_servers_limit_are_refused_at_once_with_a_retry_delay() {
    // Arrange: room for two calls in progress.
    let mut app = spawn_app_with(|settings| {
        settings.grpc_limits = Limits {
            concurrent_calls: 2,
            call_timeout: Duration::from_secs(30),
        };
    })
    .await;
    app.register("anna").await;
    let mut devices = Vec::new();
    for _ in 0..8 {
        devices.push(app.link_by_qr("anna").await);
    }

    // Act: eight secret-code checks at once, each taking a while to hash.
    let mut calls = tokio::task::JoinSet::new();
    for linked in devices {
        let mut device = app.device.clone();
        calls.spawn(async move {
            device
                .verify_secret_code(verify_request(&linked.credential))
                .await
        });
    }
    let (mut answered, mut refused) = (0, Vec::new());
    while let Some(outcome) = calls.join_next().await {
        match outcome.unwrap() {
            Ok(_) => answered += 1,
            Err(status) => refused.push(status),
        }
    }

    // Assert: at most two at a time got in; the others were told to come back.
    assert!(answered >= 1, "{refused:?}");
    assert!(!refused.is_empty(), "no call was refused");
    for status in &refused {
        assert_retry_later(status);
    }
    // Once the load is gone, calls are served again.
    let request = RegisterAccountRequest {
        account_id: "bob".into(),
        email: "bob@example.lu".into(),
        language: String::new(),
        request_id: String::new(),
    };
    app.portal
        .register_account(bearer(request, &app.system()))
        .await
        .unwrap();
}

#[tokio::test]
async fn a_call_past_the_servers_timeout_is_deadline_exceeded_and_its_work_still_finishes() {
    // Arrange: one second per call; the event store locked by someone else.
    let mut app = spawn_app_with(|settings| {
        settings.grpc_limits = Limits {
            concurrent_calls: 16,
            call_timeout: Duration::from_secs(1),
        };
    })
    .await;
    let mut lock = app.pool.begin().await.unwrap();
    sqlx::query("LOCK TABLE events IN ACCESS EXCLUSIVE MODE")
        .execute(&mut *lock)
        .await
        .unwrap();

    // Act
    let started = Instant::now();
    let request = RegisterAccountRequest {
        account_id: "anna".into(),
        email: "anna@example.lu".into(),
        language: String::new(),
        request_id: String::new(),
    };
    let refused = app
        .portal
        .register_account(bearer(request, &app.system()))
        .await
        .unwrap_err();
    let waited = started.elapsed();
    lock.rollback().await.unwrap();

    // Assert: answered at the limit; the work was not dropped halfway but finished once the
    // lock was gone; the server carries on.
    assert_eq!(refused.code(), Code::DeadlineExceeded, "{refused:?}");
    assert!(waited < Duration::from_secs(5), "{waited:?}");
    e2e::eventually(Duration::from_secs(10), "the call to finish", || async {
        (app.events_of_type("AccountRegistered").await == 1).then_some(())
    })
    .await;
    app.register("bob").await;
}
