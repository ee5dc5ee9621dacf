//! Signatures on the bus (ADR 0022): the relay signs every message it publishes with an
//! Ed25519 key only it holds, and the consumers (the read models, `rebuild`, the relay when it
//! reads the stream's last message) accept only messages signed by a key they know. Whoever
//! can publish on the stream's subjects but does not hold the key cannot make a read model
//! change, an email leave, or the relay believe the stream is somewhere it is not.
//!
//! What is signed: the subject, the `Nats-Msg-Id`, the `Linkd-Global-Position` and
//! `Linkd-Tx-Id` headers and the body, in that order, after a fixed label. The signature
//! travels in `Linkd-Signature` (base64), with the signing key's id in `Linkd-Key-Id` (the
//! first 8 bytes of the SHA-256 of the public key, in hex), so a consumer that knows several
//! keys (a rotation: sign with the new one once every consumer knows it) picks the right one.

use std::collections::HashMap;
use std::path::Path;

use anyhow::Context as _;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use ed25519_dalek::pkcs8::{DecodePrivateKey as _, DecodePublicKey as _};
use ed25519_dalek::{Signature, Signer as _, SigningKey, VerifyingKey};
use sha2::{Digest as _, Sha256};

/// Where a service's bus keys are (`LINKD_BUS_SIGNING_KEY_FILE`, `LINKD_BUS_VERIFY_KEYS_FILE`),
/// or, for development only, that it publishes or accepts unsigned messages
/// (`LINKD_BUS_UNSIGNED=on`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BusKeys {
    /// The PEM file.
    File(std::path::PathBuf),
    /// No signatures (development).
    Unsigned,
}

/// The header carrying the signature (base64).
pub const SIGNATURE_HEADER: &str = "Linkd-Signature";
/// The header naming the signing key.
pub const KEY_ID_HEADER: &str = "Linkd-Key-Id";

/// What a message says, as signed.
#[derive(Debug, Clone, Copy)]
pub struct Signed<'a> {
    /// The subject it was published on.
    pub subject: &'a str,
    /// Its `Nats-Msg-Id`.
    pub message_id: &'a str,
    /// Its `Linkd-Global-Position` header.
    pub global_position: &'a str,
    /// Its `Linkd-Tx-Id` header.
    pub tx_id: &'a str,
    /// Its body.
    pub payload: &'a [u8],
}

impl Signed<'_> {
    fn bytes(&self) -> Vec<u8> {
        let mut bytes = Vec::with_capacity(self.payload.len() + 128);
        for part in [
            "linkd.bus.v1".as_bytes(),
            self.subject.as_bytes(),
            self.message_id.as_bytes(),
            self.global_position.as_bytes(),
            self.tx_id.as_bytes(),
        ] {
            bytes.extend_from_slice(part);
            bytes.push(0x1f);
        }
        bytes.extend_from_slice(self.payload);
        bytes
    }
}

fn key_id(key: &VerifyingKey) -> String {
    Sha256::digest(key.as_bytes())
        .iter()
        .take(8)
        .map(|byte| format!("{byte:02x}"))
        .collect()
}

/// The relay's signing key.
pub struct BusSigner {
    key: SigningKey,
    key_id: String,
}

impl std::fmt::Debug for BusSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BusSigner")
            .field("key_id", &self.key_id)
            .finish_non_exhaustive()
    }
}

impl BusSigner {
    /// The Ed25519 private key in the PKCS#8 PEM file at `path`.
    pub fn from_pem_file(path: &Path) -> anyhow::Result<Self> {
        let pem = std::fs::read_to_string(path)
            .with_context(|| format!("reading the bus signing key {}", path.display()))?;
        Self::from_pem(&pem).with_context(|| format!("parsing {}", path.display()))
    }

