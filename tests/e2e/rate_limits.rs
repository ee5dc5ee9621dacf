//! Rate limits: per client address (in memory, per instance) and per key (account, device,
//! LuxTrust serial: in PostgreSQL, across instances). Each call past a limit is
//! RESOURCE_EXHAUSTED with a RetryInfo delay, writes nothing, and the call after the delay is
//! served.

use std::future::Future;
use std::time::Duration;

use e2e::{TestApp, bearer, run_command_service, spawn_app_with};
use proto::v1::portal_service_client::PortalServiceClient;
use proto::v1::{IssueLinkQrRequest, LinkMethod, VerifySecretCodeRequest};
use tonic::Code;
use tonic_types::StatusExt as _;
use uuid::Uuid;

/// The period of the limits these tests set: long enough that a loaded machine makes the
/// allowed calls before any allowance comes back, short enough to wait for once.
const PERIOD: Duration = Duration::from_secs(5);

/// Test settings with `overrides` of the rate-limit policy (the others stay out of reach).
async fn limited(overrides: &str) -> TestApp {
    let policy = e2e::rate_limits_with(overrides);
    spawn_app_with(move |settings| settings.rate_limits = policy).await
}

/// The RetryInfo delay of a RESOURCE_EXHAUSTED refusal.
fn retry_delay<T: std::fmt::Debug>(outcome: Result<T, tonic::Status>) -> Duration {
    let status = outcome.unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    let delay = status
        .get_details_retry_info()
        .and_then(|info| info.retry_delay)
        .unwrap_or_else(|| panic!("no RetryInfo in {status:?}"));
    assert!(delay > Duration::ZERO && delay <= PERIOD, "{delay:?}");
    delay
}

#[tokio::test]
async fn start_link_past_the_address_limit_waits_for_the_delay() {
    // Arrange: two StartLinks per address, then one every five seconds.
    let mut app = limited("start_link.address=2/5").await;
    let start = |app: &mut TestApp| {
        let request = TestApp::start_request(&Uuid::new_v4().to_string(), LinkMethod::Qr);
        let mut device = app.device.clone();
        async move { device.start_link(request).await }
    };
    start(&mut app).await.unwrap();
    start(&mut app).await.unwrap();
    let before = app.event_count().await;

    // Act
    let delay = retry_delay(start(&mut app).await);

    // Assert: nothing written; after the delay, served.
    assert_eq!(app.event_count().await, before);
    tokio::time::sleep(delay + Duration::from_millis(50)).await;
    start(&mut app).await.unwrap();
}

#[tokio::test]
async fn verify_secret_code_past_the_device_limit_gives_no_verdict() {
    // Arrange
    let mut app = limited("verify_secret_code.device=2/5").await;
    app.register("anna").await;
    let linked = app.link_by_qr("anna").await;
    let verify = |app: &TestApp| {
        let request = bearer(
            VerifySecretCodeRequest {
                secret_code: "000001".into(),
                request_id: String::new(),
            },
            &linked.credential,
        );
        let mut device = app.device.clone();
        async move { device.verify_secret_code(request).await }
    };
    verify(&app).await.unwrap();
    verify(&app).await.unwrap();

    // Act
    let delay = retry_delay(verify(&app).await);

    // Assert: the refused guess was not counted, and gave no verdict.
    assert_eq!(app.events_of_type("SecretCodeFailed").await, 2);
    tokio::time::sleep(delay + Duration::from_millis(50)).await;
    let reply = verify(&app).await.unwrap().into_inner();
    assert_eq!(reply.attempts_remaining, 2);
}

#[tokio::test]
async fn an_account_limit_holds_across_two_command_service_instances() {
    // Arrange: two QR codes per account, then one every five seconds; two instances.
    let mut app = limited("issue_link_qr.account=2/5").await;
    app.register("anna").await;
    app.register("bob").await;
    let second = run_command_service(app.settings.clone(), None).await;
    let mut instances = [
        app.portal.clone(),
        PortalServiceClient::new(second.channel.clone()),
    ];
    let token = app.citizen("anna");
    let issue = |portal: &mut PortalServiceClient<tonic::transport::Channel>, token: &str| {
        let request = bearer(IssueLinkQrRequest::default(), token);
        let mut portal = portal.clone();
        async move { portal.issue_link_qr(request).await }
    };

    // Act: one on each instance, then a third on either.
    issue(&mut instances[0], &token).await.unwrap();
    issue(&mut instances[1], &token).await.unwrap();
    let before = app.event_count().await;
    let first_refusal = issue(&mut instances[0], &token).await;
    let second_refusal = issue(&mut instances[1], &token).await;

    // Assert: refused on both; nothing written; another account is not affected.
    retry_delay(first_refusal);
    let delay = retry_delay(second_refusal);
    assert_eq!(app.event_count().await, before);
    issue(&mut instances[1], &app.citizen("bob")).await.unwrap();
    tokio::time::sleep(delay + Duration::from_millis(50)).await;
    issue(&mut instances[0], &token).await.unwrap();
}

