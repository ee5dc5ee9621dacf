//! Pull loop: one durable JetStream consumer per projector, explicit acknowledgements.
//! decode -> apply (the messages already received, in one transaction: [`batch`]) -> ack; a gap
//! or a database failure -> NAK with a delay (redelivered later); a message that can never
//! apply -> dead-letter table, then TERM.

use std::time::Duration;

use anyhow::Context as _;
use async_nats::jetstream::{self, AckKind, consumer};
use futures_util::{FutureExt as _, StreamExt as _};
use sqlx::PgPool;

pub mod batch;

/// The most messages applied in one transaction.
const MAX_BATCH: usize = 256;

use crate::projections::{self, Outcome, ProjectionError, Projector};

/// Where to consume from.
#[derive(Debug, Clone)]
pub struct ConsumerSettings {
    /// The NATS server.
    pub nats_url: String,
    /// The stream (the relay creates it).
    pub stream: String,
    /// Subject prefix.
    pub subject_prefix: String,
    /// Durable consumer names are `<prefix>-<projector>`.
    pub consumer_prefix: String,
}

impl ProjectionError {
    /// How the message is acknowledged after this error, on its `delivered`-th delivery: a gap
    /// or a database failure is retried with exponential backoff (200 ms doubling up to 30 s),
    /// a poison message is never redelivered.
    fn ack_kind(&self, delivered: i64) -> AckKind {
        let backoff = |base: Duration| {
            let exponent = u32::try_from(delivered.saturating_sub(1).clamp(0, 8)).unwrap_or(8);
            (base * 2u32.pow(exponent)).min(Duration::from_secs(30))
        };
        match self {
            Self::Gap { .. } | Self::Waiting(_) => {
                AckKind::Nak(Some(backoff(Duration::from_millis(200))))
            }
            Self::Transient(_) => AckKind::Nak(Some(backoff(Duration::from_millis(500)))),
            Self::Poison(_) => AckKind::Term,
        }
    }
}

/// Consumes for `projector` until the task is dropped, reconnecting after failures.
pub(crate) async fn run<P: Projector>(pool: PgPool, settings: ConsumerSettings, projector: P) {
    service_kit::restarting("consumer", || consume(&pool, &settings, &projector)).await;
}

/// The durable consumer of `projector`, created if missing.
pub(crate) async fn durable<P: Projector>(
    context: &jetstream::Context,
    settings: &ConsumerSettings,
    projector: &P,
) -> anyhow::Result<consumer::PullConsumer> {
    let stream = context
        .get_stream(&settings.stream)
        .await
        .with_context(|| format!("opening stream {} (the relay creates it)", settings.stream))?;
    let name = format!("{}-{}", settings.consumer_prefix, projector.name());
    stream
        .get_or_create_consumer(
            &name,
            consumer::pull::Config {
                durable_name: Some(name.clone()),
                filter_subject: format!("{}.{}", settings.subject_prefix, projector.filter()),
                ack_policy: consumer::AckPolicy::Explicit,
                ack_wait: Duration::from_secs(30),
                deliver_policy: consumer::DeliverPolicy::All,
                ..Default::default()
            },
        )
        .await
        .with_context(|| format!("creating or opening consumer {name}"))
}

async fn consume<P: Projector>(
    pool: &PgPool,
    settings: &ConsumerSettings,
    projector: &P,
) -> anyhow::Result<()> {
    let client = async_nats::connect(&settings.nats_url)
        .await
        .with_context(|| format!("connecting to NATS at {}", settings.nats_url))?;
    let context = jetstream::new(client);
    let mut consumer = durable(&context, settings, projector).await?;
    if consumer_ahead_of_stream(&context, settings, &mut consumer).await? {
        let name = format!("{}-{}", settings.consumer_prefix, projector.name());
        tracing::warn!(consumer = %name, "the stream lost messages this consumer had seen; \
            recreating it to read the stream again (the guards skip what was applied)");
        context
            .get_stream(&settings.stream)
            .await
            .context("opening the stream")?
            .delete_consumer(&name)
            .await
            .context("deleting the consumer")?;
        consumer = durable(&context, settings, projector).await?;
    }
    let mut messages = consumer.messages().await.context("pulling messages")?;
    tracing::info!(projector = projector.name(), "consuming");
    let mut check = tokio::time::interval(Duration::from_secs(5));
    loop {
        let message = tokio::select! {
            message = messages.next() => message,
            _ = check.tick() => {
                if consumer_ahead_of_stream(&context, settings, &mut consumer).await? {
                    anyhow::bail!("the stream lost messages; starting over");
                }
                continue;
            }
        };
        let Some(message) = message else {
            anyhow::bail!("the message stream ended");
        };
        let mut batch = vec![message.context("receiving a message")?];
        // Whatever else has already arrived joins the batch (never waiting for more).
        let mut failed = None;
        while batch.len() < MAX_BATCH {
            match messages.next().now_or_never() {
                Some(Some(Ok(message))) => batch.push(message),
                Some(Some(Err(error))) => {
                    failed = Some(error);
                    break;
                }
                Some(None) | None => break,
            }
        }
        handle(pool, projector, batch).await?;
        if let Some(error) = failed {
            return Err(anyhow::anyhow!(error).context("receiving a message"));
        }
    }
}

