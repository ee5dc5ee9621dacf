//! Settings, read once from the environment (or any lookup, in tests). Secrets print as `***`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use service_kit::bus_signing::BusKeys;
use service_kit::config::Env;
pub use service_kit::config::{ConfigError, Redacted};
use service_kit::nats::NatsAuth;

/// Everything the command service needs to start.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Where the gRPC server listens (`LINKD_COMMAND_GRPC_ADDR`, default `127.0.0.1:50051`).
    pub grpc_addr: SocketAddr,
    /// Where Prometheus scrapes `GET /metrics` (`LINKD_COMMAND_METRICS_ADDR`, e.g. `127.0.0.1:9101`;
    /// unset or empty: no metrics endpoint).
    pub metrics_addr: Option<SocketAddr>,
    /// TLS on the gRPC server (`LINKD_COMMAND_TLS_CERT_FILE` with `LINKD_COMMAND_TLS_KEY_FILE`;
    /// with `LINKD_COMMAND_TLS_CLIENT_CA_FILE` too, callers must present a certificate that CA
    /// issued). `None`: plain text.
    pub tls: Option<service_kit::tls::ServerTls>,
    /// The event store database (`LINKD_COMMAND_DATABASE_URL`, required).
    pub database_url: Redacted<String>,
    /// Pool size (`LINKD_COMMAND_DB_MAX_CONNECTIONS`, default 10, at least 2: the lifecycle
    /// scheduler holds a connection for its round while its work takes another).
    pub db_max_connections: u32,
    /// PEM file with the identity provider's public keys (`LINKD_IDP_PUBLIC_KEYS_FILE`, required).
    pub idp_public_keys_file: PathBuf,
    /// Audience portal JWTs must name (`LINKD_IDP_AUDIENCE`, default `linkd-portal`).
    pub idp_audience: String,
    /// Issuer portal JWTs must name (`LINKD_IDP_ISSUER`, required).
    pub idp_issuer: String,
    /// The longest a portal JWT may live and the oldest it may be, from its `iat`
    /// (`LINKD_IDP_MAX_TOKEN_LIFETIME_SECONDS`, default 3600).
    pub idp_max_token_lifetime: Duration,
    /// PEM file with the keys that sign LuxTrust assertions (`LINKD_LUXTRUST_PUBLIC_KEYS_FILE`, required).
    pub luxtrust_public_keys_file: PathBuf,
    /// Audience LuxTrust assertions must name (`LINKD_LUXTRUST_AUDIENCE`, default
    /// `linkd-luxtrust`); must differ from the portal audience, so neither token passes for the
    /// other even if one key signed both.
    pub luxtrust_audience: String,
    /// Issuer LuxTrust assertions must name (`LINKD_LUXTRUST_ISSUER`, required).
    pub luxtrust_issuer: String,
    /// The longest a LuxTrust assertion may live and the oldest it may be, from its `iat`
    /// (`LINKD_LUXTRUST_MAX_ASSERTION_AGE_SECONDS`, default 600).
    pub luxtrust_max_assertion_age: Duration,
    /// The key-encryption keys that wrap the data keys personal fields are sealed under
    /// (`LINKD_KEK_FILE`, required: one `<id> <base64 of 32 random bytes>` per line, the last
    /// one current; docs/adr/0025).
    pub kek_file: PathBuf,
    /// Server-side pepper for secret-code verifiers (`LINKD_SECRET_CODE_PEPPER`, required, ≥ 32 bytes).
    pub secret_code_pepper: Redacted<Vec<u8>>,
    /// Lifetime of a link QR code (`LINKD_QR_TTL_SECONDS`, default 120).
    pub qr_ttl: Duration,
    /// Lifetime of a link attempt (`LINKD_LINK_ATTEMPT_TTL_SECONDS`, default 600).
    pub link_attempt_ttl: Duration,
    /// Maximum age of `auth_time` for re-authenticated calls (`LINKD_REAUTH_MAX_AGE_SECONDS`, default 300).
    pub reauth_max_age: Duration,
    /// How long the holder has to confirm a scanned QR code in the browser, or `None` if QR
    /// links need no confirmation (`LINKD_QR_CONFIRMATION`: `required`, the default, or `off`;
    /// `LINKD_QR_CONFIRMATION_SECONDS`, default 120).
    pub qr_confirmation: Option<Duration>,
    /// How many trusted reverse proxies stand in front of the service and append the client's
    /// address to `x-forwarded-for` (`LINKD_TRUSTED_PROXY_HOPS`, default 0: the TCP peer is the
    /// client).
    pub trusted_proxy_hops: usize,
    /// The most `WatchLinkQr` streams served at once (`LINKD_MAX_QR_WATCHES`, default 200).
    pub max_qr_watches: usize,
    /// Unused devices: when they are warned and unlinked, and how often the scheduler looks
    /// (`LINKD_INACTIVITY_DAYS`, default 180; `LINKD_INACTIVITY_WARNING_DAYS`, default 14;
    /// `LINKD_LIFECYCLE_EVERY_SECONDS`, default 3600).
    pub lifecycle: crate::lifecycle::LifecycleSettings,
    /// How long a call's answer is replayed to a retry with the same `request_id`, and kept
    /// (`LINKD_RETENTION_REPLAY_HOURS`, default 24; docs/privacy.md).
    pub replay_retention: Duration,
    /// How long the data key of a link attempt that never named its account is kept before the
    /// sweeper destroys it (`LINKD_RETENTION_UNCLAIMED_ATTEMPT_DAYS`, default 30; docs/privacy.md).
    pub unclaimed_attempt_retention: Duration,
    /// The most devices one account may link (`LINKD_MAX_DEVICES_PER_ACCOUNT`, default 5).
    pub max_devices_per_account: u32,
    /// Rate limits (`LINKD_RATE_LIMITS`: overrides of the defaults, `rule=burst/seconds,…`).
    pub rate_limits: crate::limits::Policy,
    /// The most secret-code hashing jobs held at once, running or waiting (`LINKD_HASH_CAPACITY`,
    /// default 32); beyond, `RESOURCE_EXHAUSTED` at once.
    pub hash_capacity: usize,
    /// How much the gRPC server takes on (`LINKD_MAX_CONCURRENT_CALLS`, `LINKD_CALL_TIMEOUT_SECONDS`).
    pub grpc_limits: service_kit::grpc::Limits,
    /// The NATS server or comma-separated seed list (`LINKD_NATS_URL`, default
    /// `nats://127.0.0.1:4222`).
    pub nats_url: String,
    /// The JetStream stream events are published to (`LINKD_STREAM`, default `LINKD_EVENTS`).
    pub stream: String,
    /// The stream's bounds (`LINKD_STREAM_MAX_AGE_DAYS`, default 30; `LINKD_STREAM_MAX_BYTES`,
    /// default 10 GiB).
    pub stream_limits: crate::relay::StreamLimits,
    /// Copies of the stream kept by a NATS cluster when the relay creates it
    /// (`LINKD_STREAM_REPLICAS`, 1 to 5, default 1: a development server has one node).
    pub stream_replicas: usize,
    /// Subject prefix (`LINKD_SUBJECT_PREFIX`, default `linkd.events`).
    pub subject_prefix: String,
    /// Whether this instance runs the relay (`LINKD_RELAY`, default `on`; one leader is elected
    /// among the instances that do).
    pub relay_enabled: bool,
    /// The Ed25519 private key the relay signs every message with
    /// (`LINKD_BUS_SIGNING_KEY_FILE`, PKCS#8 PEM; required when the relay is on, unless
    /// `LINKD_BUS_UNSIGNED=on` for development).
    pub bus_signing_key: BusKeys,
    /// How the relay proves itself to NATS, and whether it requires TLS (`LINKD_NATS_*_FILE`,
    /// `LINKD_NATS_USER`; README, Configuration).
    pub nats_auth: NatsAuth,
}