#[tokio::test]
async fn a_luxtrust_serial_is_limited_across_link_attempts() {
    // Arrange: one LuxTrust authentication per serial per minute.
    let mut app = limited("authenticate_with_luxtrust.serial=1/60").await;
    app.register("anna").await;
    app.record_login("anna", "LT-1").await;
    let first = app
        .start_link(&Uuid::new_v4().to_string(), LinkMethod::Luxtrust)
        .await;
    app.authenticate_luxtrust(&first, "anna", "LT-1")
        .await
        .unwrap();

    // Act: a second attempt (another device) with the same product.
    let second = app
        .start_link(&Uuid::new_v4().to_string(), LinkMethod::Luxtrust)
        .await;
    let refused = app.authenticate_luxtrust(&second, "anna", "LT-1").await;

    // Assert
    let status = refused.unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert!(status.get_details_retry_info().is_some());
    assert_eq!(app.events_of_type("LuxTrustAuthenticated").await, 1);
}

#[tokio::test]
async fn the_device_list_and_the_audit_queries_are_limited_per_caller() {
    // Arrange: a read side of its own with two ListDevices and one audit query per holder.
    let mut app = e2e::spawn_system().await;
    app.register("anna").await;
    app.register("bob").await;
    let mut settings = app.read_settings();
    settings.consumer_prefix = "linkd-test-limited".into();
    settings.query_rate_limits = projection_service::limits::QueryLimits::parse(
        "list_devices.account=2/5,audit.caller=1/5,get_device.account=1/5",
    )
    .unwrap();
    let read = e2e::spawn_read_side_with(settings).await;
    let mut queries = read.queries.clone();
    let list = |account: &str| {
        bearer(
            proto::v1::ListDevicesRequest::default(),
            &app.citizen(account),
        )
    };

    // Act + Assert: the third list is refused with a delay; another holder is not affected.
    queries.list_devices(list("anna")).await.unwrap();
    queries.list_devices(list("anna")).await.unwrap();
    let delay = retry_delay(queries.list_devices(list("anna")).await);
    queries.list_devices(list("bob")).await.unwrap();
    let mut audits = proto::v1::audit_service_client::AuditServiceClient::new(read.channel.clone());
    let history = || {
        bearer(
            proto::v1::ListEventsRequest::default(),
            &app.citizen("anna"),
        )
    };
    audits.list_events(history()).await.unwrap();
    retry_delay(audits.list_events(history()).await);
    let get = || {
        bearer(
            proto::v1::GetDeviceRequest {
                device_id: Uuid::new_v4().to_string(),
                ..Default::default()
            },
            &app.citizen("anna"),
        )
    };
    let unknown = queries.get_device(get()).await.unwrap_err();
    assert_eq!(unknown.code(), Code::NotFound, "counted, then answered");
    retry_delay(queries.get_device(get()).await);
    tokio::time::sleep(delay + Duration::from_millis(50)).await;
    queries.list_devices(list("anna")).await.unwrap();
}

