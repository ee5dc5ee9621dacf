use chrono::DateTime;
use serde_json::json;

use super::*;

fn filter(device: &str) -> Filter {
    Filter {
        account: "anna".into(),
        device: device.into(),
        types: vec!["DeviceLinked".into()],
        from: None,
        to: DateTime::from_timestamp(1_800_000_000, 0),
    }
}

#[test]
fn a_page_token_belongs_to_its_filter() {
    let token = page_token(&filter(""), 42);
    assert_eq!(parse_page_token(&filter(""), &token).ok(), Some(42));
    assert!(parse_page_token(&filter("other"), &token).is_err());
    assert!(parse_page_token(&filter(""), "garbage").is_err());
}

#[test]
fn event_types_are_checked_sorted_and_deduplicated() {
    let types = ["DeviceUnlinked", "DeviceLinked", "DeviceUnlinked"].map(String::from);
    assert_eq!(
        event_types(&types).ok(),
        Some(vec!["DeviceLinked".into(), "DeviceUnlinked".into()])
    );
    for bad in ["", "Device Linked", &"A".repeat(65)] {
        assert!(event_types(&[bad.to_owned()]).is_err(), "{bad:?}");
    }
}

#[test]
fn a_device_linked_with_a_method_this_build_does_not_know_answers_unspecified() {
    let linked = |method: &str| LinkedAt {
        device_id: "d-1".into(),
        occurred_at: DateTime::from_timestamp(1_800_000_000, 0).unwrap(),
        event_id: "device/d-1/1".into(),
        details: json!({ "device_name": "Anna's phone", "method": method }),
    };
    let known = DeviceAt::from(linked("luxtrust"));
    assert_eq!(known.method, i32::from(v1::LinkMethod::Luxtrust));
    assert_eq!(known.name, "Anna's phone");
    let unknown = DeviceAt::from(linked("bogus"));
    assert_eq!(unknown.method, i32::from(v1::LinkMethod::Unspecified));
}
