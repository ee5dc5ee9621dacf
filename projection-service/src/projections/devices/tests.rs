use proto::v1::event_envelope::Event;
use proto::v1::{self, EventEnvelope};

use super::*;
use crate::projections::fixtures::{DEVICE, envelope, stamp, unlinked};

/// A LuxTrust Scan link from an iPhone, edited by `edit`.
fn linked(edit: impl FnOnce(&mut v1::DeviceLinked)) -> EventEnvelope {
    let mut linked = v1::DeviceLinked {
        link_id: "6f1d2e3c-4b5a-4c6d-8e7f-9a0b1c2d3e4f".into(),
        device_name: "Anna's phone".into(),
        method: v1::LinkMethod::Luxtrust.into(),
        product: Some(v1::LuxTrustProduct {
            kind: v1::ProductKind::LuxtrustScan.into(),
            serial: "S-1".into(),
        }),
        platform: v1::Platform::Ios.into(),
        app_version: "1.0".into(),
        at: stamp(),
    };
    edit(&mut linked);
    envelope("device", DEVICE, Event::DeviceLinked(linked))
}

fn is_poison(event: &EventEnvelope) -> bool {
    matches!(change(event), Err(ProjectionError::Poison(_)))
}

#[test]
fn a_link_is_stored_in_the_text_forms() {
    let Ok(Some((_, Change::Linked(row)))) = change(&linked(|_| {})) else {
        panic!("not a link");
    };
    assert_eq!(row.method, "luxtrust");
    assert_eq!(row.product_kind.as_deref(), Some("scan"));
    assert_eq!(row.platform, "ios");
    assert_eq!(row.status, "linked");
    let Ok(Some((_, Change::Unlinked { reason, .. }))) = change(&unlinked(3)) else {
        panic!("not an unlink");
    };
    assert_eq!(reason, "locked_out");
}

#[test]
fn a_link_with_an_unknown_product_kind_is_poison_not_mobile() {
    for kind in [0, 99] {
        let event = linked(|l| l.product.as_mut().unwrap().kind = kind);
        assert!(is_poison(&event), "product kind {kind}");
    }
}

#[test]
fn a_link_with_an_unknown_method_or_platform_is_poison() {
    for raw in [0, 99] {
        assert!(is_poison(&linked(|l| l.method = raw)), "method {raw}");
        assert!(is_poison(&linked(|l| l.platform = raw)), "platform {raw}");
    }
}

#[test]
fn an_unlink_with_an_unknown_reason_is_poison() {
    for raw in [0, 99] {
        assert!(is_poison(&unlinked(raw)), "reason {raw}");
    }
}
