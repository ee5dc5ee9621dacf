//! Bus messages are decoded before anything else looks at them: any bytes, and any change to a
//! real envelope, decode to an envelope that has its place (aggregate, sequence ≥ 1) and an
//! event or an event type, or are refused as poison; never a panic (issue 17, point 6;
//! proptest).
#![allow(
    clippy::unwrap_used,
    reason = "a failed property should fail the test loudly"
)]

use projection_service::projections::{self, ProjectionError};
use proptest::prelude::*;
use prost::Message as _;
use proto::v1::{self, EventEnvelope, event_envelope::Event};

fn envelope() -> Vec<u8> {
    EventEnvelope {
        event_id: "device/7d0e8a59-2c1f-4b0e-9a53-2b1c1d9f0a01/1".into(),
        global_position: 7,
        aggregate_type: "device".into(),
        aggregate_id: "7d0e8a59-2c1f-4b0e-9a53-2b1c1d9f0a01".into(),
        sequence: 1,
        event_type: "DeviceLinked".into(),
        event_version: "1".into(),
        account_id: "anna".into(),
        event: Some(Event::DeviceLinked(v1::DeviceLinked {
            device_name: "sealed:v1:AAAA".into(),
            ..Default::default()
        })),
        ..Default::default()
    }
    .encode_to_vec()
}

fn check(bytes: &[u8]) -> Result<(), TestCaseError> {
    match projections::decode(bytes) {
        Ok(envelope) => {
            prop_assert!(envelope.sequence >= 1);
            prop_assert!(!envelope.aggregate_type.is_empty());
            prop_assert!(!envelope.aggregate_id.is_empty());
            prop_assert!(envelope.event.is_some() || !envelope.event_type.is_empty());
        }
        Err(error) => prop_assert!(matches!(error, ProjectionError::Poison(_)), "{error}"),
    }
    Ok(())
}

/// `PROPTEST_CASES` if set (a longer run), else `default` (the suite's).
fn cases(default: u32) -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|cases| cases.parse().ok())
        .unwrap_or(default)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(4096), failure_persistence: None,
        ..ProptestConfig::default() })]

    #[test]
    fn any_bytes_decode_or_are_poison(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        check(&bytes)?;
    }

    #[test]
    fn a_changed_envelope_decodes_or_is_poison(
        changes in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
        cut in any::<prop::sample::Index>(),
        truncate in any::<bool>(),
    ) {
        let mut bytes = envelope();
        check(&bytes)?;
        for (at, value) in changes {
            let at = at.index(bytes.len());
            bytes[at] = value;
        }
        if truncate {
            bytes.truncate(cut.index(bytes.len()));
        }
        check(&bytes)?;
    }
}
