//! Settings come from environment variables, read once at start; tests pass any lookup instead
//! (a `HashMap`), so nothing touches the process environment. A value that is set but blank
//! counts as unset. Secrets are wrapped in [`Redacted`] and print as `***`.

use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

/// A value that must never be printed.
#[derive(Clone, PartialEq, Eq)]
pub struct Redacted<T>(pub T);

impl<T> fmt::Debug for Redacted<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

/// Why the settings could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A required variable is not set.
    #[error("{0} is required but not set")]
    Missing(&'static str),
    /// A variable is set to something unusable.
    #[error("{key} is invalid: {reason}")]
    Invalid {
        /// The variable.
        key: &'static str,
        /// What is wrong with it.
        reason: String,
    },
}

impl ConfigError {
    /// `key` is set to something unusable, for `reason`.
    pub fn invalid(key: &'static str, reason: impl Into<String>) -> Self {
        Self::Invalid {
            key,
            reason: reason.into(),
        }
    }
}

/// Typed reads over a lookup (`std::env::var` in production, a map in tests).
#[derive(Debug)]
pub struct Env<F> {
    lookup: F,
}

impl<F: Fn(&str) -> Option<String>> Env<F> {
    /// Reads through `lookup`.
    pub fn new(lookup: F) -> Self {
        Self { lookup }
    }

    /// The value of `key`, if set and not blank.
    pub fn get(&self, key: &str) -> Option<String> {
        (self.lookup)(key).filter(|value| !value.trim().is_empty())
    }

    /// The value of `key`, or `default`.
    pub fn or(&self, key: &str, default: &str) -> String {
        self.get(key).unwrap_or_else(|| default.to_owned())
    }

    /// The value of `key`, which must be set.
    pub fn required(&self, key: &'static str) -> Result<String, ConfigError> {
        self.get(key).ok_or(ConfigError::Missing(key))
    }

    /// A whole number, or `default`.
    pub fn number(&self, key: &'static str, default: u64) -> Result<u64, ConfigError> {
        self.get(key).map_or(Ok(default), |raw| {
            raw.trim().parse().map_err(|_| {
                ConfigError::invalid(key, format!("expected a whole number, got {raw:?}"))
            })
        })
    }

    /// A whole number of seconds, at least 1, or `default`.
    pub fn seconds(&self, key: &'static str, default: u64) -> Result<Duration, ConfigError> {
        match self.number(key, default)? {
            0 => Err(ConfigError::invalid(key, "must be at least 1")),
            n => Ok(Duration::from_secs(n)),
        }
    }

    /// `on` or `off`, or `default`.
    pub fn switch(&self, key: &'static str, default: bool) -> Result<bool, ConfigError> {
        match self.get(key).as_deref() {
            None => Ok(default),
            Some("on") => Ok(true),
            Some("off") => Ok(false),
            Some(other) => Err(ConfigError::invalid(
                key,
                format!("expected on or off, got {other:?}"),
            )),
        }
    }

    /// How much a gRPC server takes on: `LINKD_MAX_CONCURRENT_CALLS` (default 256) calls in
    /// progress at once, each answered within `LINKD_CALL_TIMEOUT_SECONDS` (default 30).
    pub fn grpc_limits(&self) -> Result<crate::grpc::Limits, ConfigError> {
        let concurrent_calls = usize::try_from(self.number("LINKD_MAX_CONCURRENT_CALLS", 256)?)
            .ok()
            .filter(|n| (1..=100_000).contains(n))
            .ok_or_else(|| {
                ConfigError::invalid("LINKD_MAX_CONCURRENT_CALLS", "must be between 1 and 100000")
            })?;
        let call_timeout = self.seconds("LINKD_CALL_TIMEOUT_SECONDS", 30)?;
        if call_timeout.is_zero() {
            return Err(ConfigError::invalid(
                "LINKD_CALL_TIMEOUT_SECONDS",
                "must be at least 1 second",
            ));
        }
        Ok(crate::grpc::Limits {
            concurrent_calls,
            call_timeout,
        })
    }

