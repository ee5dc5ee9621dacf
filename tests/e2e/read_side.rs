use std::time::Duration;

use e2e::{TestApp, bearer, eventually, spawn_system};
use proto::v1::{DeviceStatus, DeviceView, ListDevicesRequest, SetBiometricsRequest};
use tonic::Code;

fn list(consistency_token: &str) -> ListDevicesRequest {
    ListDevicesRequest {
        page_size: 0,
        page_token: String::new(),
        consistency_token: consistency_token.into(),
    }
}

/// The holder's linked devices, read with `token`.
async fn devices(app: &TestApp, account: &str, token: &str) -> Vec<DeviceView> {
    app.queries()
        .list_devices(bearer(list(token), &app.citizen(account)))
        .await
        .unwrap()
        .into_inner()
        .devices
}

/// Waits until the read model lists `count` devices for `account`.
async fn wait_for_devices(app: &TestApp, account: &str, count: usize) -> Vec<DeviceView> {
    eventually(
        Duration::from_secs(20),
        &format!("{count} devices listed"),
        || async {
            let listed = devices(app, account, "").await;
            (listed.len() == count).then_some(listed)
        },
    )
    .await
}

#[tokio::test]
async fn list_devices_shows_both_linked_devices_with_their_fields() {
    // Arrange
    let mut app = spawn_system().await;
    app.register("anna").await;
    app.record_login("anna", "MOBILE-1").await;

    // Act
    let by_qr = app.link_by_qr("anna").await;
    let by_luxtrust = app.link_by_luxtrust("anna", "MOBILE-1").await;
    let biometrics = app
        .device
        .set_biometrics(bearer(
            SetBiometricsRequest {
                enabled: true,
                request_id: String::new(),
            },
            &by_qr.credential,
        ))
        .await
        .unwrap()
        .into_inner();
    let listed = devices(&app, "anna", &biometrics.consistency_token).await;

    // Assert
    let listed = if listed.len() == 2 {
        listed
    } else {
        wait_for_devices(&app, "anna", 2).await
    };
    let qr = listed
        .iter()
        .find(|d| d.device_id == by_qr.device_id)
        .unwrap();
    let lt = listed
        .iter()
        .find(|d| d.device_id == by_luxtrust.device_id)
        .unwrap();
    assert_eq!(qr.name, "Anna's phone");
    assert_eq!(qr.method, i32::from(proto::v1::LinkMethod::Qr));
    assert!(
        qr.biometrics_enabled,
        "the token waited for BiometricsEnabled"
    );
    assert_eq!(qr.platform, i32::from(proto::v1::Platform::Android));
    assert_eq!(qr.app_version, "2.4.1");
    assert_eq!(qr.status, i32::from(DeviceStatus::Linked));
    assert!(qr.linked_at.is_some());
    assert_eq!(lt.method, i32::from(proto::v1::LinkMethod::Luxtrust));
    let product = lt.product.as_ref().unwrap();
    assert_eq!(product.serial, "MOBILE-1");
    assert_eq!(
        product.kind,
        i32::from(proto::v1::ProductKind::LuxtrustMobile)
    );
    assert!(!lt.biometrics_enabled);
}

#[tokio::test]
async fn unlinked_devices_leave_the_list() {
    // Arrange
    let mut app = spawn_system().await;
    app.register("anna").await;
    let lost = app.link_by_qr("anna").await;
    let sold = app.link_by_qr("anna").await;
    let kept = app.link_by_qr("anna").await;
    wait_for_devices(&app, "anna", 3).await;

    // Act: one unlinked from the portal, one by itself.
    let token = app.citizen("anna");
    let request = proto::v1::UnlinkDevicesRequest {
        device_ids: vec![lost.device_id.clone()],
        request_id: String::new(),
        ..Default::default()
    };
    app.portal
        .unlink_devices(bearer(request, &token))
        .await
        .unwrap();
    let reply = app
        .device
        .unlink_this_device(bearer(
            proto::v1::UnlinkThisDeviceRequest::default(),
            &sold.credential,
        ))
        .await
        .unwrap()
        .into_inner();

    // Assert
    let listed = devices(&app, "anna", &reply.consistency_token).await;
    let listed = if listed.len() == 1 {
        listed
    } else {
        wait_for_devices(&app, "anna", 1).await
    };
    assert_eq!(listed[0].device_id, kept.device_id);
    let request = proto::v1::GetDeviceRequest {
        device_id: lost.device_id,
        consistency_token: String::new(),
    };
    let lost_view = app
        .queries()
        .get_device(bearer(request, &token))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(lost_view.status, i32::from(DeviceStatus::Unlinked));
    assert_eq!(
        lost_view.unlink_reason,
        i32::from(proto::v1::UnlinkReason::FromPortal)
    );
}

