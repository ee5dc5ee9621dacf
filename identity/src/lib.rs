//! Who is calling: portal JWTs from the identity provider, and LuxTrust assertions. Shared by
//! the command service and the projection service's query API; it performs no I/O beyond
//! reading key files at start-up.
//!
//! Keys come from PEM files named in the settings (Ed25519 for EdDSA, P-256 for ES256); several
//! keys may be listed in one file, which allows rotating them.
//!
//! Every token must pass, besides its signature ([`Checks`]): `aud` and `iss` equal to the
//! configured ones (both required); `exp` in the future; `nbf`, if present, not in the future;
//! `iat` present, not in the future, not older than the maximum lifetime, and `exp - iat` not
//! longer than it. Clocks may differ by [`LEEWAY_SECONDS`].

use std::path::Path;

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;

/// The role a JWT must carry for the portal back end's system calls.
pub const SYSTEM_ROLE: &str = "portal-system";

/// How far clocks may differ, in seconds, for every time claim.
pub const LEEWAY_SECONDS: u64 = 30;

/// What a token must say besides being signed by one of the keys.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checks {
    /// The `aud` it must carry.
    pub audience: String,
    /// The `iss` it must carry.
    pub issuer: String,
    /// The longest a token may live (`exp - iat`) and the oldest it may be (`now - iat`), in
    /// seconds.
    pub max_lifetime_seconds: i64,
}

/// A set of public keys and the checks every token must pass.
#[derive(Clone)]
pub struct KeySet {
    keys: Vec<(Algorithm, DecodingKey)>,
    checks: Checks,
}

impl std::fmt::Debug for KeySet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeySet")
            .field("keys", &self.keys.len())
            .field("checks", &self.checks)
            .finish()
    }
}

/// Why a token was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// Not a compact JWS at all.
    #[error("is not a well-formed signed token")]
    Malformed,
    /// Well-formed, but the signature, audience, issuer or expiry is wrong.
    #[error("is not valid: {0}")]
    Rejected(String),
}

impl KeySet {
    /// Loads every public key in the PEM file at `path`.
    pub fn from_pem_file(path: &Path, checks: Checks) -> anyhow::Result<Self> {
        use anyhow::Context as _;
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading public keys from {}", path.display()))?;
        Self::from_pem(&text, checks)
            .with_context(|| format!("parsing public keys in {}", path.display()))
    }

    /// Loads every public key in `pem` (one or more `PUBLIC KEY` blocks).
    pub fn from_pem(pem: &str, checks: Checks) -> anyhow::Result<Self> {
        let mut keys = Vec::new();
        for block in pem.split("-----BEGIN ").skip(1) {
            let block = format!("-----BEGIN {block}");
            if let Ok(key) = DecodingKey::from_ed_pem(block.as_bytes()) {
                keys.push((Algorithm::EdDSA, key));
            } else if let Ok(key) = DecodingKey::from_ec_pem(block.as_bytes()) {
                keys.push((Algorithm::ES256, key));
            } else {
                anyhow::bail!("a PEM block is neither an Ed25519 nor a P-256 public key");
            }
        }
        anyhow::ensure!(!keys.is_empty(), "no public key found");
        anyhow::ensure!(!checks.issuer.is_empty(), "an issuer is required");
        anyhow::ensure!(
            checks.max_lifetime_seconds > 0,
            "the maximum token lifetime must be positive"
        );
        Ok(Self { keys, checks })
    }

    /// Verifies `token` against every key and the [`Checks`], and returns its claims.
    pub fn verify<C: for<'de> Deserialize<'de>>(&self, token: &str) -> Result<C, TokenError> {
        let claims = self.verify_signed(token)?;
        let now = jsonwebtoken::get_current_timestamp();
        self.check_lifetime(&claims, i64::try_from(now).unwrap_or(i64::MAX))?;
        serde_json::from_value(claims)
            .map_err(|_| TokenError::Rejected("claims of the wrong shape".into()))
    }

