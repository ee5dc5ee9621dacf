//! Sealing personal data under per-account keys (crypto-shredding, docs/adr/0025): the
//! key-encryption keys from `LINKD_KEK_FILE`, the data keys they wrap, and sealing and opening
//! one value. The command service seals what it stores; the relay publishes it sealed; the
//! projection service opens it with the keys it reads from the event store's `data_keys`, so
//! once a key is erased no copy anywhere opens.
//!
//! Everything is XChaCha20-Poly1305 with a random 192-bit nonce. A sealed value is the string
//! `sealed:v1:<base64 of nonce ‖ ciphertext>`; its associated data names the event and the
//! field, so a ciphertext moved to another event or field does not open. A wrapped key's
//! associated data names its subject.

use std::collections::HashMap;
use std::path::Path;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use chacha20poly1305::aead::{Aead as _, KeyInit as _, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};

/// What an erased text field loads as.
pub const ERASED: &str = "[erased]";

/// The prefix of a sealed field.
const SEALED: &str = "sealed:v1:";

/// Bytes of a nonce.
const NONCE: usize = 24;

/// Why sealing or opening failed.
#[derive(Debug, thiserror::Error)]
pub enum SealError {
    /// The KEK file or a line of it is not usable.
    #[error("LINKD_KEK_FILE: {0}")]
    Config(String),
    /// A data key is wrapped under a KEK that is not configured.
    #[error(
        "a data key is wrapped under KEK '{0}', which LINKD_KEK_FILE does not hold: add it back \
         (then run `command-service rewrap-keys`)"
    )]
    UnknownKek(String),
    /// A ciphertext does not open under its key: it was altered, moved, or the key is wrong.
    #[error("{0} does not decrypt: altered, moved, or sealed under another key")]
    Tampered(String),
    /// A sealed value is not in the expected form.
    #[error("{0} is not a sealed value")]
    Malformed(String),
}

/// A 256-bit key for XChaCha20-Poly1305.
#[derive(Clone)]
struct Key(XChaCha20Poly1305);

impl Key {
    fn from_bytes(bytes: &[u8; 32]) -> Self {
        Self(XChaCha20Poly1305::new(bytes.into()))
    }

    fn seal(&self, aad: &[u8], plaintext: &[u8]) -> Vec<u8> {
        let mut nonce = [0_u8; NONCE];
        random(&mut nonce);
        let mut sealed = nonce.to_vec();
        // Encryption with a valid key and nonce cannot fail (the plaintext is far below the
        // cipher's 256 GiB limit); an empty ciphertext would not open, so nothing is lost
        // silently either way.
        if let Ok(ciphertext) = self.0.encrypt(
            XNonce::from_slice(&nonce),
            Payload {
                msg: plaintext,
                aad,
            },
        ) {
            sealed.extend_from_slice(&ciphertext);
        }
        sealed
    }

    fn open(&self, aad: &[u8], sealed: &[u8]) -> Option<Vec<u8>> {
        if sealed.len() < NONCE {
            return None;
        }
        let (nonce, ciphertext) = sealed.split_at(NONCE);
        self.0
            .decrypt(
                XNonce::from_slice(nonce),
                Payload {
                    msg: ciphertext,
                    aad,
                },
            )
            .ok()
    }
}

fn random(buffer: &mut [u8]) {
    // The operating system's generator; without it nothing here is safe, so fail loudly.
    #[allow(clippy::expect_used)]
    getrandom::fill(buffer).expect("the operating system's random generator failed");
}

/// One subject's data key, unwrapped.
#[derive(Clone)]
pub struct DataKey(Key);

impl std::fmt::Debug for DataKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DataKey(***)")
    }
}

impl DataKey {
    /// A fresh random key.
    pub fn generate() -> (Self, [u8; 32]) {
        let mut bytes = [0_u8; 32];
        random(&mut bytes);
        (Self(Key::from_bytes(&bytes)), bytes)
    }

    /// `plaintext` sealed as a string (`sealed:v1:…`) bound to `aad`.
    pub fn seal_text(&self, aad: &str, plaintext: &[u8]) -> String {
        format!(
            "{SEALED}{}",
            STANDARD.encode(self.0.seal(aad.as_bytes(), plaintext))
        )
    }

    /// What [`DataKey::seal_text`] sealed with the same `aad`.
    pub fn open_text(&self, aad: &str, sealed: &str) -> Result<Vec<u8>, SealError> {
        let bytes = sealed
            .strip_prefix(SEALED)
            .and_then(|b64| STANDARD.decode(b64).ok())
            .ok_or_else(|| SealError::Malformed(aad.to_owned()))?;
        self.0
            .open(aad.as_bytes(), &bytes)
            .ok_or_else(|| SealError::Tampered(aad.to_owned()))
    }
}

