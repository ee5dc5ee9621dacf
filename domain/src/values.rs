//! Value types shared by the aggregates.

use serde::{Deserialize, Serialize};

/// How the app proves which account it links to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum LinkMethod {
    /// By scanning a QR code shown in a logged-in browser session.
    Qr,
    /// By authenticating with a LuxTrust product the account already used to log in.
    LuxTrust,
}

/// The kinds of LuxTrust product that can link a device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum ProductKind {
    /// LuxTrust Mobile (the app).
    Mobile,
    /// LuxTrust Scan (the hardware reader).
    Scan,
}

/// One LuxTrust product, named by kind and serial number.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct LuxTrustProduct {
    /// Mobile or Scan.
    pub kind: ProductKind,
    /// The product's serial number as LuxTrust reports it.
    pub serial: String,
}

/// The mobile operating system of a device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Platform {
    /// Apple iOS / iPadOS.
    Ios,
    /// Google Android.
    Android,
}

/// Why a device stopped being linked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum UnlinkReason {
    /// The app on the device asked to be unlinked.
    FromDevice,
    /// The account holder unlinked it from the portal (for example a lost or stolen phone).
    FromPortal,
    /// Too many consecutive wrong secret codes.
    LockedOut,
    /// The help desk revoked every device of the account (the portal back end, for a holder who
    /// reported a compromise).
    HelpDesk,
    /// Unused for the configured period, after a warning.
    Inactive,
}

/// A device name as the holder typed it: trimmed, 1–64 characters, no control characters.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct DeviceName(String);

/// Why a device name was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DeviceNameError {
    /// Nothing left after trimming.
    #[error("device name must not be empty")]
    Empty,
    /// More than [`DeviceName::MAX_CHARS`] characters after trimming.
    #[error("device name must be at most 64 characters, got {0}")]
    TooLong(usize),
    /// A control character (newline, tab, escape …) anywhere in the name.
    #[error("device name must not contain control characters")]
    ControlCharacter,
    /// An invisible formatting character (zero-width space, bidirectional override, line or
    /// paragraph separator …), which could disguise the name shown to the holder.
    #[error("device name must not contain invisible or text-direction characters")]
    InvisibleCharacter,
}

/// Unicode format characters (category Cf) and line/paragraph separators (Zl, Zp) that are
/// invisible or change text direction.
fn is_invisible(c: char) -> bool {
    matches!(c,
        '\u{00AD}' | '\u{061C}' | '\u{180E}' | '\u{200B}'..='\u{200F}' | '\u{2028}'..='\u{202E}'
        | '\u{2060}'..='\u{206F}' | '\u{FEFF}' | '\u{FFF9}'..='\u{FFFB}'
        | '\u{E0000}'..='\u{E007F}')
}

impl DeviceName {
    /// The longest name accepted, in characters (Unicode scalar values).
    pub const MAX_CHARS: usize = 64;

    /// Trims the input and checks it.
    pub fn parse(raw: &str) -> Result<Self, DeviceNameError> {
        let trimmed = raw.trim();
        if trimmed.is_empty() {
            return Err(DeviceNameError::Empty);
        }
        if trimmed.chars().any(char::is_control) {
            return Err(DeviceNameError::ControlCharacter);
        }
        if trimmed.chars().any(is_invisible) {
            return Err(DeviceNameError::InvisibleCharacter);
        }
        let count = trimmed.chars().count();
        if count > Self::MAX_CHARS {
            return Err(DeviceNameError::TooLong(count));
        }
        Ok(Self(trimmed.to_owned()))
    }

    /// The name as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_device_name_is_trimmed() {
        assert_eq!(
            DeviceName::parse("  Anna's phone \n").unwrap().as_str(),
            "Anna's phone"
        );
    }

    #[test]
    fn a_device_name_must_not_be_empty_or_blank() {
        assert_eq!(DeviceName::parse(""), Err(DeviceNameError::Empty));
        assert_eq!(DeviceName::parse(" \t "), Err(DeviceNameError::Empty));
    }

    #[test]
    fn a_device_name_has_at_most_64_characters() {
        assert!(DeviceName::parse(&"é".repeat(64)).is_ok());
        assert_eq!(
            DeviceName::parse(&"a".repeat(65)),
            Err(DeviceNameError::TooLong(65))
        );
    }

    #[test]
    fn a_device_name_has_no_invisible_or_direction_characters() {
        for name in [
            "\u{200B}",
            "evil\u{202E}gnp.exe",
            "a\u{2028}b",
            "\u{FEFF}phone",
        ] {
            assert_eq!(
                DeviceName::parse(name),
                Err(DeviceNameError::InvisibleCharacter),
                "{name:?}"
            );
        }
        assert!(DeviceName::parse("Téléphone d'Anna – 2").is_ok());
    }

    #[test]
    fn a_device_name_has_no_control_characters() {
        assert_eq!(
            DeviceName::parse("my\u{7}phone"),
            Err(DeviceNameError::ControlCharacter)
        );
        assert_eq!(
            DeviceName::parse("my\nphone"),
            Err(DeviceNameError::ControlCharacter)
        );
    }
}
