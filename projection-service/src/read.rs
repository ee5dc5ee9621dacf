//! The read models as the queries see them: each module holds a table's row type and column
//! list, and the queries the gRPC services run over it. The projector that writes the table
//! (`projections/…`) uses the same row type.
//!
//! Here, not under `projections/`, because two sides depend on it and neither owns the other:
//! `grpc → read ← projections`. A query answers [`QueryError`](crate::status::QueryError), so the
//! gRPC translators only translate.

pub(crate) mod access;
pub(crate) mod audit;
pub(crate) mod devices;
