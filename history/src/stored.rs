//! The bus contract: a stored event (a row of `events`) as the protobuf `EventEnvelope` the relay
//! publishes, and the subject it is published on. Secrets never reach here: they are not in
//! events; the LuxTrust nonce, which is, is left out.

use chrono::{DateTime, Utc};
use domain::{AccountEvent, DeviceEvent, LinkAttemptEvent, LinkQrEvent};
use proto::convert::{aggregate, timestamp};
use proto::v1::{self, event_envelope::Event};

use crate::sealing;

/// The columns of `events` a [`StoredEvent`] is read from, in a `SELECT` list.
pub const COLUMNS: &str = "aggregate_type, aggregate_id, sequence, event_type, event_version, \
     payload::jsonb AS payload, metadata::jsonb AS metadata, global_position, \
     tx_id::text::bigint AS tx_id, occurred_at, chain_hash, data_subject";

/// One row of the `events` table, as the relay reads it.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct StoredEvent {
    /// Aggregate type (`account`, `link_qr`, `link_attempt`, `device`).
    pub aggregate_type: String,
    /// Aggregate id.
    pub aggregate_id: String,
    /// Sequence within the aggregate.
    pub sequence: i64,
    /// Event type name.
    pub event_type: String,
    /// The version of its stored shape.
    pub event_version: String,
    /// The serialized domain event.
    pub payload: serde_json::Value,
    /// Actor, request id, account id.
    pub metadata: serde_json::Value,
    /// Insertion position.
    pub global_position: i64,
    /// Writing transaction id.
    pub tx_id: i64,
    /// When it was written.
    pub occurred_at: DateTime<Utc>,
    /// Its link in the aggregate's hash chain (docs/audit.md).
    pub chain_hash: Vec<u8>,
    /// Whose data key seals its personal fields (`None`: written in clear, before sealing).
    pub data_subject: Option<String>,
}

/// A stored event this build cannot turn into a bus message: one written by a newer linkd (a
/// type, aggregate or version it does not know), which the relay publishes opaque
/// ([`StoredEvent::opaque_envelope`]), or one it should read and cannot (a corrupted row, a bug),
/// on which it stops, as before: passing over a `DeviceLinked` its own build cannot convert
/// would hide a linked phone from its holder for good.
#[derive(Debug, thiserror::Error)]
#[error("event {event_id} cannot be published: {reason}")]
pub struct Unpublishable {
    /// Its id.
    pub event_id: String,
    /// Why.
    pub reason: String,
    /// Whether a newer linkd wrote it (a type, aggregate type or version this build does not
    /// know): published opaque. Otherwise the relay stops on it.
    pub newer: bool,
}

impl StoredEvent {
    /// `<aggregate_type>/<aggregate_id>/<sequence>`.
    pub fn event_id(&self) -> String {
        format!(
            "{}/{}/{}",
            self.aggregate_type, self.aggregate_id, self.sequence
        )
    }

    /// The `Nats-Msg-Id`: the event id and the first 16 bytes of its chain hash, in hex. The
    /// same event published again has the same id (JetStream drops the copy); a different event
    /// at the same aggregate and sequence (written after the database went back in time) has
    /// another, and is not dropped as a duplicate of the one it replaces.
    pub fn message_id(&self) -> String {
        let mut id = self.event_id();
        id.push('/');
        for byte in self.chain_hash.iter().take(16) {
            id.push_str(&format!("{byte:02x}"));
        }
        id
    }

    /// The W3C `traceparent` of the call that wrote it, if traces were exported then.
    pub fn traceparent(&self) -> Option<&str> {
        self.metadata
            .get(service_kit::traces::TRACEPARENT)?
            .as_str()
            .filter(|value| !value.is_empty())
    }

    /// `<prefix>.<aggregate_type>.<EventType>`.
    pub fn subject(&self, prefix: &str) -> String {
        format!("{prefix}.{}.{}", self.aggregate_type, self.event_type)
    }

