//! An example of an external notification consumer (docs/notification-consumers.md): it attaches
//! a durable pull consumer to linkd's stream, filtered on `<prefix>.device.>`, and prints every
//! `DeviceLinked` and `DeviceUnlinked` event, where a real consumer would send an email or a
//! push notification. The other device events (biometrics, secret codes) are acknowledged and
//! ignored.
//!
//! With linkd running (`./scripts/run.sh`): `cargo run -p notification-consumer`, then link and
//! unlink devices from another terminal (`target/debug/linkctl demo`). Ctrl-C stops it; the
//! server keeps the durable consumer's position, so the next run resumes after the last event
//! acknowledged.
#![allow(
    clippy::print_stdout,
    reason = "an example prints the events it receives"
)]

use std::collections::HashSet;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use async_nats::jetstream::{self, AckKind, consumer};
use clap::Parser;
use futures_util::StreamExt as _;
use prost::Message as _;
use proto::v1::event_envelope::Event;
use proto::v1::{EventEnvelope, UnlinkReason};
use service_kit::bus_signing::BusVerifier;

/// Prints linkd's DeviceLinked and DeviceUnlinked events, read from NATS JetStream.
#[derive(Debug, Parser)]
#[command(name = "notification-consumer", version, about)]
struct Args {
    /// The NATS server, or a comma-separated seed list of a cluster's servers.
    #[arg(long, default_value = "nats://127.0.0.1:4222")]
    nats_url: String,
    /// The stream linkd publishes to (its `LINKD_STREAM`).
    #[arg(long, default_value = "LINKD_EVENTS")]
    stream: String,
    /// linkd's subject prefix (its `LINKD_SUBJECT_PREFIX`).
    #[arg(long, default_value = "linkd.events")]
    subject_prefix: String,
    /// The durable consumer's name; the server keeps its position under this name.
    #[arg(long, default_value = "example-printer")]
    durable: String,
    /// A NATS credentials file (user JWT and NKey seed), for a server that requires one.
    #[arg(long)]
    creds: Option<PathBuf>,
    /// The relay's public key(s) (linkd's `LINKD_BUS_VERIFY_KEYS_FILE`): a message they did not
    /// sign is set aside, never acted on. Without it every message is believed, which only a
    /// development set-up should do.
    #[arg(long)]
    verify_keys: Option<PathBuf>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    tokio::select! {
        result = run(&args) => result,
        signal = tokio::signal::ctrl_c() => {
            signal.context("waiting for Ctrl-C")?;
            println!("stopped; the durable consumer {} keeps its position", args.durable);
            Ok(())
        }
    }
}

async fn connect(args: &Args) -> anyhow::Result<async_nats::Client> {
    let options = match &args.creds {
        Some(path) => async_nats::ConnectOptions::with_credentials_file(path)
            .await
            .with_context(|| format!("reading NATS credentials from {}", path.display()))?,
        None => async_nats::ConnectOptions::new(),
    };
    options
        .name("notification-consumer")
        // One URL or a comma-separated seed list, as NATS clients accept.
        .connect(
            args.nats_url
                .split(',')
                .map(str::trim)
                .filter(|seed| !seed.is_empty())
                .collect::<Vec<_>>(),
        )
        .await
        .with_context(|| format!("connecting to NATS at {}", args.nats_url))
}

/// The durable consumer, created on the first run and reused afterwards.
async fn durable(
    context: &jetstream::Context,
    args: &Args,
) -> anyhow::Result<consumer::PullConsumer> {
    let filter = format!("{}.device.>", args.subject_prefix);
    let stream = context
        .get_stream(&args.stream)
        .await
        .with_context(|| format!("opening stream {} (linkd's relay creates it)", args.stream))?;
    let consumer: consumer::PullConsumer = stream
        .get_or_create_consumer(
            &args.durable,
            consumer::pull::Config {
                durable_name: Some(args.durable.clone()),
                description: Some("linkd notification-consumer example".to_owned()),
                // One filter subject: several (`filter_subjects`) need NATS server 2.10.
                filter_subject: filter.clone(),
                // Every message must be acknowledged; one that is not within `ack_wait` (or is
                // NAKed) is delivered again.
                ack_policy: consumer::AckPolicy::Explicit,
                ack_wait: Duration::from_secs(30),
                // A new durable starts with the oldest event the stream holds. A notifier
                // attached to a system already in service would rather start with
                // `DeliverPolicy::New`, so as not to notify about the past.
                deliver_policy: consumer::DeliverPolicy::All,
                ..Default::default()
            },
        )
        .await
        .with_context(|| format!("creating or opening consumer {}", args.durable))?;
    // An existing durable is opened as it is, whatever the configuration above says.
    let existing = &consumer.cached_info().config.filter_subject;
    if *existing != filter {
        anyhow::bail!(
            "consumer {} filters on {existing:?}, not {filter:?}: delete it \
             (`nats consumer rm {} {}`) or choose another --durable",
            args.durable,
            args.stream,
            args.durable
        );
    }
    Ok(consumer)
}