    /// `iat`: present, not in the future, not older than the lifetime, and `exp` not further
    /// from it than the lifetime.
    fn check_lifetime(&self, claims: &serde_json::Value, now: i64) -> Result<(), TokenError> {
        let leeway = i64::try_from(LEEWAY_SECONDS).unwrap_or(0);
        let max = self.checks.max_lifetime_seconds;
        let time = |name: &str| claims.get(name).and_then(serde_json::Value::as_i64);
        let (Some(iat), Some(exp)) = (time("iat"), time("exp")) else {
            return Err(TokenError::Rejected("missing claim iat".into()));
        };
        if iat > now.saturating_add(leeway) {
            return Err(TokenError::Rejected("issued in the future (iat)".into()));
        }
        if now.saturating_sub(iat) > max.saturating_add(leeway) {
            return Err(TokenError::Rejected(format!(
                "too old: issued more than {max} s ago"
            )));
        }
        if exp.saturating_sub(iat) > max {
            return Err(TokenError::Rejected(format!(
                "lives too long: exp - iat is more than {max} s"
            )));
        }
        Ok(())
    }

    /// The claims of `token` once its signature, audience, issuer, `exp` and `nbf` verify.
    fn verify_signed(&self, token: &str) -> Result<serde_json::Value, TokenError> {
        let header = jsonwebtoken::decode_header(token).map_err(|_| TokenError::Malformed)?;
        let mut last = TokenError::Rejected("no key matches its algorithm".into());
        for (algorithm, key) in self
            .keys
            .iter()
            .filter(|(algorithm, _)| *algorithm == header.alg)
        {
            let mut validation = Validation::new(*algorithm);
            validation.set_audience(&[&self.checks.audience]);
            validation.set_issuer(&[&self.checks.issuer]);
            validation.set_required_spec_claims(&["exp", "aud", "iss", "sub", "iat"]);
            validation.validate_nbf = true;
            validation.leeway = LEEWAY_SECONDS;
            match jsonwebtoken::decode::<serde_json::Value>(token, key, &validation) {
                Ok(data) => return Ok(data.claims),
                Err(error) => {
                    #[expect(
                        clippy::wildcard_enum_match_arm,
                        reason = "ErrorKind is non_exhaustive; the rest are key or claim problems"
                    )]
                    let refusal = match error.kind() {
                        ErrorKind::InvalidToken | ErrorKind::Base64(_) | ErrorKind::Utf8(_) => {
                            TokenError::Malformed
                        }
                        ErrorKind::InvalidSignature => TokenError::Rejected("bad signature".into()),
                        ErrorKind::ExpiredSignature => TokenError::Rejected("expired".into()),
                        ErrorKind::InvalidAudience => TokenError::Rejected("wrong audience".into()),
                        ErrorKind::InvalidIssuer => TokenError::Rejected("wrong issuer".into()),
                        ErrorKind::ImmatureSignature => {
                            TokenError::Rejected("not valid yet (nbf)".into())
                        }
                        ErrorKind::MissingRequiredClaim(claim) => {
                            TokenError::Rejected(format!("missing claim {claim}"))
                        }
                        ErrorKind::Json(_) => {
                            TokenError::Rejected("claims of the wrong shape".into())
                        }
                        other => TokenError::Rejected(format!("{other:?}")),
                    };
                    last = refusal;
                }
            }
        }
        Err(last)
    }
}

/// Claims of a portal JWT.
#[derive(Debug, Clone, Deserialize)]
pub struct PortalClaims {
    /// The account id (or the system's name, for system calls).
    pub sub: String,
    /// When the holder last authenticated (seconds since the epoch).
    pub auth_time: Option<i64>,
    /// Roles, for system calls.
    #[serde(default)]
    pub roles: Vec<String>,
}

impl PortalClaims {
    /// Whether the token carries the portal back end's system role.
    pub fn is_system(&self) -> bool {
        self.roles.iter().any(|role| role == SYSTEM_ROLE)
    }

