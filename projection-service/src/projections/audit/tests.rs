use proto::v1::event_envelope::Event;
use proto::v1::{self, EventEnvelope};

use super::*;
use crate::projections::fixtures::{DEVICE, envelope, stamp, unlinked};

fn facts(event: &EventEnvelope) -> Result<serde_json::Value, ProjectionError> {
    details(event.event.as_ref().unwrap())
}

fn linked(method: i32, kind: i32) -> EventEnvelope {
    let linked = v1::DeviceLinked {
        link_id: "6f1d2e3c-4b5a-4c6d-8e7f-9a0b1c2d3e4f".into(),
        device_name: "Anna's phone".into(),
        method,
        product: Some(v1::LuxTrustProduct {
            kind,
            serial: "S-1".into(),
        }),
        platform: v1::Platform::Ios.into(),
        app_version: "1.0".into(),
        at: stamp(),
    };
    envelope("device", DEVICE, Event::DeviceLinked(linked))
}

fn requested(method: i32) -> EventEnvelope {
    let requested = v1::LinkRequested {
        device_id: DEVICE.into(),
        device_name: "Anna's phone".into(),
        method,
        platform: v1::Platform::Ios.into(),
        app_version: "1.0".into(),
        at: stamp(),
        expires_at: stamp(),
        device_model: "Pixel 8".into(),
    };
    envelope("link_attempt", DEVICE, Event::LinkRequested(requested))
}

fn login(kind: i32) -> EventEnvelope {
    let login = v1::PortalLoginRecorded {
        product: Some(v1::LuxTrustProduct {
            kind,
            serial: "S-1".into(),
        }),
        at: stamp(),
    };
    envelope("account", "anna", Event::PortalLoginRecorded(login))
}

#[test]
fn details_carry_the_text_forms() {
    let luxtrust = i32::from(v1::LinkMethod::Luxtrust);
    let scan = i32::from(v1::ProductKind::LuxtrustScan);
    let link = facts(&linked(luxtrust, scan)).unwrap();
    assert_eq!(link["method"], "luxtrust");
    assert_eq!(link["product"]["kind"], "scan");
    assert_eq!(link["product"]["serial"], "S-1");
    let unlink = facts(&unlinked(v1::UnlinkReason::FromPortal.into())).unwrap();
    assert_eq!(unlink["reason"], "from_portal");
    let declined = v1::LinkDeclined {
        reason: v1::DeclineReason::WrongMatchingCode.into(),
        at: stamp(),
    };
    let declined = envelope("link_attempt", DEVICE, Event::LinkDeclined(declined));
    assert_eq!(facts(&declined).unwrap()["reason"], "wrong_matching_code");
    let accepted = v1::QrAccepted {
        qr_id: "q".into(),
        at: stamp(),
        confirm_by: stamp(),
        client_address: "192.0.2.7".into(),
    };
    let accepted = facts(&envelope(
        "link_attempt",
        DEVICE,
        Event::QrAccepted(accepted),
    ))
    .unwrap();
    assert_eq!(accepted["confirmation_required"], true);
    assert_eq!(accepted["client_address"], "192.0.2.7");
    assert_eq!(facts(&requested(1)).unwrap()["device_model"], "Pixel 8");
}

#[test]
fn a_decline_with_an_unknown_reason_is_poison() {
    for raw in [0, 99] {
        let declined = v1::LinkDeclined {
            reason: raw,
            at: stamp(),
        };
        let declined = envelope("link_attempt", DEVICE, Event::LinkDeclined(declined));
        assert!(
            matches!(facts(&declined), Err(ProjectionError::Poison(_))),
            "LinkDeclined, reason {raw}"
        );
    }
}

#[test]
fn an_event_with_an_unknown_method_is_poison_not_unknown() {
    let mobile = i32::from(v1::ProductKind::LuxtrustMobile);
    for raw in [0, 99] {
        assert!(
            matches!(facts(&linked(raw, mobile)), Err(ProjectionError::Poison(_))),
            "DeviceLinked, method {raw}"
        );
        assert!(
            matches!(facts(&requested(raw)), Err(ProjectionError::Poison(_))),
            "LinkRequested, method {raw}"
        );
    }
}

#[test]
fn an_event_with_an_unknown_product_kind_is_poison_not_mobile() {
    let qr = i32::from(v1::LinkMethod::Qr);
    for raw in [0, 99] {
        assert!(
            matches!(facts(&linked(qr, raw)), Err(ProjectionError::Poison(_))),
            "DeviceLinked, kind {raw}"
        );
        assert!(
            matches!(facts(&login(raw)), Err(ProjectionError::Poison(_))),
            "PortalLoginRecorded, kind {raw}"
        );
    }
}

#[test]
fn an_unlink_with_an_unknown_reason_is_poison_not_unknown() {
    for raw in [0, 99] {
        assert!(
            matches!(facts(&unlinked(raw)), Err(ProjectionError::Poison(_))),
            "reason {raw}"
        );
    }
}

#[test]
fn an_event_is_witnessed_for_the_account_whose_history_holds_it() {
    // Arrange: a link request before the attempt named its account, then an event of the
    // attempt written without an account in its metadata but sealed for anna's key, an event of
    // bob's device, and one of a device that names no account at all.
    let mut first = requested(i32::from(v1::LinkMethod::Qr));
    first.account_id = String::new();
    first.data_subject = format!("link_attempt:{DEVICE}");
    let mut sealed_for_anna = envelope(
        "link_attempt",
        DEVICE,
        Event::LinkCompleted(v1::LinkCompleted { at: stamp() }),
    );
    sealed_for_anna.account_id = String::new();
    sealed_for_anna.data_subject = "account:anna".into();
    sealed_for_anna.sequence = 2;
    sealed_for_anna.global_position = 2;
    let mut bobs = unlinked(v1::UnlinkReason::FromPortal.into());
    bobs.account_id = "bob".into();
    bobs.global_position = 3;
    let mut nobodys = unlinked(v1::UnlinkReason::FromPortal.into());
    nobodys.aggregate_id = "other".into();
    nobodys.account_id = String::new();

    // Act
    let heads = heads(&[&first, &sealed_for_anna, &bobs, &nobodys]).unwrap();

    // Assert: the attempt's row without an account, anna's (with the device the request named),
    // bob's device; nothing for the device that names no one.
    let rows: Vec<(&str, &str, &str, i64, i64)> = heads
        .iter()
        .map(|h| {
            (
                h.account.as_str(),
                h.aggregate_type.as_str(),
                h.device.as_str(),
                h.last_sequence,
                h.last_position,
            )
        })
        .collect();
    assert_eq!(
        rows,
        [
            ("", "link_attempt", DEVICE, 1, 1),
            ("anna", "link_attempt", DEVICE, 2, 2),
            ("bob", "device", DEVICE, 1, 3),
        ]
    );
}