    /// A listen address such as `127.0.0.1:50051`, or `default`.
    pub fn socket_addr(&self, key: &'static str, default: &str) -> Result<SocketAddr, ConfigError> {
        self.or(key, default)
            .parse()
            .map_err(|e| ConfigError::invalid(key, format!("{e}")))
    }

    /// How to authenticate to NATS and whether TLS is required ([`crate::nats::NatsAuth`]).
    pub fn nats_auth(&self) -> Result<crate::nats::NatsAuth, ConfigError> {
        let path = |key: &str| {
            self.get(key)
                .map(|value| value.trim().to_owned())
                .filter(|value| !value.is_empty())
                .map(std::path::PathBuf::from)
        };
        let user = match (path("LINKD_NATS_USER"), path("LINKD_NATS_PASSWORD_FILE")) {
            (Some(user), Some(password)) => Some((user.display().to_string(), password)),
            (None, None) => None,
            (Some(_), None) => {
                return Err(ConfigError::invalid(
                    "LINKD_NATS_PASSWORD_FILE",
                    "is required with LINKD_NATS_USER",
                ));
            }
            (None, Some(_)) => {
                return Err(ConfigError::invalid(
                    "LINKD_NATS_USER",
                    "is required with LINKD_NATS_PASSWORD_FILE",
                ));
            }
        };
        let tls_client = match (
            path("LINKD_NATS_TLS_CERT_FILE"),
            path("LINKD_NATS_TLS_KEY_FILE"),
        ) {
            (Some(cert), Some(key)) => Some((cert, key)),
            (None, None) => None,
            (Some(_), None) => {
                return Err(ConfigError::invalid(
                    "LINKD_NATS_TLS_KEY_FILE",
                    "is required with LINKD_NATS_TLS_CERT_FILE",
                ));
            }
            (None, Some(_)) => {
                return Err(ConfigError::invalid(
                    "LINKD_NATS_TLS_CERT_FILE",
                    "is required with LINKD_NATS_TLS_KEY_FILE",
                ));
            }
        };
        let auth = crate::nats::NatsAuth {
            creds_file: path("LINKD_NATS_CREDS_FILE"),
            nkey_file: path("LINKD_NATS_NKEY_FILE"),
            user,
            token_file: path("LINKD_NATS_TOKEN_FILE"),
            tls_ca_file: path("LINKD_NATS_TLS_CA_FILE"),
            tls_client,
        };
        let ways = [
            auth.creds_file.is_some(),
            auth.nkey_file.is_some(),
            auth.user.is_some(),
            auth.token_file.is_some(),
        ];
        if ways.into_iter().filter(|&way| way).count() > 1 {
            return Err(ConfigError::invalid(
                "LINKD_NATS_CREDS_FILE",
                "choose one of LINKD_NATS_CREDS_FILE, LINKD_NATS_NKEY_FILE, LINKD_NATS_USER (with \
                 LINKD_NATS_PASSWORD_FILE) and LINKD_NATS_TOKEN_FILE",
            ));
        }
        Ok(auth)
    }

    /// The bus key file named by `key`, or [`crate::bus_signing::BusKeys::Unsigned`] when
    /// `LINKD_BUS_UNSIGNED=on` (development only); one of the two is required, not both.
    pub fn bus_keys(&self, key: &'static str) -> Result<crate::bus_signing::BusKeys, ConfigError> {
        let file = self.get(key).filter(|value| !value.trim().is_empty());
        match (file, self.switch("LINKD_BUS_UNSIGNED", false)?) {
            (Some(file), false) => Ok(crate::bus_signing::BusKeys::File(file.trim().into())),
            (None, true) => Ok(crate::bus_signing::BusKeys::Unsigned),
            (Some(_), true) => Err(ConfigError::invalid(
                key,
                "is set together with LINKD_BUS_UNSIGNED=on: choose one",
            )),
            (None, false) => Err(ConfigError::invalid(
                key,
                "is required: the bus's messages are signed (ADR 0022); for development only, \
                 LINKD_BUS_UNSIGNED=on does without",
            )),
        }
    }

