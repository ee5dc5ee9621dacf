//! `linkctl dev tls`: a development certificate authority and the certificates it issues, for
//! running linkd's gRPC over mutual TLS on one machine (README, "TLS"). Never for production:
//! the CA's key is not kept, so nothing else can be issued under it; run it again in an empty
//! folder to start over.

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};

/// The files `generate` writes into a folder.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    /// The CA's certificate: the servers' `LINKD_*_TLS_CLIENT_CA_FILE` and the clients'
    /// `LINKD_GRPC_CA_FILE`.
    pub ca: PathBuf,
    /// The servers' certificate (`LINKD_*_TLS_CERT_FILE`), for the names given.
    pub server_cert: PathBuf,
    /// Its key (`LINKD_*_TLS_KEY_FILE`).
    pub server_key: PathBuf,
    /// The client certificate of the portal back end and of linkctl (`LINKD_GRPC_CERT_FILE`).
    pub client_cert: PathBuf,
    /// Its key (`LINKD_GRPC_KEY_FILE`).
    pub client_key: PathBuf,
    /// The folder held them already: nothing was written.
    pub existing: bool,
}

impl TlsFiles {
    /// The file names inside `dir`.
    pub fn in_dir(dir: &Path) -> Self {
        Self {
            ca: dir.join("ca.pem"),
            server_cert: dir.join("server.pem"),
            server_key: dir.join("server.key"),
            client_cert: dir.join("client.pem"),
            client_key: dir.join("client.key"),
            existing: false,
        }
    }
}

/// The names every development server certificate holds, beside those asked for.
pub const LOCAL_NAMES: [&str; 3] = ["localhost", "127.0.0.1", "::1"];

/// Writes a new CA, a server certificate for [`LOCAL_NAMES`] and `extra_names`, and a client
/// certificate into `dir`, unless its CA certificate exists already (then nothing is written,
/// and `existing` is true).
pub fn generate(dir: &Path, extra_names: &[String]) -> anyhow::Result<TlsFiles> {
    let files = TlsFiles::in_dir(dir);
    if files.ca.exists() {
        return Ok(TlsFiles {
            existing: true,
            ..files
        });
    }
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut ca = CertificateParams::new(Vec::<String>::new())?;
    ca.distinguished_name
        .push(DnType::CommonName, "linkd development CA");
    ca.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca = CertifiedIssuer::self_signed(ca, KeyPair::generate()?)
        .context("issuing the development CA")?;

    let mut names: Vec<String> = LOCAL_NAMES.iter().map(|&name| name.to_owned()).collect();
    names.extend(extra_names.iter().cloned());
    let mut server = CertificateParams::new(names).context("a server name is not valid")?;
    server
        .distinguished_name
        .push(DnType::CommonName, "linkd development server");
    server.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    server.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    let server_key = KeyPair::generate()?;
    let server_cert = server
        .signed_by(&server_key, &ca)
        .context("issuing the server certificate")?;

    let mut client = CertificateParams::new(Vec::<String>::new())?;
    client
        .distinguished_name
        .push(DnType::CommonName, "linkd development portal back end");
    client.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    client.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    let client_key = KeyPair::generate()?;
    let client_cert = client
        .signed_by(&client_key, &ca)
        .context("issuing the client certificate")?;

    write(&files.server_key, &server_key.serialize_pem(), true)?;
    write(&files.server_cert, &server_cert.pem(), false)?;
    write(&files.client_key, &client_key.serialize_pem(), true)?;
    write(&files.client_cert, &client_cert.pem(), false)?;
    // Last: its presence says the folder is complete.
    write(&files.ca, &ca.pem(), false)?;
    Ok(files)
}

/// Writes `contents` to a new `path`; a key (`secret`) is readable by its owner only from the
/// moment the file exists.
fn write(path: &Path, contents: &str, secret: bool) -> anyhow::Result<()> {
    use std::io::Write as _;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        options.mode(if secret { 0o600 } else { 0o644 });
    }
    #[cfg(not(unix))]
    let _ = secret;
    options
        .open(path)
        .and_then(|mut file| file.write_all(contents.as_bytes()))
        .with_context(|| format!("writing {}", path.display()))
}