    /// The account id, if this is a citizen's token (one without roles).
    pub fn citizen(&self) -> Result<&str, CitizenError> {
        if !self.roles.is_empty() {
            return Err(CitizenError::NotACitizen);
        }
        Ok(&self.sub)
    }

    /// The account id, if this is a citizen's token whose holder authenticated at most
    /// `max_age_seconds` before `now` (30 s of clock skew into the future is tolerated).
    pub fn reauthenticated_citizen(
        &self,
        now: i64,
        max_age_seconds: i64,
    ) -> Result<&str, CitizenError> {
        self.citizen()?;
        let age = self
            .auth_time
            .and_then(|auth_time| now.checked_sub(auth_time));
        match age {
            Some(age) if (-30..=max_age_seconds).contains(&age) => Ok(&self.sub),
            Some(_) | None => Err(CitizenError::ReauthenticationRequired { max_age_seconds }),
        }
    }
}

/// Why a portal token does not stand for a recently re-authenticated citizen.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CitizenError {
    /// The token carries roles: it is a system's, not an account holder's.
    #[error("this call is made by the account holder; a token with roles is not a citizen's")]
    NotACitizen,
    /// `auth_time` is missing or too old.
    #[error(
        "re-authentication required: this call needs a token whose auth_time is at most \
         {max_age_seconds} s old; send the holder through eAccess again and retry with the new token"
    )]
    ReauthenticationRequired {
        /// The limit.
        max_age_seconds: i64,
    },
}

/// Claims of a LuxTrust assertion, as the identity provider signs them.
#[derive(Debug, Clone, Deserialize)]
pub struct LuxTrustClaims {
    /// The account the holder authenticated as.
    pub sub: String,
    /// `mobile` or `scan`.
    pub product_kind: String,
    /// The product's serial number.
    pub product_serial: String,
    /// The link attempt's nonce.
    pub nonce: String,
}

#[cfg(test)]
mod tests {
    use ed25519_dalek::pkcs8::spki::der::pem::LineEnding;
    use jsonwebtoken::{EncodingKey, Header};
    use serde_json::{Value, json};

    use super::*;

    const ISSUER: &str = "https://idp.example.lu";

    fn checks(audience: &str) -> Checks {
        Checks {
            audience: audience.into(),
            issuer: ISSUER.into(),
            max_lifetime_seconds: 3600,
        }
    }

    fn now() -> i64 {
        chrono::Utc::now().timestamp()
    }

    fn claims(aud: &str, exp_offset: i64) -> Value {
        let now = now();
        json!({ "sub": "anna", "aud": aud, "iss": ISSUER, "iat": now, "exp": now + exp_offset,
                "auth_time": now })
    }

    fn ed25519_pair() -> (EncodingKey, String) {
        use ed25519_dalek::pkcs8::{EncodePrivateKey as _, EncodePublicKey as _};
        let key = ed25519_dalek::SigningKey::from_bytes(&[7u8; 32]);
        let private = key.to_pkcs8_pem(LineEnding::LF).unwrap();
        let public = key
            .verifying_key()
            .to_public_key_pem(LineEnding::LF)
            .unwrap();
        (
            EncodingKey::from_ed_pem(private.as_bytes()).unwrap(),
            public,
        )
    }

    fn p256_pair() -> (EncodingKey, String) {
        use p256::pkcs8::{EncodePrivateKey as _, EncodePublicKey as _};
        let key = p256::SecretKey::from_slice(&[9u8; 32]).unwrap();
        let private = key.to_pkcs8_pem(LineEnding::LF).unwrap();
        let public = key.public_key().to_public_key_pem(LineEnding::LF).unwrap();
        (
            EncodingKey::from_ec_pem(private.as_bytes()).unwrap(),
            public,
        )
    }

    fn sign(algorithm: Algorithm, key: &EncodingKey, claims: &Value) -> String {
        jsonwebtoken::encode(&Header::new(algorithm), claims, key).unwrap()
    }

