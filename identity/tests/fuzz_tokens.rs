//! Portal JWTs and LuxTrust assertions arrive from clients: whatever the bytes, verification
//! refuses, never panics, and a signed token changed in any byte is refused (issue 17, point 6;
//! proptest).
#![allow(
    clippy::unwrap_used,
    reason = "a failed property should fail the test loudly"
)]

use base64::Engine as _;
use ed25519_dalek::pkcs8::spki::der::pem::LineEnding;
use ed25519_dalek::pkcs8::{EncodePrivateKey as _, EncodePublicKey as _};
use identity::{Checks, KeySet, LuxTrustClaims, PortalClaims};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use proptest::prelude::*;

const ISSUER: &str = "https://idp.example.lu";

fn keys() -> (EncodingKey, KeySet) {
    let key = ed25519_dalek::SigningKey::from_bytes(&[7u8; 32]);
    let private = key.to_pkcs8_pem(LineEnding::LF).unwrap();
    let public = key
        .verifying_key()
        .to_public_key_pem(LineEnding::LF)
        .unwrap();
    let checks = Checks {
        audience: "linkd".into(),
        issuer: ISSUER.into(),
        max_lifetime_seconds: 3600,
    };
    (
        EncodingKey::from_ed_pem(private.as_bytes()).unwrap(),
        KeySet::from_pem(&public, checks).unwrap(),
    )
}

/// A token both claim types accept.
fn signed(key: &EncodingKey) -> String {
    let now = chrono::Utc::now().timestamp();
    let claims = serde_json::json!({ "sub": "anna", "aud": "linkd", "iss": ISSUER, "iat": now,
        "exp": now + 600, "auth_time": now, "product_kind": "mobile", "product_serial": "LT-1",
        "nonce": "n" });
    jsonwebtoken::encode(&Header::new(Algorithm::EdDSA), &claims, key).unwrap()
}

fn segment(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// `PROPTEST_CASES` if set (a longer run), else `default` (the suite's).
fn cases(default: u32) -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|cases| cases.parse().ok())
        .unwrap_or(default)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(256), failure_persistence: None,
        ..ProptestConfig::default() })]

    #[test]
    fn any_text_is_refused(text in ".{0,400}") {
        let (_, keys) = keys();
        prop_assert!(keys.verify::<PortalClaims>(&text).is_err());
        prop_assert!(keys.verify::<LuxTrustClaims>(&text).is_err());
    }

    #[test]
    fn any_three_segments_are_refused(
        header in prop::collection::vec(any::<u8>(), 0..200),
        claims in prop::collection::vec(any::<u8>(), 0..400),
        signature in prop::collection::vec(any::<u8>(), 0..80),
        json_header in any::<bool>(),
    ) {
        let (_, keys) = keys();
        let header = if json_header {
            segment(br#"{"alg":"EdDSA","typ":"JWT"}"#)
        } else {
            segment(&header)
        };
        let token = format!("{header}.{}.{}", segment(&claims), segment(&signature));
        prop_assert!(keys.verify::<PortalClaims>(&token).is_err());
        prop_assert!(keys.verify::<LuxTrustClaims>(&token).is_err());
    }

    #[test]
    fn a_signed_token_changed_anywhere_is_refused(
        at in any::<prop::sample::Index>(),
        replacement in any::<u8>(),
    ) {
        let (key, keys) = keys();
        let token = signed(&key);
        prop_assert!(keys.verify::<PortalClaims>(&token).is_ok());
        prop_assert!(keys.verify::<LuxTrustClaims>(&token).is_ok());
        let mut bytes = token.into_bytes();
        let at = at.index(bytes.len());
        // A change, not a rejected case (too many of those abort a long run).
        bytes[at] = if bytes[at] == replacement {
            replacement.wrapping_add(1)
        } else {
            replacement
        };
        let changed = String::from_utf8_lossy(&bytes).into_owned();
        prop_assert!(keys.verify::<PortalClaims>(&changed).is_err(), "{}", changed);
        prop_assert!(keys.verify::<LuxTrustClaims>(&changed).is_err(), "{}", changed);
    }
}