    /// The Ed25519 private key in `pem` (PKCS#8).
    pub fn from_pem(pem: &str) -> anyhow::Result<Self> {
        let key = SigningKey::from_pkcs8_pem(pem)
            .map_err(|e| anyhow::anyhow!("not an Ed25519 private key (PKCS#8 PEM): {e}"))?;
        let key_id = key_id(&key.verifying_key());
        Ok(Self { key, key_id })
    }

    /// The key id and the signature (base64) of `message`, for [`KEY_ID_HEADER`] and
    /// [`SIGNATURE_HEADER`].
    pub fn sign(&self, message: &Signed<'_>) -> (&str, String) {
        let signature = self.key.sign(&message.bytes());
        (&self.key_id, STANDARD.encode(signature.to_bytes()))
    }

    /// A verifier that knows this key's public half (the relay checks the stream's last
    /// message with it).
    pub fn verifier(&self) -> BusVerifier {
        let public = self.key.verifying_key();
        BusVerifier {
            keys: HashMap::from([(self.key_id.clone(), public)]),
        }
    }
}

/// The public keys whose signatures a consumer accepts.
#[derive(Debug, Clone)]
pub struct BusVerifier {
    keys: HashMap<String, VerifyingKey>,
}

/// Why a message is not accepted as the relay's.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Forged {
    /// No signature, or no key id.
    #[error("the message is not signed")]
    Unsigned,
    /// Signed with a key this consumer does not know.
    #[error("the message is signed with an unknown key {0}")]
    UnknownKey(String),
    /// The signature does not match the message.
    #[error("the message's signature does not verify")]
    Invalid,
}

impl BusVerifier {
    /// Every Ed25519 public key in the PEM file at `path` (one or more `PUBLIC KEY` blocks).
    pub fn from_pem_file(path: &Path) -> anyhow::Result<Self> {
        let pem = std::fs::read_to_string(path)
            .with_context(|| format!("reading the bus verification keys {}", path.display()))?;
        Self::from_pem(&pem).with_context(|| format!("parsing {}", path.display()))
    }

    /// Every Ed25519 public key in `pem`.
    pub fn from_pem(pem: &str) -> anyhow::Result<Self> {
        let mut keys = HashMap::new();
        for block in pem.split("-----BEGIN ").skip(1) {
            let block = format!("-----BEGIN {block}");
            let key = VerifyingKey::from_public_key_pem(block.trim())
                .map_err(|e| anyhow::anyhow!("a PEM block is not an Ed25519 public key: {e}"))?;
            keys.insert(key_id(&key), key);
        }
        anyhow::ensure!(!keys.is_empty(), "no public key found");
        Ok(Self { keys })
    }

    /// Whether a message on `subject` with body `payload` is the relay's, reading its headers
    /// through `header` (the signature, the key id, and the signed headers).
    pub fn verify_message<'h>(
        &self,
        subject: &str,
        header: impl Fn(&str) -> Option<&'h str>,
        payload: &[u8],
    ) -> Result<(), Forged> {
        self.verify(
            header(KEY_ID_HEADER),
            header(SIGNATURE_HEADER),
            &Signed {
                subject,
                message_id: header("Nats-Msg-Id").unwrap_or_default(),
                global_position: header("Linkd-Global-Position").unwrap_or_default(),
                tx_id: header("Linkd-Tx-Id").unwrap_or_default(),
                payload,
            },
        )
    }

    /// [`Self::verify_message`] on a message as a NATS subscriber receives it.
    pub fn verify_nats_message(&self, message: &async_nats::Message) -> Result<(), Forged> {
        let header = |name: &str| {
            message
                .headers
                .as_ref()
                .and_then(|headers| headers.get(name))
                .map(async_nats::HeaderValue::as_str)
        };
        self.verify_message(message.subject.as_str(), header, &message.payload)
    }

    /// Whether `signature` by key `key_id` (the headers' values, if present) is the relay's
    /// on `message`.
    pub fn verify(
        &self,
        key_id: Option<&str>,
        signature: Option<&str>,
        message: &Signed<'_>,
    ) -> Result<(), Forged> {
        let (Some(key_id), Some(signature)) = (key_id, signature) else {
            return Err(Forged::Unsigned);
        };
        let key = self
            .keys
            .get(key_id)
            .ok_or_else(|| Forged::UnknownKey(key_id.chars().take(32).collect()))?;
        let signature = STANDARD
            .decode(signature)
            .ok()
            .and_then(|bytes| Signature::from_slice(&bytes).ok())
            .ok_or(Forged::Invalid)?;
        key.verify_strict(&message.bytes(), &signature)
            .map_err(|_| Forged::Invalid)
    }
}