#[tokio::test]
async fn with_the_consistency_token_a_query_sees_the_command_at_once() {
    let mut app = spawn_system().await;
    app.register("anna").await;
    for expected in 1..=3 {
        let linked = app.link_by_qr("anna").await;
        let token = app.last_consistency_token.clone();
        let listed = devices(&app, "anna", &token).await;
        assert_eq!(listed.len(), expected, "after linking {}", linked.device_id);
    }
}

#[tokio::test]
async fn without_a_token_the_read_model_converges() {
    let mut app = spawn_system().await;
    app.register("anna").await;
    for _ in 0..5 {
        app.link_by_qr("anna").await;
    }
    wait_for_devices(&app, "anna", 5).await;
}

#[tokio::test]
async fn a_token_the_read_model_cannot_reach_in_time_is_unavailable() {
    let app = spawn_system().await;
    let unreachable = "v1:device,00000000-0000-0000-0000-000000000001,7,99";
    let mut request = bearer(list(unreachable), &app.citizen("anna"));
    request.set_timeout(Duration::from_millis(1500));

    let refused = app.queries().list_devices(request).await.unwrap_err();

    assert_eq!(refused.code(), Code::Unavailable, "{refused:?}");
    assert!(
        refused.message().contains("not caught up"),
        "{}",
        refused.message()
    );
}

#[tokio::test]
async fn the_device_list_needs_a_recent_authentication() {
    let app = spawn_system().await;
    let stale = app.keys.citizen_token("anna", 400).unwrap();

    let refused = app
        .queries()
        .list_devices(bearer(list(""), &stale))
        .await
        .unwrap_err();
    let anonymous = app.queries().list_devices(list("")).await.unwrap_err();
    let garbled = app
        .queries()
        .list_devices(bearer(list("v9:x"), &app.citizen("anna")))
        .await
        .unwrap_err();

    assert_eq!(refused.code(), Code::PermissionDenied);
    assert_eq!(anonymous.code(), Code::Unauthenticated);
    assert_eq!(garbled.code(), Code::InvalidArgument);
}

#[tokio::test]
async fn pages_list_every_device_once() {
    // Arrange
    let mut app = spawn_system().await;
    app.register("anna").await;
    let mut linked = Vec::new();
    for _ in 0..5 {
        linked.push(app.link_by_qr("anna").await.device_id);
    }
    wait_for_devices(&app, "anna", 5).await;

    // Act: pages of two.
    let token = app.citizen("anna");
    let mut seen = Vec::new();
    let mut page_token = String::new();
    loop {
        let request = ListDevicesRequest {
            page_size: 2,
            page_token,
            consistency_token: String::new(),
        };
        let page = app
            .queries()
            .list_devices(bearer(request, &token))
            .await
            .unwrap()
            .into_inner();
        assert!(page.devices.len() <= 2);
        seen.extend(page.devices.into_iter().map(|d| d.device_id));
        if page.next_page_token.is_empty() {
            break;
        }
        page_token = page.next_page_token;
    }

    // Assert
    seen.sort();
    linked.sort();
    assert_eq!(seen, linked);
    // A page token is only good for its holder.
    let bob = app.citizen("bob");
    let first = app
        .queries()
        .list_devices(bearer(
            ListDevicesRequest {
                page_size: 2,
                ..list("")
            },
            &token,
        ))
        .await
        .unwrap()
        .into_inner();
    let stolen = ListDevicesRequest {
        page_size: 2,
        page_token: first.next_page_token,
        consistency_token: String::new(),
    };
    let refused = app
        .queries()
        .list_devices(bearer(stolen, &bob))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::InvalidArgument);
}

#[tokio::test]
async fn a_holder_cannot_read_another_accounts_device() {
    let mut app = spawn_system().await;
    app.register("anna").await;
    let annas = app.link_by_qr("anna").await;
    wait_for_devices(&app, "anna", 1).await;

    let request = proto::v1::GetDeviceRequest {
        device_id: annas.device_id,
        consistency_token: String::new(),
    };
    let refused = app
        .queries()
        .get_device(bearer(request, &app.citizen("mallory")))
        .await
        .unwrap_err();

    assert_eq!(refused.code(), Code::NotFound);
}