    /// The envelope to publish, its personal fields sealed as they are stored (ADR 0025): the
    /// relay holds no key, and a copy of the message is unreadable once its subject is erased.
    pub fn envelope(&self) -> Result<v1::EventEnvelope, Unpublishable> {
        let unpublishable = |reason: String| Unpublishable {
            event_id: self.event_id(),
            reason,
            newer: false,
        };
        let newer = |reason: String| Unpublishable {
            newer: true,
            ..unpublishable(reason)
        };
        if !aggregate::ALL.contains(&self.aggregate_type.as_str()) {
            return Err(newer(format!(
                "aggregate type {} is newer than this build",
                self.aggregate_type
            )));
        }
        if !proto::events::is_known(&self.event_type) {
            return Err(newer(format!(
                "event type {} is newer than this build",
                self.event_type
            )));
        }
        let mut payload = self.payload.clone();
        // The sealed fields are taken out (their places hold a value of the right type) and
        // put back into the protobuf message once it is built.
        let mut sealed = sealing::take_sealed(&self.aggregate_type, &self.event_type, &mut payload);
        // An older shape is brought to the current one (docs/events.md, "How to change an
        // event"); the envelope still says which version is stored.
        domain::upcast::upcast(
            &self.aggregate_type,
            &self.event_type,
            &self.event_version,
            &mut payload,
        )
        .map_err(|e| match e {
            domain::upcast::UpcastError::Newer { .. } => newer(e.to_string()),
            domain::upcast::UpcastError::Unreadable { .. } => unpublishable(e.to_string()),
        })?;
        let mut event = match self.aggregate_type.as_str() {
            aggregate::ACCOUNT => serde_json::from_value(payload).map(account_event),
            aggregate::LINK_QR => serde_json::from_value(payload).map(|event| qr_event(&event)),
            aggregate::LINK_ATTEMPT => serde_json::from_value(payload).map(attempt_event),
            aggregate::DEVICE => serde_json::from_value(payload).map(device_event),
            other => return Err(unpublishable(format!("unknown aggregate type {other}"))),
        }
        .map_err(|e| unpublishable(format!("payload: {e}")))?;
        for field in proto::personal::fields(&mut event) {
            if let Some(at) = sealed.iter().position(|(path, _)| path == field.path) {
                *field.value = sealed.swap_remove(at).1;
            }
        }
        if let Some((path, _)) = sealed.first() {
            return Err(unpublishable(format!(
                "the sealed field {path} has no place in the envelope (proto::personal)"
            )));
        }
        Ok(v1::EventEnvelope {
            event: Some(event),
            ..self.header()
        })
    }

    /// The envelope of an event this build cannot read ([`Unpublishable`]): its ids, position,
    /// type, version and metadata, no `event`, and the stored payload as it is in
    /// `opaque_payload` (its personal fields sealed as stored). Consumers treat it as an event
    /// type they do not know (docs/events.md, "Unknown and newer events"); publishing it keeps
    /// every later event flowing and the stream gap-free.
    pub fn opaque_envelope(&self) -> v1::EventEnvelope {
        let mut payload = self.payload.clone();
        without_secrets(&mut payload);
        v1::EventEnvelope {
            opaque_payload: payload.to_string().into_bytes(),
            ..self.header()
        }
    }

    /// Everything of the envelope but the event. Metadata entries that are missing or not text
    /// (a newer linkd's) are left empty rather than refused.
    fn header(&self) -> v1::EventEnvelope {
        let text = |key: &str| {
            self.metadata
                .get(key)
                .and_then(serde_json::Value::as_str)
                .map(str::to_owned)
        };
        let account_id = text("account_id").unwrap_or_else(|| {
            if self.aggregate_type == aggregate::ACCOUNT {
                self.aggregate_id.clone()
            } else {
                String::new()
            }
        });
        v1::EventEnvelope {
            event_id: self.event_id(),
            global_position: self.global_position,
            aggregate_type: self.aggregate_type.clone(),
            aggregate_id: self.aggregate_id.clone(),
            sequence: self.sequence,
            event_type: self.event_type.clone(),
            event_version: self.event_version.clone(),
            occurred_at: Some(timestamp(self.occurred_at)),
            account_id,
            actor: text("actor").unwrap_or_default(),
            request_id: text("request_id").unwrap_or_default(),
            traceparent: text(service_kit::traces::TRACEPARENT).unwrap_or_default(),
            data_subject: self.data_subject.clone().unwrap_or_default(),
            opaque_payload: Vec::new(),
            event: None,
        }
    }
}

