//! linkd's command side: it records. gRPC calls (`PortalService`, `DeviceService`) are checked
//! at the edge, turned into use cases over the `domain` aggregates, and the events they decide
//! stored in PostgreSQL (linkd's own event store over postgres-es's table layout, ADR 0008); the
//! relay publishes them, in commit order, to NATS JetStream.
//!
//! It owns the event store schema and the tables that hold hashes of secrets. It must not
//! publish from cqrs-es queries (they run after commit and are lost on a crash), must not put a
//! secret in an event or a log, and must not decide anything the domain should decide.
//!
//! Layout:
//! - `grpc` translates: proto request → domain inputs (`validate`), caller → `app::auth`, use
//!   case output → proto response, error → status (`status`, `error`), under the request log
//!   (`idempotency`);
//! - `app` holds the use cases (accounts, linking, the secret-code ceremony, devices);
//! - `store` loads and commits aggregates (snapshots, the one retry path);
//! - `secrets` mints and hashes tokens and secret codes, `credentials` stores their hashes, `qr`
//!   renders QR codes, `sweeper` removes expired secrets;
//! - `relay` publishes committed events to NATS JetStream, shaped by `history::stored` (`bus`);
//!   the personal fields' sealing is `history::sealing` (the projection service reads both);
//! - `config` and `startup` build the service (with `service-kit`).

pub(crate) mod app;
pub(crate) use history::stored as bus;
pub mod config;
pub(crate) mod credentials;
pub mod error;
#[cfg(test)]
mod fuzz;
pub(crate) mod grpc;
pub(crate) mod hashing;
pub(crate) mod idempotency;
pub mod lifecycle;
pub mod limits;
pub(crate) mod matching;
pub(crate) mod qr;
pub mod relay;
pub use history::sealing;
pub(crate) mod secrets;
pub mod startup;
pub(crate) mod status;
pub mod store;
pub mod sweeper;
pub(crate) mod validate;

pub use config::Settings;
pub use startup::Application;
