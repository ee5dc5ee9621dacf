//! Why a command failed, as the gRPC edge needs to know it. Mapped to a status in `status.rs`.

use cqrs_es::AggregateError;
use domain::{AccountError, DeviceError, LinkAttemptError, LinkQrError};

/// A failed command: a domain refusal, a refusal at the edge, or an infrastructure failure.
#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    /// The account refused.
    #[error(transparent)]
    Account(#[from] AccountError),
    /// The QR code refused.
    #[error(transparent)]
    Qr(#[from] LinkQrError),
    /// The link attempt refused.
    #[error(transparent)]
    Attempt(#[from] LinkAttemptError),
    /// The device refused.
    #[error(transparent)]
    Device(#[from] DeviceError),
    /// Another writer kept winning the race for the same aggregate.
    #[error("concurrent update")]
    Conflict,
    /// A request field is malformed.
    #[error("{0}")]
    InvalidArgument(String),
    /// Missing, malformed or invalid credentials.
    #[error("{0}")]
    Unauthenticated(String),
    /// Authenticated, but not allowed (or re-authentication needed).
    #[error("{0}")]
    PermissionDenied(String),
    /// The thing named does not exist (for this caller).
    #[error("{0}")]
    NotFound(String),
    /// The account links as many devices as it may (the device cap).
    #[error(
        "this account already links {cap} devices, the most it may; unlink one (the least \
         recently used is {least_recently_used}, last used {used_at}) and try again"
    )]
    DeviceLimit {
        /// The cap.
        cap: u32,
        /// The device the holder used least recently.
        least_recently_used: uuid::Uuid,
        /// When it was last used.
        used_at: chrono::DateTime<chrono::Utc>,
    },
    /// As [`CommandError::DeviceLimit`], said to a caller not known to be the holder.
    #[error(
        "this account already links {cap} devices, the most it may; the account holder must \
         unlink one in the portal before another can be linked"
    )]
    DeviceLimitUnnamed {
        /// The cap.
        cap: u32,
    },
    /// A rate limit: the call may be made again after `retry_in`.
    #[error("{message}")]
    RateLimited {
        /// What was limited, and when to come back.
        message: String,
        /// When the next call is allowed.
        retry_in: std::time::Duration,
    },
    /// Too much expensive work is under way (for this caller, or in all); retry shortly.
    #[error("{0}")]
    Busy(String),
    /// Another call with the same idempotency key is still running.
    #[error("{0}")]
    InProgress(String),
    /// The database could not be reached.
    #[error("storage unavailable: {0}")]
    Unavailable(String),
    /// The history holds an event of a newer linkd than this instance (a rolling deploy): an
    /// upgraded instance can answer. The message names the event, nothing secret.
    #[error("{0}")]
    NewerVersion(String),
    /// A bug or corrupted data; details are logged, not returned.
    #[error("internal: {0}")]
    Internal(String),
}

macro_rules! from_aggregate_error {
    ($($error:ty),*) => {$(
        impl From<AggregateError<$error>> for CommandError {
            fn from(error: AggregateError<$error>) -> Self {
                match error {
                    AggregateError::UserError(refusal) => refusal.into(),
                    AggregateError::AggregateConflict => Self::Conflict,
                    AggregateError::DatabaseConnectionError(source) => {
                        Self::Unavailable(source.to_string())
                    }
                    AggregateError::DeserializationError(source)
                    | AggregateError::UnexpectedError(source) => Self::Internal(source.to_string()),
                }
            }
        }
    )*};
}
from_aggregate_error!(AccountError, LinkQrError, LinkAttemptError, DeviceError);

impl From<sqlx::Error> for CommandError {
    fn from(error: sqlx::Error) -> Self {
        if service_kit::database::is_unavailable(&error) {
            Self::Unavailable(error.to_string())
        } else {
            Self::Internal(error.to_string())
        }
    }
}