impl Settings {
    /// Reads the settings from the process environment.
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_lookup(|key| std::env::var(key).ok())
    }

    /// Reads the settings through `get`, so tests need not touch the environment.
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let env = Env::new(get);
        let pepper = env.required("LINKD_SECRET_CODE_PEPPER")?.into_bytes();
        if pepper.len() < 32 {
            return Err(ConfigError::invalid(
                "LINKD_SECRET_CODE_PEPPER",
                "must be at least 32 bytes of random text",
            ));
        }
        let db_max_connections = u32::try_from(env.number("LINKD_COMMAND_DB_MAX_CONNECTIONS", 10)?)
            .ok()
            .filter(|n| *n >= 2)
            .ok_or_else(|| {
                ConfigError::invalid(
                    "LINKD_COMMAND_DB_MAX_CONNECTIONS",
                    "must be between 2 and 4294967295 (a scheduler's round holds one connection \
                     while its work takes another)",
                )
            })?;
        let link_attempt_ttl = env.seconds("LINKD_LINK_ATTEMPT_TTL_SECONDS", 600)?;
        let idp_audience = env.or("LINKD_IDP_AUDIENCE", "linkd-portal");
        let luxtrust_audience = env.or("LINKD_LUXTRUST_AUDIENCE", "linkd-luxtrust");
        if idp_audience == luxtrust_audience {
            return Err(ConfigError::invalid(
                "LINKD_LUXTRUST_AUDIENCE",
                "must differ from LINKD_IDP_AUDIENCE, or a LuxTrust assertion could pass for a \
                 portal token",
            ));
        }
        Ok(Self {
            grpc_addr: env.socket_addr("LINKD_COMMAND_GRPC_ADDR", "127.0.0.1:50051")?,
            metrics_addr: env.optional_socket_addr("LINKD_COMMAND_METRICS_ADDR")?,
            tls: env.server_tls(
                "LINKD_COMMAND_TLS_CERT_FILE",
                "LINKD_COMMAND_TLS_KEY_FILE",
                "LINKD_COMMAND_TLS_CLIENT_CA_FILE",
            )?,
            database_url: Redacted(env.required("LINKD_COMMAND_DATABASE_URL")?),
            db_max_connections,
            idp_public_keys_file: env.required("LINKD_IDP_PUBLIC_KEYS_FILE")?.into(),
            idp_audience,
            idp_issuer: env.required("LINKD_IDP_ISSUER")?,
            idp_max_token_lifetime: env.seconds("LINKD_IDP_MAX_TOKEN_LIFETIME_SECONDS", 3600)?,
            luxtrust_public_keys_file: env.required("LINKD_LUXTRUST_PUBLIC_KEYS_FILE")?.into(),
            luxtrust_audience,
            luxtrust_issuer: env.required("LINKD_LUXTRUST_ISSUER")?,
            luxtrust_max_assertion_age: env
                .seconds("LINKD_LUXTRUST_MAX_ASSERTION_AGE_SECONDS", 600)?,
            kek_file: env.required("LINKD_KEK_FILE")?.into(),
            secret_code_pepper: Redacted(pepper),
            qr_ttl: env.seconds("LINKD_QR_TTL_SECONDS", 120)?,
            link_attempt_ttl,
            reauth_max_age: env.seconds("LINKD_REAUTH_MAX_AGE_SECONDS", 300)?,
            qr_confirmation: qr_confirmation(&env, link_attempt_ttl)?,
            trusted_proxy_hops: usize::try_from(env.number("LINKD_TRUSTED_PROXY_HOPS", 0)?)
                .ok()
                .filter(|hops| *hops <= 16)
                .ok_or_else(|| {
                    ConfigError::invalid("LINKD_TRUSTED_PROXY_HOPS", "must be between 0 and 16")
                })?,
            lifecycle: lifecycle(&env)?,
            unclaimed_attempt_retention: unclaimed_attempt_retention(&env, link_attempt_ttl)?,
            replay_retention: replay_retention(&env)?,
            max_devices_per_account: u32::try_from(env.number("LINKD_MAX_DEVICES_PER_ACCOUNT", 5)?)
                .ok()
                .filter(|n| (1..=100).contains(n))
                .ok_or_else(|| {
                    ConfigError::invalid(
                        "LINKD_MAX_DEVICES_PER_ACCOUNT",
                        "must be between 1 and 100",
                    )
                })?,
            rate_limits: crate::limits::Policy::parse(&env.or("LINKD_RATE_LIMITS", ""))
                .map_err(|reason| ConfigError::invalid("LINKD_RATE_LIMITS", reason))?,
            hash_capacity: usize::try_from(env.number("LINKD_HASH_CAPACITY", 32)?)
                .ok()
                .filter(|n| (1..=10_000).contains(n))
                .ok_or_else(|| {
                    ConfigError::invalid("LINKD_HASH_CAPACITY", "must be between 1 and 10000")
                })?,
            max_qr_watches: usize::try_from(env.number("LINKD_MAX_QR_WATCHES", 200)?)
                .ok()
                .filter(|n| (1..=100_000).contains(n))
                .ok_or_else(|| {
                    ConfigError::invalid("LINKD_MAX_QR_WATCHES", "must be between 1 and 100000")
                })?,
            grpc_limits: env.grpc_limits()?,
            nats_url: env.nats_servers("LINKD_NATS_URL", "nats://127.0.0.1:4222")?,
            stream: env.nats_name("LINKD_STREAM", "LINKD_EVENTS")?,
            subject_prefix: env.subject_prefix("LINKD_SUBJECT_PREFIX", "linkd.events")?,
            stream_limits: stream_limits(&env)?,
            stream_replicas: usize::try_from(env.number("LINKD_STREAM_REPLICAS", 1)?)
                .ok()
                .filter(|n| (1..=5).contains(n))
                .ok_or_else(|| {
                    ConfigError::invalid(
                        "LINKD_STREAM_REPLICAS",
                        "must be between 1 and 5 (JetStream's limit)",
                    )
                })?,
            bus_signing_key: if env.switch("LINKD_RELAY", true)? {
                env.bus_keys("LINKD_BUS_SIGNING_KEY_FILE")?
            } else {
                BusKeys::Unsigned
            },
            relay_enabled: env.switch("LINKD_RELAY", true)?,
            nats_auth: env.nats_auth()?,
        })
    }
}

