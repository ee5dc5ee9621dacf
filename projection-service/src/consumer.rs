//! Pull loop: one durable JetStream consumer for every read model, explicit acknowledgements.
//! decode -> apply (the messages already received, to every read model, in one transaction:
//! [`batch`]) -> ack once the commit is durable ([`durable_acks`]); a gap or a database failure
//! -> NAK with a delay (redelivered later); a message that can never apply -> dead-letter table,
//! then TERM.
//!
//! The consumer's transactions commit without waiting for their WAL flush
//! (`synchronous_commit = off` on its connections): the read models can always be rebuilt from
//! the stream, and a message is acknowledged only once PostgreSQL has flushed the WAL past the
//! commit that applied it. A crash of PostgreSQL loses at most commits whose messages are still
//! unacknowledged, which JetStream delivers again (ADR 0018).

use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use anyhow::Context as _;
use async_nats::jetstream::{self, AckKind, consumer};
use futures_util::{FutureExt as _, StreamExt as _};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use service_kit::bus_signing::BusVerifier;
use service_kit::metrics::Metrics;
use sqlx::PgPool;
use tokio::sync::mpsc;

pub mod batch;
pub mod durable_acks;

/// The most messages applied in one transaction.
const MAX_BATCH: usize = 256;

/// The most messages delivered and not yet acknowledged: batches whose commit awaits its WAL
/// flush stay unacknowledged for a few milliseconds (at most about 50 ms, when a flush is forced).
const MAX_ACK_PENDING: i64 = 20_000;

/// How long JetStream waits for an acknowledgement before delivering a message again.
const ACK_WAIT: Duration = Duration::from_secs(30);

/// The durable consumer's name after the prefix: one consumer for every read model.
pub const CONSUMER: &str = "read-models";

/// The consumers of earlier versions (one per read model), removed at start.
const LEGACY_CONSUMERS: [&str; 3] = ["devices", "audit", "notifier"];

use crate::projections::{self, Outcome, ProjectionError, ReadModel};

/// The read models one delivery feeds, in the order each event is applied to them.
pub type ReadModels = Arc<[Box<dyn ReadModel>]>;

/// Where to consume from.
#[derive(Debug, Clone)]
pub struct ConsumerSettings {
    /// The NATS server.
    pub nats_url: String,
    /// The stream (the relay creates it).
    pub stream: String,
    /// Subject prefix.
    pub subject_prefix: String,
    /// The durable consumer is `<prefix>-read-models`.
    pub consumer_prefix: String,
    /// The relay's public keys; `None`: unsigned messages are accepted (development).
    pub verifier: Option<Arc<BusVerifier>>,
    /// How to prove itself to NATS.
    pub nats_auth: service_kit::nats::NatsAuth,
    /// What opens sealed personal fields (`None`: the event store or the KEKs are not
    /// configured, and events with sealed fields wait).
    pub opener: Option<crate::sealed::Opener>,
    /// How the notifier addresses the emails it queues.
    pub notices: Notices,
}

/// How the notifier read model addresses the emails it queues (from the email settings).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notices {
    /// The From address (the Message-ID's domain comes from it).
    pub sender: String,
    /// Language for accounts registered without one of ours.
    pub default_language: String,
    /// Events older than this queue no email.
    pub max_event_age: Duration,
}

impl Default for Notices {
    fn default() -> Self {
        Self {
            sender: "usermanagement@security.public.lu".into(),
            default_language: "en".into(),
            max_event_age: Duration::from_secs(24 * 3600),
        }
    }
}

impl From<&crate::email::EmailSettings> for Notices {
    fn from(email: &crate::email::EmailSettings) -> Self {
        Self {
            sender: email.sender.clone(),
            default_language: email.default_language.clone(),
            max_event_age: email.max_event_age,
        }
    }
}

impl ConsumerSettings {
    /// The durable consumer's name.
    pub fn durable_name(&self) -> String {
        format!("{}-{CONSUMER}", self.consumer_prefix)
    }

    /// Every read model the stream feeds, in the order their guards are locked (by name): the
    /// live consumer's and the rebuild's.
    pub fn read_models(&self) -> ReadModels {
        use crate::projections::{audit::AuditHeads, devices::Devices, notifier::Notifier};
        let notifier = Notifier {
            templates: crate::email::Templates::default(),
            sender: self.notices.sender.clone(),
            default_language: self.notices.default_language.clone(),
            max_event_age: self.notices.max_event_age,
        };
        Arc::new([
            Box::new(AuditHeads) as Box<dyn ReadModel>,
            Box::new(Devices),
            Box::new(notifier),
        ])
    }
}

