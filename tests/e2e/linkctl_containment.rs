//! `linkctl unlink-devices --all | --linked-since` and `linkctl revoke-all-devices` against a
//! real command service, through `linkctl::unlink::run` (what `main` calls), and how linkctl
//! shows the rich details of the service's refusals (`linkctl::errors::describe`).

use std::time::Duration;

use e2e::{TestApp, bearer, spawn_app, spawn_app_with};
use linkctl::unlink::Command;
use proto::v1::{LinkMethod, UnlinkDevicesResponse, VerifySecretCodeRequest};
use tonic::Code;
use uuid::Uuid;

/// Runs `command` as linkctl does, with `token`; the answer and what linkctl printed.
async fn linkctl(
    app: &TestApp,
    command: Command,
    token: &str,
) -> anyhow::Result<(UnlinkDevicesResponse, String)> {
    let mut out = Vec::new();
    let reply = linkctl::unlink::run(
        &mut app.portal.clone(),
        command,
        token,
        String::new(),
        &mut out,
    )
    .await?;
    Ok((reply, String::from_utf8(out)?))
}

fn unlink_all() -> Command {
    Command::UnlinkDevices {
        device_ids: Vec::new(),
        all: true,
        linked_since: None,
    }
}

fn sorted(mut ids: Vec<String>) -> Vec<String> {
    ids.sort();
    ids
}

/// Fails unless the device with `credential` is unlinked (its credential refused).
async fn assert_revoked(app: &TestApp, credential: &str) {
    let request = VerifySecretCodeRequest {
        secret_code: e2e::CODE.into(),
        request_id: String::new(),
    };
    let refused = app
        .device
        .clone()
        .verify_secret_code(bearer(request, credential))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::Unauthenticated, "{refused:?}");
}

#[tokio::test]
async fn unlink_devices_all_unlinks_every_device_in_one_call() {
    // Arrange
    let mut app = spawn_app().await;
    app.register("anna").await;
    let mut phones = Vec::new();
    for _ in 0..3 {
        phones.push(app.link_by_qr("anna").await);
    }

    // Act
    let (reply, printed) = linkctl(&app, unlink_all(), &app.citizen("anna"))
        .await
        .unwrap();

    // Assert: all three, printed; one call, one summary; every credential refused.
    let expected = sorted(phones.iter().map(|p| p.device_id.clone()).collect());
    assert_eq!(sorted(reply.unlinked_device_ids.clone()), expected);
    assert!(reply.already_unlinked_device_ids.is_empty());
    for id in &expected {
        assert!(printed.contains(id.as_str()), "{id} in {printed}");
    }
    assert!(printed.contains("unlinked_device_ids"), "{printed}");
    assert_eq!(app.events_of_type("DeviceUnlinked").await, 3);
    assert_eq!(app.events_of_type("DevicesUnlinkedTogether").await, 1);
    for phone in &phones {
        assert_revoked(&app, &phone.credential).await;
    }
}

#[tokio::test]
async fn unlink_devices_linked_since_unlinks_only_the_devices_linked_from_then_on() {
    // Arrange: one device before the instant, two after.
    let mut app = spawn_app().await;
    app.register("anna").await;
    let before = app.link_by_qr("anna").await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    let since = proto::convert::timestamp(chrono::Utc::now());
    let after = [app.link_by_qr("anna").await, app.link_by_qr("anna").await];
    let command = Command::UnlinkDevices {
        device_ids: Vec::new(),
        all: false,
        linked_since: Some(since),
    };

    // Act
    let (reply, _) = linkctl(&app, command, &app.citizen("anna")).await.unwrap();

    // Assert
    let expected = sorted(after.iter().map(|p| p.device_id.clone()).collect());
    assert_eq!(sorted(reply.unlinked_device_ids), expected);
    assert!(!expected.contains(&before.device_id));
    assert_eq!(app.events_of_type("DeviceUnlinked").await, 2);
}

#[tokio::test]
async fn unlink_devices_with_two_selections_is_refused_by_the_service_too() {
    // Arrange: what clap refuses on the command line, sent anyway.
    let mut app = spawn_app().await;
    app.register("anna").await;
    let phone = app.link_by_qr("anna").await;
    let command = Command::UnlinkDevices {
        device_ids: vec![phone.device_id],
        all: true,
        linked_since: None,
    };

    // Act
    let error = linkctl(&app, command, &app.citizen("anna"))
        .await
        .unwrap_err();

    // Assert: the gRPC status reaches main's error printing; nothing unlinked.
    let status = error.downcast_ref::<tonic::Status>().unwrap();
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert_eq!(app.events_of_type("DeviceUnlinked").await, 0);
}