/// `LINKD_INACTIVITY_DAYS`, `LINKD_INACTIVITY_WARNING_DAYS`, `LINKD_LIFECYCLE_EVERY_SECONDS`.
fn lifecycle<F: Fn(&str) -> Option<String>>(
    env: &Env<F>,
) -> Result<crate::lifecycle::LifecycleSettings, ConfigError> {
    const DAY: u64 = 24 * 3600;
    let after = env.number("LINKD_INACTIVITY_DAYS", 180)?;
    let warning = env.number("LINKD_INACTIVITY_WARNING_DAYS", 14)?;
    if !(2..=3650).contains(&after) || warning == 0 || warning >= after {
        return Err(ConfigError::invalid(
            "LINKD_INACTIVITY_WARNING_DAYS",
            "must be at least 1 and less than LINKD_INACTIVITY_DAYS (2 to 3650)",
        ));
    }
    let every = env.seconds("LINKD_LIFECYCLE_EVERY_SECONDS", 3600)?;
    if every.is_zero() {
        return Err(ConfigError::invalid(
            "LINKD_LIFECYCLE_EVERY_SECONDS",
            "must be at least 1",
        ));
    }
    Ok(crate::lifecycle::LifecycleSettings {
        after: Duration::from_secs(after * DAY),
        warning: Duration::from_secs(warning * DAY),
        every,
    })
}