impl ProjectionError {
    /// How the message is acknowledged after this error, on its `delivered`-th delivery: a gap
    /// (or a wait) is retried after 200 ms doubling up to 2 s, a database failure after 500 ms
    /// doubling up to 30 s; a poison message is never redelivered. A gap waits for an event
    /// that is usually in flight: a long backoff there compounds (the fault campaign saw a
    /// NATS restart take 78 s to catch up with a 30 s cap, each event of a chain waiting out
    /// the backoff its redeliveries had grown while the one before it was pending).
    fn ack_kind(&self, delivered: i64) -> AckKind {
        let backoff = |base: Duration, cap: Duration| {
            let exponent = u32::try_from(delivered.saturating_sub(1).clamp(0, 8)).unwrap_or(8);
            (base * 2u32.pow(exponent)).min(cap)
        };
        match self {
            Self::Gap { .. } | Self::Waiting(_) => AckKind::Nak(Some(backoff(
                Duration::from_millis(200),
                Duration::from_secs(2),
            ))),
            Self::Transient(_) => AckKind::Nak(Some(backoff(
                Duration::from_millis(500),
                Duration::from_secs(30),
            ))),
            Self::Poison(_) => AckKind::Term,
        }
    }
}

/// Consumes for `models` until the task is dropped, reconnecting after failures. `pool`'s
/// connections must commit without waiting for the flush (`synchronous_commit = off`), and
/// acknowledgements wait for it instead.
pub async fn run(
    pool: PgPool,
    settings: ConsumerSettings,
    models: ReadModels,
    metrics: ConsumerMetrics,
) {
    service_kit::restarting("consumer", || consume(&pool, &settings, &models, &metrics)).await;
}

/// What the consumer counts as it applies, and (at each scrape) how far behind it is.
#[derive(Debug, Clone)]
pub struct ConsumerMetrics {
    stream_sequence: Gauge,
    applied: Counter,
    parked: Counter,
    unknown: Counter,
    forged: Counter,
    batches: Histogram,
    /// When the last message applied was published, in seconds since the epoch (when the
    /// service started, until one is).
    last_published: Gauge<f64, AtomicU64>,
    /// The consumer being read, once there is one.
    consumer: Arc<Mutex<Option<consumer::PullConsumer>>>,
}

impl ConsumerMetrics {
    /// Registers the consumer's series in `metrics`.
    pub fn register(metrics: &Metrics) -> Self {
        let counted = Self {
            stream_sequence: metrics.gauge(
                "consumer_stream_sequence",
                "Stream sequence of the last message applied to the read models",
            ),
            applied: Counter::default(),
            parked: Counter::default(),
            unknown: Counter::default(),
            forged: Counter::default(),
            batches: Histogram::new(exponential_buckets(1.0, 2.0, 9)),
            last_published: Gauge::default(),
            consumer: Arc::default(),
        };
        // Until a message is applied, the lag of what waits is counted from the start.
        counted
            .last_published
            .set(seconds_since_epoch(std::time::SystemTime::now()));
        metrics.register(
            "consumer_applied_messages",
            "Messages settled: applied to every read model, found applied already, parked, or \
             passed over as of an unknown type",
            counted.applied.clone(),
        );
        metrics.register(
            "consumer_parked_messages",
            "Messages that can never apply, recorded in the dead-letter table",
            counted.parked.clone(),
        );
        metrics.register(
            "consumer_unknown_messages",
            "Messages of an event type this version does not know (a newer linkd's): \
             acknowledged and passed over, every guard moved past them",
            counted.unknown.clone(),
        );
        metrics.register(
            "consumer_forged_messages",
            "Messages not signed by the relay's key (unsigned, an unknown key, or a signature \
             that does not verify): parked, never applied",
            counted.forged.clone(),
        );
        metrics.register(
            "consumer_batch_messages",
            "Messages applied per transaction",
            counted.batches.clone(),
        );
        let pending = metrics.gauge(
            "consumer_pending_messages",
            "Messages of the stream not yet acknowledged by the read models' consumer (waiting \
             or in flight)",
        );
        let lag = metrics.gauge_f64(
            "consumer_lag_seconds",
            "While messages are pending: time since the last message applied was published \
             (0 when none is pending)",
        );
        let (consumer, last_published) = (counted.consumer.clone(), counted.last_published.clone());
        metrics.on_scrape(move || {
            let consumer = consumer
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .clone();
            let (pending, lag, last_published) =
                (pending.clone(), lag.clone(), last_published.clone());
            async move {
                let Some(mut consumer) = consumer else {
                    return;
                };
                match consumer.info().await {
                    Ok(info) => {
                        let waiting = info.num_pending
                            + u64::try_from(info.num_ack_pending).unwrap_or_default();
                        pending.set(i64::try_from(waiting).unwrap_or(i64::MAX));
                        let published = last_published.get();
                        lag.set(if waiting == 0 {
                            0.0
                        } else {
                            (seconds_since_epoch(std::time::SystemTime::now()) - published).max(0.0)
                        });
                    }
                    Err(error) => tracing::warn!(%error, "metrics: reading the consumer's state"),
                }
            }
        });
        counted
    }