    /// A file path, or `None` when `key` is unset.
    fn path(&self, key: &str) -> Option<std::path::PathBuf> {
        self.get(key).map(|value| value.trim().into())
    }

    /// Two paths that go together (a certificate and its key): both, or neither.
    fn path_pair(
        &self,
        first: &'static str,
        second: &'static str,
    ) -> Result<Option<(std::path::PathBuf, std::path::PathBuf)>, ConfigError> {
        match (self.path(first), self.path(second)) {
            (Some(a), Some(b)) => Ok(Some((a, b))),
            (None, None) => Ok(None),
            (Some(_), None) => Err(ConfigError::invalid(
                second,
                format!("is required with {first}"),
            )),
            (None, Some(_)) => Err(ConfigError::invalid(
                first,
                format!("is required with {second}"),
            )),
        }
    }

    /// A gRPC server's TLS ([`crate::tls::ServerTls`]): the certificate file `cert` with the
    /// key file `key` turn TLS on; the CA file `client_ca` (only with them) makes it mutual.
    /// `None`: plain text.
    pub fn server_tls(
        &self,
        cert: &'static str,
        key: &'static str,
        client_ca: &'static str,
    ) -> Result<Option<crate::tls::ServerTls>, ConfigError> {
        match (self.path_pair(cert, key)?, self.path(client_ca)) {
            (Some((cert_file, key_file)), client_ca_file) => Ok(Some(crate::tls::ServerTls {
                cert_file,
                key_file,
                client_ca_file,
            })),
            (None, None) => Ok(None),
            (None, Some(_)) => Err(ConfigError::invalid(
                client_ca,
                format!("needs TLS on: set {cert} and {key} too"),
            )),
        }
    }

    /// How a gRPC client reaches linkd over TLS ([`crate::tls::ClientTls`]):
    /// `LINKD_GRPC_CA_FILE`, and `LINKD_GRPC_CERT_FILE` with `LINKD_GRPC_KEY_FILE`.
    pub fn client_tls(&self) -> Result<crate::tls::ClientTls, ConfigError> {
        Ok(crate::tls::ClientTls {
            ca_file: self.path("LINKD_GRPC_CA_FILE"),
            identity: self.path_pair("LINKD_GRPC_CERT_FILE", "LINKD_GRPC_KEY_FILE")?,
        })
    }

    /// A listen address, or `None` when `key` is unset or empty (the feature it serves is off).
    pub fn optional_socket_addr(
        &self,
        key: &'static str,
    ) -> Result<Option<SocketAddr>, ConfigError> {
        match self.get(key).filter(|value| !value.trim().is_empty()) {
            None => Ok(None),
            Some(value) => value
                .trim()
                .parse()
                .map(Some)
                .map_err(|e| ConfigError::invalid(key, format!("{e}"))),
        }
    }

    /// A NATS server URL or comma-separated seed list ([`crate::nats::seed_list`]), or
    /// `default`: a wrong entry is a configuration error at start, not a connection that fails
    /// for ever.
    pub fn nats_servers(&self, key: &'static str, default: &str) -> Result<String, ConfigError> {
        let seeds = self.or(key, default);
        crate::nats::seed_list(&seeds).map_err(|reason| ConfigError::invalid(key, reason))?;
        Ok(seeds)
    }

    /// A JetStream stream or consumer name: letters, digits, `-` and `_`, or `default`.
    pub fn nats_name(&self, key: &'static str, default: &str) -> Result<String, ConfigError> {
        let name = self.or(key, default);
        if !is_nats_token(&name) {
            return Err(ConfigError::invalid(
                key,
                "use letters, digits, - and _ only",
            ));
        }
        Ok(name)
    }

