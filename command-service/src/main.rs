//! The `command-service` binary. `command-service` serves; `command-service republish --from N`
//! makes the relay publish every event again from global position N (0: all);
//! `command-service verify --account ID` checks the tamper-evidence chain of an account's history;
//! `command-service rewrap-keys` wraps every data key under the current KEK (ADR 0025).

use anyhow::Context as _;
use command_service::startup::{Application, connect_and_migrate};
use command_service::{Settings, relay};
use service_kit::{shutdown_signal, telemetry};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let telemetry = telemetry::init("linkd-command")?;
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
        ["rewrap-keys"] => {
            let pool = connect_and_migrate(&settings).await?;
            let keks = command_service::startup::load_keks(&settings, &pool).await?;
            let rewrapped = command_service::store::rewrap_keys(&pool, &keks).await?;
            tracing::info!(
                rewrapped,
                current = keks.current_id(),
                "every data key is wrapped under the current KEK; older KEKs can be removed from \
                 LINKD_KEK_FILE"
            );
            Ok(())
        }
        ["verify", "--account", account_id] => {
            let pool = connect_and_migrate(&settings).await?;
            match history::verify_account(&pool, account_id).await? {
                history::Verdict::Intact {
                    events,
                    up_to_position,
                } => {
                    tracing::info!(
                        events,
                        "history of {account_id} intact up to position {up_to_position}"
                    );
                    Ok(())
                }
                history::Verdict::Broken {
                    global_position,
                    event_id,
                    reason,
                } => {
                    anyhow::bail!(
                        "history of {account_id} broken at position {global_position} ({event_id}): {reason}"
                    )
                }
            }
        }
        _ => anyhow::bail!(
            "usage: command-service [republish --from <global position> | verify --account <id> \
             | rewrap-keys]"
        ),
    }
}
