use std::borrow::Cow;

use sqlx::error::{DatabaseError, ErrorKind};
use tonic::Code;

use super::*;

/// A database error with a SQLSTATE.
#[derive(Debug, thiserror::Error)]
#[error("database says {0}")]
struct Sqlstate(&'static str);

impl DatabaseError for Sqlstate {
    fn message(&self) -> &str {
        "database says no"
    }

    fn code(&self) -> Option<Cow<'_, str>> {
        Some(Cow::Borrowed(self.0))
    }

    fn as_error(&self) -> &(dyn std::error::Error + Send + Sync + 'static) {
        self
    }

    fn as_error_mut(&mut self) -> &mut (dyn std::error::Error + Send + Sync + 'static) {
        self
    }

    fn into_error(self: Box<Self>) -> Box<dyn std::error::Error + Send + Sync + 'static> {
        self
    }

    fn kind(&self) -> ErrorKind {
        ErrorKind::Other
    }
}

fn database(code: &'static str) -> sqlx::Error {
    sqlx::Error::Database(Box::new(Sqlstate(code)))
}

#[test]
fn an_unreachable_database_is_unavailable_and_the_client_may_retry() {
    let io = || std::io::Error::new(std::io::ErrorKind::ConnectionReset, "reset");
    for source in [
        sqlx::Error::PoolTimedOut,
        sqlx::Error::PoolClosed,
        sqlx::Error::Io(io()),
        database("08006"),
        database("53300"),
        database("57014"),
        database("57P01"),
    ] {
        let status = to_status(QueryError::read_model(source));
        assert_eq!(status.code(), Code::Unavailable);
        assert_eq!(
            status.message(),
            "the read model is unavailable; retry later"
        );
    }
    let status = to_status(QueryError::audit_log(sqlx::Error::PoolTimedOut));
    assert_eq!(
        status.message(),
        "the audit log is unavailable; retry later"
    );
}

#[test]
fn any_other_database_failure_is_internal_and_its_details_stay_here() {
    for source in [
        sqlx::Error::RowNotFound,
        sqlx::Error::ColumnNotFound("secret_column".into()),
        sqlx::Error::Protocol("garbled".into()),
        database("42P01"),
        database("23505"),
    ] {
        let status = to_status(QueryError::event_store(source));
        assert_eq!(status.code(), Code::Internal);
        assert_eq!(status.message(), "internal error");
    }
}

#[test]
fn a_read_model_behind_its_token_is_unavailable_and_says_how_far() {
    let status = to_status(QueryError::Behind {
        device_id: "d-1".into(),
        applied: 2,
        wanted: 5,
    });
    assert_eq!(status.code(), Code::Unavailable);
    assert!(status.message().contains("not caught up"), "{status:?}");
    assert!(status.message().contains("device d-1 is at event 2 of 5"));
}

#[test]
fn refusals_keep_their_message() {
    for (error, code) in [
        (
            QueryError::InvalidArgument("a".into()),
            Code::InvalidArgument,
        ),
        (
            QueryError::Unauthenticated("a".into()),
            Code::Unauthenticated,
        ),
        (
            QueryError::PermissionDenied("a".into()),
            Code::PermissionDenied,
        ),
        (QueryError::NotFound("a".into()), Code::NotFound),
        (
            QueryError::FailedPrecondition("a".into()),
            Code::FailedPrecondition,
        ),
    ] {
        let status = to_status(error);
        assert_eq!((status.code(), status.message()), (code, "a"));
    }
}
