//! What arrives without a login, fed anything (issue 17, point 6; proptest on stable): request
//! fields and bearer tokens are refused with an `INVALID_ARGUMENT` a client can act on, never a
//! panic; a refusal echoes at most a short, escaped prefix of the input; what is accepted obeys
//! the documented rules; and a token changed anywhere no longer proves possession.

use proptest::prelude::*;

use crate::error::CommandError;
use crate::secrets::{self, TokenKind};
use crate::validate;

/// `PROPTEST_CASES` if set (a longer run), else `default` (the suite's).
fn cases(default: u32) -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|cases| cases.parse().ok())
        .unwrap_or(default)
}

/// A refusal fit for a client: INVALID_ARGUMENT, bounded (what it echoes of the input is at
/// most 40 characters, each escaped to at most 10), no raw control characters.
fn refusal_is_fit(refused: &CommandError) -> Result<(), TestCaseError> {
    let CommandError::InvalidArgument(message) = refused else {
        return Err(TestCaseError::fail(format!(
            "not INVALID_ARGUMENT: {refused:?}"
        )));
    };
    prop_assert!(
        message.chars().count() <= 600,
        "{} characters",
        message.len()
    );
    prop_assert!(!message.chars().any(char::is_control), "{message:?}");
    Ok(())
}

/// Strings a client could send: any text, and near misses of the valid forms.
fn input() -> impl Strategy<Value = String> {
    prop_oneof![
        ".{0,300}",
        "[a-zA-Z0-9._@:+ -]{0,80}",
        "[0-9a-f-]{30,40}",
        "(lt1|dc1|linkd-qr1)\\.[0-9a-fA-F-]{36}\\.[A-Za-z0-9_-]{40,46}",
        any::<Vec<u8>>().prop_map(|bytes| String::from_utf8_lossy(&bytes).into_owned()),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(2048), failure_persistence: None,
        ..ProptestConfig::default() })]

    #[test]
    fn request_fields_are_read_or_refused_fitly(raw in input(), number in any::<i32>()) {
        if let Ok(account) = validate::account_id(&raw) {
            let text = account.to_string();
            prop_assert!((1..=64).contains(&text.len()));
            prop_assert!(text.chars().all(|c| c.is_ascii_alphanumeric() || "._-@:".contains(c)));
        }
        for refused in [
            validate::account_id(&raw).err(),
            validate::email(&raw).err(),
            validate::language(&raw).err(),
            validate::serial(&raw).err(),
            validate::device_id("device_id", &raw).err(),
            validate::device_name(&raw).err(),
            validate::app_version(&raw).err(),
            validate::qr_id(&raw).err(),
            validate::matching_code(&raw).err(),
            validate::ip_address("client_address", &raw).err(),
            validate::device_model(&raw).err(),
            validate::method(number).err(),
            validate::platform(number).err(),
        ]
        .into_iter()
        .flatten()
        {
            refusal_is_fit(&refused)?;
        }
        if let Ok(email) = validate::email(&raw) {
            prop_assert!(email.contains('@') && !email.chars().any(char::is_whitespace));
        }
        if let Ok(code) = validate::matching_code(&raw) {
            prop_assert!(code.len() == 2 && code.bytes().all(|b| b.is_ascii_digit()));
        }
        if let Ok(name) = validate::device_name(&raw) {
            prop_assert!(!name.as_str().chars().any(char::is_control));
        }
    }

    #[test]
    fn a_bearer_token_of_one_kind_never_parses_as_another_nor_changed(
        raw in input(),
        at in any::<prop::sample::Index>(),
        replacement in "[A-Za-z0-9._-]",
    ) {
        for kind in [TokenKind::LinkAttempt, TokenKind::Qr, TokenKind::DeviceCredential] {
            let _ = secrets::parse(kind, &raw);
            let minted = secrets::mint(kind, uuid::Uuid::new_v4());
            let presented = secrets::parse(kind, &minted.text).unwrap();
            prop_assert!(presented.matches(&minted.hash));
            for other in [TokenKind::LinkAttempt, TokenKind::Qr, TokenKind::DeviceCredential] {
                if other != kind {
                    prop_assert!(secrets::parse(other, &minted.text).is_none());
                }
            }
            // Another spelling of the same token is not accepted.
            let upper = minted.text.replacen(&presented.id.to_string(),
                &presented.id.to_string().to_uppercase(), 1);
            prop_assert!(upper == minted.text || secrets::parse(kind, &upper).is_none());
            // One character changed: refused, or (the id changed) naming another row, or no
            // longer matching the stored hash.
            let mut changed: Vec<char> = minted.text.chars().collect();
            let index = at.index(changed.len());
            let mut replacement = replacement.chars().next().unwrap();
            if changed[index] == replacement {
                // A change, not a rejected case (too many of those abort a long run).
                replacement = if replacement == 'A' { 'B' } else { 'A' };
            }
            changed[index] = replacement;
            let changed: String = changed.into_iter().collect();
            if let Some(parsed) = secrets::parse(kind, &changed) {
                prop_assert!(
                    parsed.id != presented.id || !parsed.matches(&minted.hash),
                    "{changed} still proves {}", minted.text
                );
            }
        }
    }

    #[test]
    fn secret_codes_are_six_digits_and_never_trivial(raw in "[0-9]{0,8}|.{0,10}") {
        if let Ok(code) = secrets::SecretCode::new_code(&raw) {
            let digits = code.as_str().as_bytes();
            prop_assert!(digits.len() == 6 && digits.iter().all(u8::is_ascii_digit));
            prop_assert!(digits.iter().any(|d| *d != digits[0]), "a repeated digit");
        }
        if secrets::SecretCode::typed(&raw).is_ok() {
            prop_assert!(raw.len() == 6 && raw.bytes().all(|b| b.is_ascii_digit()));
        }
    }
}
