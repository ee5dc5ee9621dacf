use chrono::DateTime;
use proto::v1::{self, DeviceStatus, DeviceView};
use uuid::Uuid;

use super::{page_token, parse_page_token};
use crate::read::devices::DeviceRow;

fn row(edit: impl FnOnce(&mut DeviceRow)) -> DeviceRow {
    let mut row = DeviceRow {
        device_id: Uuid::nil(),
        account_id: "anna".into(),
        link_id: Uuid::nil(),
        name: "Anna's phone".into(),
        method: "luxtrust".into(),
        product_kind: Some("scan".into()),
        product_serial: Some("S-1".into()),
        platform: "ios".into(),
        app_version: "1.0".into(),
        linked_at: DateTime::from_timestamp(1_800_000_000, 0).unwrap(),
        last_used_at: None,
        biometrics_enabled: false,
        status: "unlinked".into(),
        unlinked_at: DateTime::from_timestamp(1_800_000_100, 0),
        unlink_reason: Some("locked_out".into()),
    };
    edit(&mut row);
    row
}

#[test]
fn a_stored_row_answers_its_values() {
    let view = DeviceView::from(row(|_| {}));
    assert_eq!(view.method, i32::from(v1::LinkMethod::Luxtrust));
    let product = view.product.unwrap();
    assert_eq!(product.kind, i32::from(v1::ProductKind::LuxtrustScan));
    assert_eq!(product.serial, "S-1");
    assert_eq!(view.platform, i32::from(v1::Platform::Ios));
    assert_eq!(view.status, i32::from(DeviceStatus::Unlinked));
    assert_eq!(view.unlink_reason, i32::from(v1::UnlinkReason::LockedOut));
}

#[test]
fn a_stored_text_this_build_does_not_know_answers_unspecified() {
    let view = DeviceView::from(row(|row| {
        row.method = "bogus".into();
        row.product_kind = Some("bogus".into());
        row.platform = "bogus".into();
        row.status = "bogus".into();
        row.unlink_reason = Some("bogus".into());
    }));
    assert_eq!(view.method, i32::from(v1::LinkMethod::Unspecified));
    let product = view.product.unwrap();
    assert_eq!(product.kind, i32::from(v1::ProductKind::Unspecified));
    assert_eq!(product.serial, "S-1");
    assert_eq!(view.platform, i32::from(v1::Platform::Unspecified));
    assert_eq!(view.status, i32::from(DeviceStatus::Unspecified));
    assert_eq!(view.unlink_reason, i32::from(v1::UnlinkReason::Unspecified));
}

#[test]
fn a_page_token_is_only_good_for_its_caller() {
    let row = row(|_| {});
    let token = page_token("anna", &row);
    assert_eq!(
        parse_page_token("anna", &token).ok(),
        Some((row.linked_at, row.device_id))
    );
    assert!(parse_page_token("bob", &token).is_err());
    assert!(parse_page_token("anna", "garbage").is_err());
}
