//! The `projection-service` binary. `projection-service` serves and consumes;
//! `projection-service rebuild` rebuilds the read models from the stream and switches over.

use projection_service::{Application, Settings};
use tracing_subscriber::EnvFilter;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let json = std::env::var("LINKD_LOG_FORMAT").is_ok_and(|format| format == "json");
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .with_ansi(ansi)
        .with_writer(std::io::stderr);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
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
                .run_until_stopped(stopped())
                .await
        }
        ["rebuild"] => {
            let rebuilt =
                projection_service::rebuild::rebuild(&settings.database_url, &settings.consumers())
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

/// Completes on Ctrl-C or SIGTERM.
async fn stopped() {
    let mut terminate =
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {},
        Some(()) = async { terminate.as_mut()?.recv().await } => {},
    }
    tracing::info!("shutting down");
}