    fn refusal(keys: &KeySet, key: &EncodingKey, claims: &Value) -> String {
        match keys.verify::<PortalClaims>(&sign(Algorithm::EdDSA, key, claims)) {
            Err(TokenError::Rejected(reason)) => reason,
            other => panic!("{claims}: not rejected: {other:?}"),
        }
    }

    #[test]
    fn eddsa_and_es256_tokens_verify_against_one_key_file() {
        let (ed_key, ed_public) = ed25519_pair();
        let (ec_key, ec_public) = p256_pair();
        let keys = KeySet::from_pem(&format!("{ed_public}{ec_public}"), checks("linkd")).unwrap();

        let eddsa: PortalClaims = keys
            .verify(&sign(Algorithm::EdDSA, &ed_key, &claims("linkd", 60)))
            .unwrap();
        let es256: PortalClaims = keys
            .verify(&sign(Algorithm::ES256, &ec_key, &claims("linkd", 60)))
            .unwrap();

        assert_eq!(eddsa.sub, "anna");
        assert_eq!(es256.sub, "anna");
    }

    #[test]
    fn a_token_for_another_audience_or_expired_is_rejected() {
        let (key, public) = ed25519_pair();
        let keys = KeySet::from_pem(&public, checks("linkd")).unwrap();

        assert_eq!(refusal(&keys, &key, &claims("other", 60)), "wrong audience");
        assert_eq!(refusal(&keys, &key, &claims("linkd", -120)), "expired");
    }

    #[test]
    fn issuer_nbf_and_iat_are_checked() {
        let (key, public) = ed25519_pair();
        let keys = KeySet::from_pem(&public, checks("linkd")).unwrap();
        let with = |name: &str, value: Value| {
            let mut claims = claims("linkd", 60);
            claims[name] = value;
            claims
        };
        let without = |name: &str| {
            let mut claims = claims("linkd", 60);
            claims.as_object_mut().unwrap().remove(name);
            claims
        };

        assert_eq!(
            refusal(&keys, &key, &with("iss", json!("https://evil.example"))),
            "wrong issuer"
        );
        assert_eq!(refusal(&keys, &key, &without("iss")), "missing claim iss");
        assert_eq!(
            refusal(&keys, &key, &with("nbf", json!(now() + 600))),
            "not valid yet (nbf)"
        );
        assert_eq!(refusal(&keys, &key, &without("iat")), "missing claim iat");
        assert_eq!(
            refusal(&keys, &key, &with("iat", json!(now() + 600))),
            "issued in the future (iat)"
        );
        let old = json!({ "sub": "anna", "aud": "linkd", "iss": ISSUER, "iat": now() - 7200,
                          "exp": now() + 60 });
        assert!(refusal(&keys, &key, &old).starts_with("too old"));
        let long = with("exp", json!(now() + 7200));
        assert!(refusal(&keys, &key, &long).starts_with("lives too long"));
        let fine = with("nbf", json!(now() - 5));
        assert!(
            keys.verify::<PortalClaims>(&sign(Algorithm::EdDSA, &key, &fine))
                .is_ok()
        );
    }

    #[test]
    fn an_unsigned_or_garbled_token_is_refused() {
        let (_, public) = ed25519_pair();
        let keys = KeySet::from_pem(&public, checks("linkd")).unwrap();

        assert_eq!(
            keys.verify::<PortalClaims>("garbage").unwrap_err(),
            TokenError::Malformed
        );
        let unsigned = keys.verify::<PortalClaims>("eyJhbGciOiJub25lIn0.e30.");
        assert!(unsigned.is_err(), "{unsigned:?}");
    }

    #[test]
    fn a_file_without_keys_or_a_set_without_issuer_is_refused() {
        let (_, public) = ed25519_pair();
        assert!(KeySet::from_pem("", checks("linkd")).is_err());
        assert!(
            KeySet::from_pem(
                "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n",
                checks("linkd")
            )
            .is_err()
        );
        let no_issuer = Checks {
            issuer: String::new(),
            ..checks("linkd")
        };
        assert!(KeySet::from_pem(&public, no_issuer).is_err());
    }
}
