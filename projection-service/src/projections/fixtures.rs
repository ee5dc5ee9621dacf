//! Events for the projectors' unit tests.

use proto::v1::event_envelope::Event;
use proto::v1::{self, EventEnvelope};

/// A stamp at a fixed instant.
pub(crate) fn stamp() -> Option<prost_types::Timestamp> {
    Some(prost_types::Timestamp {
        seconds: 1_800_000_000,
        nanos: 0,
    })
}

/// `event` as the first event of the aggregate `aggregate_type/aggregate_id`, of account `anna`.
pub(crate) fn envelope(aggregate_type: &str, aggregate_id: &str, event: Event) -> EventEnvelope {
    EventEnvelope {
        event_id: format!("{aggregate_type}/{aggregate_id}/1"),
        global_position: 1,
        aggregate_type: aggregate_type.into(),
        aggregate_id: aggregate_id.into(),
        sequence: 1,
        event_type: "Test".into(),
        occurred_at: stamp(),
        account_id: "anna".into(),
        actor: "test".into(),
        request_id: "test".into(),
        traceparent: String::new(),
        data_subject: String::new(),
        event_version: "1".into(),
        opaque_payload: Vec::new(),
        event: Some(event),
    }
}

/// The device the fixtures' device events are about.
pub(crate) const DEVICE: &str = "7d0e8a59-2c1f-4b0e-9a53-2b1c1d9f0a01";

/// `DEVICE` unlinked for `reason` (a raw enum value, possibly unknown).
pub(crate) fn unlinked(reason: i32) -> EventEnvelope {
    let unlinked = v1::DeviceUnlinked {
        link_id: String::new(),
        reason,
        at: stamp(),
        in_bulk: false,
    };
    envelope("device", DEVICE, Event::DeviceUnlinked(unlinked))
}
