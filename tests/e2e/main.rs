//! End-to-end tests: linkd over real gRPC against a real PostgreSQL, one database per test.

mod authorization;
mod demo;
mod idempotency;
mod linking;
mod malformed_input;
mod qr_codes;
mod secret_code;
mod serving;
mod unlinking;
