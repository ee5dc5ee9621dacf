//! Settings, read once from the environment (or any lookup, in tests). Secrets print as `***`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use service_kit::bus_signing::{BusKeys, BusVerifier};
use service_kit::config::Env;
pub use service_kit::config::{ConfigError, Redacted};
use service_kit::nats::NatsAuth;

use crate::email::{EmailSettings, SmtpTls};

/// Everything the projection service needs to start.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Where the gRPC server listens (`LINKD_PROJECTION_GRPC_ADDR`, default `127.0.0.1:50052`).
    pub grpc_addr: SocketAddr,
    /// Where Prometheus scrapes `GET /metrics` (`LINKD_PROJECTION_METRICS_ADDR`, e.g. `127.0.0.1:9101`;
    /// unset or empty: no metrics endpoint).
    pub metrics_addr: Option<SocketAddr>,
    /// TLS on the gRPC server (`LINKD_PROJECTION_TLS_CERT_FILE` with `LINKD_PROJECTION_TLS_KEY_FILE`;
    /// with `LINKD_PROJECTION_TLS_CLIENT_CA_FILE` too, callers must present a certificate that CA
    /// issued). `None`: plain text.
    pub tls: Option<service_kit::tls::ServerTls>,
    /// The read-model database (`LINKD_PROJECTION_DATABASE_URL`, required).
    pub database_url: Redacted<String>,
    /// The NATS server or comma-separated seed list (`LINKD_NATS_URL`, default
    /// `nats://127.0.0.1:4222`).
    pub nats_url: String,
    /// The stream the relay publishes to (`LINKD_STREAM`, default `LINKD_EVENTS`).
    pub stream: String,
    /// Subject prefix (`LINKD_SUBJECT_PREFIX`, default `linkd.events`).
    pub subject_prefix: String,
    /// Durable consumer names start with this (`LINKD_CONSUMER_PREFIX`, default `linkd`).
    pub consumer_prefix: String,
    /// PEM file with the identity provider's public keys (`LINKD_IDP_PUBLIC_KEYS_FILE`, required).
    pub idp_public_keys_file: PathBuf,
    /// Audience portal JWTs must name (`LINKD_IDP_AUDIENCE`, default `linkd-portal`).
    pub idp_audience: String,
    /// Issuer portal JWTs must name (`LINKD_IDP_ISSUER`, required).
    pub idp_issuer: String,
    /// The longest a portal JWT may live and the oldest it may be, from its `iat`
    /// (`LINKD_IDP_MAX_TOKEN_LIFETIME_SECONDS`, default 3600).
    pub idp_max_token_lifetime: Duration,
    /// Maximum age of `auth_time` for the device list (`LINKD_REAUTH_MAX_AGE_SECONDS`, default 300).
    pub reauth_max_age: Duration,
    /// Rate limits on the queries (`LINKD_QUERY_RATE_LIMITS`: overrides, `rule=burst/seconds,…`).
    pub query_rate_limits: crate::limits::QueryLimits,
    /// How much the gRPC server takes on (`LINKD_MAX_CONCURRENT_CALLS`, `LINKD_CALL_TIMEOUT_SECONDS`).
    pub grpc_limits: service_kit::grpc::Limits,
    /// SMTP and email settings (`LINKD_SMTP_*`, `LINKD_EMAIL_*`).
    pub email: EmailSettings,
    /// Read access to the event store, for `AuditService.VerifyHistory` and for the data keys
    /// that open sealed personal fields (`LINKD_EVENT_STORE_URL`; a read-only role on `events`
    /// and `data_keys` is enough).
    pub event_store_url: Option<Redacted<String>>,
    /// The key-encryption keys that unwrap those data keys (`LINKD_KEK_FILE`, the command
    /// service's file; needs `LINKD_EVENT_STORE_URL`). Without both, events with sealed personal
    /// fields are not applied (they wait, retried).
    pub kek_file: Option<std::path::PathBuf>,
    /// Whether this instance sends emails from the outbox (`LINKD_EMAIL`, default `on`); the
    /// notifier queues them either way.
    pub email_enabled: bool,
    /// How long sent and failed emails and dead letters are kept
    /// (`LINKD_RETENTION_SENT_EMAIL_DAYS`, `…_FAILED_EMAIL_DAYS`, `…_DEAD_LETTER_DAYS`,
    /// `LINKD_RETENTION_EVERY_SECONDS`).
    pub retention: crate::retention::Retention,
    /// The relay's public key(s): only messages signed by one of them are applied
    /// (`LINKD_BUS_VERIFY_KEYS_FILE`, PEM, one or more keys during a rotation; required unless
    /// `LINKD_BUS_UNSIGNED=on` for development).
    pub bus_verify_keys: BusKeys,
    /// How the consumer proves itself to NATS, and whether it requires TLS
    /// (`LINKD_NATS_*_FILE`, `LINKD_NATS_USER`; README, Configuration).
    pub nats_auth: NatsAuth,
}

