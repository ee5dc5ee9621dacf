//! The query side's one mapping from a failed query to a gRPC status. Exhaustive on purpose: a
//! new kind of failure does not compile until someone chooses its code. Internal details are
//! logged, never sent.

use std::fmt;

use tonic::Status;
use tonic_types::StatusExt as _;

#[cfg(test)]
mod tests;

/// A database the queries read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Database {
    /// The device read model (and the projectors' guards).
    ReadModel,
    /// The audit log.
    AuditLog,
    /// The event store (`VerifyHistory` only).
    EventStore,
}

impl Database {
    /// The name a client knows it by: `VerifyHistory` is an `AuditService` call, and its
    /// clients know the audit log, not which database behind it failed (that is logged).
    fn as_seen(self) -> Self {
        match self {
            Self::ReadModel => Self::ReadModel,
            Self::AuditLog | Self::EventStore => Self::AuditLog,
        }
    }
}

impl fmt::Display for Database {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::ReadModel => "the read model",
            Self::AuditLog => "the audit log",
            Self::EventStore => "the event store",
        })
    }
}

/// Why a query failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum QueryError {
    /// A request field is malformed.
    #[error("{0}")]
    InvalidArgument(String),
    /// Missing or invalid credentials.
    #[error("{0}")]
    Unauthenticated(String),
    /// Authenticated, but not allowed (or re-authentication needed).
    #[error("{0}")]
    PermissionDenied(String),
    /// The thing named does not exist for this caller.
    #[error("{0}")]
    NotFound(String),
    /// This service cannot answer that call as configured.
    #[error("{0}")]
    FailedPrecondition(String),
    /// The read model did not reach the caller's consistency token within the wait.
    #[error(
        "the read model has not caught up with your last command yet: device {device_id} is at \
         event {applied} of {wanted}; retry shortly"
    )]
    Behind {
        /// The device whose events are missing.
        device_id: String,
        /// The last of its events applied.
        applied: i64,
        /// The event the token names.
        wanted: i64,
    },
    /// A database could not be reached, or was shutting down or overloaded.
    #[error("{database} is unavailable: {source}")]
    Unavailable {
        /// Which.
        database: Database,
        /// What it said.
        source: sqlx::Error,
    },
    /// A rate limit: the caller may query again after `retry_in`.
    #[error("{message}")]
    RateLimited {
        /// What was limited, and when to come back.
        message: String,
        /// When the next call is allowed.
        retry_in: std::time::Duration,
    },
    /// A bug or corrupted data.
    #[error("{database} failed: {source}")]
    Internal {
        /// Which.
        database: Database,
        /// What it said.
        source: sqlx::Error,
    },
}

impl QueryError {
    /// A failure of `database`, classified as the command side classifies database errors
    /// (`command-service/src/error.rs`): the pool, I/O and SQLSTATE classes 08 (connection), 53
    /// (insufficient resources) and 57 (operator intervention: shutdown, statement timeout) are
    /// the database's state, so the call may be retried; anything else is internal.
    pub(crate) fn storage(database: Database, source: sqlx::Error) -> Self {
        if service_kit::database::is_unavailable(&source) {
            Self::Unavailable { database, source }
        } else {
            Self::Internal { database, source }
        }
    }

    /// A failure of the read model.
    pub(crate) fn read_model(source: sqlx::Error) -> Self {
        Self::storage(Database::ReadModel, source)
    }

    /// A failure of the audit log.
    pub(crate) fn audit_log(source: sqlx::Error) -> Self {
        Self::storage(Database::AuditLog, source)
    }

    /// A failure of the event store.
    pub(crate) fn event_store(source: sqlx::Error) -> Self {
        Self::storage(Database::EventStore, source)
    }
}

/// The status a client receives for `error`.
pub(crate) fn to_status(error: QueryError) -> Status {
    let message = error.to_string();
    match error {
        QueryError::InvalidArgument(_) => Status::invalid_argument(message),
        QueryError::Unauthenticated(_) => Status::unauthenticated(message),
        QueryError::PermissionDenied(_) => Status::permission_denied(message),
        QueryError::NotFound(_) => Status::not_found(message),
        QueryError::FailedPrecondition(_) => Status::failed_precondition(message),
        QueryError::Behind { .. } => Status::unavailable(message),
        QueryError::RateLimited { retry_in, .. } => Status::with_error_details(
            tonic::Code::ResourceExhausted,
            message,
            tonic_types::ErrorDetails::with_retry_info(Some(retry_in)),
        ),
        QueryError::Unavailable { database, source } => {
            tracing::error!(error = %source, %database, "storage unavailable");
            Status::unavailable(format!(
                "{} is unavailable; retry later",
                database.as_seen()
            ))
        }
        QueryError::Internal { database, source } => {
            tracing::error!(error = %source, %database, "query failed unexpectedly");
            Status::internal("internal error")
        }
    }
}
