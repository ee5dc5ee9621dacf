//! How a linkd service starts and meets the network, written once for both services:
//!
//! - [`telemetry`]: structured logs (`RUST_LOG`, `LINKD_LOG_FORMAT=json`), and OpenTelemetry
//!   traces with `OTEL_EXPORTER_OTLP_ENDPOINT`; [`traces`]: the W3C trace context carried along.
//! - [`config`]: reading settings from the environment or any lookup, [`config::ConfigError`],
//!   and [`config::Redacted`] for secrets.
//! - [`grpc`]: the gRPC server every service runs ([`grpc::GrpcServer`]: health, reflection, the
//!   64 KiB request limit answered `INVALID_ARGUMENT`, TCP_NODELAY) and the one rule for reading
//!   `authorization: Bearer …` ([`grpc::bearer`]).
//! - [`tls`]: TLS and mutual TLS on the gRPC servers, and how a client reaches them.
//! - [`database::is_unavailable`]: which database errors mean "retry later".
//! - [`forwarded::client_address`]: the client's address behind trusted proxies.
//! - [`restarting`]: a long-running worker started again, with backoff, whenever it stops.
//! - [`shutdown_signal`]: Ctrl-C or SIGTERM.
//!
//! It knows nothing of linking: no domain, no tables, no bus.

pub mod bus_signing;
pub mod config;
pub mod database;
pub mod forwarded;
pub mod grpc;
pub mod metrics;
pub mod nats;
pub mod ratelimit;
pub mod sealing;
pub mod telemetry;
pub mod tls;
pub mod traces;

/// Runs `task` for ever: each time it ends it is started again after a pause: 200 ms after a
/// clean end; after a failure (NATS or the database went away, say) 400 ms, doubling while it
/// keeps failing, up to 5 s. Failures are logged as `what
/// stopped; retrying`. For the long-running workers (relay, consumers); dropping the returned
/// future stops it.
pub async fn restarting<F, Fut>(what: &'static str, mut task: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<()>>,
{
    const FIRST: std::time::Duration = std::time::Duration::from_millis(200);
    const LONGEST: std::time::Duration = std::time::Duration::from_secs(5);
    let mut backoff = FIRST;
    loop {
        match task().await {
            Ok(()) => backoff = FIRST,
            Err(error) => {
                tracing::warn!(error = format!("{error:#}"), "{what} stopped; retrying");
                backoff = (backoff * 2).min(LONGEST);
            }
        }
        tokio::time::sleep(backoff).await;
    }
}

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
