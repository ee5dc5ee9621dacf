//! The `command-service` binary.

use command_service::startup::{Application, shutdown_signal};
use command_service::{Settings, telemetry};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    telemetry::init();
    let settings = Settings::from_env()?;
    let app = Application::build(settings).await?;
    app.run_until_stopped(shutdown_signal()).await
}
