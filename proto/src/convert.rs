//! Every conversion between the contract and the rest of linkd, in one place: times, aggregate
//! types, and the enums (domain ↔ `linking.v1` ↔ the text the read models and audit details
//! store).
//!
//! # Unknown values
//!
//! A value is *unknown* when it is `*_UNSPECIFIED` (0), a number this build does not know, or
//! text that names no value. A conversion never guesses a known value for an unknown one: it
//! returns [`Unknown`] (or `None`). What the caller then does depends only on where the value
//! came from:
//!
//! - a **request field**: `INVALID_ARGUMENT`, naming the field and the accepted values;
//! - an **event from the bus**, in a consumer (devices projector, audit projector, notifier,
//!   relay): the event cannot be applied; it is poison, parked in `dead_letters`;
//! - a **read-model value in an answer**: `*_UNSPECIFIED`;
//! - a **display** (linkctl, examples): shown as unknown.
//!
//! The text forms are stored in databases and never change: method `qr`/`luxtrust`, platform
//! `ios`/`android`, product kind `mobile`/`scan` (also the LuxTrust assertion's `product_kind`
//! claim), unlink reason `from_device`/`from_portal`/`locked_out`, status `linked`/`unlinked`.

mod enums;
pub mod text;

#[cfg(test)]
mod tests;

use std::fmt;

use chrono::{DateTime, Utc};
use prost_types::Timestamp;

pub use enums::{product_kind_claim, product_kind_from_claim};
pub use text::TextForm;

/// The aggregate types, as events, subjects, guards and consistency tokens name them: the domain
/// aggregates' `TYPE`, so they cannot drift.
pub mod aggregate {
    use cqrs_es::Aggregate;

    /// `account`.
    pub const ACCOUNT: &str = <domain::Account as Aggregate>::TYPE;
    /// `link_qr`.
    pub const LINK_QR: &str = <domain::LinkQr as Aggregate>::TYPE;
    /// `link_attempt`.
    pub const LINK_ATTEMPT: &str = <domain::LinkAttempt as Aggregate>::TYPE;
    /// `device`.
    pub const DEVICE: &str = <domain::Device as Aggregate>::TYPE;
    /// All four.
    pub const ALL: [&str; 4] = [ACCOUNT, LINK_QR, LINK_ATTEMPT, DEVICE];
}

/// A value that names none this build knows (see the module's rule).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unknown {
    /// What it should have named, e.g. `link method`.
    pub what: &'static str,
    /// The value as received: a number, or quoted text.
    pub value: String,
}

impl Unknown {
    /// An unknown (or unspecified) number.
    pub fn number(what: &'static str, raw: i32) -> Self {
        Self {
            what,
            value: raw.to_string(),
        }
    }

    /// Text that names no value.
    pub fn text(what: &'static str, text: &str) -> Self {
        Self {
            what,
            value: format!("{text:?}"),
        }
    }
}

impl fmt::Display for Unknown {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "unknown {}: {}", self.what, self.value)
    }
}

impl std::error::Error for Unknown {}

/// A time as a protobuf timestamp.
pub fn timestamp(at: DateTime<Utc>) -> Timestamp {
    Timestamp {
        seconds: at.timestamp(),
        // Below 2·10⁹ (a leap second is 10⁹ + n), so it always fits.
        nanos: i32::try_from(at.timestamp_subsec_nanos()).unwrap_or(0),
    }
}

/// A protobuf timestamp as a time; `None` if it is out of range (negative nanoseconds, or a
/// time chrono cannot represent).
pub fn datetime(at: &Timestamp) -> Option<DateTime<Utc>> {
    DateTime::from_timestamp(at.seconds, u32::try_from(at.nanos).ok()?)
}