    /// A batch of `size` messages was handed to the read models; `settled` of them are done.
    fn settled(&self, size: usize, settled: &[(jetstream::Message, AckKind)]) {
        self.batches.observe(size as f64);
        self.applied
            .inc_by(u64::try_from(settled.len()).unwrap_or(u64::MAX));
        let last = settled
            .iter()
            .filter_map(|(message, _)| message.info().ok())
            .max_by_key(|info| info.stream_sequence);
        if let Some(info) = last {
            self.stream_sequence
                .set(i64::try_from(info.stream_sequence).unwrap_or(i64::MAX));
            #[allow(
                clippy::cast_precision_loss,
                reason = "seconds since the epoch as f64 keep microseconds until far beyond 2100"
            )]
            let published = info.published.unix_timestamp_nanos() as f64 / 1e9;
            self.last_published.set(published);
        }
    }
}

fn seconds_since_epoch(at: std::time::SystemTime) -> f64 {
    at.duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |since| since.as_secs_f64())
}

/// The durable consumer, created if missing; the consumers of earlier versions are removed.
pub async fn durable(
    context: &jetstream::Context,
    settings: &ConsumerSettings,
) -> anyhow::Result<consumer::PullConsumer> {
    let stream = context
        .get_stream(&settings.stream)
        .await
        .with_context(|| format!("opening stream {} (the relay creates it)", settings.stream))?;
    let name = settings.durable_name();
    let consumer = stream
        .get_or_create_consumer(
            &name,
            consumer::pull::Config {
                durable_name: Some(name.clone()),
                filter_subject: format!("{}.>", settings.subject_prefix),
                ack_policy: consumer::AckPolicy::Explicit,
                ack_wait: ACK_WAIT,
                max_ack_pending: MAX_ACK_PENDING,
                deliver_policy: consumer::DeliverPolicy::All,
                ..Default::default()
            },
        )
        .await
        .with_context(|| format!("creating or opening consumer {name}"))?;
    for legacy in LEGACY_CONSUMERS {
        let legacy = format!("{}-{legacy}", settings.consumer_prefix);
        if stream
            .get_consumer::<consumer::pull::Config>(&legacy)
            .await
            .is_ok()
        {
            stream
                .delete_consumer(&legacy)
                .await
                .with_context(|| format!("removing the earlier version's consumer {legacy}"))?;
            tracing::info!(consumer = %legacy, replaced_by = %name,
                "removed an earlier version's consumer");
        }
    }
    Ok(consumer)
}

async fn consume(
    pool: &PgPool,
    settings: &ConsumerSettings,
    models: &ReadModels,
    metrics: &ConsumerMetrics,
) -> anyhow::Result<()> {
    let client =
        service_kit::nats::connect(&settings.nats_url, "linkd-projection", &settings.nats_auth)
            .await?;
    let context = jetstream::new(client);
    let mut consumer = durable(&context, settings).await?;
    if consumer_ahead_of_stream(&context, settings, &mut consumer).await? {
        let name = settings.durable_name();
        tracing::warn!(consumer = %name, "the stream lost messages this consumer had seen; \
            recreating it to read the stream again (the guards skip what was applied)");
        context
            .get_stream(&settings.stream)
            .await
            .context("opening the stream")?
            .delete_consumer(&name)
            .await
            .context("deleting the consumer")?;
        consumer = durable(&context, settings).await?;
    }
    // Acknowledgements wait for the WAL flush on a task of their own; when this consumer stops,
    // the task acknowledges what is durable and ends.
    let (acks, committed) = mpsc::unbounded_channel();
    let (generation, acknowledging) = durable_acks::start(pool, committed, ACK_WAIT)
        .await
        .context("connecting to the read models' database to follow the WAL")?;
    tokio::spawn(acknowledging);
    *metrics
        .consumer
        .lock()
        .unwrap_or_else(PoisonError::into_inner) = Some(consumer.clone());
    let mut messages = consumer.messages().await.context("pulling messages")?;
    let models: Vec<&dyn ReadModel> = models.iter().map(AsRef::as_ref).collect();
    tracing::info!(consumer = %settings.durable_name(), "consuming");
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
        // Read before the batch begins: its commit comes after this generation's connection.
        let tagged = generation.current();
        let size = batch.len();
        let settled = handle(pool, settings, &models, batch, metrics).await;
        metrics.settled(size, &settled);
        if !settled.is_empty() && acks.send((tagged, settled)).is_err() {
            anyhow::bail!("the acknowledging task ended");
        }
        if let Some(error) = failed {
            return Err(anyhow::anyhow!(error).context("receiving a message"));
        }
    }
}

