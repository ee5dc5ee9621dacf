//! Containment: after a compromise, the holder unlinks every device, or every one linked since
//! an instant, in one call; the help desk revokes every device for a holder who cannot log in.
//! One summary email, not one per device.

use std::time::Duration;

use e2e::mail::SmtpSink;
use e2e::{TestApp, bearer, spawn_system_with_mail};
use proto::v1::{RevokeAllDevicesRequest, UnlinkDevicesRequest};
use tonic::Code;

const WITHIN: Duration = Duration::from_secs(30);

fn since(instant: chrono::DateTime<chrono::Utc>) -> UnlinkDevicesRequest {
    UnlinkDevicesRequest {
        linked_since: Some(proto::convert::timestamp(instant)),
        ..Default::default()
    }
}

async fn unlink(
    app: &TestApp,
    request: UnlinkDevicesRequest,
) -> Result<Vec<String>, tonic::Status> {
    let mut portal = app.portal.clone();
    portal
        .unlink_devices(bearer(request, &app.citizen("anna")))
        .await
        .map(|reply| reply.into_inner().unlinked_device_ids)
}

#[tokio::test]
async fn everything_linked_since_an_instant_goes_in_one_call_and_one_email() {
    // Arrange: two devices before 18:00, so to speak, and two after.
    let sink = SmtpSink::start().await;
    let mut app = spawn_system_with_mail(sink.settings()).await;
    app.register("anna").await;
    let before = [app.link_by_qr("anna").await, app.link_by_qr("anna").await];
    tokio::time::sleep(Duration::from_millis(50)).await;
    let compromised_since = chrono::Utc::now();
    let after = [app.link_by_qr("anna").await, app.link_by_qr("anna").await];
    sink.wait_for(4, WITHIN).await;

    // Act
    let mut unlinked = unlink(&app, since(compromised_since)).await.unwrap();

    // Assert: exactly the later two; the earlier two still work; one summary email.
    unlinked.sort();
    let mut expected: Vec<String> = after.iter().map(|l| l.device_id.clone()).collect();
    expected.sort();
    assert_eq!(unlinked, expected);
    for kept in &before {
        let request = proto::v1::VerifySecretCodeRequest {
            secret_code: e2e::CODE.into(),
            request_id: String::new(),
        };
        app.device
            .verify_secret_code(bearer(request, &kept.credential))
            .await
            .unwrap();
    }
    assert_eq!(app.events_of_type("DeviceUnlinked").await, 2);
    assert_eq!(app.events_of_type("DevicesUnlinkedTogether").await, 1);
    let mails = sink.wait_for(5, WITHIN).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let mails_now = sink.messages();
    assert_eq!(mails_now.len(), mails.len(), "no email per device");
    let summary = mails_now
        .iter()
        .find(|m| m.subject().contains("déliés"))
        .expect("the summary email");
    assert!(summary.body_contains("2 appareils mobiles"), "{summary:?}");
}

#[tokio::test]
async fn all_devices_go_in_one_call() {
    let sink = SmtpSink::start().await;
    let mut app = spawn_system_with_mail(sink.settings()).await;
    app.register("anna").await;
    for _ in 0..3 {
        app.link_by_qr("anna").await;
    }

    let unlinked = unlink(
        &app,
        UnlinkDevicesRequest {
            all_devices: true,
            ..Default::default()
        },
    )
    .await
    .unwrap();

    assert_eq!(unlinked.len(), 3);
    assert_eq!(app.events_of_type("DevicesUnlinkedTogether").await, 1);
    // Nothing left: a second call ends nothing and sends nothing.
    let again = unlink(
        &app,
        UnlinkDevicesRequest {
            all_devices: true,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert!(again.is_empty());
    assert_eq!(app.events_of_type("DevicesUnlinkedTogether").await, 1);
    let mails = sink.wait_for(4, WITHIN).await;
    assert_eq!(
        mails
            .iter()
            .filter(|m| m.subject().contains("déliés"))
            .count(),
        1
    );
}

#[tokio::test]
async fn the_help_desk_revokes_every_device_for_a_holder_who_cannot_log_in() {
    // Arrange
    let sink = SmtpSink::start().await;
    let mut app = spawn_system_with_mail(sink.settings()).await;
    app.register("anna").await;
    let phones = [app.link_by_qr("anna").await, app.link_by_qr("anna").await];
    let revoke = RevokeAllDevicesRequest {
        account_id: "anna".into(),
        request_id: String::new(),
    };

    // Act + Assert: a citizen cannot; the help desk can.
    let refused = app
        .portal
        .revoke_all_devices(bearer(revoke.clone(), &app.citizen("anna")))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied, "{refused:?}");
    let revoked = app
        .portal
        .revoke_all_devices(bearer(revoke, &app.system()))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(revoked.unlinked_device_ids.len(), 2);
    let reasons = app.unlinks().await;
    assert!(
        reasons
            .iter()
            .all(|(reason, actor)| reason == "HelpDesk" && actor.starts_with("system:")),
        "{reasons:?}"
    );
    for phone in &phones {
        let request = proto::v1::VerifySecretCodeRequest {
            secret_code: e2e::CODE.into(),
            request_id: String::new(),
        };
        let refused = app
            .device
            .verify_secret_code(bearer(request, &phone.credential))
            .await
            .unwrap_err();
        assert_eq!(refused.code(), Code::Unauthenticated);
    }
    let mails = sink.wait_for(3, WITHIN).await;
    let summary = mails
        .iter()
        .find(|m| m.subject().contains("déliés"))
        .expect("the summary email");
    assert!(
        summary.body_contains("helpdesk de MyGuichet.lu a révoqué"),
        "{summary:?}"
    );
    // An account the portal never registered.
    let unknown = RevokeAllDevicesRequest {
        account_id: "nobody".into(),
        request_id: String::new(),
    };
    let refused = app
        .portal
        .revoke_all_devices(bearer(unknown, &app.system()))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::NotFound);
}

#[tokio::test]
async fn an_unlink_names_exactly_one_selection() {
    let app = spawn_system_with_mail(SmtpSink::start().await.settings()).await;
    for request in [
        UnlinkDevicesRequest::default(),
        UnlinkDevicesRequest {
            device_ids: vec![uuid::Uuid::new_v4().to_string()],
            all_devices: true,
            ..Default::default()
        },
        UnlinkDevicesRequest {
            all_devices: true,
            ..since(chrono::Utc::now())
        },
    ] {
        e2e::assert_invalid("two selections", unlink(&app, request).await);
    }
}
