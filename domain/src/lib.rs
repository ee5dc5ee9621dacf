//! The ubiquitous language of linkd: linking a citizen's mobile device to their portal account.
//!
//! Four aggregates, each short-lived or small so that no snapshot is ever needed (DESIGN §5):
//! - [`Account`]: a portal account, registered by the portal (R1), and the LuxTrust products its
//!   holder has used to log in (R2).
//! - [`LinkQr`]: one QR code shown in a browser session; it links at most one device and expires (R3).
//! - [`LinkAttempt`]: one run of the app's linking flow, from `StartLink` to the secret code (R4).
//! - [`Device`]: one app installation; linked to at most one account at a time (R5), unlinked from
//!   the portal, from itself, or after too many wrong secret codes (R8).
//!
//! This crate decides and never performs I/O: no clock, no randomness, no database. Time and
//! identifiers arrive on the commands; secrets never enter it (the service keeps their hashes).

mod account;
mod device;
mod ids;
mod link_attempt;
mod link_qr;
pub mod upcast;
mod values;

pub use account::{Account, AccountCommand, AccountError, AccountEvent};
pub use device::{Device, DeviceCommand, DeviceError, DeviceEvent, MAX_SECRET_CODE_FAILURES};
pub use ids::{AccountId, DeviceId, LinkAttemptId, NotAnAccountId, QrId};
pub use link_attempt::{
    Confirmation, DeclineReason, LinkAttempt, LinkAttemptCommand, LinkAttemptError,
    LinkAttemptEvent, ReadyToLink, ScannedBy,
};
pub use link_qr::{LinkQr, LinkQrCommand, LinkQrError, LinkQrEvent, QrProgress};
pub use values::{
    DeviceName, DeviceNameError, LinkMethod, LuxTrustProduct, Platform, ProductKind, UnlinkReason,
};
