//! linkd's read side: it reads and notifies. It will consume the event stream from NATS
//! JetStream into read models (device lists, audit log, email outbox) in its own PostgreSQL
//! database and answer queries over gRPC.
//!
//! Today it starts, migrates its own database and serves `grpc.health.v1`; the projectors and
//! the query API are the read-side issue's work. It must never write to the event store.

pub mod config;
pub mod startup;

pub use config::Settings;
pub use startup::Application;