/// Whether `text` is a sealed value.
pub fn is_sealed(text: &str) -> bool {
    text.starts_with(SEALED)
}

/// The key-encryption keys, from `LINKD_KEK_FILE`: one per line, `<id> <base64 of 32 random
/// bytes>`; blank lines and lines starting with `#` are ignored. The last key is the current
/// one (it wraps new data keys); the others only unwrap keys wrapped before a rotation.
#[derive(Clone)]
pub struct Keks {
    keys: Vec<(String, Key)>,
}

impl std::fmt::Debug for Keks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ids: Vec<&str> = self.keys.iter().map(|(id, _)| id.as_str()).collect();
        write!(f, "Keks({ids:?}, ***)")
    }
}

impl Keks {
    /// Reads and checks the KEK file.
    pub fn load(path: &Path) -> Result<Self, SealError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| SealError::Config(format!("cannot read {}: {e}", path.display())))?;
        Self::parse(&text)
    }

    /// Parses the KEK file's text.
    pub fn parse(text: &str) -> Result<Self, SealError> {
        let mut keys: Vec<(String, Key)> = Vec::new();
        for (n, line) in (1..).zip(text.lines()) {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let bad = |why: &str| SealError::Config(format!("line {n}: {why}"));
            let (id, b64) = line
                .split_once(char::is_whitespace)
                .ok_or_else(|| bad("expected `<id> <base64 of 32 random bytes>`"))?;
            let valid_id = !id.is_empty()
                && id.len() <= 32
                && id
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
            if !valid_id {
                return Err(bad(
                    "the id must be 1 to 32 characters among A-Z, a-z, 0-9, '-' and '_'",
                ));
            }
            if keys.iter().any(|(known, _)| known == id) {
                return Err(bad(&format!("the id '{id}' appears twice")));
            }
            let bytes: [u8; 32] = STANDARD
                .decode(b64.trim())
                .ok()
                .and_then(|bytes| bytes.try_into().ok())
                .ok_or_else(|| {
                    bad("the key must be 32 bytes in base64 (`head -c 32 /dev/urandom | base64`)")
                })?;
            keys.push((id.to_owned(), Key::from_bytes(&bytes)));
        }
        if keys.is_empty() {
            return Err(SealError::Config(
                "no key: add a line `<id> <base64 of 32 random bytes>`".into(),
            ));
        }
        Ok(Self { keys })
    }

    /// One KEK (tests, benchmarks).
    pub fn single(id: &str, bytes: [u8; 32]) -> Self {
        Self {
            keys: vec![(id.to_owned(), Key::from_bytes(&bytes))],
        }
    }

    /// The id of the KEK that wraps new data keys.
    pub fn current_id(&self) -> &str {
        self.keys
            .last()
            .map(|(id, _)| id.as_str())
            .unwrap_or_default()
    }

    /// Whether a KEK with this id is configured.
    pub fn holds(&self, id: &str) -> bool {
        self.keys.iter().any(|(known, _)| known == id)
    }

    fn aad(subject: &str) -> String {
        format!("linkd data key v1\u{1f}{subject}")
    }

    /// `key` (its raw bytes) wrapped under the current KEK for `subject`: (KEK id, wrapped).
    pub fn wrap(&self, subject: &str, key: &[u8; 32]) -> (String, Vec<u8>) {
        match self.keys.last() {
            Some((id, kek)) => (id.clone(), kek.seal(Self::aad(subject).as_bytes(), key)),
            // `parse` refuses an empty file, so there is always a current key.
            None => (String::new(), Vec::new()),
        }
    }

    /// The data key of `subject`, wrapped under KEK `kek_id`.
    pub fn unwrap(
        &self,
        subject: &str,
        kek_id: &str,
        wrapped: &[u8],
    ) -> Result<DataKey, SealError> {
        let bytes = self.unwrap_bytes(subject, kek_id, wrapped)?;
        Ok(DataKey(Key::from_bytes(&bytes)))
    }

    /// The raw bytes of `subject`'s data key (to wrap it again under the current KEK).
    pub fn unwrap_bytes(
        &self,
        subject: &str,
        kek_id: &str,
        wrapped: &[u8],
    ) -> Result<[u8; 32], SealError> {
        let (_, kek) = self
            .keys
            .iter()
            .find(|(id, _)| id == kek_id)
            .ok_or_else(|| SealError::UnknownKek(kek_id.to_owned()))?;
        kek.open(Self::aad(subject).as_bytes(), wrapped)
            .and_then(|bytes| bytes.try_into().ok())
            .ok_or_else(|| SealError::Tampered(format!("the data key of {subject}")))
    }
}

/// The data keys met while reading rows: each subject's key unwrapped once. `None`: erased.
#[derive(Debug, Default)]
pub struct KeysSeen {
    keys: HashMap<String, Option<DataKey>>,
}

