//! portal-web's settings, from `LINKD_WEB_*` environment variables (README, Configuration).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use linkctl::dev::DevKeys;
use service_kit::config::{ConfigError, Env};

/// Everything portal-web needs to run.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Where the page is served (`LINKD_WEB_ADDR`, default `127.0.0.1:8080`).
    pub addr: SocketAddr,
    /// The address people type (`LINKD_WEB_PUBLIC_URL`, default `http://<addr>`). An `https://`
    /// address marks the session cookie `Secure` (and names it `__Host-…`): serve it over TLS,
    /// e.g. behind a terminating proxy.
    pub public_url: String,
    /// The command service (`LINKD_WEB_COMMAND_URL`, default `http://127.0.0.1:50051`).
    pub command_url: String,
    /// The projection service (`LINKD_WEB_QUERY_URL`, default `http://127.0.0.1:50052`).
    pub query_url: String,
    /// How the page reaches `https://` services (`LINKD_GRPC_CA_FILE`, and
    /// `LINKD_GRPC_CERT_FILE` with `LINKD_GRPC_KEY_FILE` for services that require a client
    /// certificate).
    pub grpc_tls: service_kit::tls::ClientTls,
    /// How old a sign-in may be for the calls that need a recent one
    /// (`LINKD_REAUTH_MAX_AGE_SECONDS`, default 300, the services' own setting): older, and the
    /// page asks the holder to re-authenticate before calling.
    pub reauth_max_age: Duration,
    /// Sessions kept at most (`LINKD_WEB_MAX_SESSIONS`, default 10000); beyond, the least
    /// recently seen is dropped.
    pub max_sessions: usize,
    /// A session unused this long ends (`LINKD_WEB_SESSION_IDLE_SECONDS`, default 1800).
    pub session_idle: Duration,
    /// How many proxies in front of portal-web append to `X-Forwarded-For`
    /// (`LINKD_TRUSTED_PROXY_HOPS`, default 0: the browser's address is the TCP peer's).
    pub trusted_proxy_hops: usize,
    /// Development sign-in: signers for portal tokens, loaded from the folder
    /// `LINKD_WEB_DEV_KEYS_DIR` (written by `linkctl dev keys`). Unset (the default): the page
    /// offers no sign-in of its own, and a real portal's login must stand in front of it.
    pub dev_signers: Option<DevKeys>,
}

impl Settings {
    /// Reads the settings from the process environment.
    pub fn from_env() -> anyhow::Result<Self> {
        Self::from_lookup(|key| std::env::var(key).ok())
    }

    /// Reads the settings through `lookup`.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> anyhow::Result<Self> {
        let env = Env::new(lookup);
        let addr = env.socket_addr("LINKD_WEB_ADDR", "127.0.0.1:8080")?;
        let public_url = env.or("LINKD_WEB_PUBLIC_URL", &format!("http://{addr}"));
        if !(public_url.starts_with("http://") || public_url.starts_with("https://")) {
            return Err(ConfigError::invalid(
                "LINKD_WEB_PUBLIC_URL",
                "expected an http:// or https:// address",
            )
            .into());
        }
        let max_sessions = usize::try_from(env.number("LINKD_WEB_MAX_SESSIONS", 10_000)?)
            .ok()
            .filter(|n| (1..=10_000_000).contains(n))
            .ok_or_else(|| {
                ConfigError::invalid("LINKD_WEB_MAX_SESSIONS", "must be between 1 and 10000000")
            })?;
        let trusted_proxy_hops = usize::try_from(env.number("LINKD_TRUSTED_PROXY_HOPS", 0)?)
            .ok()
            .filter(|n| *n <= 10)
            .ok_or_else(|| {
                ConfigError::invalid("LINKD_TRUSTED_PROXY_HOPS", "must be between 0 and 10")
            })?;
        let dev_signers = match env.get("LINKD_WEB_DEV_KEYS_DIR") {
            Some(dir) => Some(DevKeys::load(&PathBuf::from(dir))?),
            None => None,
        };
        Ok(Self {
            addr,
            public_url,
            command_url: env.or("LINKD_WEB_COMMAND_URL", "http://127.0.0.1:50051"),
            query_url: env.or("LINKD_WEB_QUERY_URL", "http://127.0.0.1:50052"),
            grpc_tls: env.client_tls()?,
            reauth_max_age: env.seconds("LINKD_REAUTH_MAX_AGE_SECONDS", 300)?,
            max_sessions,
            session_idle: env.seconds("LINKD_WEB_SESSION_IDLE_SECONDS", 1800)?,
            trusted_proxy_hops,
            dev_signers,
        })
    }

    /// Whether the page is served over TLS (the cookie is then `Secure`).
    pub fn secure(&self) -> bool {
        self.public_url.starts_with("https://")
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests")]

    use super::*;

    fn settings(pairs: &[(&str, &str)]) -> anyhow::Result<Settings> {
        let pairs: Vec<(String, String)> = pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        Settings::from_lookup(move |key| {
            pairs.iter().find(|(k, _)| k == key).map(|(_, v)| v.clone())
        })
    }

    #[test]
    fn defaults_serve_plain_http_on_8080_without_a_sign_in() {
        let settings = settings(&[]).unwrap();
        assert_eq!(settings.addr.to_string(), "127.0.0.1:8080");
        assert_eq!(settings.public_url, "http://127.0.0.1:8080");
        assert!(!settings.secure());
        assert!(settings.dev_signers.is_none());
        assert_eq!(settings.reauth_max_age, Duration::from_secs(300));
    }

    #[test]
    fn an_https_public_address_makes_the_cookie_secure() {
        let settings = settings(&[("LINKD_WEB_PUBLIC_URL", "https://portal.example.lu")]).unwrap();
        assert!(settings.secure());
    }

    #[test]
    fn nonsense_is_refused_naming_the_setting() {
        for (key, value) in [
            ("LINKD_WEB_PUBLIC_URL", "portal.example.lu"),
            ("LINKD_WEB_MAX_SESSIONS", "0"),
            ("LINKD_TRUSTED_PROXY_HOPS", "99"),
            ("LINKD_WEB_ADDR", "somewhere"),
        ] {
            let error = settings(&[(key, value)]).unwrap_err().to_string();
            assert!(error.contains(key), "{key}: {error}");
        }
    }

    #[test]
    fn a_missing_dev_keys_folder_is_an_error_not_a_silent_fallback() {
        let error = settings(&[("LINKD_WEB_DEV_KEYS_DIR", "/nonexistent/linkd-keys")])
            .unwrap_err()
            .to_string();
        assert!(error.contains("linkctl dev keys"), "{error}");
    }
}
