//! How a linkd service starts and meets the network, written once for both services:
//!
//! - [`telemetry`]: structured logs (`RUST_LOG`, `LINKD_LOG_FORMAT=json`).
//! - [`config`]: reading settings from the environment or any lookup, [`config::ConfigError`],
//!   and [`config::Redacted`] for secrets.
//! - [`grpc`]: the gRPC server every service runs ([`grpc::GrpcServer`]: health, reflection, the
//!   64 KiB request limit answered `INVALID_ARGUMENT`, TCP_NODELAY) and the one rule for reading
//!   `authorization: Bearer …` ([`grpc::bearer`]).
//! - [`shutdown_signal`]: Ctrl-C or SIGTERM.
//!
//! It knows nothing of linking: no domain, no database, no bus.

pub mod config;
pub mod grpc;
pub mod telemetry;

/// Completes on Ctrl-C or SIGTERM (compose and systemd stop services with SIGTERM).
pub async fn shutdown_signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = terminate => {},
    }
    tracing::info!("shutting down");
}