/// Applies a batch of messages and acknowledges each: applied, already applied or parked →
/// ACK; a gap or a failure → NAK with backoff; undecodable → dead letter, then TERM.
async fn handle<P: Projector>(
    pool: &PgPool,
    projector: &P,
    batch: Vec<jetstream::Message>,
) -> anyhow::Result<()> {
    let mut decoded = Vec::with_capacity(batch.len());
    for message in batch {
        match projections::decode(&message.payload) {
            Ok(event) => decoded.push((message, event)),
            Err(poison) => settle(pool, projector, &message, Err(poison)).await?,
        }
    }
    let (messages, events): (Vec<_>, Vec<_>) = decoded.into_iter().unzip();
    if events.is_empty() {
        return Ok(());
    }
    let verdicts = match batch::apply(pool, projector, &events).await {
        Ok(verdicts) => verdicts,
        Err(error) => {
            tracing::debug!(%error, events = events.len(), "batch rolled back; one by one");
            batch::one_by_one(pool, projector, &events).await
        }
    };
    for (message, verdict) in messages.iter().zip(verdicts) {
        settle(pool, projector, message, verdict).await?;
    }
    Ok(())
}

/// Acknowledges one message according to what became of its event.
async fn settle<P: Projector>(
    pool: &PgPool,
    projector: &P,
    message: &jetstream::Message,
    verdict: Result<Outcome, ProjectionError>,
) -> anyhow::Result<()> {
    match verdict {
        Ok(Outcome::Applied | Outcome::AlreadyApplied | Outcome::Parked) => message
            .ack()
            .await
            .map_err(|e| anyhow::anyhow!("acknowledging: {e}")),
        Err(error) => {
            if let ProjectionError::Poison(reason) = &error {
                tracing::error!(subject = %message.subject, %reason, "parking a poison message");
                park(
                    pool,
                    projector.name(),
                    &message.subject,
                    reason,
                    &message.payload,
                )
                .await?;
            } else {
                tracing::debug!(subject = %message.subject, %error, "retrying later");
            }
            let delivered = message.info().map_or(1, |info| info.delivered);
            message
                .ack_with(error.ack_kind(delivered))
                .await
                .map_err(|e| anyhow::anyhow!("acknowledging: {e}"))
        }
    }
}

/// Whether the consumer has been delivered stream positions the stream no longer holds: NATS
/// (2.9, without fsync) lost its tail, and the relay's republished events will reuse those
/// positions, which the consumer would never deliver.
async fn consumer_ahead_of_stream(
    context: &jetstream::Context,
    settings: &ConsumerSettings,
    consumer: &mut consumer::PullConsumer,
) -> anyhow::Result<bool> {
    let delivered = consumer
        .info()
        .await
        .context("reading the consumer's state")?
        .delivered
        .stream_sequence;
    let mut stream = context
        .get_stream(&settings.stream)
        .await
        .context("opening the stream")?;
    let last = stream
        .info()
        .await
        .context("reading the stream's state")?
        .state
        .last_sequence;
    Ok(delivered > last)
}

/// Records a message that can never be applied, for operators.
async fn park(
    pool: &PgPool,
    projector: &str,
    subject: &str,
    reason: &str,
    payload: &[u8],
) -> anyhow::Result<()> {
    let event_id = projections::decode(payload)
        .ok()
        .map(|event| event.event_id);
    sqlx::query(
        "INSERT INTO dead_letters (projector, subject, event_id, reason, payload) \
         VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(projector)
    .bind(subject)
    .bind(event_id)
    .bind(reason)
    .bind(payload)
    .execute(pool)
    .await
    .context("recording a dead letter")?;
    Ok(())
}
