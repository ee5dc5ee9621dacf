//! Development keys and tokens: a local stand-in for the identity provider and LuxTrust.
//!
//! `linkctl dev keys` writes Ed25519 key pairs into a git-ignored folder; the services are
//! configured with the public halves (only in development), and `linkctl dev token` signs portal
//! JWTs and LuxTrust assertions with the private halves. Never used unless configured.

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use ed25519_dalek::SigningKey;
use ed25519_dalek::pkcs8::spki::der::pem::LineEnding;
use ed25519_dalek::pkcs8::{EncodePrivateKey as _, EncodePublicKey as _};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde::Serialize;

/// The audience of portal JWTs in the development configuration (the service's default).
pub const PORTAL_AUDIENCE: &str = "linkd-portal";
/// The `iss` of development portal tokens (what `run.sh` sets `LINKD_IDP_ISSUER` to).
pub const PORTAL_ISSUER: &str = "linkd-dev-idp";
/// The audience of LuxTrust assertions in the development configuration (the service's default).
pub const LUXTRUST_AUDIENCE: &str = "linkd-luxtrust";
/// The `iss` of development LuxTrust assertions (what `run.sh` sets `LINKD_LUXTRUST_ISSUER` to).
pub const LUXTRUST_ISSUER: &str = "linkd-dev-luxtrust";

/// The two development signers.
#[derive(Clone)]
pub struct DevKeys {
    idp: EncodingKey,
    luxtrust: EncodingKey,
}

impl std::fmt::Debug for DevKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DevKeys(***)")
    }
}

/// The files `generate` writes into a folder.
#[derive(Debug, Clone)]
pub struct KeyFiles {
    /// The identity provider's public key (for `LINKD_IDP_PUBLIC_KEYS_FILE`).
    pub idp_public: PathBuf,
    /// The LuxTrust signer's public key (for `LINKD_LUXTRUST_PUBLIC_KEYS_FILE`).
    pub luxtrust_public: PathBuf,
    /// The relay's bus signing key (for `LINKD_BUS_SIGNING_KEY_FILE`).
    pub bus_private: PathBuf,
    /// Its public half (for `LINKD_BUS_VERIFY_KEYS_FILE`).
    pub bus_public: PathBuf,
    /// A key-encryption key file with one KEK, `dev-1` (for `LINKD_KEK_FILE`).
    pub kek: PathBuf,
}

fn random_signing_key() -> anyhow::Result<SigningKey> {
    let mut seed = [0u8; 32];
    getrandom::fill(&mut seed).map_err(|e| anyhow::anyhow!("no random generator: {e}"))?;
    Ok(SigningKey::from_bytes(&seed))
}

/// PEM texts of a fresh Ed25519 key pair: (private PKCS#8, public SPKI).
pub fn key_pair_pem() -> anyhow::Result<(String, String)> {
    let key = random_signing_key()?;
    let private = key
        .to_pkcs8_pem(LineEnding::LF)
        .context("encoding a private key")?;
    let public = key
        .verifying_key()
        .to_public_key_pem(LineEnding::LF)
        .context("encoding a public key")?;
    Ok((private.to_string(), public))
}

impl KeyFiles {
    /// The file names inside `dir`.
    pub fn in_dir(dir: &Path) -> Self {
        Self {
            idp_public: dir.join("idp.pub.pem"),
            luxtrust_public: dir.join("luxtrust.pub.pem"),
            bus_private: dir.join("bus.key.pem"),
            bus_public: dir.join("bus.pub.pem"),
            kek: dir.join("kek"),
        }
    }
}

/// Writes new key pairs into `dir` unless they exist already; returns the public key files.
pub fn generate(dir: &Path) -> anyhow::Result<KeyFiles> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    for name in ["idp", "luxtrust", "bus"] {
        let private = dir.join(format!("{name}.key.pem"));
        if private.exists() {
            continue;
        }
        let (private_pem, public_pem) = key_pair_pem()?;
        std::fs::write(&private, private_pem)
            .with_context(|| format!("writing {}", private.display()))?;
        std::fs::write(dir.join(format!("{name}.pub.pem")), public_pem)?;
    }
    let files = KeyFiles::in_dir(dir);
    if !files.kek.exists() {
        let mut kek = [0u8; 32];
        getrandom::fill(&mut kek).map_err(|e| anyhow::anyhow!("no random generator: {e}"))?;
        let line = format!(
            "# linkd development KEK (LINKD_KEK_FILE): `<id> <base64 of 32 bytes>`, last current\n\
             dev-1 {}\n",
            base64::Engine::encode(&base64::engine::general_purpose::STANDARD, kek)
        );
        std::fs::write(&files.kek, line)
            .with_context(|| format!("writing {}", files.kek.display()))?;
    }
    Ok(files)
}

