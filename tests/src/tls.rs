//! Certificates for the TLS tests: one development CA per test process, written by
//! `linkctl dev tls` (so the tests use what the README tells a developer to run), and a second,
//! unrelated CA whose client certificate no server trusts.

use std::sync::OnceLock;

use linkctl::dev_tls::{TlsFiles, generate};
use service_kit::tls::{ClientTls, ServerTls};

fn in_temp(name: &str) -> TlsFiles {
    let dir = std::env::temp_dir().join(format!("linkd-e2e-{name}-{}", std::process::id()));
    generate(&dir, &[]).expect("generating development certificates")
}

/// The process's development CA and the certificates it issued.
pub fn files() -> &'static TlsFiles {
    static FILES: OnceLock<TlsFiles> = OnceLock::new();
    FILES.get_or_init(|| in_temp("tls"))
}

/// Another CA's certificates: valid, but issued by a CA the servers do not trust.
pub fn stranger_files() -> &'static TlsFiles {
    static FILES: OnceLock<TlsFiles> = OnceLock::new();
    FILES.get_or_init(|| in_temp("tls-stranger"))
}

/// A server's TLS with the process's certificates; `mutual`: callers must present a
/// certificate of the process's CA.
pub fn server(mutual: bool) -> ServerTls {
    let files = files();
    ServerTls {
        cert_file: files.server_cert.clone(),
        key_file: files.server_key.clone(),
        client_ca_file: mutual.then(|| files.ca.clone()),
    }
}

/// A client trusting the process's CA, presenting `identity`'s certificate if any.
pub fn client(identity: Option<&TlsFiles>) -> ClientTls {
    ClientTls {
        ca_file: Some(files().ca.clone()),
        identity: identity.map(|files| (files.client_cert.clone(), files.client_key.clone())),
    }
}

/// The address of a service at `addr`: `https://` when it serves TLS.
pub fn url(addr: std::net::SocketAddr, tls: Option<&ServerTls>) -> String {
    match tls {
        Some(_) => format!("https://{addr}"),
        None => format!("http://{addr}"),
    }
}

/// A channel the harness uses to reach a service started with `tls`: the process's client
/// certificate when the service is mutual.
pub fn harness_channel(
    addr: std::net::SocketAddr,
    tls: Option<&ServerTls>,
) -> tonic::transport::Endpoint {
    let client = match tls {
        Some(_) => client(Some(files())),
        None => ClientTls::default(),
    };
    client
        .endpoint(&url(addr, tls))
        .expect("an endpoint for the test service")
}
