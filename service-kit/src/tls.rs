//! TLS on linkd's gRPC (ADR 0023), both ends.
//!
//! A server ([`ServerTls`]) serves TLS with a certificate chain and its key; given a client CA
//! too, it completes a handshake only with a caller that presents a certificate that CA issued
//! (mutual TLS: the portal back end proves itself before any call is read). A client
//! ([`ClientTls`]: `linkctl`, `portal-web`) reaches an `https://` address, trusting the CA it is
//! given (or the system's roots), and presents its own certificate when it has one.
//!
//! Files are read and checked when a service starts: a missing file, a file without the
//! expected PEM block, or a key that does not fit its certificate stops the start with a message
//! naming the file, never a server that fails its first handshake.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};
use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity, Server, ServerTlsConfig};

/// How long a client has to complete the TLS handshake.
pub const HANDSHAKE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// A server's TLS settings: `LINKD_<SERVICE>_TLS_CERT_FILE`, `…_TLS_KEY_FILE`, and
/// `…_TLS_CLIENT_CA_FILE` for mutual TLS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerTls {
    /// The server's certificate chain (PEM, the server's own certificate first).
    pub cert_file: PathBuf,
    /// Its private key (PEM: PKCS#8, PKCS#1 or SEC1).
    pub key_file: PathBuf,
    /// When set, callers must present a certificate this CA (PEM, one or more certificates)
    /// issued; give it a CA that issues certificates only to the callers meant to call.
    pub client_ca_file: Option<PathBuf>,
}

impl ServerTls {
    /// The files read and checked, as tonic's server configuration.
    pub fn load(&self) -> anyhow::Result<ServerTlsConfig> {
        let certificates = read_certificates(&self.cert_file)?;
        let key = read_key(&self.key_file)?;
        let mut config = ServerTlsConfig::new()
            .identity(Identity::from_pem(certificates, key))
            // A connection that does not finish its handshake in time is closed: a stranger
            // cannot hold connections (and their tasks) open without authenticating.
            .timeout(HANDSHAKE_TIMEOUT);
        if let Some(ca) = &self.client_ca_file {
            config = config
                .client_ca_root(Certificate::from_pem(read_certificates(ca)?))
                .client_auth_optional(false);
        }
        // Builds the acceptor once, so that a key that does not fit its certificate, or a CA
        // rustls cannot use, is found now.
        Server::builder()
            .tls_config(config.clone())
            .with_context(|| {
                format!(
                    "the TLS certificate {} with the key {}{} cannot be used",
                    self.cert_file.display(),
                    self.key_file.display(),
                    self.client_ca_file
                        .as_ref()
                        .map(|ca| format!(" and the client CA {}", ca.display()))
                        .unwrap_or_default()
                )
            })?;
        Ok(config)
    }

    /// Whether callers must present a certificate.
    pub fn mutual(&self) -> bool {
        self.client_ca_file.is_some()
    }

    /// How a server with `tls` serves, for its start-up log line: `off`, `on` or `mutual`.
    pub fn mode(tls: Option<&Self>) -> &'static str {
        match tls {
            None => "off",
            Some(tls) if tls.mutual() => "mutual",
            Some(_) => "on",
        }
    }
}

/// How a client of linkd's gRPC reaches an `https://` address: `LINKD_GRPC_CA_FILE` (the CA
/// that issued the servers' certificates; the system's roots when unset), and
/// `LINKD_GRPC_CERT_FILE` with `LINKD_GRPC_KEY_FILE` (its own certificate, for servers that
/// require one).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClientTls {
    /// The CA that issued the servers' certificates (PEM).
    pub ca_file: Option<PathBuf>,
    /// The client's certificate chain and key (PEM).
    pub identity: Option<(PathBuf, PathBuf)>,
}

impl ClientTls {
    /// Whether any TLS setting is given.
    pub fn is_configured(&self) -> bool {
        self.ca_file.is_some() || self.identity.is_some()
    }

    /// An endpoint for `url`: TLS for `https://` (with this CA and certificate), plain text for
    /// `http://`, which is refused when TLS settings are given (they would be ignored).
    pub fn endpoint(&self, url: &str) -> anyhow::Result<Endpoint> {
        let endpoint = Endpoint::from_shared(url.to_owned())
            .with_context(|| format!("{url} is not a valid address"))?;
        match endpoint.uri().scheme_str() {
            Some("https") => {}
            Some("http") if !self.is_configured() => return Ok(endpoint),
            Some("http") => bail!(
                "{url} is a plain-text address but TLS files are configured \
                 (LINKD_GRPC_CA_FILE, LINKD_GRPC_CERT_FILE): use https://"
            ),
            _ => bail!("{url} must start with http:// or https://"),
        }
        let mut config = match &self.ca_file {
            Some(ca) => {
                ClientTlsConfig::new().ca_certificate(Certificate::from_pem(read_certificates(ca)?))
            }
            None => ClientTlsConfig::new().with_native_roots(),
        };
        if let Some((cert, key)) = &self.identity {
            config = config.identity(Identity::from_pem(read_certificates(cert)?, read_key(key)?));
        }
        endpoint
            .tls_config(config)
            .with_context(|| format!("the TLS settings for {url} cannot be used"))
    }
}

/// The file's bytes, which must hold at least one PEM certificate and nothing unreadable.
fn read_certificates(path: &Path) -> anyhow::Result<Vec<u8>> {
    let pem = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let mut count = 0;
    for certificate in CertificateDer::pem_slice_iter(&pem) {
        certificate.with_context(|| format!("{} is not a PEM certificate file", path.display()))?;
        count += 1;
    }
    if count == 0 {
        bail!(
            "{} holds no certificate (expected a PEM \"BEGIN CERTIFICATE\" block)",
            path.display()
        );
    }
    Ok(pem)
}

/// The file's bytes, which must hold a PEM private key.
fn read_key(path: &Path) -> anyhow::Result<Vec<u8>> {
    let pem = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    PrivateKeyDer::from_pem_slice(&pem).with_context(|| {
        format!(
            "{} holds no private key (expected a PEM \"BEGIN PRIVATE KEY\", \
             \"BEGIN RSA PRIVATE KEY\" or \"BEGIN EC PRIVATE KEY\" block)",
            path.display()
        )
    })?;
    Ok(pem)
}
