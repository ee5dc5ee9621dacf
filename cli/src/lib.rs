//! `linkctl`: a gRPC client for linkd, for people and scripts, and the development stand-ins
//! for the identity provider and LuxTrust (`dev`). The end-to-end tests use `dev` too.

pub mod admin;
pub mod audit;
pub mod client;
pub mod demo;
pub mod dev;
pub mod dev_tls;
pub mod errors;
pub mod qr;
pub mod unlink;
pub mod watch;