impl Settings {
    /// What the consumers need (the bus keys read from their file).
    pub fn consumers(&self) -> anyhow::Result<crate::consumer::ConsumerSettings> {
        let verifier = match &self.bus_verify_keys {
            BusKeys::File(path) => Some(std::sync::Arc::new(
                BusVerifier::from_pem_file(path).context("LINKD_BUS_VERIFY_KEYS_FILE")?,
            )),
            BusKeys::Unsigned => None,
        };
        let opener = match (&self.event_store_url, &self.kek_file) {
            (Some(url), Some(kek_file)) => Some(crate::sealed::Opener::new(
                service_kit::database::pool_options(2)
                    .connect_lazy(&url.0)
                    .context("LINKD_EVENT_STORE_URL is not a PostgreSQL URL")?,
                service_kit::sealing::Keks::load(kek_file)?,
            )),
            (None, Some(_)) => anyhow::bail!(
                "LINKD_KEK_FILE is set but LINKD_EVENT_STORE_URL is not: the data keys are read \
                 from the event store"
            ),
            (_, None) => None,
        };
        Ok(crate::consumer::ConsumerSettings {
            opener,
            nats_url: self.nats_url.clone(),
            stream: self.stream.clone(),
            subject_prefix: self.subject_prefix.clone(),
            consumer_prefix: self.consumer_prefix.clone(),
            verifier,
            nats_auth: self.nats_auth.clone(),
            notices: (&self.email).into(),
        })
    }