/// Applies a batch of messages: a gap or a failure is NAKed with backoff at once; the rest
/// (applied, already applied, parked, undecodable and recorded as a dead letter) is returned
/// with its acknowledgement, to be sent once the commit is durable. Never fails: what could not
/// be recorded is NAKed (or, if even that fails, delivered again after `ack_wait`).
async fn handle(
    pool: &PgPool,
    settings: &ConsumerSettings,
    models: &[&dyn ReadModel],
    batch: Vec<jetstream::Message>,
    metrics: &ConsumerMetrics,
) -> Vec<(jetstream::Message, AckKind)> {
    let mut settled = Vec::with_capacity(batch.len());
    let mut decoded = Vec::with_capacity(batch.len());
    // The spans of the traced messages, ended when their batch is settled.
    let mut spans = Vec::new();
    for message in batch {
        let verifier = settings.verifier.as_deref();
        if let Err(forged) = projections::authenticate(verifier, &message) {
            // Not the relay's: whoever published it does not hold its key. Parked, never
            // applied; counted and logged as what it may be, an attack on the bus.
            metrics.forged.inc();
            tracing::error!(subject = %message.subject, %forged,
                "parking a message that is not the relay's");
            // Its body is not kept (a stranger could fill the disk with bodies) nor read (it
            // would name an event of someone else's choosing): its size and digest say enough.
            let reason = format!(
                "not the relay's: {forged} (body of {} bytes, SHA-256 {})",
                message.payload.len(),
                sha256_hex(&message.payload)
            );
            match park(
                pool,
                &settings.durable_name(),
                &message.subject,
                &reason,
                &[],
            )
            .await
            {
                Ok(()) => {
                    metrics.parked.inc();
                    settled.push((message, AckKind::Term));
                }
                Err(error) => nak(&message, &ProjectionError::Transient(error)).await,
            }
            continue;
        }
        match projections::decode(&message.payload) {
            Ok(event) => {
                if let Some(span) = applying(&message, &event) {
                    spans.push(span);
                }
                decoded.push((message, event));
            }
            Err(ProjectionError::Poison(reason)) => {
                tracing::error!(subject = %message.subject, %reason, "parking a poison message");
                let parked = park(
                    pool,
                    &settings.durable_name(),
                    &message.subject,
                    &reason,
                    &message.payload,
                )
                .await;
                match parked {
                    Ok(()) => {
                        metrics.parked.inc();
                        settled.push((message, AckKind::Term));
                    }
                    Err(error) => {
                        let error = ProjectionError::Transient(error);
                        nak(&message, &error).await;
                    }
                }
            }
            Err(other) => nak(&message, &other).await,
        }
    }
    // Sealed personal fields opened, in place, before any read model sees them (ADR 0025).
    let (decoded_messages, mut events): (Vec<_>, Vec<_>) = decoded.into_iter().unzip();
    let opened = match crate::sealed::Opener::open(settings.opener.as_ref(), &mut events).await {
        Ok(opened) => opened,
        Err(error) => {
            tracing::warn!(%error, "cannot open sealed fields yet; the batch is retried");
            let error = match error {
                crate::sealed::OpenError::Database(error) => ProjectionError::Transient(error),
                other @ crate::sealed::OpenError::NotConfigured(_) => {
                    ProjectionError::Waiting(other.to_string())
                }
            };
            for message in decoded_messages {
                nak(&message, &error).await;
            }
            return settled;
        }
    };
    let mut messages = Vec::with_capacity(events.len());
    let mut applicable = Vec::with_capacity(events.len());
    for ((message, event), opened) in decoded_messages.into_iter().zip(events).zip(opened) {
        let Err(reason) = opened else {
            messages.push(message);
            applicable.push(event);
            continue;
        };
        tracing::error!(subject = %message.subject, %reason,
            "parking a message whose sealed fields do not open");
        // Parked for every read model that reads it, each guard moving past it, so the
        // aggregate's later events go on (docs/events.md, rule 2). Before the batch: those later
        // events may be in it.
        let refusing: Vec<projections::Refusing<'_>> = models
            .iter()
            .map(|model| projections::Refusing {
                model: *model,
                reason: &reason,
            })
            .collect();
        let refusing: Vec<&dyn ReadModel> = refusing
            .iter()
            .map(|model| model as &dyn ReadModel)
            .collect();
        match projections::apply_all(pool, &refusing, &event).await {
            Ok(outcome) => {
                if outcome != Outcome::AlreadyApplied {
                    metrics.parked.inc();
                }
                settled.push((message, AckKind::Ack));
            }
            Err(error) => nak(&message, &error).await,
        }
    }
    let events = applicable;
    if events.is_empty() {
        return settled;
    }
    let verdicts = match batch::apply(pool, models, &events).await {
        Ok(verdicts) => verdicts,
        Err(error) => {
            tracing::debug!(%error, events = events.len(), "batch rolled back; one by one");
            batch::one_by_one(pool, models, &events).await
        }
    };
    for ((message, verdict), event) in messages.into_iter().zip(verdicts).zip(&events) {
        match verdict {
            Ok(Outcome::Applied | Outcome::AlreadyApplied) => {
                settled.push((message, AckKind::Ack));
            }
            Ok(Outcome::Parked) => {
                metrics.parked.inc();
                settled.push((message, AckKind::Ack));
            }
            Ok(Outcome::Unknown) => {
                metrics.unknown.inc();
                tracing::warn!(event_id = %event.event_id, event_type = %event.event_type,
                    event_version = %event.event_version, opaque = !event.opaque_payload.is_empty(),
                    "an event type this version does not know: acknowledged and passed over \
                     (upgrade the projection service, then rebuild the read models)");
                settled.push((message, AckKind::Ack));
            }
            Err(error) => nak(&message, &error).await,
        }
    }
    settled
}

