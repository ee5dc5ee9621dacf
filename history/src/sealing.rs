//! Crypto-shredding (ADR 0025), the event store's side: which fields of the stored events are
//! personal, and sealing and opening them in an event's JSON (the keys and the cipher are
//! `service_kit::sealing`'s). The personal fields of events, and snapshots of states that hold
//! them, are stored encrypted under a data key of their *data subject* (the account, or a link
//! attempt that has not named its account yet). Data keys are stored wrapped by a key-encryption
//! key (KEK) from configuration (`LINKD_KEK_FILE`); several KEKs may be configured, the last one
//! wraps new keys, the others still unwrap (rotation: `command-service rewrap-keys`).
//!
//! Erasing a data key makes every copy of its subject's personal fields in the event store
//! unreadable without touching a stored byte, so the hash chain (which covers the ciphertext)
//! still verifies. A field whose key is erased loads as a placeholder ([`ERASED`], or absent for
//! optional fields), never as an error.
//!
//! Everything is XChaCha20-Poly1305 with a random 192-bit nonce. A sealed field is the JSON
//! string `sealed:v1:<base64 of nonce ‖ ciphertext>`; its associated data names the event and the
//! field, so a ciphertext moved to another event or field does not open. A wrapped key's
//! associated data names its subject.

use serde_json::Value;
pub use service_kit::sealing::{DataKey, ERASED, Keks, KeysSeen, SealError, is_sealed};

/// The data subject of an account: whose key seals its events (`account:<id>`).
pub fn account_subject(account_id: &str) -> String {
    format!("account:{account_id}")
}

/// What an erased field becomes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Erased {
    /// The text [`ERASED`].
    Text,
    /// `null` (the field is optional).
    Absent,
}

impl Erased {
    fn value(self) -> Value {
        match self {
            Self::Text => Value::String(ERASED.to_owned()),
            Self::Absent => Value::Null,
        }
    }
}

/// A personal field of an event, as stored: the aggregate type, the event type, and the path
/// below the event's variant in its JSON (externally tagged: `{"<EventType>": {…}}`).
#[derive(Debug, Clone, Copy)]
pub struct Personal {
    /// `account`, `link_qr`, `link_attempt` or `device`.
    pub aggregate_type: &'static str,
    /// The event's type (its variant).
    pub event_type: &'static str,
    /// Field names from the variant down.
    pub path: &'static [&'static str],
    /// What it loads as once erased.
    pub erased: Erased,
}

const fn personal(
    aggregate_type: &'static str,
    event_type: &'static str,
    path: &'static [&'static str],
    erased: Erased,
) -> Personal {
    Personal {
        aggregate_type,
        event_type,
        path,
        erased,
    }
}

/// Every personal field the event store seals (docs/privacy.md says why each is personal; the
/// identifiers are not sealed: they are the keys records are found by, and say nothing of a
/// person once these fields are gone).
pub const PERSONAL: &[Personal] = &[
    personal("account", "AccountRegistered", &["email"], Erased::Text),
    personal(
        "account",
        "AccountEmailChanged",
        &["old_email"],
        Erased::Text,
    ),
    personal(
        "account",
        "AccountEmailChanged",
        &["new_email"],
        Erased::Text,
    ),
    personal(
        "account",
        "PortalLoginRecorded",
        &["product", "serial"],
        Erased::Text,
    ),
    personal("link_qr", "QrIssued", &["browser_address"], Erased::Absent),
    personal(
        "link_attempt",
        "LinkRequested",
        &["device_name"],
        Erased::Text,
    ),
    personal(
        "link_attempt",
        "LinkRequested",
        &["device_model"],
        Erased::Absent,
    ),
    personal(
        "link_attempt",
        "QrAccepted",
        &["client_address"],
        Erased::Absent,
    ),
    personal(
        "link_attempt",
        "LuxTrustAuthenticated",
        &["product", "serial"],
        Erased::Text,
    ),
    personal("device", "DeviceLinked", &["device_name"], Erased::Text),
    personal(
        "device",
        "DeviceLinked",
        &["product", "serial"],
        Erased::Text,
    ),
];