async fn run(args: &Args) -> anyhow::Result<()> {
    let verifier = match &args.verify_keys {
        Some(path) => Some(BusVerifier::from_pem_file(path)?),
        None => {
            eprintln!(
                "warning: no --verify-keys: messages are believed without checking the relay's \
                 signature (development only)"
            );
            None
        }
    };
    let client = connect(args).await?;
    let context = jetstream::new(client);
    let consumer = durable(&context, args).await?;
    let mut messages = consumer.messages().await.context("pulling messages")?;
    println!(
        "consuming {}.device.> from stream {} as durable consumer {} (Ctrl-C stops)",
        args.subject_prefix, args.stream, args.durable
    );

    // Delivery is at least once: an event can arrive again (an acknowledgement lost, a relay
    // restart, an operator's republish). This set remembers the event ids handled in this run
    // only, which is enough for an example. A real consumer deduplicates durably: e.g. a table
    // keyed by `event_id` (primary key) into which it inserts the id in the same database
    // transaction as the event's effect (the notification it records or queues); when the insert
    // conflicts, the event was already handled, so it skips it and acknowledges it. An email is
    // sent from such a queue (an outbox), never directly from the message handler.
    let mut handled: HashSet<String> = HashSet::new();

    while let Some(message) = messages.next().await {
        let message = message.context("receiving a message")?;
        if let Some(verifier) = &verifier
            && let Err(forged) = verifier.verify_nats_message(&message)
        {
            // Someone without the relay's key published it: never act on it.
            eprintln!(
                "{}: not the relay's ({forged}); terminated",
                message.subject
            );
            message
                .ack_with(AckKind::Term)
                .await
                .map_err(|e| anyhow::anyhow!("acknowledging: {e}"))?;
            continue;
        }
        let ack = match EventEnvelope::decode(message.payload.as_ref()) {
            Ok(envelope) => {
                handle(&envelope, &mut handled);
                AckKind::Ack
            }
            Err(error) => {
                // It will never decode: do not have it delivered again.
                eprintln!(
                    "{}: not an EventEnvelope ({error}); terminated",
                    message.subject
                );
                AckKind::Term
            }
        };
        message
            .ack_with(ack)
            .await
            .map_err(|e| anyhow::anyhow!("acknowledging: {e}"))?;
    }
    anyhow::bail!("the message stream ended")
}

/// Prints the event unless this run has handled it already.
fn handle(envelope: &EventEnvelope, handled: &mut HashSet<String>) {
    if handled.contains(&envelope.event_id) {
        println!("{}: already handled; skipped", envelope.event_id);
        return;
    }
    if let Some(line) = describe(envelope) {
        println!("{line}");
    }
    handled.insert(envelope.event_id.clone());
}

/// One line for `DeviceLinked` and `DeviceUnlinked`; `None` for any other event.
fn describe(envelope: &EventEnvelope) -> Option<String> {
    // The aggregate of a device event is the device; payloads never carry the account id,
    // the envelope does.
    let account = &envelope.account_id;
    let device = &envelope.aggregate_id;
    if let Some(Event::DeviceLinked(linked)) = &envelope.event {
        // Personal fields travel sealed (docs/adr/0025): without the data keys, a consumer
        // sees ciphertext, and says so rather than print it.
        let name = if linked.device_name.starts_with("sealed:") {
            "(sealed)".to_owned()
        } else {
            format!("{:?}", linked.device_name)
        };
        Some(format!(
            "{}  DeviceLinked    account={account} device={device} name={name}",
            time(linked.at.as_ref()),
        ))
    } else if let Some(Event::DeviceUnlinked(unlinked)) = &envelope.event {
        Some(format!(
            "{}  DeviceUnlinked  account={account} device={device} reason={}",
            time(unlinked.at.as_ref()),
            reason(unlinked.reason)
        ))
    } else {
        // Biometrics and secret-code events, and event types newer than this code (decoded
        // with no `event`): nothing to notify.
        None
    }
}

fn reason(value: i32) -> String {
    match UnlinkReason::try_from(value) {
        Ok(UnlinkReason::FromDevice) => "from the device".to_owned(),
        Ok(UnlinkReason::FromPortal) => "from the portal".to_owned(),
        Ok(UnlinkReason::LockedOut) => "locked out (five wrong secret codes)".to_owned(),
        Ok(UnlinkReason::HelpDesk) => "by the help desk".to_owned(),
        Ok(UnlinkReason::Inactive) => "unused for too long".to_owned(),
        Ok(UnlinkReason::Unspecified) | Err(_) => format!("unknown ({value})"),
    }
}

/// The payload's `at`, in UTC.
fn time(at: Option<&prost_types::Timestamp>) -> String {
    at.and_then(proto::convert::datetime).map_or_else(
        || "(no time)".to_owned(),
        |t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
    )
}
