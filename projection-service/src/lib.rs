//! linkd's read side: it reads and notifies. One durable JetStream pull consumer feeds the
//! projectors that keep read models in the service's own PostgreSQL database — the devices of
//! each account, the audit witness (the audit log itself is read from the event store, ADR 0029),
//! and the email outbox — each pulled batch applied to all of them
//! in one transaction with each read model's per-aggregate guards (one event at a time when the
//! batch fails; ADR 0009), committed without waiting for the WAL flush and acknowledged once it
//! is flushed (ADR 0018). `DeviceQueryService` (the holder's devices, read-your-writes) and
//! `AuditService` (an account's history, devices at an instant, the tamper-evidence check)
//! answer from them. A worker sends the outbox's emails; `projection-service rebuild` replays
//! the stream into fresh tables and switches the device read model over.
//!
//! It must never write to the event store (`VerifyHistory` only reads it), and never trust
//! delivery order or uniqueness: JetStream delivers at least once.
//!
//! # Layout
//!
//! - `config`: `Settings`, read once from the environment.
//! - `startup`: pool, migrations, consumers, email worker, gRPC server with health and reflection.
//! - `consumer`: the pull loop (`consumer::batch`, a pull applied to every read model in one
//!   transaction; `consumer::durable_acks`, acknowledgements sent once the WAL is flushed).
//! - `projections`: the guard, and the projectors `devices`, `audit` and `notifier` (which
//!   queues emails); `projections::replay` applies many events per transaction for a rebuild.
//! - `email`: the outbox worker and the email templates.
//! - `rebuild`: replay the stream into fresh tables, then switch over.
//! - `read`: each read model's row type and the queries the services run over it.
//! - `grpc`: the two services' shared edge; `grpc::devices` and `grpc::audit` translate.
//! - `status`: the one `QueryError` → `tonic::Status` mapping.

pub mod config;
pub mod consumer;
pub mod email;
mod grpc;
pub mod limits;
pub mod projections;
mod read;
pub mod rebuild;
pub mod retention;
pub mod sealed;
pub mod startup;
mod status;

pub use config::Settings;
pub use startup::Application;
