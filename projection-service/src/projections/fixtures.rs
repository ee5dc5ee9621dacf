//! Events for the projectors' unit tests.

use proto::v1::EventEnvelope;
use proto::v1::event_envelope::Event;

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
        event: Some(event),
    }
}