/// `LINKD_RETENTION_REPLAY_HOURS`: whole hours, 1 to 720 (a retry comes within seconds or
/// minutes; a day covers a client that retries after its own restart).
fn replay_retention<F: Fn(&str) -> Option<String>>(env: &Env<F>) -> Result<Duration, ConfigError> {
    let hours = env.number("LINKD_RETENTION_REPLAY_HOURS", 24)?;
    if !(1..=720).contains(&hours) {
        return Err(ConfigError::invalid(
            "LINKD_RETENTION_REPLAY_HOURS",
            "must be between 1 and 720",
        ));
    }
    Ok(Duration::from_secs(hours * 3600))
}

/// `LINKD_RETENTION_UNCLAIMED_ATTEMPT_DAYS`: whole days, longer than an attempt lives (an attempt
/// still able to name its account must keep its key).
fn unclaimed_attempt_retention<F: Fn(&str) -> Option<String>>(
    env: &Env<F>,
    link_attempt_ttl: Duration,
) -> Result<Duration, ConfigError> {
    let days = env.number("LINKD_RETENTION_UNCLAIMED_ATTEMPT_DAYS", 30)?;
    let period = Duration::from_secs(days.saturating_mul(24 * 3600));
    if !(1..=3650).contains(&days) || period <= link_attempt_ttl {
        return Err(ConfigError::invalid(
            "LINKD_RETENTION_UNCLAIMED_ATTEMPT_DAYS",
            "must be between 1 and 3650, and longer than LINKD_LINK_ATTEMPT_TTL_SECONDS",
        ));
    }
    Ok(period)
}