#[tokio::test]
async fn revoke_all_devices_unlinks_every_device_with_reason_help_desk() {
    // Arrange
    let mut app = spawn_app().await;
    app.register("anna").await;
    let phones = [app.link_by_qr("anna").await, app.link_by_qr("anna").await];
    let revoke = || Command::RevokeAllDevices {
        account_id: "anna".into(),
    };

    // Act: the holder's own token is not enough; the help desk's (system) token is.
    let refused = linkctl(&app, revoke(), &app.citizen("anna"))
        .await
        .unwrap_err();
    let (reply, printed) = linkctl(&app, revoke(), &app.system()).await.unwrap();

    // Assert
    let status = refused.downcast_ref::<tonic::Status>().unwrap();
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    let expected = sorted(phones.iter().map(|p| p.device_id.clone()).collect());
    assert_eq!(sorted(reply.unlinked_device_ids), expected);
    for id in &expected {
        assert!(printed.contains(id.as_str()), "{id} in {printed}");
    }
    let reasons = app.unlinks().await;
    assert_eq!(reasons.len(), 2, "{reasons:?}");
    assert!(
        reasons
            .iter()
            .all(|(reason, actor)| reason == "HelpDesk" && actor.starts_with("system:")),
        "{reasons:?}"
    );
    for phone in &phones {
        assert_revoked(&app, &phone.credential).await;
    }
}

#[tokio::test]
async fn a_device_limit_refusal_shows_the_least_recently_used_device() {
    // Arrange: a cap of 1, reached.
    let mut app = spawn_app_with(|settings| settings.max_devices_per_account = 1).await;
    app.register("anna").await;
    app.record_login("anna", "LT-1").await;
    let first = app.link_by_qr("anna").await;
    let start = app
        .start_link(&Uuid::new_v4().to_string(), LinkMethod::Luxtrust)
        .await;

    // Act
    let refused = app
        .authenticate_luxtrust(&start, "anna", "LT-1")
        .await
        .unwrap_err();

    // Assert
    let shown = linkctl::errors::describe(&refused);
    assert!(shown.starts_with("FailedPrecondition: "), "{shown}");
    assert!(
        shown.ends_with(&format!(
            "\n  least recently used device: {}",
            first.device_id
        )),
        "{shown}"
    );
}

#[tokio::test]
async fn a_rate_limited_call_shows_when_to_retry() {
    // Arrange: one StartLink per address a minute.
    let policy = e2e::rate_limits_with("start_link.address=1/60");
    let mut app = spawn_app_with(move |settings| settings.rate_limits = policy).await;
    app.start_link(&Uuid::new_v4().to_string(), LinkMethod::Qr)
        .await;

    // Act
    let refused = app
        .device
        .start_link(TestApp::start_request(
            &Uuid::new_v4().to_string(),
            LinkMethod::Qr,
        ))
        .await
        .unwrap_err();

    // Assert: "retry in N s", N a whole number of seconds up to the period.
    let shown = linkctl::errors::describe(&refused);
    assert!(shown.starts_with("ResourceExhausted: "), "{shown}");
    let seconds: u64 = shown
        .rsplit("\n  retry in ")
        .next()
        .and_then(|tail| tail.strip_suffix(" s"))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no retry line in {shown}"));
    assert!((1..=60).contains(&seconds), "{shown}");
}

#[tokio::test]
async fn the_demo_shows_the_device_cap_when_the_servers_cap_is_that_small() {
    // Arrange: a cap of 2, which the demo's containment part reaches with its two devices.
    let app = e2e::spawn_system_with(|settings| settings.max_devices_per_account = 2).await;

    // Act: the third device is refused; the demo goes on and unlinks the two together.
    linkctl::demo::run(app.linkctl_clients(), &app.keys)
        .await
        .unwrap();

    // Assert
    assert_eq!(app.events_of_type("DeviceLinked").await, 4);
    assert_eq!(app.events_of_type("DevicesUnlinkedTogether").await, 1);
}