/// Whether events of this type carry a personal field.
pub fn has_personal(aggregate_type: &str, event_type: &str) -> bool {
    PERSONAL
        .iter()
        .any(|field| field.aggregate_type == aggregate_type && field.event_type == event_type)
}

/// The value at `field`'s path in `payload`, if present and not null.
fn slot<'a>(payload: &'a mut Value, field: &Personal) -> Option<&'a mut Value> {
    let mut value = payload.get_mut(field.event_type)?;
    for name in field.path {
        value = value.get_mut(*name)?;
    }
    (!value.is_null()).then_some(value)
}

fn aad(event_id: &str, field: &Personal) -> String {
    format!("{event_id}#{}", field.path.join("."))
}

/// Seals the personal fields of one event's payload under `key`. `event_id` is
/// `<aggregate_type>/<aggregate_id>/<sequence>`.
pub fn seal_event(
    aggregate_type: &str,
    event_type: &str,
    event_id: &str,
    payload: &mut Value,
    key: &DataKey,
) -> Result<(), SealError> {
    for field in PERSONAL
        .iter()
        .filter(|f| f.aggregate_type == aggregate_type && f.event_type == event_type)
    {
        if let Some(value) = slot(payload, field) {
            let plaintext = serde_json::to_vec(value)
                .map_err(|e| SealError::Malformed(format!("{} ({e})", aad(event_id, field))))?;
            *value = Value::String(key.seal_text(&aad(event_id, field), &plaintext));
        }
    }
    Ok(())
}

/// Opens the sealed fields of one event's payload with `key`, or, when the key is erased
/// (`None`), puts each one's placeholder in its place. Fields stored in clear (events written
/// before sealing existed) are left as they are.
pub fn open_event(
    aggregate_type: &str,
    event_type: &str,
    event_id: &str,
    payload: &mut Value,
    key: Option<&DataKey>,
) -> Result<(), SealError> {
    for field in PERSONAL
        .iter()
        .filter(|f| f.aggregate_type == aggregate_type && f.event_type == event_type)
    {
        let Some(value) = slot(payload, field) else {
            continue;
        };
        let Some(sealed) = value.as_str().filter(|text| is_sealed(text)) else {
            continue;
        };
        *value = match key {
            Some(key) => {
                let plaintext = key.open_text(&aad(event_id, field), sealed)?;
                serde_json::from_slice(&plaintext)
                    .map_err(|_| SealError::Tampered(aad(event_id, field)))?
            }
            None => field.erased.value(),
        };
    }
    Ok(())
}

