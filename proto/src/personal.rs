//! The personal fields of the bus's events that travel sealed (ADR 0025): where each one is in
//! the protobuf messages, named by the same path as in the event store (`device_name`,
//! `product.serial`), so the relay can put a stored ciphertext in its place and a reader holding
//! the data key can open it there with the same associated data.

use crate::v1::LuxTrustProduct;
use crate::v1::event_envelope::Event;

/// One sealed field of an event: its path, whether it is optional (erased: empty) or a text
/// (erased: `[erased]`), and the field itself.
#[derive(Debug)]
pub struct Field<'a> {
    /// The path below the event, as in the event store (`product.serial`).
    pub path: &'static str,
    /// Whether the field may be absent (an erased one is then empty).
    pub optional: bool,
    /// The field.
    pub value: &'a mut String,
}

fn text<'a>(path: &'static str, value: &'a mut String) -> Field<'a> {
    Field {
        path,
        optional: false,
        value,
    }
}

fn optional<'a>(path: &'static str, value: &'a mut String) -> Field<'a> {
    Field {
        path,
        optional: true,
        value,
    }
}

fn serial(product: Option<&mut LuxTrustProduct>) -> Option<Field<'_>> {
    product.map(|product| text("product.serial", &mut product.serial))
}

/// The personal fields of `event` that are sealed on the bus, in a fixed order.
pub fn fields(event: &mut Event) -> Vec<Field<'_>> {
    match event {
        Event::AccountRegistered(e) => vec![text("email", &mut e.email)],
        Event::AccountEmailChanged(e) => vec![
            text("old_email", &mut e.old_email),
            text("new_email", &mut e.new_email),
        ],
        Event::PortalLoginRecorded(e) => serial(e.product.as_mut()).into_iter().collect(),
        Event::QrIssued(e) => vec![optional("browser_address", &mut e.browser_address)],
        Event::LinkRequested(e) => vec![
            text("device_name", &mut e.device_name),
            optional("device_model", &mut e.device_model),
        ],
        Event::QrAccepted(e) => vec![optional("client_address", &mut e.client_address)],
        Event::LuxtrustAuthenticated(e) => serial(e.product.as_mut()).into_iter().collect(),
        Event::DeviceLinked(e) => {
            let mut fields = vec![text("device_name", &mut e.device_name)];
            fields.extend(serial(e.product.as_mut()));
            fields
        }
        Event::QrConsumed(_)
        | Event::LinkConfirmed(_)
        | Event::LinkDeclined(_)
        | Event::LinkCompleted(_)
        | Event::BiometricsEnabled(_)
        | Event::BiometricsSkipped(_)
        | Event::BiometricsDisabled(_)
        | Event::SecretCodeVerified(_)
        | Event::SecretCodeFailed(_)
        | Event::DeviceUnlinked(_)
        | Event::InactivityWarned(_)
        | Event::DevicesUnlinkedTogether(_)
        | Event::AccountErased(_) => Vec::new(),
    }
}
