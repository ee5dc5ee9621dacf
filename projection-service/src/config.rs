//! Settings, read once from the environment (or any lookup, in tests).

use std::fmt;
use std::net::SocketAddr;

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
}

impl fmt::Debug for Settings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Settings")
            .field("grpc_addr", &self.grpc_addr)
            .field("database_url", &"***")
            .finish()
    }
}

impl Settings {
    /// Reads the settings from the process environment.
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_lookup(|key| std::env::var(key).ok())
    }

    /// Reads the settings through `get`.
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let get = |key: &str| get(key).filter(|value| !value.trim().is_empty());
        let key = "LINKD_PROJECTION_GRPC_ADDR";
        let grpc_addr = get(key)
            .unwrap_or_else(|| "127.0.0.1:50052".into())
            .parse()
            .map_err(|e| ConfigError::Invalid {
                key,
                reason: format!("{e}"),
            })?;
        let database_url = get("LINKD_PROJECTION_DATABASE_URL")
            .ok_or(ConfigError::Missing("LINKD_PROJECTION_DATABASE_URL"))?;
        Ok(Self {
            grpc_addr,
            database_url,
        })
    }
}
