//! Secrets: bearer tokens (link token, QR payload, device credential) and the secret code.
//!
//! Every bearer token is `<prefix>.<uuid>.<43 base64url characters>`: the uuid names the row,
//! the 256 random bits prove possession. Only SHA-256 of the random part is stored. The secret
//! code is kept as an Argon2id verifier computed with a server-side pepper (`hashing`).

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use sha2::{Digest as _, Sha256};
use subtle::ConstantTimeEq as _;
use uuid::Uuid;

/// The kinds of bearer token, each with its own prefix so one can never pass for another.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TokenKind {
    /// Carries a link attempt through its steps (`lt1.`).
    LinkAttempt,
    /// Encoded in a link QR code (`linkd-qr1.`).
    Qr,
    /// Authenticates a linked device (`dc1.`).
    DeviceCredential,
}

impl TokenKind {
    fn prefix(self) -> &'static str {
        match self {
            Self::LinkAttempt => "lt1",
            Self::Qr => "linkd-qr1",
            Self::DeviceCredential => "dc1",
        }
    }

    /// The `bearer_tokens.kind` value for the kinds stored there.
    pub(crate) fn table_kind(self) -> &'static str {
        match self {
            Self::LinkAttempt => "link_attempt",
            Self::Qr => "qr",
            Self::DeviceCredential => "device_credential",
        }
    }
}

/// A freshly minted token: the text for the client and the hash to store.
pub(crate) struct MintedToken {
    /// What the client receives (never stored, never logged).
    pub(crate) text: String,
    /// SHA-256 of the random part.
    pub(crate) hash: Vec<u8>,
}

impl std::fmt::Debug for MintedToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MintedToken(***)")
    }
}

/// A token parsed from client input; its secret part is only ever hashed.
pub(crate) struct PresentedToken {
    /// The row it names.
    pub(crate) id: Uuid,
    secret: Vec<u8>,
}

impl std::fmt::Debug for PresentedToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PresentedToken({}, ***)", self.id)
    }
}

impl PresentedToken {
    /// Whether the token's secret hashes to `stored_hash` (constant time).
    pub(crate) fn matches(&self, stored_hash: &[u8]) -> bool {
        bool::from(sha256(&self.secret).as_slice().ct_eq(stored_hash))
    }
}

/// Random bytes from the operating system's generator. Without one, nothing secret can be made,
/// so failing to reach it is fatal.
#[allow(clippy::expect_used)]
fn random_bytes<const N: usize>() -> [u8; N] {
    let mut bytes = [0u8; N];
    getrandom::fill(&mut bytes).expect("the operating system's random generator is unavailable");
    bytes
}

/// Random text for values that are not secrets but must not be guessable (the LuxTrust nonce).
pub(crate) fn random_nonce() -> String {
    URL_SAFE_NO_PAD.encode(random_bytes::<16>())
}

/// SHA-256.
pub(crate) fn sha256(data: &[u8]) -> Vec<u8> {
    Sha256::digest(data).to_vec()
}

/// HMAC-SHA-256 of length-prefixed `parts` under `key`.
pub(crate) fn hmac_parts(key: &[u8], parts: &[&[u8]]) -> Vec<u8> {
    use hmac::Mac as _;
    let Ok(mut hmac) = hmac::Hmac::<Sha256>::new_from_slice(key) else {
        // HMAC takes keys of any length; this branch is unreachable.
        return Vec::new();
    };
    for part in parts {
        hmac.update(&(part.len() as u64).to_be_bytes());
        hmac.update(part);
    }
    hmac.finalize().into_bytes().to_vec()
}

/// Mints a token of `kind` naming `id`.
pub(crate) fn mint(kind: TokenKind, id: Uuid) -> MintedToken {
    let secret = random_bytes::<32>();
    MintedToken {
        text: format!("{}.{id}.{}", kind.prefix(), URL_SAFE_NO_PAD.encode(secret)),
        hash: sha256(&secret),
    }
}

/// Parses a token of `kind`; `None` if it is not one (wrong prefix, id or length). Only the
/// form [`mint`] writes is accepted (a lowercase hyphenated id; base64url without padding or
/// stray bits): one token, one spelling, so nothing keyed by its text can be sidestepped by
/// writing it another way (fuzzing found upper-case and braced ids accepted).
pub(crate) fn parse(kind: TokenKind, text: &str) -> Option<PresentedToken> {
    let rest = text.strip_prefix(kind.prefix())?.strip_prefix('.')?;
    let (id_text, secret) = rest.split_once('.')?;
    let id = Uuid::try_parse(id_text)
        .ok()
        .filter(|id| id.hyphenated().to_string() == id_text)?;
    let secret = URL_SAFE_NO_PAD
        .decode(secret)
        .ok()
        .filter(|bytes| bytes.len() == 32)?;
    Some(PresentedToken { id, secret })
}

/// Why a secret code was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum SecretCodeError {
    /// Not exactly 6 ASCII digits.
    #[error("secret_code must be exactly 6 digits (0-9)")]
    NotSixDigits,
    /// All the same digit, or a straight run.
    #[error(
        "secret_code is too easy to guess: choose one that is not a repeated digit or a run such as 123456 or 654321"
    )]
    TooWeak,
}

