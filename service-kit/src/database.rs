//! What a database error says about the database: whether the call may simply be retried.

/// Whether `error` is the database's state rather than the request's: the pool (timed out,
/// closed), I/O, and SQLSTATE classes 08 (connection), 53 (insufficient resources) and 57
/// (operator intervention: shutdown, statement timeout). Such a failure is answered
/// `UNAVAILABLE` (retry later); any other is internal.
#[expect(
    clippy::wildcard_enum_match_arm,
    reason = "sqlx::Error is non_exhaustive"
)]
pub fn is_unavailable(error: &sqlx::Error) -> bool {
    match error {
        sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed | sqlx::Error::Io(_) => true,
        sqlx::Error::Database(db) => db.code().is_some_and(|code| {
            code.starts_with("08") || code.starts_with("53") || code.starts_with("57")
        }),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pool_and_the_network_are_the_database_state() {
        assert!(is_unavailable(&sqlx::Error::PoolTimedOut));
        assert!(is_unavailable(&sqlx::Error::PoolClosed));
        assert!(is_unavailable(&sqlx::Error::Io(std::io::Error::other(
            "reset"
        ))));
        assert!(!is_unavailable(&sqlx::Error::RowNotFound));
        assert!(!is_unavailable(&sqlx::Error::Protocol("garbled".into())));
    }
}
