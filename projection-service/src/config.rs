//! Settings, read once from the environment (or any lookup, in tests).

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use crate::email::{EmailSettings, SmtpTls};

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

/// Everything the projection service needs to start.
#[derive(Clone)]
pub struct Settings {
    /// Where the gRPC server listens (`LINKD_PROJECTION_GRPC_ADDR`, default `127.0.0.1:50052`).
    pub grpc_addr: SocketAddr,
    /// The read-model database (`LINKD_PROJECTION_DATABASE_URL`, required).
    pub database_url: String,
    /// The NATS server (`LINKD_NATS_URL`, default `nats://127.0.0.1:4222`).
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
    /// Issuer portal JWTs must name, if set (`LINKD_IDP_ISSUER`).
    pub idp_issuer: Option<String>,
    /// Maximum age of `auth_time` for the device list (`LINKD_REAUTH_MAX_AGE_SECONDS`, default 300).
    pub reauth_max_age: Duration,
    /// SMTP and email settings (`LINKD_SMTP_*`, `LINKD_EMAIL_*`).
    pub email: EmailSettings,
    /// Read access to the event store, for `AuditService.VerifyHistory`
    /// (`LINKD_EVENT_STORE_URL`, optional; a read-only role is enough).
    pub event_store_url: Option<String>,
    /// Whether this instance sends emails from the outbox (`LINKD_EMAIL`, default `on`); the
    /// notifier queues them either way.
    pub email_enabled: bool,
}

impl fmt::Debug for Settings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Settings")
            .field("grpc_addr", &self.grpc_addr)
            .field("database_url", &"***")
            .field("nats_url", &self.nats_url)
            .field("stream", &self.stream)
            .field("subject_prefix", &self.subject_prefix)
            .finish_non_exhaustive()
    }
}

impl Settings {
    /// What the consumers need.
    pub fn consumers(&self) -> crate::consumer::ConsumerSettings {
        crate::consumer::ConsumerSettings {
            nats_url: self.nats_url.clone(),
            stream: self.stream.clone(),
            subject_prefix: self.subject_prefix.clone(),
            consumer_prefix: self.consumer_prefix.clone(),
        }
    }

    /// Reads the settings from the process environment.
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_lookup(|key| std::env::var(key).ok())
    }

    /// Reads the settings through `get`.
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let get = |key: &str| get(key).filter(|value| !value.trim().is_empty());
        let required = |key: &'static str| get(key).ok_or(ConfigError::Missing(key));
        let key = "LINKD_PROJECTION_GRPC_ADDR";
        let grpc_addr = get(key)
            .unwrap_or_else(|| "127.0.0.1:50052".into())
            .parse()
            .map_err(|e| ConfigError::Invalid {
                key,
                reason: format!("{e}"),
            })?;
        let key = "LINKD_REAUTH_MAX_AGE_SECONDS";
        let reauth_max_age = get(key)
            .map_or(Ok(300), |raw| raw.trim().parse::<u64>())
            .ok()
            .filter(|seconds| *seconds > 0)
            .map(Duration::from_secs)
            .ok_or(ConfigError::Invalid {
                key,
                reason: "expected a whole number ≥ 1".into(),
            })?;
        let token = |key: &'static str, default: &str, dots: bool| {
            let value = get(key).unwrap_or_else(|| default.to_owned());
            let ok = value.split('.').all(|t| {
                !t.is_empty()
                    && t.chars()
                        .all(|c| c.is_ascii_alphanumeric() || "-_".contains(c))
            }) && (dots || !value.contains('.'));
            if ok {
                Ok(value)
            } else {
                Err(ConfigError::Invalid {
                    key,
                    reason: "letters, digits, - and _ only".into(),
                })
            }
        };
        let number = |key: &'static str, default: u64| -> Result<u64, ConfigError> {
            get(key).map_or(Ok(default), |raw| {
                raw.trim().parse().map_err(|_| ConfigError::Invalid {
                    key,
                    reason: format!("expected a whole number, got {raw:?}"),
                })
            })
        };
        let smtp_tls = match get("LINKD_SMTP_TLS").as_deref() {
            None | Some("starttls") => SmtpTls::StartTls,
            Some("tls") => SmtpTls::Tls,
            Some("none") => SmtpTls::None,
            Some(other) => {
                return Err(ConfigError::Invalid {
                    key: "LINKD_SMTP_TLS",
                    reason: format!("expected starttls, tls or none, got {other:?}"),
                });
            }
        };
        let default_language = get("LINKD_EMAIL_DEFAULT_LANGUAGE").unwrap_or_else(|| "en".into());
        if !crate::email::LANGUAGES.contains(&default_language.as_str()) {
            return Err(ConfigError::Invalid {
                key: "LINKD_EMAIL_DEFAULT_LANGUAGE",
                reason: "expected en, fr or de".into(),
            });
        }
        let email = EmailSettings {
            smtp_host: get("LINKD_SMTP_HOST").unwrap_or_else(|| "127.0.0.1".into()),
            smtp_port: u16::try_from(number("LINKD_SMTP_PORT", 25)?).map_err(|_| {
                ConfigError::Invalid {
                    key: "LINKD_SMTP_PORT",
                    reason: "not a port".into(),
                }
            })?,
            smtp_tls,
            smtp_credentials: get("LINKD_SMTP_USERNAME")
                .map(|user| (user, get("LINKD_SMTP_PASSWORD").unwrap_or_default())),
            sender: get("LINKD_EMAIL_SENDER")
                .unwrap_or_else(|| "usermanagement@security.public.lu".into()),
            default_language,
            max_attempts: i32::try_from(number("LINKD_EMAIL_MAX_ATTEMPTS", 8)?.max(1))
                .unwrap_or(i32::MAX),
            retry_base: Duration::from_millis(number("LINKD_EMAIL_RETRY_BASE_MS", 1000)?.max(1)),
            max_event_age: Duration::from_secs(
                number("LINKD_EMAIL_MAX_EVENT_AGE_HOURS", 24)?.saturating_mul(3600),
            ),
            crash_after_send: None,
        };
        let email_enabled = match get("LINKD_EMAIL").as_deref() {
            None | Some("on") => true,
            Some("off") => false,
            Some(other) => {
                return Err(ConfigError::Invalid {
                    key: "LINKD_EMAIL",
                    reason: format!("expected on or off, got {other:?}"),
                });
            }
        };
        Ok(Self {
            event_store_url: get("LINKD_EVENT_STORE_URL"),
            email,
            email_enabled,
            grpc_addr,
            database_url: required("LINKD_PROJECTION_DATABASE_URL")?,
            nats_url: get("LINKD_NATS_URL").unwrap_or_else(|| "nats://127.0.0.1:4222".into()),
            stream: token("LINKD_STREAM", "LINKD_EVENTS", false)?,
            subject_prefix: token("LINKD_SUBJECT_PREFIX", "linkd.events", true)?,
            consumer_prefix: token("LINKD_CONSUMER_PREFIX", "linkd", false)?,
            idp_public_keys_file: required("LINKD_IDP_PUBLIC_KEYS_FILE")?.into(),
            idp_audience: get("LINKD_IDP_AUDIENCE").unwrap_or_else(|| "linkd-portal".into()),
            idp_issuer: get("LINKD_IDP_ISSUER"),
            reauth_max_age,
        })
    }
}