#[cfg(test)]
mod tests {
    use ed25519_dalek::pkcs8::spki::der::pem::LineEnding;
    use ed25519_dalek::pkcs8::{EncodePrivateKey as _, EncodePublicKey as _};

    use super::*;

    fn key_pair() -> (BusSigner, String) {
        let key = SigningKey::from_bytes(&rand::random());
        let private = key.to_pkcs8_pem(LineEnding::LF).unwrap();
        let public = key
            .verifying_key()
            .to_public_key_pem(LineEnding::LF)
            .unwrap();
        (BusSigner::from_pem(&private).unwrap(), public)
    }

    fn message(payload: &[u8]) -> Signed<'_> {
        Signed {
            subject: "linkd.events.device.DeviceLinked",
            message_id: "device/d-1/1/ab",
            global_position: "7",
            tx_id: "700",
            payload,
        }
    }

    #[test]
    fn a_signed_message_verifies_and_any_change_to_it_does_not() {
        let (signer, public) = key_pair();
        let verifier = BusVerifier::from_pem(&public).unwrap();
        let original = message(b"body");
        let (key_id, signature) = signer.sign(&original);
        assert_eq!(
            verifier.verify(Some(key_id), Some(&signature), &original),
            Ok(())
        );
        for changed in [
            Signed {
                subject: "linkd.events.account.AccountRegistered",
                ..original
            },
            Signed {
                message_id: "device/d-1/2/ab",
                ..original
            },
            Signed {
                global_position: "8",
                ..original
            },
            Signed {
                tx_id: "701",
                ..original
            },
            message(b"bodz"),
        ] {
            assert_eq!(
                verifier.verify(Some(key_id), Some(&signature), &changed),
                Err(Forged::Invalid),
                "{changed:?}"
            );
        }
    }

    #[test]
    fn unsigned_messages_and_strangers_keys_are_refused() {
        let (signer, public) = key_pair();
        let (stranger, _) = key_pair();
        let verifier = BusVerifier::from_pem(&public).unwrap();
        let original = message(b"body");
        assert_eq!(
            verifier.verify(None, None, &original),
            Err(Forged::Unsigned)
        );
        let (stranger_id, forged) = stranger.sign(&original);
        assert!(matches!(
            verifier.verify(Some(stranger_id), Some(&forged), &original),
            Err(Forged::UnknownKey(_))
        ));
        // The stranger's signature under the relay's key id.
        let (key_id, _) = signer.sign(&original);
        assert_eq!(
            verifier.verify(Some(key_id), Some(&forged), &original),
            Err(Forged::Invalid)
        );
        assert_eq!(
            verifier.verify(Some(key_id), Some("not base64!"), &original),
            Err(Forged::Invalid)
        );
    }

    #[test]
    fn a_verifier_knows_every_key_of_its_file_for_a_rotation() {
        let (old, old_public) = key_pair();
        let (new, new_public) = key_pair();
        let verifier = BusVerifier::from_pem(&format!("{old_public}{new_public}")).unwrap();
        let original = message(b"body");
        for signer in [&old, &new] {
            let (key_id, signature) = signer.sign(&original);
            assert_eq!(
                verifier.verify(Some(key_id), Some(&signature), &original),
                Ok(())
            );
        }
        assert!(BusVerifier::from_pem("").is_err());
        assert!(
            BusSigner::from_pem(&old_public).is_err(),
            "a public key cannot sign"
        );
    }
}