/// A secret code as the holder typed it, its format checked; it never prints.
#[derive(Clone)]
pub(crate) struct SecretCode(String);

impl SecretCode {
    /// A new code to set: 6 digits, not a repeated digit or a straight run.
    pub(crate) fn new_code(raw: &str) -> Result<Self, SecretCodeError> {
        check_new_code(raw)?;
        Ok(Self(raw.to_owned()))
    }

    /// A code typed to unlock the app: 6 digits.
    pub(crate) fn typed(raw: &str) -> Result<Self, SecretCodeError> {
        check_code_format(raw)?;
        Ok(Self(raw.to_owned()))
    }

    /// The digits.
    pub(crate) fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for SecretCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SecretCode(***)")
    }
}

/// Checks the format of a code typed to unlock the app: exactly 6 ASCII digits.
fn check_code_format(code: &str) -> Result<(), SecretCodeError> {
    if code.len() == 6 && code.bytes().all(|b| b.is_ascii_digit()) {
        Ok(())
    } else {
        Err(SecretCodeError::NotSixDigits)
    }
}

/// Checks a new secret code: 6 digits, not all equal, not an ascending or descending run.
fn check_new_code(code: &str) -> Result<(), SecretCodeError> {
    check_code_format(code)?;
    let digits: Vec<i16> = code.bytes().map(|b| i16::from(b - b'0')).collect();
    let steps: Vec<i16> = digits.windows(2).map(|pair| pair[1] - pair[0]).collect();
    if steps.iter().all(|step| *step == 0)
        || steps.iter().all(|step| *step == 1)
        || steps.iter().all(|step| *step == -1)
    {
        return Err(SecretCodeError::TooWeak);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_is_accepted_in_the_one_spelling_it_was_minted_in() {
        // Found by fuzzing (src/fuzz.rs): the id was read in any form the uuid crate reads.
        let id = Uuid::new_v4();
        let minted = mint(TokenKind::DeviceCredential, id);
        assert!(parse(TokenKind::DeviceCredential, &minted.text).is_some());
        let hyphenated = id.hyphenated().to_string();
        for alias in [
            hyphenated.to_uppercase(),
            id.simple().to_string(),
            id.braced().to_string(),
            id.urn().to_string(),
        ] {
            let text = minted.text.replacen(&hyphenated, &alias, 1);
            assert!(
                parse(TokenKind::DeviceCredential, &text).is_none(),
                "{text} accepted"
            );
        }
    }

    #[test]
    fn a_minted_token_parses_back_and_matches_its_hash() {
        let id = Uuid::from_u128(42);
        let token = mint(TokenKind::Qr, id);
        let presented = parse(TokenKind::Qr, &token.text).unwrap();
        assert_eq!(presented.id, id);
        assert!(presented.matches(&token.hash));
        assert!(!presented.matches(&mint(TokenKind::Qr, id).hash));
    }

    #[test]
    fn minted_tokens_of_one_id_are_unrelated() {
        let id = Uuid::from_u128(5);
        let (first, second) = (
            mint(TokenKind::DeviceCredential, id),
            mint(TokenKind::DeviceCredential, id),
        );
        assert_ne!(first.text, second.text);
        assert_ne!(first.hash, second.hash);
        let parsed = parse(TokenKind::DeviceCredential, &first.text).unwrap();
        assert!(!parsed.matches(&second.hash));
    }

    #[test]
    fn a_token_of_one_kind_does_not_parse_as_another() {
        let token = mint(TokenKind::LinkAttempt, Uuid::from_u128(1));
        let parsed = parse(TokenKind::DeviceCredential, &token.text);
        assert!(parsed.is_none(), "{parsed:?}");
    }

    #[test]
    fn garbage_is_not_a_token() {
        for text in [
            "",
            "lt1",
            "lt1.",
            "lt1.not-a-uuid.AAAA",
            "lt1.00000000-0000-0000-0000-000000000001.short",
        ] {
            let parsed = parse(TokenKind::LinkAttempt, text);
            assert!(parsed.is_none(), "{text}: {parsed:?}");
        }
    }

    #[test]
    fn a_secret_code_is_exactly_six_ascii_digits() {
        assert_eq!(check_new_code("12a456"), Err(SecretCodeError::NotSixDigits));
        assert_eq!(
            check_new_code("1234567"),
            Err(SecretCodeError::NotSixDigits)
        );
        assert_eq!(check_new_code("12345"), Err(SecretCodeError::NotSixDigits));
        assert_eq!(
            check_new_code("１２３４５６"),
            Err(SecretCodeError::NotSixDigits)
        );
        assert_eq!(check_new_code("482913"), Ok(()));
    }

    #[test]
    fn repeated_digits_and_straight_runs_are_refused() {
        for weak in ["000000", "777777", "123456", "654321", "345678", "987654"] {
            assert_eq!(
                check_new_code(weak),
                Err(SecretCodeError::TooWeak),
                "{weak}"
            );
        }
        assert_eq!(check_new_code("123457"), Ok(()));
    }
}