/// Stored fields that are never published (the LuxTrust nonce of `LinkRequested`, which the
/// readable envelope leaves out too), removed wherever they are in an opaque payload: a newer
/// shape may have moved them.
const SECRET_FIELDS: [&str; 1] = ["nonce"];

fn without_secrets(value: &mut serde_json::Value) {
    match value {
        serde_json::Value::Object(fields) => {
            for secret in SECRET_FIELDS {
                fields.remove(secret);
            }
            fields.values_mut().for_each(without_secrets);
        }
        serde_json::Value::Array(items) => items.iter_mut().for_each(without_secrets),
        serde_json::Value::Null
        | serde_json::Value::Bool(_)
        | serde_json::Value::Number(_)
        | serde_json::Value::String(_) => {}
    }
}

fn ts(at: DateTime<Utc>) -> Option<prost_types::Timestamp> {
    Some(timestamp(at))
}

fn address(address: Option<std::net::IpAddr>) -> String {
    address.map(|a| a.to_string()).unwrap_or_default()
}

fn account_event(event: AccountEvent) -> Event {
    match event {
        AccountEvent::AccountRegistered {
            email,
            language,
            at,
        } => Event::AccountRegistered(v1::AccountRegistered {
            email,
            language,
            at: ts(at),
        }),
        AccountEvent::AccountEmailChanged {
            old_email,
            new_email,
            at,
        } => Event::AccountEmailChanged(v1::AccountEmailChanged {
            old_email,
            new_email,
            at: ts(at),
        }),
        AccountEvent::DevicesUnlinkedTogether {
            device_ids,
            reason,
            at,
        } => Event::DevicesUnlinkedTogether(v1::DevicesUnlinkedTogether {
            device_ids: device_ids.iter().map(ToString::to_string).collect(),
            reason: v1::UnlinkReason::from(reason).into(),
            at: ts(at),
        }),
        AccountEvent::AccountErased {
            link_attempt_ids,
            at,
        } => Event::AccountErased(v1::AccountErased {
            link_attempt_ids: link_attempt_ids.iter().map(ToString::to_string).collect(),
            at: ts(at),
        }),
        AccountEvent::PortalLoginRecorded { product: used, at } => {
            Event::PortalLoginRecorded(v1::PortalLoginRecorded {
                product: Some(used.into()),
                at: ts(at),
            })
        }
    }
}

fn qr_event(event: &LinkQrEvent) -> Event {
    match *event {
        LinkQrEvent::QrIssued {
            at,
            expires_at,
            browser_address,
            ..
        } => Event::QrIssued(v1::QrIssued {
            at: ts(at),
            expires_at: ts(expires_at),
            browser_address: address(browser_address),
        }),
        LinkQrEvent::QrConsumed {
            attempt_id,
            device_id,
            at,
        } => Event::QrConsumed(v1::QrConsumed {
            link_attempt_id: attempt_id.to_string(),
            device_id: device_id.to_string(),
            at: ts(at),
        }),
    }
}

fn attempt_event(event: LinkAttemptEvent) -> Event {
    match event {
        LinkAttemptEvent::LinkRequested {
            device_id,
            device_name,
            method: chosen,
            platform: os,
            device_model,
            app_version,
            at,
            expires_at,
            nonce: _,
        } => Event::LinkRequested(v1::LinkRequested {
            device_id: device_id.to_string(),
            device_name: device_name.as_str().to_owned(),
            method: v1::LinkMethod::from(chosen).into(),
            platform: v1::Platform::from(os).into(),
            app_version,
            at: ts(at),
            expires_at: ts(expires_at),
            device_model: device_model.unwrap_or_default(),
        }),
        LinkAttemptEvent::QrAccepted {
            qr_id,
            at,
            confirm_by,
            client_address,
            account_id: _,
        } => Event::QrAccepted(v1::QrAccepted {
            qr_id: qr_id.to_string(),
            at: ts(at),
            confirm_by: confirm_by.map(timestamp),
            client_address: address(client_address),
        }),
        LinkAttemptEvent::LinkConfirmed { at } => {
            Event::LinkConfirmed(v1::LinkConfirmed { at: ts(at) })
        }
        LinkAttemptEvent::LinkDeclined { reason, at } => Event::LinkDeclined(v1::LinkDeclined {
            reason: v1::DeclineReason::from(reason).into(),
            at: ts(at),
        }),
        LinkAttemptEvent::LuxTrustAuthenticated {
            product: used, at, ..
        } => Event::LuxtrustAuthenticated(v1::LuxTrustAuthenticated {
            product: Some(used.into()),
            at: ts(at),
        }),
        LinkAttemptEvent::LinkCompleted { at } => {
            Event::LinkCompleted(v1::LinkCompleted { at: ts(at) })
        }
    }
}

