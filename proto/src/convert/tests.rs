use std::fmt::Debug;

use chrono::{DateTime, Utc};
use domain::{DeclineReason, LinkMethod, Platform, ProductKind, UnlinkReason};

use super::*;
use crate::v1;

/// domain → proto → text → proto → domain gives back the value, and the text is the stored one.
fn round_trip<D, P>(value: D, stored: &str)
where
    D: Copy + PartialEq + Debug + TryFrom<P, Error = Unknown>,
    P: TextForm + Debug + From<D>,
{
    let proto = P::from(value);
    let text = proto.text();
    assert_eq!(text, Some(stored), "{value:?}");
    let back = P::from_text(stored).and_then(D::try_from);
    assert_eq!(back, Ok(value), "{value:?}");
    assert_eq!(P::known(proto.into()), Ok(proto));
    assert_eq!(P::text_of(proto.into()), Ok(stored));
    assert_eq!(P::answer(stored), proto.into());
}

/// UNSPECIFIED, 99 and "bogus" are unknown, and an answer for "bogus" is UNSPECIFIED.
fn unknowns<P: TextForm + Debug>() {
    for raw in [0, 99, -1] {
        assert_eq!(P::known(raw), Err(Unknown::number(P::WHAT, raw)));
        assert!(P::text_of(raw).is_err(), "{} {raw}", P::WHAT);
    }
    assert_eq!(P::from_text("bogus"), Err(Unknown::text(P::WHAT, "bogus")));
    assert!(P::from_text("").is_err());
    assert_eq!(P::answer("bogus"), 0);
}

/// Every number this build knows, other than UNSPECIFIED, has a text that names it back.
fn every_known_number_has_a_text<P: TextForm + Debug>() {
    for raw in 0..64 {
        let Ok(value) = P::try_from(raw) else {
            continue;
        };
        match value.text() {
            None => assert_eq!(raw, 0, "{value:?} has no text"),
            Some(text) => assert_eq!(P::from_text(text), Ok(value)),
        }
    }
}

#[test]
fn link_methods_round_trip_and_unknowns_stay_unknown() {
    match LinkMethod::Qr {
        // A new method fails to compile here until it is listed below.
        LinkMethod::Qr | LinkMethod::LuxTrust => {}
    }
    round_trip::<_, v1::LinkMethod>(LinkMethod::Qr, "qr");
    round_trip::<_, v1::LinkMethod>(LinkMethod::LuxTrust, "luxtrust");
    every_known_number_has_a_text::<v1::LinkMethod>();
    unknowns::<v1::LinkMethod>();
    assert!(LinkMethod::try_from(v1::LinkMethod::Unspecified).is_err());
}

#[test]
fn platforms_round_trip_and_unknowns_stay_unknown() {
    match Platform::Ios {
        Platform::Ios | Platform::Android => {}
    }
    round_trip::<_, v1::Platform>(Platform::Ios, "ios");
    round_trip::<_, v1::Platform>(Platform::Android, "android");
    every_known_number_has_a_text::<v1::Platform>();
    unknowns::<v1::Platform>();
    assert!(Platform::try_from(v1::Platform::Unspecified).is_err());
}

#[test]
fn product_kinds_round_trip_and_unknowns_stay_unknown() {
    match ProductKind::Mobile {
        ProductKind::Mobile | ProductKind::Scan => {}
    }
    round_trip::<_, v1::ProductKind>(ProductKind::Mobile, "mobile");
    round_trip::<_, v1::ProductKind>(ProductKind::Scan, "scan");
    every_known_number_has_a_text::<v1::ProductKind>();
    unknowns::<v1::ProductKind>();
    assert!(ProductKind::try_from(v1::ProductKind::Unspecified).is_err());
}

#[test]
fn unlink_reasons_round_trip_and_unknowns_stay_unknown() {
    match UnlinkReason::FromDevice {
        UnlinkReason::FromDevice
        | UnlinkReason::FromPortal
        | UnlinkReason::LockedOut
        | UnlinkReason::HelpDesk
        | UnlinkReason::Inactive => {}
    }
    round_trip::<_, v1::UnlinkReason>(UnlinkReason::FromDevice, "from_device");
    round_trip::<_, v1::UnlinkReason>(UnlinkReason::FromPortal, "from_portal");
    round_trip::<_, v1::UnlinkReason>(UnlinkReason::LockedOut, "locked_out");
    round_trip::<_, v1::UnlinkReason>(UnlinkReason::HelpDesk, "help_desk");
    round_trip::<_, v1::UnlinkReason>(UnlinkReason::Inactive, "inactive");
    every_known_number_has_a_text::<v1::UnlinkReason>();
    unknowns::<v1::UnlinkReason>();
    assert!(UnlinkReason::try_from(v1::UnlinkReason::Unspecified).is_err());
}

#[test]
fn decline_reasons_round_trip_and_unknowns_stay_unknown() {
    match DeclineReason::ByHolder {
        DeclineReason::ByHolder | DeclineReason::WrongMatchingCode => {}
    }
    round_trip::<_, v1::DeclineReason>(DeclineReason::ByHolder, "by_holder");
    round_trip::<_, v1::DeclineReason>(DeclineReason::WrongMatchingCode, "wrong_matching_code");
    every_known_number_has_a_text::<v1::DeclineReason>();
    unknowns::<v1::DeclineReason>();
    assert!(DeclineReason::try_from(v1::DeclineReason::Unspecified).is_err());
}

#[test]
fn device_statuses_round_trip_and_unknowns_stay_unknown() {
    for (status, stored) in [
        (v1::DeviceStatus::Linked, "linked"),
        (v1::DeviceStatus::Unlinked, "unlinked"),
    ] {
        assert_eq!(status.text(), Some(stored));
        assert_eq!(v1::DeviceStatus::from_text(stored), Ok(status));
    }
    every_known_number_has_a_text::<v1::DeviceStatus>();
    unknowns::<v1::DeviceStatus>();
}

#[test]
fn the_luxtrust_claim_names_product_kinds_by_their_text() {
    assert_eq!(product_kind_claim(ProductKind::Mobile), "mobile");
    assert_eq!(product_kind_claim(ProductKind::Scan), "scan");
    assert_eq!(product_kind_from_claim("scan"), Ok(ProductKind::Scan));
    assert!(product_kind_from_claim("bogus").is_err());
    assert!(product_kind_from_claim("Mobile").is_err());
}

#[test]
fn aggregate_types_are_the_domain_names() {
    assert_eq!(
        aggregate::ALL,
        ["account", "link_qr", "link_attempt", "device"]
    );
}

#[test]
fn times_round_trip_to_the_nanosecond() {
    let at: DateTime<Utc> = DateTime::from_timestamp(1_800_000_000, 123_456_789).unwrap();
    let stamp = timestamp(at);
    assert_eq!((stamp.seconds, stamp.nanos), (1_800_000_000, 123_456_789));
    assert_eq!(datetime(&stamp), Some(at));
}

#[test]
fn out_of_range_timestamps_are_no_time() {
    for (seconds, nanos) in [(0, -1), (i64::MAX, 0), (i64::MIN, 0), (0, 2_000_000_000)] {
        let stamp = prost_types::Timestamp { seconds, nanos };
        assert_eq!(datetime(&stamp), None, "{seconds} {nanos}");
    }
}

#[test]
fn unknown_values_say_what_they_are() {
    assert_eq!(
        Unknown::number("link method", 99).to_string(),
        "unknown link method: 99"
    );
    assert_eq!(
        Unknown::text("platform", "bogus").to_string(),
        "unknown platform: \"bogus\""
    );
}
