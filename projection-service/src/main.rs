//! The `projection-service` binary. `projection-service` serves and consumes;
//! `projection-service rebuild` rebuilds the read models from the stream and switches over.

use projection_service::{Application, Settings};
use service_kit::{shutdown_signal, telemetry};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let telemetry = telemetry::init("linkd-projection")?;
    let outcome = run().await;
    telemetry.shutdown().await;
    outcome
}

async fn run() -> anyhow::Result<()> {
    let settings = Settings::from_env()?;
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .as_slice()
    {
        [] => {
            Application::build(settings)
                .await?
                .run_until_stopped(shutdown_signal())
                .await
        }
        ["rebuild"] => {
            let rebuilt = projection_service::rebuild::rebuild(
                &settings.database_url.0,
                &settings.consumers()?,
            )
            .await?;
            tracing::info!(
                events = rebuilt.events,
                seconds = rebuilt.elapsed.as_secs_f64(),
                events_per_second = rebuilt.events_per_second(),
                "read models rebuilt and switched over"
            );
            Ok(())
        }
        _ => anyhow::bail!("usage: projection-service [rebuild]"),
    }
}