    /// Reads the settings from the process environment.
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_lookup(|key| std::env::var(key).ok())
    }

    /// Reads the settings through `get`, so tests need not touch the environment.
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let env = Env::new(get);
        let smtp_tls = match env.get("LINKD_SMTP_TLS").as_deref() {
            None | Some("starttls") => SmtpTls::StartTls,
            Some("tls") => SmtpTls::Tls,
            Some("none") => SmtpTls::None,
            Some(other) => {
                return Err(ConfigError::invalid(
                    "LINKD_SMTP_TLS",
                    format!("expected starttls, tls or none, got {other:?}"),
                ));
            }
        };
        let default_language = env.or("LINKD_EMAIL_DEFAULT_LANGUAGE", "en");
        if !crate::email::LANGUAGES.contains(&default_language.as_str()) {
            return Err(ConfigError::invalid(
                "LINKD_EMAIL_DEFAULT_LANGUAGE",
                "expected en, fr or de",
            ));
        }
        let smtp_port = u16::try_from(env.number("LINKD_SMTP_PORT", 25)?)
            .map_err(|_| ConfigError::invalid("LINKD_SMTP_PORT", "not a port"))?;
        let email = EmailSettings {
            smtp_host: env.or("LINKD_SMTP_HOST", "127.0.0.1"),
            smtp_port,
            smtp_tls,
            smtp_credentials: env
                .get("LINKD_SMTP_USERNAME")
                .map(|user| (user, env.get("LINKD_SMTP_PASSWORD").unwrap_or_default())),
            sender: env.or("LINKD_EMAIL_SENDER", "usermanagement@security.public.lu"),
            default_language,
            retry_base: Duration::from_millis(
                env.number("LINKD_EMAIL_RETRY_BASE_MS", 1000)?.max(1),
            ),
            retry_max_delay: env.seconds("LINKD_EMAIL_RETRY_MAX_DELAY_SECONDS", 900)?,
            give_up_after: env.seconds("LINKD_EMAIL_GIVE_UP_AFTER_SECONDS", 48 * 3600)?,
            max_attempts: match env.get("LINKD_EMAIL_MAX_ATTEMPTS") {
                None => None,
                Some(_) => Some(
                    i32::try_from(env.number("LINKD_EMAIL_MAX_ATTEMPTS", 0)?.max(1))
                        .unwrap_or(i32::MAX),
                ),
            },
            max_event_age: Duration::from_secs(
                env.number("LINKD_EMAIL_MAX_EVENT_AGE_HOURS", 24)?
                    .saturating_mul(3600),
            ),
            crash_after_send: None,
        };
        Ok(Self {
            grpc_addr: env.socket_addr("LINKD_PROJECTION_GRPC_ADDR", "127.0.0.1:50052")?,
            metrics_addr: env.optional_socket_addr("LINKD_PROJECTION_METRICS_ADDR")?,
            tls: env.server_tls(
                "LINKD_PROJECTION_TLS_CERT_FILE",
                "LINKD_PROJECTION_TLS_KEY_FILE",
                "LINKD_PROJECTION_TLS_CLIENT_CA_FILE",
            )?,
            database_url: Redacted(env.required("LINKD_PROJECTION_DATABASE_URL")?),
            nats_url: env.nats_servers("LINKD_NATS_URL", "nats://127.0.0.1:4222")?,
            stream: env.nats_name("LINKD_STREAM", "LINKD_EVENTS")?,
            subject_prefix: env.subject_prefix("LINKD_SUBJECT_PREFIX", "linkd.events")?,
            consumer_prefix: env.nats_name("LINKD_CONSUMER_PREFIX", "linkd")?,
            idp_public_keys_file: env.required("LINKD_IDP_PUBLIC_KEYS_FILE")?.into(),
            idp_audience: env.or("LINKD_IDP_AUDIENCE", "linkd-portal"),
            idp_issuer: env.required("LINKD_IDP_ISSUER")?,
            idp_max_token_lifetime: env.seconds("LINKD_IDP_MAX_TOKEN_LIFETIME_SECONDS", 3600)?,
            reauth_max_age: env.seconds("LINKD_REAUTH_MAX_AGE_SECONDS", 300)?,
            grpc_limits: env.grpc_limits()?,
            query_rate_limits: crate::limits::QueryLimits::parse(
                &env.or("LINKD_QUERY_RATE_LIMITS", ""),
            )
            .map_err(|reason| ConfigError::invalid("LINKD_QUERY_RATE_LIMITS", reason))?,
            email,
            event_store_url: env.get("LINKD_EVENT_STORE_URL").map(Redacted),
            kek_file: env.get("LINKD_KEK_FILE").map(Into::into),
            email_enabled: env.switch("LINKD_EMAIL", true)?,
            retention: crate::retention::Retention {
                sent_emails: days(&env, "LINKD_RETENTION_SENT_EMAIL_DAYS", 30)?,
                failed_emails: days(&env, "LINKD_RETENTION_FAILED_EMAIL_DAYS", 90)?,
                dead_letters: days(&env, "LINKD_RETENTION_DEAD_LETTER_DAYS", 90)?,
                unclaimed_attempts: days(&env, "LINKD_RETENTION_UNCLAIMED_ATTEMPT_DAYS", 30)?,
                every: env.seconds("LINKD_RETENTION_EVERY_SECONDS", 3600)?,
            },
            bus_verify_keys: env.bus_keys("LINKD_BUS_VERIFY_KEYS_FILE")?,
            nats_auth: env.nats_auth()?,
        })
    }
}

