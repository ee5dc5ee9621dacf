//! linkd's read side: it reads. Durable JetStream pull consumers feed read models in the
//! service's own PostgreSQL database (`projections`), each event applied in one transaction with
//! its per-aggregate guard (`consumer`), and `DeviceQueryService` answers from them (`grpc`).
//!
//! It must never write to the event store, and never trust delivery order or uniqueness:
//! JetStream delivers at least once.

pub mod config;
pub mod consumer;
pub mod email;
mod grpc;
pub mod projections;
mod read;
pub mod rebuild;
pub mod startup;
mod status;

pub use config::Settings;
pub use startup::Application;
