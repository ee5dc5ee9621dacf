//! linkd's command side: it records. gRPC calls (`PortalService`, `DeviceService`) are validated
//! at the edge, turned into domain commands, decided by the `domain` aggregates and stored as
//! events in PostgreSQL through cqrs-es (with linkd's own `EventStore`, ADR 0008, over
//! postgres-es's table layout).
//!
//! It owns the event store schema and the tables that hold hashes of secrets. It must not
//! publish from cqrs-es queries (they run after commit and are lost on a crash), must not put a
//! secret in an event or a log, and must not decide anything the domain should decide.
//!
//! Layout: `startup` builds the server; `grpc` serves the two services; `validate` checks
//! fields; `secrets` mints and hashes tokens and
//! secret codes; `credentials` stores their hashes; `store` runs commands with bounded conflict
//! retries; `idempotency` replays answers to retried calls; `status` maps errors to gRPC codes; `sweeper` removes expired secrets; `relay` publishes committed events to
//! NATS JetStream and `bus` shapes them.

pub mod bus;
pub mod config;
pub mod credentials;
pub mod error;
pub mod grpc;
pub mod idempotency;
pub mod qr;
pub mod relay;
pub mod secrets;
pub mod startup;
pub mod status;
pub mod store;
pub mod sweeper;
pub mod telemetry;
pub mod validate;

pub use config::Settings;
pub use startup::Application;
