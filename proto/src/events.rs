//! The event types this build knows, for the one rule on unknown and newer events
//! (docs/events.md, "Unknown and newer events"): a consumer acknowledges an event whose type it
//! does not know and moves on; an event of a type it knows that it cannot apply is parked.

use std::collections::BTreeSet;
use std::sync::LazyLock;

use prost::Message as _;
use prost_types::FileDescriptorSet;

/// The message names of `EventEnvelope`'s `event` oneof, read from the compiled contract (so
/// the list cannot drift from it): `AccountRegistered`, `DeviceLinked`, …
static KNOWN: LazyLock<BTreeSet<String>> = LazyLock::new(|| {
    let Ok(set) = FileDescriptorSet::decode(crate::FILE_DESCRIPTOR_SET) else {
        return BTreeSet::new();
    };
    set.file
        .iter()
        .filter(|file| file.package() == "linking.v1")
        .flat_map(|file| &file.message_type)
        .filter(|message| message.name() == "EventEnvelope")
        .flat_map(|envelope| {
            let oneof = envelope
                .oneof_decl
                .iter()
                .position(|oneof| oneof.name() == "event")
                .and_then(|index| i32::try_from(index).ok());
            envelope
                .field
                .iter()
                .filter(move |field| field.oneof_index.is_some() && field.oneof_index == oneof)
                .filter_map(|field| field.type_name().rsplit('.').next())
                .map(str::to_owned)
        })
        .collect()
});

/// Whether this build knows the event type `name` (an `EventEnvelope.event_type`).
pub fn is_known(name: &str) -> bool {
    KNOWN.contains(name)
}

/// Whether `envelope` carries an event this build does not know: no `event`, and an
/// `event_type` it has no member for (a newer linkd's event, or one the relay sent opaque
/// because it could not read it either).
pub fn is_unknown(envelope: &crate::v1::EventEnvelope) -> bool {
    envelope.event.is_none() && !is_known(&envelope.event_type)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_member_of_the_event_oneof_is_known_and_nothing_else() {
        assert_eq!(KNOWN.len(), 21, "{KNOWN:?}");
        for name in ["AccountRegistered", "DeviceLinked", "AccountErased"] {
            assert!(is_known(name), "{name}");
        }
        for name in [
            "",
            "EventEnvelope",
            "DeviceRenamed",
            "deviceLinked",
            "device_linked",
        ] {
            assert!(!is_known(name), "{name}");
        }
    }

    #[test]
    fn an_envelope_is_unknown_only_without_an_event_of_a_known_type() {
        let mut envelope = crate::v1::EventEnvelope {
            event_type: "DeviceRenamed".into(),
            ..Default::default()
        };
        assert!(is_unknown(&envelope));
        envelope.event_type = "DeviceLinked".into();
        assert!(
            !is_unknown(&envelope),
            "known but not readable: parked, not skipped"
        );
        envelope.event = Some(crate::v1::event_envelope::Event::DeviceLinked(
            crate::v1::DeviceLinked::default(),
        ));
        assert!(!is_unknown(&envelope));
    }
}
