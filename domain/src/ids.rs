//! Identifiers. They arrive on commands; the domain never creates one.

use std::fmt;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// A portal account, identified by the identity provider's subject (`sub`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct AccountId(pub String);

/// One installation of the mobile app, identified by a UUID the app generates when installed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct DeviceId(pub Uuid);

/// One run of the app's linking flow (also the identity of the link it completes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct LinkAttemptId(pub Uuid);

/// One QR code issued to a browser session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct QrId(pub Uuid);

/// Why a text is not an account id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("an account id is 1 to 64 characters from A-Z a-z 0-9 . _ - @ :")]
pub struct NotAnAccountId;

impl AccountId {
    /// The longest account id, in bytes (all its characters are ASCII).
    pub const MAX_LEN: usize = 64;

    /// An account id as the identity provider issues them: 1 to 64 characters from
    /// `A-Z a-z 0-9 . _ - @ :` (so no control character, NUL included, and nothing a database
    /// or a log could misread).
    pub fn parse(raw: &str) -> Result<Self, NotAnAccountId> {
        let allowed = |c: char| c.is_ascii_alphanumeric() || "._-@:".contains(c);
        if raw.is_empty() || raw.len() > Self::MAX_LEN || !raw.chars().all(allowed) {
            return Err(NotAnAccountId);
        }
        Ok(Self(raw.to_owned()))
    }
}

impl fmt::Display for AccountId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

macro_rules! display_uuid {
    ($($ty:ty),*) => {$(
        impl fmt::Display for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.fmt(f)
            }
        }
    )*};
}
display_uuid!(DeviceId, LinkAttemptId, QrId);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_account_id_is_a_short_plain_token() {
        assert_eq!(
            AccountId::parse("anna.muller@guichet:42"),
            Ok(AccountId("anna.muller@guichet:42".into()))
        );
        for bad in [
            "",
            "has space",
            "an\0na",
            "line\nbreak",
            "é",
            &"a".repeat(65),
        ] {
            assert_eq!(AccountId::parse(bad), Err(NotAnAccountId), "{bad:?}");
        }
        assert!(AccountId::parse(&"a".repeat(64)).is_ok());
    }
}