    /// A subject prefix: dot-separated tokens of letters, digits, `-` and `_` (no wildcards), or
    /// `default`.
    pub fn subject_prefix(&self, key: &'static str, default: &str) -> Result<String, ConfigError> {
        let prefix = self.or(key, default);
        if !prefix.split('.').all(is_nats_token) {
            return Err(ConfigError::invalid(
                key,
                "use dot-separated tokens of letters, digits, - and _ (no wildcards)",
            ));
        }
        Ok(prefix)
    }
}

fn is_nats_token(token: &str) -> bool {
    !token.is_empty()
        && token
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_".contains(c))
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Env<impl Fn(&str) -> Option<String>> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        Env::new(move |key| map.get(key).cloned())
    }

    #[test]
    fn a_blank_value_counts_as_unset() {
        let env = env(&[("A", "  ")]);
        assert_eq!(env.get("A"), None);
        assert!(matches!(env.required("A"), Err(ConfigError::Missing("A"))));
        assert_eq!(env.number("A", 7).ok(), Some(7));
    }

    #[test]
    fn numbers_durations_and_switches_are_checked() {
        let env = env(&[("N", "x"), ("S", "0"), ("T", "12"), ("W", "yes")]);
        assert!(
            env.number("N", 1)
                .unwrap_err()
                .to_string()
                .contains("N is invalid")
        );
        assert!(env.seconds("S", 1).is_err());
        assert_eq!(env.seconds("T", 1).ok(), Some(Duration::from_secs(12)));
        assert!(env.switch("W", true).is_err());
        assert_eq!(env.switch("unset", false).ok(), Some(false));
    }

    #[test]
    fn nats_names_and_prefixes_refuse_wildcards_and_dots_where_they_do_not_belong() {
        let env = env(&[("S", "a.b"), ("P", "linkd.*"), ("Q", "linkd.events")]);
        assert!(env.nats_name("S", "x").is_err());
        assert!(env.subject_prefix("P", "x").is_err());
        assert_eq!(
            env.subject_prefix("Q", "x").ok().as_deref(),
            Some("linkd.events")
        );
        assert_eq!(
            env.nats_name("unset", "LINKD_EVENTS").ok().as_deref(),
            Some("LINKD_EVENTS")
        );
    }

    #[test]
    fn tls_files_come_in_pairs_and_a_client_ca_needs_tls() {
        let keys = ("C", "K", "CA");
        let read = |pairs: &[(&str, &str)]| env(pairs).server_tls(keys.0, keys.1, keys.2);
        assert_eq!(read(&[]).unwrap(), None);
        assert!(
            read(&[("C", "c.pem")])
                .unwrap_err()
                .to_string()
                .contains("K is invalid: is required with C")
        );
        assert!(read(&[("K", "k.pem")]).is_err());
        assert!(
            read(&[("CA", "ca.pem")])
                .unwrap_err()
                .to_string()
                .contains("CA is invalid: needs TLS on")
        );
        let tls = read(&[("C", "c.pem"), ("K", " k.pem "), ("CA", "ca.pem")])
            .unwrap()
            .unwrap();
        assert_eq!(tls.key_file, std::path::PathBuf::from("k.pem"));
        assert!(tls.mutual());
        let client = env(&[("LINKD_GRPC_CERT_FILE", "c.pem")]).client_tls();
        assert!(client.is_err());
        let client = env(&[("LINKD_GRPC_CA_FILE", "ca.pem")])
            .client_tls()
            .unwrap();
        assert!(client.is_configured() && client.identity.is_none());
    }

    #[test]
    fn a_redacted_value_never_prints() {
        assert_eq!(format!("{:?}", Redacted("secret")), "***");
    }
}
