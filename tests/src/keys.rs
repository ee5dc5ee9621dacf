//! Development keys: one identity-provider key pair and one LuxTrust key pair per test process
//! (the services read the public halves from files), and the `authorization` header.

use std::path::PathBuf;
use std::sync::OnceLock;

use linkctl::dev::{DevKeys, key_pair_pem};
use tonic::Request;

pub(crate) struct Keys {
    pub(crate) signers: DevKeys,
    pub(crate) idp_public: PathBuf,
    pub(crate) luxtrust_public: PathBuf,
    /// The relay's bus signing key, and its public half (ADR 0022).
    pub(crate) bus_private: PathBuf,
    pub(crate) bus_public: PathBuf,
    /// The key-encryption key file (one KEK, `test-1`).
    pub(crate) kek_file: PathBuf,
}

/// The tests' key-encryption key, `test-1` (base64 of 32 bytes).
pub(crate) const TEST_KEK: &str = "dGVzdC1rZWstdGVzdC1rZWstdGVzdC1rZWstdGVzdDE=";

/// One set of development keys per test process.
pub(crate) fn keys() -> &'static Keys {
    static KEYS: OnceLock<Keys> = OnceLock::new();
    KEYS.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("linkd-e2e-keys-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("creating a folder for test keys");
        let (idp_private, idp_public) = key_pair_pem().expect("an identity provider key pair");
        let (lt_private, lt_public) = key_pair_pem().expect("a LuxTrust key pair");
        let idp_public_path = dir.join("idp.pub.pem");
        let luxtrust_public_path = dir.join("luxtrust.pub.pem");
        std::fs::write(&idp_public_path, idp_public).expect("writing a public key");
        std::fs::write(&luxtrust_public_path, lt_public).expect("writing a public key");
        let (bus_private, bus_public) = key_pair_pem().expect("a bus key pair");
        let bus_private_path = dir.join("bus.key.pem");
        let bus_public_path = dir.join("bus.pub.pem");
        std::fs::write(&bus_private_path, bus_private).expect("writing a private key");
        std::fs::write(&bus_public_path, bus_public).expect("writing a public key");
        let kek_file = dir.join("kek");
        std::fs::write(&kek_file, format!("test-1 {TEST_KEK}\n")).expect("writing a KEK file");
        Keys {
            kek_file,
            signers: DevKeys::from_pem(&idp_private, &lt_private).expect("loading signing keys"),
            idp_public: idp_public_path,
            luxtrust_public: luxtrust_public_path,
            bus_private: bus_private_path,
            bus_public: bus_public_path,
        }
    })
}

/// `message` with `authorization: Bearer <token>`.
pub fn bearer<T>(message: T, token: &str) -> Request<T> {
    let mut request = Request::new(message);
    request.metadata_mut().insert(
        "authorization",
        format!("Bearer {token}")
            .parse()
            .expect("a valid metadata value"),
    );
    request
}
