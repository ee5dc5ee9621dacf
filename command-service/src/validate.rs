//! Checks every request field at the edge, before anything is read or written.

use std::net::IpAddr;

use domain::{
    AccountId, DeviceId, DeviceName, LinkMethod, LuxTrustProduct, Platform, ProductKind, QrId,
};
use proto::convert::TextForm as _;
use proto::v1;
use uuid::Uuid;

use crate::error::CommandError;

fn invalid(message: impl Into<String>) -> CommandError {
    CommandError::InvalidArgument(message.into())
}

fn is_token_char(c: char, extra: &str) -> bool {
    c.is_ascii_alphanumeric() || extra.contains(c)
}

/// An account id (`domain::AccountId::parse`): 1–64 characters from `A-Z a-z 0-9 . _ - @ :`.
pub(crate) fn account_id(raw: &str) -> Result<AccountId, CommandError> {
    AccountId::parse(raw)
        .map_err(|_| invalid("account_id must be 1 to 64 characters from A-Z a-z 0-9 . _ - @ :"))
}

/// An email address: one `@` with text on both sides, no spaces or control characters.
pub(crate) fn email(raw: &str) -> Result<String, CommandError> {
    let valid = raw.len() <= 254
        && !raw.chars().any(|c| c.is_whitespace() || c.is_control())
        && matches!(raw.split_once('@'), Some((local, domain))
            if !local.is_empty() && domain.contains('.') && !domain.contains('@')
            && !domain.starts_with('.') && !domain.ends_with('.'));
    if !valid {
        return Err(invalid(
            "email must be an address like name@example.lu (at most 254 characters)",
        ));
    }
    Ok(raw.to_owned())
}

/// A language for emails: `en`, `fr` or `de`; empty means `en`.
pub(crate) fn language(raw: &str) -> Result<String, CommandError> {
    match raw {
        "" => Ok("en".into()),
        "en" | "fr" | "de" => Ok(raw.to_owned()),
        _ => Err(invalid("language must be en, fr or de (or empty for en)")),
    }
}

/// A LuxTrust product: a known kind and a serial of 1–64 characters from `A-Z a-z 0-9 . _ -`.
pub(crate) fn product(raw: Option<&v1::LuxTrustProduct>) -> Result<LuxTrustProduct, CommandError> {
    let raw = raw.ok_or_else(|| invalid("product is required"))?;
    let kind = v1::ProductKind::known(raw.kind)
        .and_then(ProductKind::try_from)
        .map_err(|_| {
            invalid(format!(
                "product.kind must be PRODUCT_KIND_LUXTRUST_MOBILE or PRODUCT_KIND_LUXTRUST_SCAN, got {}",
                raw.kind
            ))
        })?;
    Ok(LuxTrustProduct {
        kind,
        serial: serial(&raw.serial)?,
    })
}

/// A LuxTrust serial number.
pub(crate) fn serial(raw: &str) -> Result<String, CommandError> {
    if raw.is_empty() || raw.len() > 64 || !raw.chars().all(|c| is_token_char(c, "._-")) {
        return Err(invalid(
            "product serial must be 1 to 64 characters from A-Z a-z 0-9 . _ -",
        ));
    }
    Ok(raw.to_owned())
}

/// A device id: a UUID.
pub(crate) fn device_id(field: &str, raw: &str) -> Result<DeviceId, CommandError> {
    Uuid::try_parse(raw)
        .map(DeviceId)
        .map_err(|_| invalid(format!("{field} must be a UUID, got {:?}", truncate(raw))))
}

/// A device name (trimmed, 1–64 characters, no control characters).
pub(crate) fn device_name(raw: &str) -> Result<DeviceName, CommandError> {
    DeviceName::parse(raw).map_err(|refusal| invalid(refusal.to_string()))
}

/// A link method other than unspecified.
pub(crate) fn method(raw: i32) -> Result<LinkMethod, CommandError> {
    v1::LinkMethod::known(raw)
        .and_then(LinkMethod::try_from)
        .map_err(|_| {
            invalid(format!(
                "method must be LINK_METHOD_QR or LINK_METHOD_LUXTRUST, got {raw}"
            ))
        })
}

/// A platform other than unspecified.
pub(crate) fn platform(raw: i32) -> Result<Platform, CommandError> {
    v1::Platform::known(raw)
        .and_then(Platform::try_from)
        .map_err(|_| {
            invalid(format!(
                "platform must be PLATFORM_IOS or PLATFORM_ANDROID, got {raw}"
            ))
        })
}

/// An app version: 1–32 characters from `A-Z a-z 0-9 . + -`.
pub(crate) fn app_version(raw: &str) -> Result<String, CommandError> {
    if raw.is_empty() || raw.len() > 32 || !raw.chars().all(|c| is_token_char(c, ".+-")) {
        return Err(invalid(
            "app_version must be 1 to 32 characters from A-Z a-z 0-9 . + -",
        ));
    }
    Ok(raw.to_owned())
}

/// A QR code's id, as IssueLinkQr returned it (a UUID).
pub(crate) fn qr_id(raw: &str) -> Result<QrId, CommandError> {
    required("qr_id", raw)?;
    Uuid::try_parse(raw)
        .map(QrId)
        .map_err(|_| invalid(format!("qr_id must be a UUID, got {:?}", truncate(raw))))
}