/// `LINKD_STREAM_MAX_AGE_DAYS` and `LINKD_STREAM_MAX_BYTES`.
fn stream_limits<F: Fn(&str) -> Option<String>>(
    env: &Env<F>,
) -> Result<crate::relay::StreamLimits, ConfigError> {
    let days = env.number("LINKD_STREAM_MAX_AGE_DAYS", 30)?;
    if !(1..=3650).contains(&days) {
        return Err(ConfigError::invalid(
            "LINKD_STREAM_MAX_AGE_DAYS",
            "must be between 1 and 3650",
        ));
    }
    let max_bytes = i64::try_from(env.number("LINKD_STREAM_MAX_BYTES", 10 << 30)?)
        .ok()
        .filter(|bytes| *bytes >= 1 << 20)
        .ok_or_else(|| {
            ConfigError::invalid("LINKD_STREAM_MAX_BYTES", "must be at least 1048576 (1 MiB)")
        })?;
    Ok(crate::relay::StreamLimits {
        max_age: Duration::from_secs(days * 24 * 3600),
        max_bytes,
    })
}

/// `LINKD_QR_CONFIRMATION` and its window.
fn qr_confirmation<F: Fn(&str) -> Option<String>>(
    env: &Env<F>,
    link_attempt_ttl: Duration,
) -> Result<Option<Duration>, ConfigError> {
    let window = env.seconds("LINKD_QR_CONFIRMATION_SECONDS", 120)?;
    match env.or("LINKD_QR_CONFIRMATION", "required").as_str() {
        "required" if window.is_zero() || window > link_attempt_ttl => Err(ConfigError::invalid(
            "LINKD_QR_CONFIRMATION_SECONDS",
            "must be at least 1 second and at most LINKD_LINK_ATTEMPT_TTL_SECONDS",
        )),
        "required" => Ok(Some(window)),
        "off" => Ok(None),
        other => Err(ConfigError::invalid(
            "LINKD_QR_CONFIRMATION",
            format!("expected required or off, got {other:?}"),
        )),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;
    use service_kit::nats::NatsAuth;

    fn base() -> HashMap<&'static str, String> {
        HashMap::from([
            ("LINKD_COMMAND_DATABASE_URL", "postgres://x/y".to_owned()),
            ("LINKD_IDP_PUBLIC_KEYS_FILE", "/keys/idp.pem".to_owned()),
            ("LINKD_LUXTRUST_PUBLIC_KEYS_FILE", "/keys/lt.pem".to_owned()),
            ("LINKD_SECRET_CODE_PEPPER", "p".repeat(32)),
            ("LINKD_KEK_FILE", "/keys/kek".to_owned()),
            ("LINKD_BUS_SIGNING_KEY_FILE", "/keys/bus.key.pem".to_owned()),
            ("LINKD_IDP_ISSUER", "https://idp.example.lu".to_owned()),
            (
                "LINKD_LUXTRUST_ISSUER",
                "https://luxtrust.example.lu".to_owned(),
            ),
        ])
    }

    fn read(env: &HashMap<&'static str, String>) -> Result<Settings, ConfigError> {
        Settings::from_lookup(|key| env.get(key).cloned())
    }

    #[test]
    fn defaults_apply_when_only_required_settings_are_given() {
        let settings = read(&base()).unwrap();
        assert_eq!(settings.qr_ttl, Duration::from_secs(120));
        assert_eq!(settings.reauth_max_age, Duration::from_secs(300));
        assert_eq!(settings.grpc_addr.port(), 50051);
        assert_eq!(settings.qr_confirmation, Some(Duration::from_secs(120)));
        assert_eq!(settings.trusted_proxy_hops, 0);
        assert_eq!(
            settings.unclaimed_attempt_retention,
            Duration::from_secs(30 * 24 * 3600)
        );
        assert_eq!(settings.replay_retention, Duration::from_secs(24 * 3600));
    }

    #[test]
    fn the_pool_has_room_for_a_round_and_its_work() {
        let mut env = base();
        for bad in ["0", "1", "x"] {
            env.insert("LINKD_COMMAND_DB_MAX_CONNECTIONS", bad.into());
            let error = read(&env).unwrap_err().to_string();
            assert!(
                error.contains("LINKD_COMMAND_DB_MAX_CONNECTIONS"),
                "{bad}: {error}"
            );
        }
        env.insert("LINKD_COMMAND_DB_MAX_CONNECTIONS", "2".into());
        assert_eq!(read(&env).unwrap().db_max_connections, 2);
    }

    #[test]
    fn replays_are_kept_between_an_hour_and_a_month() {
        let mut env = base();
        env.insert("LINKD_RETENTION_REPLAY_HOURS", "2".into());
        assert_eq!(
            read(&env).unwrap().replay_retention,
            Duration::from_secs(2 * 3600)
        );
        for hours in ["0", "721", "x"] {
            env.insert("LINKD_RETENTION_REPLAY_HOURS", hours.into());
            let error = read(&env).unwrap_err().to_string();
            assert!(
                error.contains("LINKD_RETENTION_REPLAY_HOURS"),
                "{hours}: {error}"
            );
        }
    }

    #[test]
    fn an_unclaimed_attempts_key_outlives_the_attempt() {
        let mut env = base();
        env.insert("LINKD_RETENTION_UNCLAIMED_ATTEMPT_DAYS", "2".into());
        assert_eq!(
            read(&env).unwrap().unclaimed_attempt_retention,
            Duration::from_secs(2 * 24 * 3600)
        );
        for (days, ttl) in [("0", "600"), ("3651", "600"), ("1", "86400")] {
            env.insert("LINKD_RETENTION_UNCLAIMED_ATTEMPT_DAYS", days.into());
            env.insert("LINKD_LINK_ATTEMPT_TTL_SECONDS", ttl.into());
            let error = read(&env).unwrap_err().to_string();
            assert!(
                error.contains("LINKD_RETENTION_UNCLAIMED_ATTEMPT_DAYS"),
                "{days} days, {ttl} s: {error}"
            );
        }
    }

    #[test]
    fn the_relay_signs_unless_told_it_is_a_development_set_up() {
        let mut env = base();
        assert_eq!(
            read(&env).unwrap().bus_signing_key,
            BusKeys::File("/keys/bus.key.pem".into())
        );
        env.remove("LINKD_BUS_SIGNING_KEY_FILE");
        let error = read(&env).unwrap_err().to_string();
        assert!(error.contains("LINKD_BUS_SIGNING_KEY_FILE"), "{error}");
        env.insert("LINKD_BUS_UNSIGNED", "on".into());
        assert_eq!(read(&env).unwrap().bus_signing_key, BusKeys::Unsigned);
        env.insert("LINKD_BUS_SIGNING_KEY_FILE", "/keys/bus.key.pem".into());
        let error = read(&env).unwrap_err().to_string();
        assert!(error.contains("choose one"), "{error}");
        // An instance without the relay publishes nothing, and needs no key.
        env.remove("LINKD_BUS_SIGNING_KEY_FILE");
        env.remove("LINKD_BUS_UNSIGNED");
        env.insert("LINKD_RELAY", "off".into());
        assert!(read(&env).is_ok());
    }

    #[test]
    fn nats_credentials_come_from_files_one_way_at_a_time() {
        let mut env = base();
        assert_eq!(read(&env).unwrap().nats_auth, NatsAuth::default());
        env.insert("LINKD_NATS_USER", "linkd".into());
        let error = read(&env).unwrap_err().to_string();
        assert!(error.contains("LINKD_NATS_PASSWORD_FILE"), "{error}");
        env.insert("LINKD_NATS_PASSWORD_FILE", "/secrets/nats.pw".into());
        assert_eq!(
            read(&env).unwrap().nats_auth.user,
            Some(("linkd".into(), "/secrets/nats.pw".into()))
        );
        env.insert("LINKD_NATS_CREDS_FILE", "/secrets/linkd.creds".into());
        let error = read(&env).unwrap_err().to_string();
        assert!(error.contains("choose one"), "{error}");
        env.remove("LINKD_NATS_USER");
        env.remove("LINKD_NATS_PASSWORD_FILE");
        env.insert("LINKD_NATS_TLS_CERT_FILE", "/secrets/client.pem".into());
        let error = read(&env).unwrap_err().to_string();
        assert!(error.contains("LINKD_NATS_TLS_KEY_FILE"), "{error}");
        env.insert("LINKD_NATS_TLS_KEY_FILE", "/secrets/client.key".into());
        env.insert("LINKD_NATS_TLS_CA_FILE", "/secrets/ca.pem".into());
        let auth = read(&env).unwrap().nats_auth;
        assert_eq!(auth.creds_file, Some("/secrets/linkd.creds".into()));
        assert_eq!(auth.tls_ca_file, Some("/secrets/ca.pem".into()));
        // A password inside the URL is refused, and not repeated.
        env.insert("LINKD_NATS_URL", "nats://linkd:hunter2@nats:4222".into());
        let error = read(&env).unwrap_err().to_string();
        assert!(
            error.contains("LINKD_NATS_URL") && !error.contains("hunter2"),
            "{error}"
        );
    }

    #[test]
    fn the_metrics_endpoint_is_off_unless_given_an_address() {
        let mut env = base();
        assert_eq!(read(&env).unwrap().metrics_addr, None);
        env.insert("LINKD_COMMAND_METRICS_ADDR", " ".into());
        assert_eq!(read(&env).unwrap().metrics_addr, None);
        env.insert("LINKD_COMMAND_METRICS_ADDR", "127.0.0.1:9101".into());
        assert_eq!(
            read(&env).unwrap().metrics_addr,
            Some("127.0.0.1:9101".parse().unwrap())
        );
        env.insert("LINKD_COMMAND_METRICS_ADDR", "9101".into());
        let error = read(&env).unwrap_err().to_string();
        assert!(error.contains("LINKD_COMMAND_METRICS_ADDR"), "{error}");
    }

    #[test]
    fn qr_confirmation_is_required_unless_turned_off() {
        let mut env = base();
        env.insert("LINKD_QR_CONFIRMATION", "off".into());
        assert_eq!(read(&env).unwrap().qr_confirmation, None);
        env.insert("LINKD_QR_CONFIRMATION", "required".into());
        env.insert("LINKD_QR_CONFIRMATION_SECONDS", "30".into());
        assert_eq!(
            read(&env).unwrap().qr_confirmation,
            Some(Duration::from_secs(30))
        );
        env.insert("LINKD_QR_CONFIRMATION", "sometimes".into());
        let error = read(&env).unwrap_err().to_string();
        assert!(error.contains("LINKD_QR_CONFIRMATION"), "{error}");
    }

    #[test]
    fn nats_takes_a_seed_list_and_names_a_wrong_entry() {
        let mut env = base();
        env.insert(
            "LINKD_NATS_URL",
            "nats://127.0.0.1:4223,nats://127.0.0.1:4224".into(),
        );
        assert_eq!(
            read(&env).unwrap().nats_url,
            "nats://127.0.0.1:4223,nats://127.0.0.1:4224"
        );
        env.insert(
            "LINKD_NATS_URL",
            "nats://127.0.0.1:4223,nats://127.0.0.1:99999".into(),
        );
        let error = read(&env).unwrap_err().to_string();
        assert!(
            error.contains("LINKD_NATS_URL") && error.contains("nats://127.0.0.1:99999"),
            "{error}"
        );
    }

    #[test]
    fn a_missing_required_setting_is_named() {
        let mut env = base();
        env.remove("LINKD_COMMAND_DATABASE_URL");
        let error = read(&env).unwrap_err().to_string();
        assert!(error.contains("LINKD_COMMAND_DATABASE_URL"), "{error}");
    }

    #[test]
    fn a_short_pepper_is_refused() {
        let mut env = base();
        env.insert("LINKD_SECRET_CODE_PEPPER", "short".into());
        let refused = read(&env);
        assert!(refused.is_err(), "{refused:?}");
    }

    #[test]
    fn the_portal_and_luxtrust_audiences_must_differ() {
        let mut env = base();
        env.insert("LINKD_IDP_AUDIENCE", "linkd".into());
        env.insert("LINKD_LUXTRUST_AUDIENCE", "linkd".into());
        let same = read(&env);
        assert!(same.is_err(), "{same:?}");
        assert_ne!(
            read(&base()).unwrap().idp_audience,
            read(&base()).unwrap().luxtrust_audience
        );
    }

    #[test]
    fn secrets_are_redacted_in_debug_output() {
        let text = format!("{:?}", read(&base()).unwrap());
        assert!(!text.contains("postgres://x/y"));
        assert!(!text.contains(&"p".repeat(32)));
    }
}
