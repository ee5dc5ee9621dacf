//! `linking.v1` enums ↔ the text read models and audit details store. Stored: never change a
//! text. Each `text` match is exhaustive, so a new value does not compile until it has one.

use super::Unknown;
use crate::v1;

/// [`crate::v1::LinkMethod::Qr`].
pub const QR: &str = "qr";
/// [`crate::v1::LinkMethod::Luxtrust`].
pub const LUXTRUST: &str = "luxtrust";
/// [`crate::v1::Platform::Ios`].
pub const IOS: &str = "ios";
/// [`crate::v1::Platform::Android`].
pub const ANDROID: &str = "android";
/// [`crate::v1::ProductKind::LuxtrustMobile`]; also the LuxTrust assertion's claim.
pub const MOBILE: &str = "mobile";
/// [`crate::v1::ProductKind::LuxtrustScan`]; also the LuxTrust assertion's claim.
pub const SCAN: &str = "scan";
/// [`crate::v1::UnlinkReason::FromDevice`].
pub const FROM_DEVICE: &str = "from_device";
/// [`crate::v1::UnlinkReason::FromPortal`].
pub const FROM_PORTAL: &str = "from_portal";
/// [`crate::v1::UnlinkReason::LockedOut`].
pub const LOCKED_OUT: &str = "locked_out";
/// [`crate::v1::UnlinkReason::HelpDesk`].
pub const HELP_DESK: &str = "help_desk";
/// [`crate::v1::UnlinkReason::Inactive`].
pub const INACTIVE: &str = "inactive";
/// [`crate::v1::DeclineReason::ByHolder`].
pub const BY_HOLDER: &str = "by_holder";
/// [`crate::v1::DeclineReason::WrongMatchingCode`].
pub const WRONG_MATCHING_CODE: &str = "wrong_matching_code";
/// [`crate::v1::DeviceStatus::Linked`].
pub const LINKED: &str = "linked";
/// [`crate::v1::DeviceStatus::Unlinked`].
pub const UNLINKED: &str = "unlinked";

/// A `linking.v1` enum with a text form. Wire numbers arrive as `i32`; `0` is `*_UNSPECIFIED`
/// for every one of them, and unknown (see the module's rule).
pub trait TextForm: Copy + PartialEq + TryFrom<i32> + Into<i32> {
    /// What it names, for messages: `link method`.
    const WHAT: &'static str;

    /// The text of a known value; `None` for `*_UNSPECIFIED`.
    fn text(self) -> Option<&'static str>;

    /// The known value `text` names.
    fn from_text(text: &str) -> Result<Self, Unknown>;

    /// The known value a wire number names (never `*_UNSPECIFIED`).
    fn known(raw: i32) -> Result<Self, Unknown> {
        match Self::try_from(raw) {
            Ok(value) if value.text().is_some() => Ok(value),
            Ok(_) | Err(_) => Err(Unknown::number(Self::WHAT, raw)),
        }
    }

    /// The text of the known value a wire number names.
    fn text_of(raw: i32) -> Result<&'static str, Unknown> {
        Self::known(raw)?
            .text()
            .ok_or_else(|| Unknown::number(Self::WHAT, raw))
    }

    /// The wire number to answer for a stored text: `*_UNSPECIFIED` (0) if it names no value.
    fn answer(text: &str) -> i32 {
        Self::from_text(text).map_or(0, Into::into)
    }
}

impl TextForm for v1::LinkMethod {
    const WHAT: &'static str = "link method";

    fn text(self) -> Option<&'static str> {
        match self {
            Self::Qr => Some(QR),
            Self::Luxtrust => Some(LUXTRUST),
            Self::Unspecified => None,
        }
    }

    fn from_text(value: &str) -> Result<Self, Unknown> {
        match value {
            QR => Ok(Self::Qr),
            LUXTRUST => Ok(Self::Luxtrust),
            other => Err(Unknown::text(Self::WHAT, other)),
        }
    }
}

impl TextForm for v1::Platform {
    const WHAT: &'static str = "platform";

    fn text(self) -> Option<&'static str> {
        match self {
            Self::Ios => Some(IOS),
            Self::Android => Some(ANDROID),
            Self::Unspecified => None,
        }
    }

    fn from_text(value: &str) -> Result<Self, Unknown> {
        match value {
            IOS => Ok(Self::Ios),
            ANDROID => Ok(Self::Android),
            other => Err(Unknown::text(Self::WHAT, other)),
        }
    }
}

impl TextForm for v1::ProductKind {
    const WHAT: &'static str = "product kind";

    fn text(self) -> Option<&'static str> {
        match self {
            Self::LuxtrustMobile => Some(MOBILE),
            Self::LuxtrustScan => Some(SCAN),
            Self::Unspecified => None,
        }
    }

    fn from_text(value: &str) -> Result<Self, Unknown> {
        match value {
            MOBILE => Ok(Self::LuxtrustMobile),
            SCAN => Ok(Self::LuxtrustScan),
            other => Err(Unknown::text(Self::WHAT, other)),
        }
    }
}

impl TextForm for v1::UnlinkReason {
    const WHAT: &'static str = "unlink reason";

    fn text(self) -> Option<&'static str> {
        match self {
            Self::FromDevice => Some(FROM_DEVICE),
            Self::FromPortal => Some(FROM_PORTAL),
            Self::LockedOut => Some(LOCKED_OUT),
            Self::HelpDesk => Some(HELP_DESK),
            Self::Inactive => Some(INACTIVE),
            Self::Unspecified => None,
        }
    }

    fn from_text(value: &str) -> Result<Self, Unknown> {
        match value {
            FROM_DEVICE => Ok(Self::FromDevice),
            FROM_PORTAL => Ok(Self::FromPortal),
            LOCKED_OUT => Ok(Self::LockedOut),
            HELP_DESK => Ok(Self::HelpDesk),
            INACTIVE => Ok(Self::Inactive),
            other => Err(Unknown::text(Self::WHAT, other)),
        }
    }
}

impl TextForm for v1::DeclineReason {
    const WHAT: &'static str = "decline reason";

    fn text(self) -> Option<&'static str> {
        match self {
            Self::ByHolder => Some(BY_HOLDER),
            Self::WrongMatchingCode => Some(WRONG_MATCHING_CODE),
            Self::Unspecified => None,
        }
    }

    fn from_text(value: &str) -> Result<Self, Unknown> {
        match value {
            BY_HOLDER => Ok(Self::ByHolder),
            WRONG_MATCHING_CODE => Ok(Self::WrongMatchingCode),
            other => Err(Unknown::text(Self::WHAT, other)),
        }
    }
}

impl TextForm for v1::DeviceStatus {
    const WHAT: &'static str = "device status";

    fn text(self) -> Option<&'static str> {
        match self {
            Self::Linked => Some(LINKED),
            Self::Unlinked => Some(UNLINKED),
            Self::Unspecified => None,
        }
    }

    fn from_text(value: &str) -> Result<Self, Unknown> {
        match value {
            LINKED => Ok(Self::Linked),
            UNLINKED => Ok(Self::Unlinked),
            other => Err(Unknown::text(Self::WHAT, other)),
        }
    }
}