impl DevKeys {
    /// Loads the private keys `generate` wrote into `dir`.
    pub fn load(dir: &Path) -> anyhow::Result<Self> {
        let read = |name: &str| -> anyhow::Result<EncodingKey> {
            let path = dir.join(format!("{name}.key.pem"));
            let pem = std::fs::read(&path).with_context(|| {
                format!("reading {} (run `linkctl dev keys` first)", path.display())
            })?;
            EncodingKey::from_ed_pem(&pem).with_context(|| format!("parsing {}", path.display()))
        };
        Ok(Self {
            idp: read("idp")?,
            luxtrust: read("luxtrust")?,
        })
    }

    /// Signers from private PEM texts.
    pub fn from_pem(idp_private: &str, luxtrust_private: &str) -> anyhow::Result<Self> {
        Ok(Self {
            idp: EncodingKey::from_ed_pem(idp_private.as_bytes())?,
            luxtrust: EncodingKey::from_ed_pem(luxtrust_private.as_bytes())?,
        })
    }

    /// A citizen's portal JWT for `account_id`, authenticated `auth_age_seconds` ago.
    pub fn citizen_token(&self, account_id: &str, auth_age_seconds: i64) -> anyhow::Result<String> {
        let now = chrono::Utc::now().timestamp();
        sign(
            &self.idp,
            &PortalClaims {
                sub: account_id,
                aud: PORTAL_AUDIENCE,
                iss: PORTAL_ISSUER,
                iat: now,
                exp: now + 600,
                auth_time: now - auth_age_seconds,
                roles: vec![],
            },
        )
    }

    /// A portal JWT with exactly `claims` (for tests of the token checks), signed with the
    /// development identity provider's key.
    pub fn portal_token_with(&self, claims: &serde_json::Value) -> anyhow::Result<String> {
        sign(&self.idp, claims)
    }

    /// A LuxTrust assertion with exactly `claims` (for tests of the assertion checks), signed
    /// with the development LuxTrust key.
    pub fn luxtrust_assertion_with(&self, claims: &serde_json::Value) -> anyhow::Result<String> {
        sign(&self.luxtrust, claims)
    }

    /// The portal back end's JWT (role `portal-system`).
    pub fn system_token(&self) -> anyhow::Result<String> {
        let now = chrono::Utc::now().timestamp();
        sign(
            &self.idp,
            &PortalClaims {
                sub: "portal-backend",
                aud: PORTAL_AUDIENCE,
                iss: PORTAL_ISSUER,
                iat: now,
                exp: now + 600,
                auth_time: now,
                roles: vec!["portal-system"],
            },
        )
    }

    /// An auditor's JWT (role `auditor`: may read any account's history).
    pub fn auditor_token(&self) -> anyhow::Result<String> {
        let now = chrono::Utc::now().timestamp();
        sign(
            &self.idp,
            &PortalClaims {
                sub: "auditor-1",
                aud: PORTAL_AUDIENCE,
                iss: PORTAL_ISSUER,
                iat: now,
                exp: now + 600,
                auth_time: now,
                roles: vec!["auditor"],
            },
        )
    }

    /// A LuxTrust assertion: `account_id` authenticated with product (`mobile`/`scan`, serial),
    /// bound to a link attempt's `nonce`.
    pub fn luxtrust_assertion(
        &self,
        account_id: &str,
        product_kind: &str,
        product_serial: &str,
        nonce: &str,
    ) -> anyhow::Result<String> {
        let now = chrono::Utc::now().timestamp();
        sign(
            &self.luxtrust,
            &LuxTrustClaims {
                sub: account_id,
                aud: LUXTRUST_AUDIENCE,
                iss: LUXTRUST_ISSUER,
                iat: now,
                exp: now + 300,
                product_kind,
                product_serial,
                nonce,
            },
        )
    }
}

#[derive(Serialize)]
struct PortalClaims<'a> {
    sub: &'a str,
    aud: &'a str,
    iss: &'a str,
    iat: i64,
    exp: i64,
    auth_time: i64,
    roles: Vec<&'a str>,
}

#[derive(Serialize)]
struct LuxTrustClaims<'a> {
    sub: &'a str,
    aud: &'a str,
    iss: &'a str,
    iat: i64,
    exp: i64,
    product_kind: &'a str,
    product_serial: &'a str,
    nonce: &'a str,
}

fn sign(key: &EncodingKey, claims: &impl Serialize) -> anyhow::Result<String> {
    jsonwebtoken::encode(&Header::new(Algorithm::EdDSA), claims, key).context("signing a token")
}