/// A span for applying `event`, continuing the trace of the relay's publish (the message's
/// `traceparent` header, ADR 0024); `None` for a message without one, or while traces are not
/// exported.
fn applying(
    message: &jetstream::Message,
    event: &proto::v1::EventEnvelope,
) -> Option<tracing::Span> {
    if !service_kit::traces::exporting() {
        return None;
    }
    let traceparent = message
        .headers
        .as_ref()?
        .get(service_kit::traces::TRACEPARENT)?
        .as_str();
    let span = tracing::info_span!(
        parent: None,
        "consumer.apply",
        otel.name = format!("apply {}", event.event_type),
        otel.kind = "consumer",
        messaging.system = "nats",
        event_id = %event.event_id,
        trace_id = tracing::field::Empty,
        span_id = tracing::field::Empty,
    );
    service_kit::traces::continue_from(&span, Some(traceparent));
    Some(span)
}

/// Asks for `message` again later, after a backoff that depends on why it did not apply (if the
/// NAK is lost, JetStream delivers it again after `ack_wait`).
async fn nak(message: &jetstream::Message, error: &ProjectionError) {
    tracing::debug!(subject = %message.subject, %error, "retrying later");
    let delivered = message.info().map_or(1, |info| info.delivered);
    if let Err(error) = message.ack_with(error.ack_kind(delivered)).await {
        tracing::debug!(%error, "NAK lost; delivered again after ack_wait");
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
fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest as _;
    sha2::Sha256::digest(bytes)
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect()
}

async fn park(
    pool: &PgPool,
    consumer: &str,
    subject: &str,
    reason: &str,
    payload: &[u8],
) -> Result<(), sqlx::Error> {
    // An incomplete envelope may still name its event.
    let event_id = <proto::v1::EventEnvelope as prost::Message>::decode(payload)
        .ok()
        .map(|envelope| envelope.event_id)
        .filter(|id| !id.is_empty());
    sqlx::query(
        "INSERT INTO dead_letters (projector, subject, event_id, reason, payload) \
         VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(consumer)
    .bind(subject)
    .bind(event_id)
    .bind(reason)
    .bind(payload)
    .execute(pool)
    .await?;
    Ok(())
}