/// A whole number of days, at least 1, or `default`.
fn days(
    env: &Env<impl Fn(&str) -> Option<String>>,
    key: &'static str,
    default: u64,
) -> Result<std::time::Duration, ConfigError> {
    match env.number(key, default)? {
        0 => Err(ConfigError::invalid(key, "must be at least 1 day")),
        n => Ok(std::time::Duration::from_secs(n.saturating_mul(24 * 3600))),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn base() -> HashMap<&'static str, String> {
        HashMap::from([
            (
                "LINKD_PROJECTION_DATABASE_URL",
                "postgres://u:secret@x/y".to_owned(),
            ),
            ("LINKD_IDP_PUBLIC_KEYS_FILE", "/keys/idp.pem".to_owned()),
            ("LINKD_IDP_ISSUER", "https://idp.example.lu".to_owned()),
            ("LINKD_BUS_VERIFY_KEYS_FILE", "/keys/bus.pub.pem".to_owned()),
        ])
    }

    fn read(env: &HashMap<&'static str, String>) -> Result<Settings, ConfigError> {
        Settings::from_lookup(|key| env.get(key).cloned())
    }

    #[test]
    fn defaults_apply_when_only_required_settings_are_given() {
        let settings = read(&base()).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(settings.grpc_addr.port(), 50052);
        assert_eq!(settings.consumer_prefix, "linkd");
        assert_eq!(settings.reauth_max_age, Duration::from_secs(300));
        assert_eq!(settings.email.sender, "usermanagement@security.public.lu");
        assert!(settings.email_enabled);
        // An email is retried for two days, with no cap on attempts, before it is given up.
        assert_eq!(settings.email.give_up_after, Duration::from_secs(48 * 3600));
        assert_eq!(settings.email.retry_max_delay, Duration::from_secs(900));
        assert_eq!(settings.email.max_attempts, None);
    }

    #[test]
    fn retention_periods_are_whole_days_of_at_least_one() {
        let mut env = base();
        let defaults = read(&env).unwrap_or_else(|e| panic!("{e}")).retention;
        assert_eq!(defaults, crate::retention::Retention::default());
        assert_eq!(defaults.sent_emails, Duration::from_secs(30 * 24 * 3600));
        env.insert("LINKD_RETENTION_DEAD_LETTER_DAYS", "7".into());
        assert_eq!(
            read(&env)
                .unwrap_or_else(|e| panic!("{e}"))
                .retention
                .dead_letters,
            Duration::from_secs(7 * 24 * 3600)
        );
        env.insert("LINKD_RETENTION_SENT_EMAIL_DAYS", "0".into());
        let error = read(&env).map(|_| ()).unwrap_err().to_string();
        assert!(error.contains("LINKD_RETENTION_SENT_EMAIL_DAYS"), "{error}");
    }

    #[test]
    fn an_attempt_cap_applies_only_when_set() {
        let mut env = base();
        env.insert("LINKD_EMAIL_MAX_ATTEMPTS", "20".into());
        assert_eq!(
            read(&env)
                .unwrap_or_else(|e| panic!("{e}"))
                .email
                .max_attempts,
            Some(20)
        );
        env.insert("LINKD_EMAIL_GIVE_UP_AFTER_SECONDS", "0".into());
        let error = read(&env).map(|_| ()).unwrap_err().to_string();
        assert!(
            error.contains("LINKD_EMAIL_GIVE_UP_AFTER_SECONDS"),
            "{error}"
        );
    }

    #[test]
    fn nats_takes_a_seed_list_and_names_a_wrong_entry() {
        let mut env = base();
        env.insert("LINKD_NATS_URL", "127.0.0.1:4223, 127.0.0.1:4224".into());
        assert!(read(&env).is_ok());
        env.insert("LINKD_NATS_URL", "nats://127.0.0.1:4223,nats://[::1".into());
        let error = read(&env).map(|_| ()).unwrap_err().to_string();
        assert!(error.contains("LINKD_NATS_URL"), "{error}");
    }

    #[test]
    fn only_signed_messages_are_accepted_unless_told_it_is_a_development_set_up() {
        let mut env = base();
        assert_eq!(
            read(&env).unwrap_or_else(|e| panic!("{e}")).bus_verify_keys,
            BusKeys::File("/keys/bus.pub.pem".into())
        );
        env.remove("LINKD_BUS_VERIFY_KEYS_FILE");
        let error = read(&env).map(|_| ()).unwrap_err().to_string();
        assert!(error.contains("LINKD_BUS_VERIFY_KEYS_FILE"), "{error}");
        env.insert("LINKD_BUS_UNSIGNED", "on".into());
        assert_eq!(
            read(&env).unwrap_or_else(|e| panic!("{e}")).bus_verify_keys,
            BusKeys::Unsigned
        );
    }

    #[test]
    fn a_missing_required_setting_is_named() {
        let mut env = base();
        env.remove("LINKD_PROJECTION_DATABASE_URL");
        let error = read(&env).map(|_| ()).unwrap_err().to_string();
        assert!(error.contains("LINKD_PROJECTION_DATABASE_URL"), "{error}");
    }

    #[test]
    fn names_with_dots_and_unknown_switches_are_refused() {
        for (key, value) in [
            ("LINKD_CONSUMER_PREFIX", "a.b"),
            ("LINKD_SUBJECT_PREFIX", "linkd.>"),
            ("LINKD_EMAIL", "maybe"),
            ("LINKD_SMTP_TLS", "ssl"),
            ("LINKD_REAUTH_MAX_AGE_SECONDS", "0"),
        ] {
            let mut env = base();
            env.insert(key, value.to_owned());
            let error = read(&env).map(|_| ()).unwrap_err().to_string();
            assert!(error.contains(key), "{key}={value}: {error}");
        }
    }

    #[test]
    fn database_urls_are_redacted_in_debug_output() {
        let mut env = base();
        env.insert(
            "LINKD_EVENT_STORE_URL",
            "postgres://r:other-secret@x/z".to_owned(),
        );
        let text = format!("{:?}", read(&env).unwrap_or_else(|e| panic!("{e}")));
        assert!(!text.contains("secret"), "{text}");
    }
}
