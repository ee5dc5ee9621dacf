//! The `portal-web` binary: serves the reference portal page (README, "portal-web").

use std::time::Duration;

use portal_web::backend::Backend;
use portal_web::{App, Settings, serve};
use service_kit::{shutdown_signal, telemetry};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    // Logs only: the page starts no trace of its own (ADR 0024).
    let _telemetry = telemetry::init_with("linkd-portal-web", None)?;
    let settings = Settings::from_env()?;
    let backend = Backend::connect_lazy(
        &settings.command_url,
        &settings.query_url,
        &settings.grpc_tls,
    )?;
    let listener = tokio::net::TcpListener::bind(settings.addr).await?;
    tracing::info!(
        addr = %settings.addr,
        public_url = %settings.public_url,
        dev_sign_in = settings.dev_signers.is_some(),
        "portal-web serving"
    );
    let app = App::new(settings, backend);
    // Open event streams end with the services' watches; do not wait for them past 5 s.
    let (stopping, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(serve(app, listener, async move {
        shutdown_signal().await;
        let _ = stopping.send(());
    }));
    tokio::select! {
        served = server => served??,
        () = async {
            let _ = stopped.await;
            tokio::time::sleep(Duration::from_secs(5)).await;
        } => tracing::info!("portal-web stopped with event streams still open"),
    }
    Ok(())
}