/// A matching code as the holder typed it: two digits (spaces around them ignored).
pub(crate) fn matching_code(raw: &str) -> Result<&str, CommandError> {
    let code = raw.trim();
    if code.len() != 2 || !code.bytes().all(|b| b.is_ascii_digit()) {
        return Err(invalid(
            "matching_code must be the two digits the device shows, e.g. \"47\"",
        ));
    }
    Ok(code)
}

/// An optional IPv4 or IPv6 address (empty: not given).
pub(crate) fn ip_address(field: &str, raw: &str) -> Result<Option<IpAddr>, CommandError> {
    if raw.is_empty() {
        return Ok(None);
    }
    raw.parse().map(Some).map_err(|_| {
        invalid(format!(
            "{field} must be an IPv4 or IPv6 address, got {:?}",
            truncate(raw)
        ))
    })
}

/// An optional device model, by the device name's rules (shown to the holder beside it): at
/// most 64 characters, no control, invisible or direction-changing characters (empty: not
/// given).
pub(crate) fn device_model(raw: &str) -> Result<Option<String>, CommandError> {
    if raw.trim().is_empty() {
        return Ok(None);
    }
    DeviceName::parse(raw)
        .map(|model| Some(model.as_str().to_owned()))
        .map_err(|refusal| {
            invalid(format!(
                "device_model {}",
                refusal.to_string().trim_start_matches("device name ")
            ))
        })
}

/// A required field, present.
pub(crate) fn required<'a>(field: &str, raw: &'a str) -> Result<&'a str, CommandError> {
    if raw.is_empty() {
        return Err(invalid(format!("{field} is required")));
    }
    Ok(raw)
}

fn truncate(raw: &str) -> String {
    raw.chars().take(40).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn account_ids_are_short_plain_tokens() {
        let valid = account_id("anna.muller@guichet:42");
        assert!(valid.is_ok(), "{valid:?}");
        for bad in ["", "has space", &"a".repeat(65)] {
            let parsed = account_id(bad);
            assert!(parsed.is_err(), "{bad}: {parsed:?}");
        }
    }

    #[test]
    fn emails_need_a_local_part_and_a_domain() {
        let valid = email("anna@example.lu");
        assert!(valid.is_ok(), "{valid:?}");
        for bad in [
            "",
            "anna",
            "@example.lu",
            "anna@",
            "anna@lu",
            "an na@example.lu",
            "a@b@c.lu",
        ] {
            let parsed = email(bad);
            assert!(parsed.is_err(), "{bad}: {parsed:?}");
        }
    }

    #[test]
    fn confirmation_fields_are_checked() {
        assert!(qr_id("").is_err());
        assert!(qr_id("not-a-uuid").is_err());
        assert!(qr_id("67e55044-10b1-426f-9247-bb680e5fe0c8").is_ok());
        assert_eq!(matching_code(" 47 ").ok(), Some("47"));
        for bad in ["", "4", "470", "4a", "+4", "٤٧"] {
            assert!(matching_code(bad).is_err(), "{bad}");
        }
        assert_eq!(ip_address("browser_address", "").ok(), Some(None));
        assert!(ip_address("browser_address", "2001:db8::1").is_ok_and(|a| a.is_some()));
        assert!(ip_address("browser_address", "192.0.2.1:80").is_err());
        assert_eq!(device_model(" Pixel 8 ").ok(), Some(Some("Pixel 8".into())));
        assert!(device_model("a\u{0}b").is_err());
        assert!(device_model(&"m".repeat(65)).is_err());
        assert!(
            device_model("Pixel\u{202e}8").is_err(),
            "a direction override"
        );
        assert!(
            device_model("Pixel\u{200b}8").is_err(),
            "a zero-width space"
        );
    }

    #[test]
    fn unknown_enum_values_are_invalid() {
        for raw in [0, 99] {
            let parsed = method(raw);
            assert!(parsed.is_err(), "{raw}: {parsed:?}");
        }
        let parsed = platform(-1);
        assert!(parsed.is_err(), "{parsed:?}");
        let parsed = method(1);
        assert!(parsed.is_ok(), "{parsed:?}");
    }

    #[test]
    fn an_unknown_enum_value_names_the_field_and_the_accepted_values() {
        let message = |refused: CommandError| refused.to_string();
        assert_eq!(
            method(99).map_err(message),
            Err("method must be LINK_METHOD_QR or LINK_METHOD_LUXTRUST, got 99".into())
        );
        assert_eq!(
            platform(0).map_err(message),
            Err("platform must be PLATFORM_IOS or PLATFORM_ANDROID, got 0".into())
        );
        let unspecified = v1::LuxTrustProduct {
            kind: 0,
            serial: "S-1".into(),
        };
        assert_eq!(
            product(Some(&unspecified)).map_err(message),
            Err("product.kind must be PRODUCT_KIND_LUXTRUST_MOBILE or \
                 PRODUCT_KIND_LUXTRUST_SCAN, got 0"
                .into())
        );
    }
}