/// Each rule of the app's calls, wired to its RPC: with that rule at one call per minute, the
/// second call it counts is refused with a retry delay and writes nothing.
#[tokio::test]
async fn every_rule_of_the_apps_calls_refuses_its_second_call() {
    type Calls = fn(&mut TestApp) -> std::pin::Pin<Box<dyn Future<Output = Outcome> + '_>>;
    type Outcome = (Result<(), tonic::Status>, Result<(), tonic::Status>);
    let cases: [(&str, Calls); 9] = [
        ("start_link.device", |app| {
            Box::pin(async move {
                let device = Uuid::new_v4().to_string();
                let first = app
                    .device
                    .start_link(TestApp::start_request(&device, LinkMethod::Qr))
                    .await
                    .map(|_| ());
                let second = app
                    .device
                    .start_link(TestApp::start_request(&device, LinkMethod::Qr))
                    .await
                    .map(|_| ());
                (first, second)
            })
        }),
        ("scan_qr.address", |app| {
            Box::pin(async move {
                let (one, two) = (app.issue_qr("anna").await, app.issue_qr("anna").await);
                let a = app
                    .start_link(&Uuid::new_v4().to_string(), LinkMethod::Qr)
                    .await;
                let b = app
                    .start_link(&Uuid::new_v4().to_string(), LinkMethod::Qr)
                    .await;
                let first = app.scan(&a.link_token, &one).await.map(|_| ());
                let second = app.scan(&b.link_token, &two).await.map(|_| ());
                (first, second)
            })
        }),
        ("scan_qr.link_attempt", |app| {
            Box::pin(async move {
                let qr = app.issue_qr("anna").await;
                let a = app
                    .start_link(&Uuid::new_v4().to_string(), LinkMethod::Qr)
                    .await;
                let first = app.scan(&a.link_token, &qr).await.map(|_| ());
                let second = app.scan(&a.link_token, &qr).await.map(|_| ());
                (first, second)
            })
        }),
        ("authenticate_with_luxtrust.address", |app| {
            Box::pin(async move {
                let a = app
                    .start_link(&Uuid::new_v4().to_string(), LinkMethod::Luxtrust)
                    .await;
                let b = app
                    .start_link(&Uuid::new_v4().to_string(), LinkMethod::Luxtrust)
                    .await;
                let first = app.authenticate_luxtrust(&a, "anna", "LT-1").await;
                let second = app.authenticate_luxtrust(&b, "anna", "LT-2").await;
                (first, second)
            })
        }),
        ("authenticate_with_luxtrust.link_attempt", |app| {
            Box::pin(async move {
                let a = app
                    .start_link(&Uuid::new_v4().to_string(), LinkMethod::Luxtrust)
                    .await;
                let first = app.authenticate_luxtrust(&a, "anna", "LT-1").await;
                let second = app.authenticate_luxtrust(&a, "anna", "LT-1").await;
                (first.and(Ok(())), second)
            })
        }),
        ("set_secret_code.address", |app| {
            Box::pin(async move {
                let a = app.authenticated_qr_attempt("anna").await;
                let b = app.authenticated_qr_attempt("anna").await;
                let first = app.set_code(&a.link_token).await.map(|_| ());
                let second = app.set_code(&b.link_token).await.map(|_| ());
                (first, second)
            })
        }),
        ("set_secret_code.link_attempt", |app| {
            Box::pin(async move {
                // Scanned, not confirmed: each call is counted, then refused as waiting.
                let qr = app.issue_qr("anna").await;
                let a = app
                    .start_link(&Uuid::new_v4().to_string(), LinkMethod::Qr)
                    .await;
                app.scan(&a.link_token, &qr).await.unwrap();
                let waiting = |outcome: Result<e2e::Linked, tonic::Status>| match outcome {
                    Err(status) if status.code() == Code::FailedPrecondition => Ok(()),
                    other => other.map(|_| ()),
                };
                let first = waiting(app.set_code(&a.link_token).await);
                let second = waiting(app.set_code(&a.link_token).await);
                (first, second)
            })
        }),
        ("verify_secret_code.address", |app| {
            Box::pin(async move {
                let a = app.link_by_qr("anna").await;
                let b = app.link_by_qr("anna").await;
                let check = |credential: String| {
                    let mut device = app.device.clone();
                    async move {
                        let request = VerifySecretCodeRequest {
                            secret_code: e2e::CODE.into(),
                            request_id: String::new(),
                        };
                        device
                            .verify_secret_code(bearer(request, &credential))
                            .await
                            .map(|_| ())
                    }
                };
                (check(a.credential).await, check(b.credential).await)
            })
        }),
        ("issue_link_qr.account", |app| {
            Box::pin(async move {
                let token = app.citizen("anna");
                let first = app
                    .portal
                    .issue_link_qr(bearer(IssueLinkQrRequest::default(), &token))
                    .await
                    .map(|_| ());
                let second = app
                    .portal
                    .issue_link_qr(bearer(IssueLinkQrRequest::default(), &token))
                    .await
                    .map(|_| ());
                (first, second)
            })
        }),
    ];
    for (rule, calls) in cases {
        let mut app = limited(&format!("{rule}=1/60")).await;
        app.register("anna").await;
        app.record_login("anna", "LT-1").await;
        app.record_login("anna", "LT-2").await;
        let (first, second) = calls(&mut app).await;
        assert!(first.is_ok(), "{rule}: the first call: {first:?}");
        let status = second.unwrap_err();
        assert_eq!(status.code(), Code::ResourceExhausted, "{rule}: {status:?}");
        assert!(
            status.message().contains(rule),
            "{rule}: the refusal names its rule: {}",
            status.message()
        );
        assert!(status.get_details_retry_info().is_some(), "{rule}");
    }
}
