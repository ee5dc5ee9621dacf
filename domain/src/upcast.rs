//! Events keep, in the event store, the shape they were written in, with its version
//! (`events.event_version`). The code reads only the current shape: loading (the command side)
//! and publishing (the relay) first **upcast** an older stored payload, step by step, through
//! the upcasters below, each turning version `n` of one event type into `n + 1`. An upcaster is
//! pinned to the past: it computes what the older version lacked with the rules of that time
//! (a constant of then, not the crate's current one). docs/events.md, "How to change an event".

use serde_json::Value;

/// Turns one version of an event type's stored payload (`{"EventType": {…}}`) into the next.
#[derive(Debug, Clone, Copy)]
pub struct Upcaster {
    /// The aggregate type (`device`, …).
    pub aggregate_type: &'static str,
    /// The event type.
    pub event_type: &'static str,
    /// The version it reads; it writes the next one.
    pub from: u32,
    /// The change.
    pub upcast: fn(&mut Value) -> Result<(), String>,
}

/// The version each event type is written in today, where it is not 1.
const CURRENT: &[(&str, &str, u32)] = &[("device", "SecretCodeFailed", 2)];

/// Every upcaster, oldest first.
pub const UPCASTERS: &[Upcaster] = &[Upcaster {
    aggregate_type: "device",
    event_type: "SecretCodeFailed",
    from: 1,
    upcast: secret_code_failed_v1_to_v2,
}];

/// Why a stored payload cannot be brought to the current shape.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UpcastError {
    /// Written by a newer linkd than this build: only an upgraded instance can read it.
    #[error(
        "{event_type} version {stored} was written by a newer linkd (this build reads up to {current})"
    )]
    Newer {
        /// The event type.
        event_type: String,
        /// Its stored version.
        stored: u32,
        /// The newest this build knows.
        current: u32,
    },
    /// Not a version number, or a version no upcaster leads on from.
    #[error("{event_type} version {stored:?} cannot be read: {reason}")]
    Unreadable {
        /// The event type.
        event_type: String,
        /// Its stored version.
        stored: String,
        /// Why.
        reason: String,
    },
}

/// The version this build writes `event_type` of `aggregate_type` in.
pub fn current_version(aggregate_type: &str, event_type: &str) -> u32 {
    CURRENT
        .iter()
        .find(|(aggregate, event, _)| *aggregate == aggregate_type && *event == event_type)
        .map_or(1, |(.., version)| *version)
}

/// Whether a payload stored as `version` needs upcasting (a cheap test, before parsing it).
pub fn needed(aggregate_type: &str, event_type: &str, version: &str) -> bool {
    version != current_version(aggregate_type, event_type).to_string()
}

/// Brings `payload`, stored as `version` of `event_type`, to the shape this build reads.
pub fn upcast(
    aggregate_type: &str,
    event_type: &str,
    version: &str,
    payload: &mut Value,
) -> Result<(), UpcastError> {
    let current = current_version(aggregate_type, event_type);
    let unreadable = |reason: String| UpcastError::Unreadable {
        event_type: event_type.to_owned(),
        stored: version.to_owned(),
        reason,
    };
    let mut at: u32 = version
        .parse()
        .map_err(|_| unreadable("not a version number".into()))?;
    if at > current {
        return Err(UpcastError::Newer {
            event_type: event_type.to_owned(),
            stored: at,
            current,
        });
    }
    while at < current {
        let step = UPCASTERS
            .iter()
            .find(|u| {
                u.aggregate_type == aggregate_type && u.event_type == event_type && u.from == at
            })
            .ok_or_else(|| unreadable(format!("no upcaster from version {at}")))?;
        (step.upcast)(payload).map_err(unreadable)?;
        at += 1;
    }
    Ok(())
}

/// The fields of `{"EventType": {…}}`.
fn fields<'a>(
    payload: &'a mut Value,
    event_type: &str,
) -> Result<&'a mut serde_json::Map<String, Value>, String> {
    payload
        .get_mut(event_type)
        .and_then(Value::as_object_mut)
        .ok_or_else(|| format!("not a {event_type} payload"))
}

/// `SecretCodeFailed` v2 adds `attempts_left`: how many more wrong codes the device takes before
/// it is unlinked (0 on the one that unlinks it). Version 1 was written while the limit was 5.
fn secret_code_failed_v1_to_v2(payload: &mut Value) -> Result<(), String> {
    /// The limit when version 1 was written; never the current constant.
    const LIMIT_OF_V1: u64 = 5;
    let fields = fields(payload, "SecretCodeFailed")?;
    let failures = fields
        .get("consecutive_failures")
        .and_then(Value::as_u64)
        .ok_or("consecutive_failures is missing")?;
    fields.insert(
        "attempts_left".into(),
        LIMIT_OF_V1.saturating_sub(failures).into(),
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn every_upcaster_chain_reaches_the_current_version() {
        for (aggregate, event, current) in CURRENT {
            for from in 1..*current {
                assert!(
                    UPCASTERS.iter().any(|u| u.aggregate_type == *aggregate
                        && u.event_type == *event
                        && u.from == from),
                    "{aggregate}/{event}: no upcaster from {from}"
                );
            }
        }
        for upcaster in UPCASTERS {
            assert!(
                upcaster.from < current_version(upcaster.aggregate_type, upcaster.event_type),
                "an upcaster beyond the current version: {upcaster:?}"
            );
        }
    }

    #[test]
    fn a_v1_secret_code_failure_reads_as_v2() {
        let mut payload = json!({"SecretCodeFailed": {"consecutive_failures": 2, "at": "t"}});
        upcast("device", "SecretCodeFailed", "1", &mut payload).unwrap();
        assert_eq!(
            payload,
            json!({"SecretCodeFailed": {"consecutive_failures": 2, "attempts_left": 3, "at": "t"}})
        );
        // The current version is read as it is.
        let mut current = payload.clone();
        upcast("device", "SecretCodeFailed", "2", &mut current).unwrap();
        assert_eq!(current, payload);
        assert!(!needed("device", "SecretCodeFailed", "2"));
        assert!(needed("device", "SecretCodeFailed", "1"));
        assert!(!needed("device", "DeviceLinked", "1"));
    }

    #[test]
    fn newer_and_unreadable_versions_are_refused_with_a_reason() {
        let mut payload = json!({"SecretCodeFailed": {"consecutive_failures": 2}});
        assert_eq!(
            upcast("device", "SecretCodeFailed", "3", &mut payload),
            Err(UpcastError::Newer {
                event_type: "SecretCodeFailed".into(),
                stored: 3,
                current: 2
            })
        );
        assert!(matches!(
            upcast("device", "SecretCodeFailed", "1.0", &mut payload),
            Err(UpcastError::Unreadable { .. })
        ));
        let mut wrong = json!({"SecretCodeFailed": {}});
        assert!(matches!(
            upcast("device", "SecretCodeFailed", "1", &mut wrong),
            Err(UpcastError::Unreadable { .. })
        ));
        assert!(matches!(
            upcast("device", "DeviceLinked", "2", &mut payload),
            Err(UpcastError::Newer { .. })
        ));
    }
}