fn device_event(event: DeviceEvent) -> Event {
    match event {
        DeviceEvent::DeviceLinked {
            link_id,
            device_name,
            method: chosen,
            product: used,
            platform: os,
            app_version,
            at,
            account_id: _,
        } => Event::DeviceLinked(v1::DeviceLinked {
            link_id: link_id.to_string(),
            device_name: device_name.as_str().to_owned(),
            method: v1::LinkMethod::from(chosen).into(),
            product: used.map(Into::into),
            platform: v1::Platform::from(os).into(),
            app_version,
            at: ts(at),
        }),
        DeviceEvent::BiometricsEnabled { at } => {
            Event::BiometricsEnabled(v1::BiometricsEnabled { at: ts(at) })
        }
        DeviceEvent::BiometricsSkipped { at } => {
            Event::BiometricsSkipped(v1::BiometricsSkipped { at: ts(at) })
        }
        DeviceEvent::BiometricsDisabled { at } => {
            Event::BiometricsDisabled(v1::BiometricsDisabled { at: ts(at) })
        }
        DeviceEvent::SecretCodeVerified { at } => {
            Event::SecretCodeVerified(v1::SecretCodeVerified { at: ts(at) })
        }
        DeviceEvent::SecretCodeFailed {
            consecutive_failures,
            attempts_left,
            at,
        } => Event::SecretCodeFailed(v1::SecretCodeFailed {
            consecutive_failures,
            at: ts(at),
            attempts_left: Some(attempts_left),
        }),
        DeviceEvent::InactivityWarned {
            link_id,
            last_used_at,
            unlink_at,
            at,
        } => Event::InactivityWarned(v1::InactivityWarned {
            link_id: link_id.to_string(),
            last_used_at: ts(last_used_at),
            unlink_at: ts(unlink_at),
            at: ts(at),
        }),
        DeviceEvent::DeviceUnlinked {
            link_id,
            reason,
            at,
            in_bulk,
            account_id: _,
        } => Event::DeviceUnlinked(v1::DeviceUnlinked {
            link_id: link_id.to_string(),
            reason: v1::UnlinkReason::from(reason).into(),
            at: ts(at),
            in_bulk,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stored(sequence: i64, chain_hash: Vec<u8>) -> StoredEvent {
        StoredEvent {
            aggregate_type: "device".into(),
            aggregate_id: "d-1".into(),
            sequence,
            event_type: "DeviceLinked".into(),
            event_version: "1".into(),
            payload: serde_json::Value::Null,
            metadata: serde_json::Value::Null,
            global_position: 7,
            tx_id: 700,
            occurred_at: DateTime::<Utc>::UNIX_EPOCH,
            chain_hash,
            data_subject: None,
        }
    }

    #[test]
    fn the_message_id_tells_apart_two_events_at_the_same_place_in_an_aggregate() {
        let before = stored(3, vec![0xab; 32]);
        let after_a_restore = stored(3, vec![0xcd; 32]);
        assert_eq!(before.event_id(), after_a_restore.event_id());
        assert_ne!(before.message_id(), after_a_restore.message_id());
        assert_eq!(
            before.message_id(),
            format!("device/d-1/3/{}", "ab".repeat(16))
        );
        // The same event published twice keeps its id (JetStream drops the copy).
        assert_eq!(before.message_id(), stored(3, vec![0xab; 32]).message_id());
    }

    #[test]
    fn an_event_this_build_cannot_read_is_published_opaque_with_its_stored_payload() {
        let payload = serde_json::json!({"DeviceRenamed": {
            "device_name": "sealed:v1:AAAA",
            "proof": {"nonce": "a secret of the link attempt"}
        }});
        let event = StoredEvent {
            event_type: "DeviceRenamed".into(),
            event_version: "2".into(),
            payload,
            // A newer version's metadata: an entry that is not text is left out, not refused.
            metadata: serde_json::json!({"actor": "app:d-1", "request_id": "r", "hops": 2}),
            data_subject: Some("account:anna".into()),
            ..stored(4, vec![0; 32])
        };

        let unreadable = event.envelope().unwrap_err();
        let envelope = event.opaque_envelope();

        assert_eq!(unreadable.event_id, "device/d-1/4");
        assert!(unreadable.newer, "{unreadable}");
        assert!(envelope.event.is_none());
        assert_eq!(
            (
                envelope.event_id.as_str(),
                envelope.event_type.as_str(),
                envelope.event_version.as_str(),
                envelope.sequence,
                envelope.global_position,
                envelope.actor.as_str(),
                envelope.data_subject.as_str(),
            ),
            (
                "device/d-1/4",
                "DeviceRenamed",
                "2",
                4,
                7,
                "app:d-1",
                "account:anna"
            )
        );
        let opaque: serde_json::Value = serde_json::from_slice(&envelope.opaque_payload).unwrap();
        assert_eq!(
            opaque,
            serde_json::json!({"DeviceRenamed": {"device_name": "sealed:v1:AAAA", "proof": {}}}),
            "the nonce is never published"
        );
        assert!(proto::events::is_unknown(&envelope));
    }

    #[test]
    fn an_event_this_build_should_read_and_cannot_is_not_passed_off_as_newer() {
        // A known type whose payload does not deserialise (a corrupted row, a bug): the relay
        // stops on it rather than publish it opaque for consumers to pass over.
        let broken = StoredEvent {
            payload: serde_json::json!({"DeviceLinked": {"link_id": "not a uuid"}}),
            ..stored(5, vec![0; 32])
        };
        let refused = broken.envelope().unwrap_err();
        assert!(!refused.newer, "{refused}");
        // A version newer than this build's: opaque.
        let newer = StoredEvent {
            event_type: "SecretCodeFailed".into(),
            event_version: "9".into(),
            payload: serde_json::json!({"SecretCodeFailed": {}}),
            ..stored(6, vec![0; 32])
        };
        assert!(newer.envelope().unwrap_err().newer);
    }

    #[test]
    fn personal_fields_are_published_sealed_as_stored() {
        let (key, _) = crate::sealing::DataKey::generate();
        let mut payload = serde_json::json!({"DeviceLinked": {
            "link_id": "7f0c2b8e-52a4-4d8e-9a3e-0d1c6f1f8b11",
            "account_id": "anna",
            "device_name": "Anna's phone",
            "method": "LuxTrust",
            "product": {"kind": "Mobile", "serial": "LT-123456"},
            "platform": "Android",
            "app_version": "2.4.1",
            "at": "2026-12-01T10:00:00Z"
        }});
        crate::sealing::seal_event("device", "DeviceLinked", "device/d-1/3", &mut payload, &key)
            .unwrap();
        let event = StoredEvent {
            payload,
            metadata: serde_json::json!({"actor": "app:d-1", "request_id": "r"}),
            data_subject: Some("account:anna".into()),
            ..stored(3, vec![0; 32])
        };

        let envelope = event.envelope().unwrap();

        assert_eq!(envelope.data_subject, "account:anna");
        let Some(Event::DeviceLinked(linked)) = envelope.event else {
            panic!("{envelope:?}");
        };
        let serial = linked.product.unwrap().serial;
        for (path, sealed) in [
            ("device_name", &linked.device_name),
            ("product.serial", &serial),
        ] {
            assert!(sealed.starts_with("sealed:v1:"), "{path}: {sealed}");
            let opened = key
                .open_text(&format!("device/d-1/3#{path}"), sealed)
                .unwrap();
            let opened: String = serde_json::from_slice(&opened).unwrap();
            let expected = if path == "device_name" {
                "Anna's phone"
            } else {
                "LT-123456"
            };
            assert_eq!(opened, expected, "{path}");
        }
        assert_eq!(linked.app_version, "2.4.1");
    }
}