/// Takes the sealed fields out of one event's payload, as (path, sealed text), leaving in each
/// place its erased placeholder (a value of the field's type), for the relay to put the sealed
/// texts into the bus message (`proto::personal`, same paths).
pub fn take_sealed(
    aggregate_type: &str,
    event_type: &str,
    payload: &mut Value,
) -> Vec<(String, String)> {
    let mut taken = Vec::new();
    for field in PERSONAL
        .iter()
        .filter(|f| f.aggregate_type == aggregate_type && f.event_type == event_type)
    {
        let Some(value) = slot(payload, field) else {
            continue;
        };
        if let Some(sealed) = value.as_str().filter(|text| is_sealed(text)) {
            taken.push((field.path.join("."), sealed.to_owned()));
            *value = field.erased.value();
        }
    }
    taken
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    /// Personal fields of docs/privacy.md that stay in clear: identifiers, the keys records are
    /// found by (they say nothing of a person once the sealed fields are gone).
    const IDENTIFIERS: &[&str] = &[
        "EventEnvelope.event_id",
        "EventEnvelope.aggregate_id",
        "EventEnvelope.account_id",
        "EventEnvelope.actor",
        "EventEnvelope.data_subject",
        "QrConsumed.device_id",
        "LinkRequested.device_id",
        "DevicesUnlinkedTogether.device_ids",
        // Sealed as the `serial` below each event's `product`.
        "LuxTrustProduct.serial",
        // The stored payload as it is: its personal fields are the sealed ones above.
        "EventEnvelope.opaque_payload",
    ];

    #[test]
    fn every_personal_field_of_the_inventory_is_sealed_or_an_identifier() {
        let inventory =
            std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/privacy.md"))
                .unwrap();
        let personal: Vec<&str> = inventory
            .lines()
            .filter_map(|line| {
                let cells: Vec<&str> = line.split('|').map(str::trim).collect();
                (cells.len() > 3 && cells[2] == "personal").then(|| cells[1].trim_matches('`'))
            })
            .collect();
        assert!(personal.len() >= 19, "{personal:?}");
        for field in personal {
            let (event_type, name) = field.split_once('.').unwrap();
            let sealed = PERSONAL
                .iter()
                .any(|p| p.event_type == event_type && p.path.first() == Some(&name));
            assert!(
                sealed || IDENTIFIERS.contains(&field),
                "{field} is personal (docs/privacy.md) but neither sealed (sealing::PERSONAL) \
                 nor an identifier"
            );
        }
        for field in PERSONAL {
            let named = format!("{}.{}", field.event_type, field.path[0]);
            assert!(
                inventory.contains(&format!("| `{named}` | personal |")),
                "{named} is sealed but not classified personal in docs/privacy.md"
            );
        }
    }

    #[test]
    fn personal_fields_are_sealed_and_open_again() {
        let (key, _) = DataKey::generate();
        let original = json!({"DeviceLinked": {
            "device_name": "Anna's phone",
            "product": {"kind": "Mobile", "serial": "LT-123456"},
            "method": "LuxTrust"
        }});
        let mut payload = original.clone();
        seal_event("device", "DeviceLinked", "device/d/1", &mut payload, &key).unwrap();
        let text = payload.to_string();
        assert!(
            !text.contains("Anna") && !text.contains("LT-123456"),
            "{text}"
        );
        assert!(
            text.contains("LuxTrust") && text.contains("Mobile"),
            "{text}"
        );

        let mut opened = payload.clone();
        open_event(
            "device",
            "DeviceLinked",
            "device/d/1",
            &mut opened,
            Some(&key),
        )
        .unwrap();
        assert_eq!(opened, original);

        let mut moved = payload.clone();
        let error = open_event(
            "device",
            "DeviceLinked",
            "device/d/2",
            &mut moved,
            Some(&key),
        )
        .unwrap_err();
        assert!(matches!(error, SealError::Tampered(_)), "{error}");
    }

    #[test]
    fn an_erased_key_leaves_placeholders() {
        let (key, _) = DataKey::generate();
        let mut payload = json!({"LinkRequested": {
            "device_name": "Anna's phone", "device_model": "Pixel 9", "platform": "Android"
        }});
        seal_event(
            "link_attempt",
            "LinkRequested",
            "link_attempt/x/1",
            &mut payload,
            &key,
        )
        .unwrap();
        open_event(
            "link_attempt",
            "LinkRequested",
            "link_attempt/x/1",
            &mut payload,
            None,
        )
        .unwrap();
        assert_eq!(
            payload,
            json!({"LinkRequested": {
                "device_name": ERASED, "device_model": null, "platform": "Android"
            }})
        );
    }

    #[test]
    fn absent_fields_and_fields_in_clear_are_left_alone() {
        let (key, _) = DataKey::generate();
        let mut payload = json!({"DeviceLinked": {"device_name": "old", "product": null}});
        open_event(
            "device",
            "DeviceLinked",
            "device/d/1",
            &mut payload,
            Some(&key),
        )
        .unwrap();
        assert_eq!(
            payload,
            json!({"DeviceLinked": {"device_name": "old", "product": null}})
        );
        seal_event("device", "DeviceLinked", "device/d/1", &mut payload, &key).unwrap();
        assert_eq!(payload["DeviceLinked"]["product"], Value::Null);
    }
}
