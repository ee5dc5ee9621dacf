//! End-to-end tests: linkd over real gRPC against real PostgreSQL and NATS: one database per
//! service per test, and one stream and subject prefix per test.
#![allow(
    clippy::unwrap_used,
    reason = "a failed step should fail the test loudly"
)]

mod admission;
mod audit;
mod authorization;
mod bus_authentication;
mod confirmation;
mod containment;
mod delivery;
mod demo;
mod device_cap;
mod emails;
mod erasure;
mod evolution;
mod hostile_bytes;
mod idempotency;
mod inactivity;
mod linkctl_confirmation;
mod linkctl_containment;
mod linking;
mod malformed_input;
mod metrics;
mod monitoring;
mod nats_cluster;
mod nats_security;
mod qr_codes;
mod rate_limits;
mod read_side;
mod read_side_crash;
mod rebuild;
mod relay_continuity;
mod sealing;
mod secret_code;
mod serving;
mod stream_limits;
mod stream_loss;
mod tamper;
mod tls;
mod unlinking;
