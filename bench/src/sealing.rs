//! What sealing personal fields costs a command (docs/adr/0025), in the same run with and
//! without: an event serialised as the store writes it (its personal fields sealed) against the
//! same event serialised in clear, and read back (opened) against read in clear. CPU only: the
//! extra database round trip is paid once per data subject and instance (the key is created or
//! read, then cached for sealing) and is not in these figures.

use std::hint::black_box;
use std::time::Instant;

use chrono::Utc;
use command_service::sealing::{self, DataKey};
use domain::{
    AccountEvent, AccountId, DeviceEvent, DeviceName, LinkAttemptId, LinkMethod, LuxTrustProduct,
    Platform, ProductKind,
};
use serde::Serialize;
use serde::de::DeserializeOwned;

/// Options.
#[derive(Debug, clap::Args)]
pub(crate) struct SealingArgs {
    /// Events per measurement.
    #[arg(long, default_value_t = 200_000)]
    pub(crate) events: u32,
}

/// Nanoseconds per iteration of `step`, run `n` times.
fn per_event(n: u32, mut step: impl FnMut()) -> f64 {
    let started = Instant::now();
    for _ in 0..n {
        step();
    }
    started.elapsed().as_nanos() as f64 / f64::from(n)
}

fn measure<E: Serialize + DeserializeOwned>(
    n: u32,
    aggregate_type: &str,
    event_type: &str,
    event: &E,
) -> anyhow::Result<[f64; 4]> {
    let (key, _) = DataKey::generate();
    let event_id = format!("{aggregate_type}/7f0c2b8e-52a4-4d8e-9a3e-0d1c6f1f8b11/3");
    let seal = || -> anyhow::Result<String> {
        let mut value = serde_json::to_value(event)?;
        sealing::seal_event(aggregate_type, event_type, &event_id, &mut value, &key)?;
        Ok(value.to_string())
    };
    let clear = serde_json::to_string(event)?;
    let sealed = seal()?;
    anyhow::ensure!(
        sealed.contains("sealed:v1:"),
        "nothing was sealed in {event_type}"
    );
    let write_clear = per_event(n, || {
        black_box(serde_json::to_string(black_box(event)).ok());
    });
    let write_sealed = per_event(n, || {
        black_box(seal().ok());
    });
    let read_clear = per_event(n, || {
        black_box(serde_json::from_str::<E>(black_box(&clear)).ok());
    });
    let read_sealed = per_event(n, || {
        let opened = serde_json::from_str::<serde_json::Value>(black_box(&sealed))
            .ok()
            .and_then(|mut value| {
                sealing::open_event(
                    aggregate_type,
                    event_type,
                    &event_id,
                    &mut value,
                    Some(&key),
                )
                .ok()?;
                serde_json::from_value::<E>(value).ok()
            });
        black_box(opened);
    });
    Ok([write_clear, write_sealed, read_clear, read_sealed])
}

/// Prints the figures as Markdown.
pub(crate) fn run(args: &SealingArgs) -> anyhow::Result<()> {
    let linked = DeviceEvent::DeviceLinked {
        link_id: LinkAttemptId(uuid::Uuid::new_v4()),
        account_id: AccountId("anna.muller@guichet:42".into()),
        device_name: DeviceName::parse("Anna's phone")?,
        method: LinkMethod::LuxTrust,
        product: Some(LuxTrustProduct {
            kind: ProductKind::Mobile,
            serial: "LT-123456789".into(),
        }),
        platform: Platform::Android,
        app_version: "2.4.1".into(),
        at: Utc::now(),
    };
    let registered = AccountEvent::AccountRegistered {
        email: "anna.muller@example.lu".into(),
        language: "fr".into(),
        at: Utc::now(),
    };
    println!(
        "### Sealing personal fields: CPU per event ({} events each)\n",
        args.events
    );
    println!(
        "| event (sealed fields) | write in clear | write sealed | read in clear | read opened |"
    );
    println!("|---|---|---|---|---|");
    for (name, figures) in [
        (
            "DeviceLinked (name, serial)",
            measure(args.events, "device", "DeviceLinked", &linked)?,
        ),
        (
            "AccountRegistered (email)",
            measure(args.events, "account", "AccountRegistered", &registered)?,
        ),
    ] {
        let [wc, ws, rc, rs] = figures.map(|ns| ns / 1000.0);
        println!("| {name} | {wc:.2} µs | {ws:.2} µs | {rc:.2} µs | {rs:.2} µs |");
    }
    println!(
        "\nEvents without personal fields are written and read as before. A command also \
         unwraps nothing (its key is cached); a load unwraps each subject's key once \
         (one XChaCha20-Poly1305 open of 32 bytes)."
    );
    Ok(())
}
