//! The `command-service` binary. `command-service` serves; `command-service republish --from N`
//! makes the relay publish every event again from global position N (0: all).

use anyhow::Context as _;
use command_service::startup::{Application, connect_and_migrate, shutdown_signal};
use command_service::{Settings, relay, telemetry};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    telemetry::init();
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
        ["republish", "--from", position] => {
            let position: i64 = position.parse().context("--from takes a global position")?;
            let pool = connect_and_migrate(&settings).await?;
            let cursor = relay::republish_from(&pool, position).await?;
            tracing::info!(
                ?cursor,
                "the relay will republish from global position {position}"
            );
            Ok(())
        }
        _ => anyhow::bail!("usage: command-service [republish --from <global position>]"),
    }
}