impl KeysSeen {
    /// The key of `subject` from its row in `data_keys` (`kek_id` and `wrapped`, both `None` if
    /// there is no row; `wrapped` alone `None` if the key was erased).
    pub fn key(
        &mut self,
        keks: &Keks,
        subject: &str,
        kek_id: Option<&str>,
        wrapped: Option<&[u8]>,
    ) -> Result<Option<&DataKey>, SealError> {
        if !self.keys.contains_key(subject) {
            let key = match (kek_id, wrapped) {
                (Some(kek_id), Some(wrapped)) => Some(keks.unwrap(subject, kek_id, wrapped)?),
                (Some(_), None) => None,
                (None, _) => {
                    return Err(SealError::Malformed(format!(
                        "the data key of {subject} (no row in data_keys)"
                    )));
                }
            };
            self.keys.insert(subject.to_owned(), key);
        }
        Ok(self.keys.get(subject).and_then(Option::as_ref))
    }
}

/// The data keys of a batch of bus messages, read from the event store's `data_keys` in one
/// query and unwrapped on first use. Never cached across batches: a key erased since the last
/// batch no longer opens anything.
#[derive(Debug, Default)]
pub struct BatchKeys {
    rows: HashMap<String, (String, Option<Vec<u8>>)>,
    seen: KeysSeen,
}

impl BatchKeys {
    /// The rows of `subjects` (each once) from `data_keys`.
    pub async fn fetch(pool: &sqlx::PgPool, subjects: &[String]) -> Result<Self, sqlx::Error> {
        let rows: Vec<(String, String, Option<Vec<u8>>)> = sqlx::query_as(
            "SELECT subject, kek_id, wrapped FROM data_keys WHERE subject = ANY($1)",
        )
        .bind(subjects)
        .fetch_all(pool)
        .await?;
        Ok(Self {
            rows: rows
                .into_iter()
                .map(|(subject, kek_id, wrapped)| (subject, (kek_id, wrapped)))
                .collect(),
            seen: KeysSeen::default(),
        })
    }

    /// `subject`'s key (`None`: erased); an error if it has no row or does not unwrap.
    pub fn key(&mut self, keks: &Keks, subject: &str) -> Result<Option<&DataKey>, SealError> {
        let (kek_id, wrapped) = match self.rows.get(subject) {
            Some((kek_id, wrapped)) => (Some(kek_id.as_str()), wrapped.as_deref()),
            None => (None, None),
        };
        self.seen.key(keks, subject, kek_id, wrapped)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keks() -> Keks {
        Keks::parse(&format!(
            "# old\nk1 {}\n\nk2 {}\n",
            STANDARD.encode([1_u8; 32]),
            STANDARD.encode([2_u8; 32])
        ))
        .unwrap()
    }

    #[test]
    fn the_last_kek_is_current_and_every_kek_unwraps() {
        let keks = keks();
        assert_eq!(keks.current_id(), "k2");
        let (_, bytes) = DataKey::generate();
        let (id, wrapped) = keks.wrap("account:a", &bytes);
        assert_eq!(id, "k2");
        assert_eq!(
            keks.unwrap_bytes("account:a", "k2", &wrapped).unwrap(),
            bytes
        );
        let old = Keks::single("k1", [1_u8; 32]);
        let (id, wrapped) = old.wrap("account:a", &bytes);
        assert_eq!(
            keks.unwrap_bytes("account:a", &id, &wrapped).unwrap(),
            bytes
        );
    }

    #[test]
    fn a_wrapped_key_opens_only_for_its_subject_and_with_a_known_kek() {
        let keks = keks();
        let (_, bytes) = DataKey::generate();
        let (id, wrapped) = keks.wrap("account:a", &bytes);
        assert!(matches!(
            keks.unwrap("account:b", &id, &wrapped),
            Err(SealError::Tampered(_))
        ));
        let error = Keks::single("k9", [9; 32])
            .unwrap("account:a", &id, &wrapped)
            .unwrap_err();
        assert!(error.to_string().contains("KEK 'k2'"), "{error}");
    }

    #[test]
    fn a_bad_kek_file_is_refused_with_its_line() {
        for (text, says) in [
            ("", "no key"),
            ("k1", "line 1: expected"),
            ("k1 AAAA", "line 1: the key must be 32 bytes"),
            ("bad/id AAAA", "line 1: the id"),
            (
                &format!("k1 {0}\nk1 {0}", STANDARD.encode([0_u8; 32])),
                "line 2: the id 'k1' appears twice",
            ),
        ] {
            let error = Keks::parse(text).unwrap_err().to_string();
            assert!(error.contains(says), "{text:?}: {error}");
        }
        assert!(!format!("{:?}", keks()).contains(&STANDARD.encode([1_u8; 32])));
    }
}
