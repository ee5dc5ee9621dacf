//! Domain ↔ `linking.v1` for the enums: `From` the domain (every domain value is known), and
//! `TryFrom` back (`*_UNSPECIFIED` is [`Unknown`]). Also the LuxTrust assertion's claim.

use super::Unknown;
use super::text::{self, TextForm as _};
use crate::v1;

/// `*_UNSPECIFIED` where a domain value is needed.
fn unspecified<P: super::TextForm>() -> Unknown {
    Unknown::number(P::WHAT, 0)
}

impl From<domain::LinkMethod> for v1::LinkMethod {
    fn from(value: domain::LinkMethod) -> Self {
        match value {
            domain::LinkMethod::Qr => Self::Qr,
            domain::LinkMethod::LuxTrust => Self::Luxtrust,
        }
    }
}

impl TryFrom<v1::LinkMethod> for domain::LinkMethod {
    type Error = Unknown;

    fn try_from(value: v1::LinkMethod) -> Result<Self, Unknown> {
        match value {
            v1::LinkMethod::Qr => Ok(Self::Qr),
            v1::LinkMethod::Luxtrust => Ok(Self::LuxTrust),
            v1::LinkMethod::Unspecified => Err(unspecified::<v1::LinkMethod>()),
        }
    }
}

impl From<domain::Platform> for v1::Platform {
    fn from(value: domain::Platform) -> Self {
        match value {
            domain::Platform::Ios => Self::Ios,
            domain::Platform::Android => Self::Android,
        }
    }
}

impl TryFrom<v1::Platform> for domain::Platform {
    type Error = Unknown;

    fn try_from(value: v1::Platform) -> Result<Self, Unknown> {
        match value {
            v1::Platform::Ios => Ok(Self::Ios),
            v1::Platform::Android => Ok(Self::Android),
            v1::Platform::Unspecified => Err(unspecified::<v1::Platform>()),
        }
    }
}

impl From<domain::ProductKind> for v1::ProductKind {
    fn from(value: domain::ProductKind) -> Self {
        match value {
            domain::ProductKind::Mobile => Self::LuxtrustMobile,
            domain::ProductKind::Scan => Self::LuxtrustScan,
        }
    }
}

impl TryFrom<v1::ProductKind> for domain::ProductKind {
    type Error = Unknown;

    fn try_from(value: v1::ProductKind) -> Result<Self, Unknown> {
        match value {
            v1::ProductKind::LuxtrustMobile => Ok(Self::Mobile),
            v1::ProductKind::LuxtrustScan => Ok(Self::Scan),
            v1::ProductKind::Unspecified => Err(unspecified::<v1::ProductKind>()),
        }
    }
}

impl From<domain::LuxTrustProduct> for v1::LuxTrustProduct {
    fn from(value: domain::LuxTrustProduct) -> Self {
        Self {
            kind: v1::ProductKind::from(value.kind).into(),
            serial: value.serial,
        }
    }
}

impl From<domain::UnlinkReason> for v1::UnlinkReason {
    fn from(value: domain::UnlinkReason) -> Self {
        match value {
            domain::UnlinkReason::FromDevice => Self::FromDevice,
            domain::UnlinkReason::FromPortal => Self::FromPortal,
            domain::UnlinkReason::LockedOut => Self::LockedOut,
            domain::UnlinkReason::HelpDesk => Self::HelpDesk,
            domain::UnlinkReason::Inactive => Self::Inactive,
        }
    }
}

impl TryFrom<v1::UnlinkReason> for domain::UnlinkReason {
    type Error = Unknown;

    fn try_from(value: v1::UnlinkReason) -> Result<Self, Unknown> {
        match value {
            v1::UnlinkReason::FromDevice => Ok(Self::FromDevice),
            v1::UnlinkReason::FromPortal => Ok(Self::FromPortal),
            v1::UnlinkReason::LockedOut => Ok(Self::LockedOut),
            v1::UnlinkReason::HelpDesk => Ok(Self::HelpDesk),
            v1::UnlinkReason::Inactive => Ok(Self::Inactive),
            v1::UnlinkReason::Unspecified => Err(unspecified::<v1::UnlinkReason>()),
        }
    }
}

impl From<domain::DeclineReason> for v1::DeclineReason {
    fn from(value: domain::DeclineReason) -> Self {
        match value {
            domain::DeclineReason::ByHolder => Self::ByHolder,
            domain::DeclineReason::WrongMatchingCode => Self::WrongMatchingCode,
        }
    }
}

impl TryFrom<v1::DeclineReason> for domain::DeclineReason {
    type Error = Unknown;

    fn try_from(value: v1::DeclineReason) -> Result<Self, Unknown> {
        match value {
            v1::DeclineReason::ByHolder => Ok(Self::ByHolder),
            v1::DeclineReason::WrongMatchingCode => Ok(Self::WrongMatchingCode),
            v1::DeclineReason::Unspecified => Err(unspecified::<v1::DeclineReason>()),
        }
    }
}

/// The LuxTrust assertion's `product_kind` claim for `kind` (the text form: `mobile`, `scan`).
pub fn product_kind_claim(kind: domain::ProductKind) -> &'static str {
    match kind {
        domain::ProductKind::Mobile => text::MOBILE,
        domain::ProductKind::Scan => text::SCAN,
    }
}

/// The product kind a LuxTrust assertion's `product_kind` claim names.
pub fn product_kind_from_claim(claim: &str) -> Result<domain::ProductKind, Unknown> {
    v1::ProductKind::from_text(claim).and_then(domain::ProductKind::try_from)
}
