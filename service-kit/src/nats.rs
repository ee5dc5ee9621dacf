//! Where NATS is: `LINKD_NATS_URL` holds one server URL or, as NATS clients conventionally
//! accept, a comma-separated seed list (`nats://a:4222,nats://b:4222`). A service connects to
//! the first seed it reaches (async-nats tries each once, in random order) and, once connected,
//! also learns the cluster's other nodes from the server it reached.

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use async_nats::ServerAddr;

/// The servers of a seed list (entries separated by commas, spaces around them ignored; a
/// server without a scheme is `nats://`, without a port 4222). `Err` says which entry is wrong.
pub fn seed_list(seeds: &str) -> Result<Vec<ServerAddr>, String> {
    let servers = seeds
        .split(',')
        .map(str::trim)
        .filter(|entry| !entry.is_empty())
        .map(|entry| {
            // An address that does not parse is named without what stood before an `@`, which
            // may be a password.
            let shown = entry
                .rsplit_once('@')
                .map_or(entry.to_owned(), |(_, host)| {
                    format!("<credentials removed>@{host}")
                });
            let server = entry
                .parse::<ServerAddr>()
                .map_err(|e| format!("{shown:?} is not a NATS server address: {e}"))?;
            // The address is logged: a secret inside it would be too.
            if server.has_user_pass() || server.password().is_some() {
                return Err(format!(
                    "{}:{} carries credentials in its address; give them in \
                     LINKD_NATS_CREDS_FILE, LINKD_NATS_NKEY_FILE, LINKD_NATS_USER with \
                     LINKD_NATS_PASSWORD_FILE, or LINKD_NATS_TOKEN_FILE instead",
                    server.host(),
                    server.port()
                ));
            }
            Ok(server)
        })
        .collect::<Result<Vec<_>, _>>()?;
    if servers.is_empty() {
        return Err("no NATS server given".into());
    }
    Ok(servers)
}

/// A client connected to one server of the seed list `seeds`, under the connection name `name`
/// (what the servers' monitoring shows: `nats server report connections`, `/connz`), proving
/// itself with `auth`.
///
/// Once connected, a lost connection is not an error here: async-nats reconnects by itself,
/// without limit, to any server it knows (the seeds and the nodes the cluster announced), the
/// first attempt at once and the next ones after 2 ms doubling up to 4 s.
pub async fn connect(
    seeds: &str,
    name: &str,
    auth: &NatsAuth,
) -> anyhow::Result<async_nats::Client> {
    let servers = seed_list(seeds).map_err(anyhow::Error::msg)?;
    auth.options()
        .await?
        .name(name)
        .connect(servers)
        .await
        .with_context(|| format!("connecting to NATS at {seeds}"))
}

/// How a service proves itself to NATS, and whether it requires TLS: read from
/// `LINKD_NATS_CREDS_FILE`, `LINKD_NATS_NKEY_FILE`, `LINKD_NATS_USER` with
/// `LINKD_NATS_PASSWORD_FILE`, `LINKD_NATS_TOKEN_FILE` (at most one way), and
/// `LINKD_NATS_TLS_CA_FILE`, `LINKD_NATS_TLS_CERT_FILE` with `LINKD_NATS_TLS_KEY_FILE`.
/// Secrets stay in files: the settings hold paths, never the secrets, so nothing here can leak
/// into a log line.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NatsAuth {
    /// A credentials file (user JWT and NKey seed, as `nsc` writes it).
    pub creds_file: Option<PathBuf>,
    /// A file holding an NKey seed.
    pub nkey_file: Option<PathBuf>,
    /// A user name, with the file holding its password.
    pub user: Option<(String, PathBuf)>,
    /// A file holding a token.
    pub token_file: Option<PathBuf>,
    /// The CA that signed the servers' certificates: TLS is then required.
    pub tls_ca_file: Option<PathBuf>,
    /// A client certificate and its key (for servers that verify clients).
    pub tls_client: Option<(PathBuf, PathBuf)>,
}

fn read_secret(path: &Path, what: &str) -> anyhow::Result<String> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading the NATS {what} from {}", path.display()))?;
    let text = text.trim().to_owned();
    anyhow::ensure!(
        !text.is_empty(),
        "the NATS {what} file {} is empty",
        path.display()
    );
    Ok(text)
}

impl NatsAuth {
    /// The connect options these settings make.
    async fn options(&self) -> anyhow::Result<async_nats::ConnectOptions> {
        let mut options = async_nats::ConnectOptions::new();
        if let Some(path) = &self.creds_file {
            options = options
                .credentials_file(path)
                .await
                .with_context(|| format!("reading the NATS credentials file {}", path.display()))?;
        }
        if let Some(path) = &self.nkey_file {
            options = options.nkey(read_secret(path, "NKey seed")?);
        }
        if let Some((user, path)) = &self.user {
            options = options.user_and_password(user.clone(), read_secret(path, "password")?);
        }
        if let Some(path) = &self.token_file {
            options = options.token(read_secret(path, "token")?);
        }
        if let Some(path) = &self.tls_ca_file {
            options = options
                .add_root_certificates(path.clone())
                .require_tls(true);
        }
        if let Some((cert, key)) = &self.tls_client {
            options = options
                .add_client_certificate(cert.clone(), key.clone())
                .require_tls(true);
        }
        Ok(options)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_url_or_a_comma_separated_seed_list() {
        assert_eq!(seed_list("nats://127.0.0.1:4222").unwrap().len(), 1);
        let seeds =
            seed_list(" nats://127.0.0.1:4223, nats://127.0.0.1:4224 ,127.0.0.1:4225,").unwrap();
        let ports: Vec<u16> = seeds.iter().map(ServerAddr::port).collect();
        assert_eq!(ports, [4223, 4224, 4225]);
    }

    #[test]
    fn credentials_inside_an_address_are_refused_without_repeating_them() {
        for seeds in [
            "nats://linkd:s3cret@127.0.0.1:4222",
            "nats://127.0.0.1:4223,nats://t0ken@127.0.0.1:4224",
        ] {
            let error = seed_list(seeds).unwrap_err();
            assert!(error.contains("LINKD_NATS_PASSWORD_FILE"), "{error}");
            assert!(
                !error.contains("s3cret") && !error.contains("t0ken"),
                "{error}"
            );
        }
        // Nor in an address that does not parse at all.
        for seeds in ["nats://u:s3cret@127.0.0.1:99999", "nats://u:s3cret@[::1"] {
            let error = seed_list(seeds).unwrap_err();
            assert!(!error.contains("s3cret"), "{error}");
        }
    }

    #[test]
    fn a_wrong_entry_is_named() {
        let error = seed_list("nats://127.0.0.1:4223,nats://127.0.0.1:99999").unwrap_err();
        assert!(error.contains("nats://127.0.0.1:99999"), "{error}");
        assert_eq!(seed_list(" , ").unwrap_err(), "no NATS server given");
    }
}
