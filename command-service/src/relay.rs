//! The relay: committed events -> NATS JetStream, in commit order, nothing lost (DESIGN §3).
//!
//! - Reads `events` only below the transaction horizon (`tx_id < pg_snapshot_xmin(...)`), in
//!   `(tx_id, global_position)` order, from a compound cursor: a row whose transaction commits
//!   late is never skipped (a `global_position`-only cursor would skip it).
//! - Publishes each event with `Nats-Msg-Id` = `aggregate_type/aggregate_id/sequence/<chain
//!   hash prefix>` ([`StoredEvent::message_id`]), awaits
//!   every acknowledgement, and only then moves its checkpoint (compare-and-set, so an
//!   operator's republish is noticed). A crash in between republishes; consumers deduplicate.
//! - One leader: the instance holding a PostgreSQL advisory lock on a dedicated connection.
//! - On taking the lead it resumes from the lower of its checkpoint and the last event the
//!   stream holds, because Debian's NATS server (2.9) can lose acknowledged messages.
//! - It refuses to go on when the event store is not the history it published from
//!   ([`discontinuity`]: another cluster, a checkpoint or a stream ahead of the store), says
//!   why and what to do, and looks again every [`HALT_RECHECK`] (ADR 0021).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use anyhow::Context as _;
use async_nats::jetstream::{self, stream};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prost::Message as _;
use service_kit::bus_signing::{self, BusSigner, BusVerifier, Signed};
use service_kit::metrics::Metrics;
use sqlx::postgres::{PgConnection, PgListener};
use sqlx::{Connection as _, PgPool};
use tokio::sync::watch;

use crate::bus::StoredEvent;

/// The advisory-lock key that elects the relay leader (`'linkd' ` as bytes).
const LEADER_LOCK: i64 = 0x6c69_6e6b_6452_6c79;
/// Events read and published per round.
const BATCH: i64 = 256;
/// The notification channel that wakes the leader when another process commits.
const CHANNEL: &str = "linkd_events";
/// After a wake-up or a round that published, the relay looks again this soon, up to
/// [`EAGER_ROUNDS`] times, even without another wake-up: an event committed after a transaction
/// that is still open (in any database of the cluster: transaction ids are cluster-wide) is
/// below the horizon only once that transaction ends, and nothing wakes the relay then.
const BUSY_POLL: Duration = Duration::from_millis(5);
/// How many quick looks follow a wake-up or a publishing round (100 ms in all).
const EAGER_ROUNDS: u32 = 20;
/// How long the lock connection may go without a statement while the relay looks for events:
/// a leader whose connection died (and so lost its lock) stops within this, plus a poll.
const LOCK_CHECK: Duration = Duration::from_millis(100);

/// Where and how the relay publishes.
#[derive(Debug, Clone)]
pub(crate) struct RelaySettings {
    /// The NATS server.
    pub(crate) nats_url: String,
    /// The JetStream stream (created if missing).
    pub(crate) stream: String,
    /// Subjects are `<prefix>.<aggregate_type>.<EventType>`.
    pub(crate) subject_prefix: String,
    /// The stream's bounds: messages older than this, or beyond this many bytes, are dropped
    /// oldest first (the event store keeps everything; `republish` restores the stream).
    pub(crate) limits: StreamLimits,
    /// Copies of the stream a NATS cluster keeps, when the relay creates it.
    pub(crate) replicas: usize,
    /// How long to wait for new events when notifications are quiet.
    pub(crate) poll_interval: Duration,
    /// Changes when this process commits events (see [`announce`] for the other processes').
    pub(crate) wake: watch::Receiver<u64>,
    /// Whether this process leads the relay (so [`announce`] need not tell the database).
    pub(crate) leading: Arc<AtomicBool>,
    /// Test-only crash point: when set, the relay stops after publishing a batch and before
    /// saving its checkpoint, once.
    pub(crate) crash_after_publish: Option<Arc<AtomicBool>>,
    /// What it counts.
    pub(crate) metrics: RelayMetrics,
    /// The key every message is signed with (`None`: unsigned, development only).
    pub(crate) signer: Option<Arc<BusSigner>>,
    /// How to prove itself to NATS.
    pub(crate) nats_auth: service_kit::nats::NatsAuth,
}

/// What the relay counts as it publishes; [`RelayMetrics::register`] also reports, at each
/// scrape, whether this instance leads and how far the stream is behind the store.
#[derive(Debug, Clone, Default)]
pub(crate) struct RelayMetrics {
    published: Counter,
    publish_errors: Counter,
    opaque: Counter,
    halted: Gauge,
}

/// How often a relay stopped by a discontinuity ([`discontinuity`]) looks again.
const HALT_RECHECK: Duration = Duration::from_secs(10);

/// Why the relay must not go on from its checkpoint: the event store is not the history the
/// checkpoint (or the stream) was written from. `None` when it is; on the first lead after
/// this check was introduced, the cluster is recorded.
async fn discontinuity(
    pool: &PgPool,
    checkpoint: Cursor,
    tail: Option<&Tail>,
) -> anyhow::Result<Option<String>> {
    let (cluster, recorded, next_tx, store_position): (i64, Option<i64>, i64, i64) =
        sqlx::query_as(
            "SELECT (SELECT system_identifier FROM pg_control_system()), \
             (SELECT system_identifier FROM relay_checkpoint WHERE id = 1), \
             pg_snapshot_xmax(pg_current_snapshot())::text::bigint, \
             (SELECT coalesce(max(global_position), 0) FROM events)",
        )
        .fetch_one(pool)
        .await
        .context("reading the cluster's identity and the store's end")?;
    match recorded {
        Some(recorded) if recorded != cluster => {
            return Ok(Some(format!(
                "its checkpoint was written on another PostgreSQL cluster (system identifier \
                 {recorded}; this one is {cluster}): transaction ids from there mean nothing here"
            )));
        }
        Some(_) => {}
        None => {
            sqlx::query(
                "UPDATE relay_checkpoint SET system_identifier = $1 \
                 WHERE id = 1 AND system_identifier IS NULL",
            )
            .bind(cluster)
            .execute(pool)
            .await?;
        }
    }
    let ahead = |cursor: Cursor| cursor.tx_id >= next_tx || cursor.global_position > store_position;
    if ahead(checkpoint) {
        return Ok(Some(format!(
            "its checkpoint (transaction {}, position {}) is ahead of the event store (next \
             transaction {next_tx}, last position {store_position}): the database went back \
             in time",
            checkpoint.tx_id, checkpoint.global_position
        )));
    }
    // The relay's last message in the stream must be an event of this store, the same one.
    let Some((held, message_id)) = tail.and_then(|tail| tail.relay.as_ref()) else {
        return Ok(None);
    };
    if ahead(*held) {
        return Ok(Some(format!(
            "the stream holds events the event store does not (its last: transaction {}, \
             position {}; the store's next transaction {next_tx}, last position \
             {store_position}): the database went back in time",
            held.tx_id, held.global_position
        )));
    }
    let Some((aggregate_type, aggregate_id, sequence, hash)) = named_event(message_id) else {
        return Ok(None);
    };
    let stored: Option<String> = sqlx::query_scalar(
        "SELECT encode(substring(chain_hash FROM 1 FOR 16), 'hex') FROM events \
         WHERE aggregate_type = $1 AND aggregate_id = $2 AND sequence = $3",
    )
    .bind(aggregate_type)
    .bind(aggregate_id)
    .bind(sequence)
    .fetch_optional(pool)
    .await
    .context("looking for the stream's last event in the store")?;
    match (stored, hash) {
        (None, _) => Ok(Some(format!(
            "the stream's last event ({aggregate_type}/{aggregate_id}/{sequence}) is not in \
             the event store: the database went back in time"
        ))),
        (Some(stored), Some(hash)) if stored != hash => Ok(Some(format!(
            "the stream's last event ({aggregate_type}/{aggregate_id}/{sequence}) is not the \
             one the event store holds there (another chain hash): the database went back in \
             time and wrote another history"
        ))),
        (Some(_), _) => Ok(None),
    }
}

/// The relay's position and lag as the database tells them: the last committed position, the
/// checkpoint's, and how many events (up to 100,000) wait behind it and since when. The events
/// that wait are read in the relay's own order, through the index it uses.
const LAG: &str = "\
    WITH checkpoint AS (SELECT tx_id, global_position FROM relay_checkpoint WHERE id = 1), \
    behind AS (SELECT e.occurred_at FROM events e, checkpoint c \
        WHERE (e.tx_id, e.global_position) > (c.tx_id::text::xid8, c.global_position) \
        ORDER BY e.tx_id, e.global_position LIMIT 100000) \
    SELECT (SELECT coalesce(max(global_position), 0) FROM events), \
        (SELECT global_position FROM checkpoint), \
        (SELECT count(*) FROM behind), \
        (SELECT coalesce(extract(epoch FROM now() - min(occurred_at))::float8, 0) FROM behind)";

impl RelayMetrics {
    /// Registers the relay's series in `metrics`; `leading` tells whether this instance leads.
    pub(crate) fn register(metrics: &Metrics, pool: PgPool, leading: Arc<AtomicBool>) -> Self {
        let counted = Self::default();
        metrics.register(
            "relay_published_events",
            "Events this instance's relay published and JetStream acknowledged",
            counted.published.clone(),
        );
        metrics.register(
            "relay_publish_errors",
            "Publishing rounds that failed (NATS unreachable, no acknowledgement); the relay \
             starts over from its checkpoint",
            counted.publish_errors.clone(),
        );
        metrics.register(
            "relay_opaque_events",
            "Events of a newer linkd (a type, aggregate type or version this build does not \
             know), published as opaque envelopes with their stored payload instead of stalling",
            counted.opaque.clone(),
        );
        metrics.register(
            "relay_halted",
            "1 while this instance's relay refuses to publish because the event store is not \
             the history its checkpoint or the stream was written from (restore, failover, \
             another cluster); the log says what to do",
            counted.halted.clone(),
        );
        let leader = metrics.gauge("relay_leader", "1 if this instance's relay leads, else 0");
        let store = metrics.gauge(
            "relay_store_position",
            "The highest global position committed to the event store",
        );
        let published = metrics.gauge(
            "relay_published_position",
            "The global position of the last event the relay published (its checkpoint)",
        );
        let lag_events = metrics.gauge(
            "relay_lag_events",
            "Committed events not yet published (counted up to 100000)",
        );
        let lag_seconds = metrics.gauge_f64(
            "relay_lag_seconds",
            "Age of the oldest committed event not yet published (0 when none waits)",
        );
        metrics.on_scrape(move || {
            let (pool, leading) = (pool.clone(), leading.clone());
            let (leader, store, published) = (leader.clone(), store.clone(), published.clone());
            let (lag_events, lag_seconds) = (lag_events.clone(), lag_seconds.clone());
            async move {
                leader.set(i64::from(leading.load(Ordering::Relaxed)));
                match sqlx::query_as::<_, (i64, i64, i64, f64)>(LAG)
                    .fetch_one(&pool)
                    .await
                {
                    Ok((last, checkpoint, behind, age)) => {
                        store.set(last);
                        published.set(checkpoint);
                        lag_events.set(behind);
                        lag_seconds.set(age);
                    }
                    Err(error) => tracing::warn!(%error, "metrics: reading the relay's lag"),
                }
            }
        });
        counted
    }
}

/// A position in commit order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Cursor {
    /// The writing transaction.
    pub tx_id: i64,
    /// The insertion position.
    pub global_position: i64,
}

impl Cursor {
    /// Before every event.
    pub const START: Self = Self {
        tx_id: 0,
        global_position: 0,
    };
}

/// Runs the relay until the task is dropped: competes for leadership, publishes while leader,
/// and starts over after any failure (NATS or PostgreSQL down, lost leadership).
pub(crate) async fn run(pool: PgPool, database_url: String, settings: RelaySettings) {
    service_kit::restarting("relay", || lead(&pool, &database_url, &settings)).await;
}

/// The bounds of the stream (`LINKD_STREAM_MAX_AGE_DAYS`, `LINKD_STREAM_MAX_BYTES`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamLimits {
    /// Messages older than this are dropped.
    pub max_age: Duration,
    /// Beyond this many bytes, the oldest messages are dropped.
    pub max_bytes: i64,
}

/// Creates the stream if it does not exist (all subjects under the prefix, 2-minute duplicate
/// window, file storage, the configured bounds and replicas), and brings an existing stream's
/// bounds to the configured ones. Any other setting of an existing stream that differs from
/// what the relay would create (replicas, subjects, storage, duplicate window) is left as it is
/// and named in a warning at start: changing it is an operator's decision.
pub(crate) async fn ensure_stream(
    context: &jetstream::Context,
    settings: &RelaySettings,
) -> anyhow::Result<stream::Stream> {
    let config = stream::Config {
        name: settings.stream.clone(),
        subjects: vec![format!("{}.>", settings.subject_prefix)],
        storage: stream::StorageType::File,
        duplicate_window: Duration::from_secs(120),
        max_age: settings.limits.max_age,
        max_bytes: settings.limits.max_bytes,
        num_replicas: settings.replicas,
        ..Default::default()
    };
    let mut stream = context
        .get_or_create_stream(config.clone())
        .await
        .with_context(|| format!("creating or opening stream {}", settings.stream))?;
    let current = &stream.info().await?.config;
    let differences = differences(current, &config);
    if !differences.is_empty() {
        tracing::warn!(stream = %settings.stream, differences = %differences.join("; "),
            "the stream exists with other settings than configured; left as they are \
            (change them with `nats stream edit`, or recreate the stream and republish)");
    }
    if current.max_age != config.max_age || current.max_bytes != config.max_bytes {
        let mut updated = current.clone();
        updated.max_age = config.max_age;
        updated.max_bytes = config.max_bytes;
        context
            .update_stream(updated)
            .await
            .with_context(|| format!("updating the bounds of stream {}", settings.stream))?;
        tracing::info!(limits = ?settings.limits, "stream bounds updated");
        stream = context.get_stream(&settings.stream).await?;
    }
    Ok(stream)
}

/// How an existing stream's settings differ from those the relay would create it with, apart
/// from the bounds (which the relay updates): one phrase per setting.
fn differences(current: &stream::Config, wanted: &stream::Config) -> Vec<String> {
    let mut found = Vec::new();
    if current.num_replicas != wanted.num_replicas {
        found.push(format!(
            "replicas {} (configured {}, LINKD_STREAM_REPLICAS)",
            current.num_replicas, wanted.num_replicas
        ));
    }
    if current.subjects != wanted.subjects {
        found.push(format!(
            "subjects {:?} (configured {:?}, LINKD_SUBJECT_PREFIX)",
            current.subjects, wanted.subjects
        ));
    }
    if current.storage != wanted.storage {
        found.push(format!(
            "storage {:?} (the relay creates {:?})",
            current.storage, wanted.storage
        ));
    }
    if current.duplicate_window != wanted.duplicate_window {
        found.push(format!(
            "duplicate window {:?} (the relay creates {:?}; republished events rely on it)",
            current.duplicate_window, wanted.duplicate_window
        ));
    }
    found
}

/// One term as leader (returns `Ok` if another instance leads).
async fn lead(pool: &PgPool, database_url: &str, settings: &RelaySettings) -> anyhow::Result<()> {
    // A dedicated connection: the session-level lock lives exactly as long as it does.
    let mut lock = PgConnection::connect(database_url)
        .await
        .context("connecting for the lock")?;
    let leader: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
        .bind(LEADER_LOCK)
        .fetch_one(&mut lock)
        .await?;
    if !leader {
        // Another instance leads: whether the relay is halted is its to say.
        settings.metrics.halted.set(0);
        return Ok(());
    }
    // The checkpoint is written on this connection without waiting for its WAL flush: a crash
    // of PostgreSQL can only move it back, and what is published again is dropped by JetStream
    // (same message id within the duplicate window) or skipped by the consumers' guards.
    sqlx::query("SET synchronous_commit = off")
        .execute(&mut lock)
        .await
        .context("setting up the lock connection")?;
    let mut wake = settings.wake.clone();
    // NATS unreachable counts as a failed round too: an outage is counted every time the relay
    // tries again, not once.
    let reached = async {
        let client =
            service_kit::nats::connect(&settings.nats_url, "linkd-relay", &settings.nats_auth)
                .await?;
        let context = jetstream::new(client);
        let stream = ensure_stream(&context, settings).await?;
        anyhow::Ok((context, stream))
    }
    .await;
    let (context, mut stream) = reached.inspect_err(|_| {
        settings.metrics.publish_errors.inc();
    })?;
    let mut listener = PgListener::connect_with(pool).await?;
    listener.listen(CHANNEL).await?;

    let checkpoint = load_checkpoint(pool).await?;
    let saved_sequence = checkpoint_stream_sequence(pool).await?;
    let verifier = settings.signer.as_ref().map(|signer| signer.verifier());
    let tail = stream_tail(&mut stream, verifier.as_ref()).await?;
    if let Some(halt) = discontinuity(pool, checkpoint, tail.as_ref()).await? {
        settings.metrics.halted.set(1);
        tracing::error!(
            stream = %settings.stream,
            "the relay stopped: {halt}. Until this is resolved, commands are stored but not \
             published. If the database was restored or failed over on purpose: purge the \
             stream (nats stream purge {stream}), run `command-service republish --from 0` \
             (it records this cluster), then `projection-service rebuild`; the relay resumes \
             by itself within {recheck} s",
            stream = settings.stream,
            recheck = HALT_RECHECK.as_secs(),
        );
        // The lock is released with its connection, and checked again later.
        drop(lock);
        tokio::time::sleep(HALT_RECHECK).await;
        return Ok(());
    }
    settings.metrics.halted.set(0);
    tracing::info!("relay leading");
    let _leading = Leading::start(&settings.leading);
    let mut cursor = match &tail {
        // The stream ends before the relay's last acknowledged message (when that is known):
        // NATS lost its tail. (A stream that ends with an old event but after that message
        // holds a copy published again, not a loss.)
        Some(Tail {
            last_sequence,
            relay: Some((held, _)),
        }) if *held < checkpoint && (saved_sequence == 0 || *last_sequence < saved_sequence) => {
            tracing::warn!(
                ?held,
                ?checkpoint,
                "the stream lost events; republishing from it"
            );
            save_checkpoint(pool, checkpoint, *held, *last_sequence).await?;
            *held
        }
        Some(_) => checkpoint,
        None if checkpoint != Cursor::START => {
            tracing::warn!(?checkpoint, "the stream is empty; republishing everything");
            save_checkpoint(pool, checkpoint, Cursor::START, 0).await?;
            Cursor::START
        }
        None => Cursor::START,
    };
    let mut published_up_to = stream
        .info()
        .await
        .context("reading the stream's state")?
        .state
        .last_sequence;
    let mut last_tail_check = tokio::time::Instant::now();
    // When the lock connection last answered.
    let mut lock_alive = tokio::time::Instant::now();
    let mut eager = 0;
    loop {
        // Did NATS lose messages it had acknowledged (a restart without fsync)? Then start
        // over: the lead resumes from what the stream still holds.
        if last_tail_check.elapsed() >= Duration::from_secs(1) {
            last_tail_check = tokio::time::Instant::now();
            let held = stream
                .info()
                .await
                .context("reading the stream's state")?
                .state
                .last_sequence;
            if held < published_up_to {
                anyhow::bail!(
                    "the stream holds {held} messages but acknowledged {published_up_to}: \
                     it lost some; resuming from what it holds"
                );
            }
        }
        let batch = read_batch(pool, cursor).await?;
        let Some(last) = batch.last() else {
            // Still the leader? (A dead lock connection means the lock is gone.) A checkpoint
            // written on that connection tells, and so does a statement on it, at most every
            // LOCK_CHECK: not on each quick look of the eager rounds, where it doubled the
            // relay's statements per event at low rates.
            if lock_alive.elapsed() >= LOCK_CHECK {
                sqlx::query("SELECT 1")
                    .execute(&mut lock)
                    .await
                    .context("the lock connection died")?;
                lock_alive = tokio::time::Instant::now();
            }
            let quiet = if eager > 0 {
                eager -= 1;
                BUSY_POLL
            } else {
                settings.poll_interval
            };
            tokio::select! {
                _ = listener.recv() => eager = EAGER_ROUNDS,
                () = changed(&mut wake) => eager = EAGER_ROUNDS,
                () = tokio::time::sleep(quiet) => {}
            }
            continue;
        };
        eager = EAGER_ROUNDS;
        let next = Cursor {
            tx_id: last.tx_id,
            global_position: last.global_position,
        };
        let acknowledged = match publish(&context, settings, &batch).await {
            Ok(acknowledged) => acknowledged,
            Err(error) => {
                settings.metrics.publish_errors.inc();
                return Err(error);
            }
        };
        settings
            .metrics
            .published
            .inc_by(u64::try_from(batch.len()).unwrap_or(u64::MAX));
        published_up_to = published_up_to.max(acknowledged);
        if let Some(crash) = &settings.crash_after_publish
            && crash.swap(false, Ordering::SeqCst)
        {
            anyhow::bail!("test crash point: published, checkpoint not saved");
        }
        let saved = save_checkpoint(&mut lock, cursor, next, acknowledged)
            .await
            .context("saving the checkpoint on the lock connection")?;
        lock_alive = tokio::time::Instant::now();
        cursor = if saved {
            next
        } else {
            // An operator moved the checkpoint: continue from there.
            let moved = load_checkpoint(pool).await?;
            tracing::info!(?moved, "relay checkpoint moved by an operator");
            moved
        };
    }
}

/// Up to `$3` committed events after the cursor (`$1` transaction id, `$2` position), in commit
/// order: only those every older transaction has ended before (the horizon, ADR 0005). Built
/// once: the relay reads a batch every few milliseconds when busy.
static READ_BATCH: LazyLock<String> = LazyLock::new(|| {
    format!(
        "SELECT {} FROM events \
         WHERE (tx_id, global_position) > ($1::text::xid8, $2) \
         AND tx_id < pg_snapshot_xmin(pg_current_snapshot()) \
         ORDER BY tx_id, global_position LIMIT $3",
        history::stored::COLUMNS
    )
});

async fn read_batch(pool: &PgPool, after: Cursor) -> anyhow::Result<Vec<StoredEvent>> {
    Ok(sqlx::query_as(READ_BATCH.as_str())
        .bind(after.tx_id.to_string())
        .bind(after.global_position)
        .bind(BATCH)
        .fetch_all(pool)
        .await?)
}

async fn publish(
    context: &jetstream::Context,
    settings: &RelaySettings,
    batch: &[StoredEvent],
) -> anyhow::Result<u64> {
    let mut acks = Vec::with_capacity(batch.len());
    // A span per event written by a traced call, continuing its trace and ended with the
    // batch's acknowledgements; its context travels as the message's `traceparent` header.
    let mut spans = Vec::new();
    let mut opaque = 0;
    for event in batch {
        let envelope = match event.envelope() {
            Ok(envelope) => envelope,
            // A newer linkd's: nothing behind it waits; it goes out opaque, and a consumer that
            // does not know it moves past it (docs/events.md, "Unknown and newer events").
            Err(unreadable) if unreadable.newer => {
                opaque += 1;
                tracing::warn!(event_id = %unreadable.event_id, event_type = %event.event_type,
                    event_version = %event.event_version, reason = %unreadable.reason,
                    "publishing an event of a newer version as an opaque envelope");
                event.opaque_envelope()
            }
            // One this build should read: stop here rather than let consumers pass over it.
            Err(unreadable) => {
                tracing::error!(event_id = %unreadable.event_id, reason = %unreadable.reason,
                    "the relay cannot publish an event this build should read; it retries \
                     (fix the row or the build)");
                return Err(unreadable.into());
            }
        };
        let payload = envelope.encode_to_vec();
        let subject = event.subject(&settings.subject_prefix);
        let message_id = event.message_id();
        let global_position = event.global_position.to_string();
        let tx_id = event.tx_id.to_string();
        let mut message = jetstream::message::PublishMessage::build()
            .message_id(message_id.as_str())
            .header("Linkd-Global-Position", global_position.as_str())
            .header("Linkd-Tx-Id", tx_id.as_str());
        if let Some(traceparent) = event
            .traceparent()
            .filter(|_| service_kit::traces::exporting())
        {
            let span = tracing::info_span!(
                parent: None,
                "relay.publish",
                otel.name = format!("publish {}", event.event_type),
                otel.kind = "producer",
                messaging.system = "nats",
                messaging.destination.name = %subject,
                event_id = %event.event_id(),
                trace_id = tracing::field::Empty,
                span_id = tracing::field::Empty,
            );
            service_kit::traces::continue_from(&span, Some(traceparent));
            if let Some(header) = service_kit::traces::traceparent(&span) {
                message = message.header(service_kit::traces::TRACEPARENT, header.as_str());
            }
            spans.push(span);
        }
        if let Some(signer) = &settings.signer {
            let (key_id, signature) = signer.sign(&Signed {
                subject: &subject,
                message_id: &message_id,
                global_position: &global_position,
                tx_id: &tx_id,
                payload: &payload,
            });
            message = message
                .header(bus_signing::KEY_ID_HEADER, key_id)
                .header(bus_signing::SIGNATURE_HEADER, signature.as_str());
        }
        let message = message.payload(payload.into());
        let ack = context
            .send_publish(subject, message)
            .await
            .with_context(|| format!("publishing {}", event.event_id()))?;
        acks.push(ack);
    }
    let mut highest = 0;
    for ack in acks {
        let ack = ack.await.context("awaiting JetStream's acknowledgement")?;
        highest = highest.max(ack.sequence);
    }
    drop(spans);
    settings.metrics.opaque.inc_by(opaque);
    Ok(highest)
}

/// How many messages back from the stream's end the relay looks for its own last message.
const TAIL_SEARCH: u64 = 1000;

/// The end of the stream as the relay reads it on taking the lead.
#[derive(Debug, Clone)]
struct Tail {
    /// The stream's last sequence.
    last_sequence: u64,
    /// The relay's last message among the last [`TAIL_SEARCH`]: its commit-order cursor and
    /// its message id; `None` if none of them is the relay's (someone else's messages, or
    /// messages signed with a key the relay no longer holds).
    relay: Option<(Cursor, String)>,
}

/// The stream's end ([`Tail`]); `None` for an empty stream. A message counts as the relay's
/// only if its key signed it (when the relay has one) and it carries the relay's headers.
async fn stream_tail(
    stream: &mut stream::Stream,
    verifier: Option<&BusVerifier>,
) -> anyhow::Result<Option<Tail>> {
    let last = stream
        .info()
        .await
        .context("reading the stream's state")?
        .state
        .last_sequence;
    if last == 0 {
        return Ok(None);
    }
    let mut relay = None;
    for sequence in (last.saturating_sub(TAIL_SEARCH - 1).max(1)..=last).rev() {
        // Gone (the stream's limits, or a purge): nothing older is there either.
        let Ok(message) = stream.get_raw_message(sequence).await else {
            break;
        };
        let text = |name: &str| {
            message
                .headers
                .get(name)
                .map(async_nats::HeaderValue::as_str)
        };
        let number =
            |name: &str| -> Option<i64> { text(name).and_then(|value| value.parse().ok()) };
        let signed = verifier.is_none_or(|verifier| {
            verifier
                .verify_message(message.subject.as_str(), text, &message.payload)
                .is_ok()
        });
        if let (true, Some(tx_id), Some(global_position), Some(id)) = (
            signed,
            number("Linkd-Tx-Id"),
            number("Linkd-Global-Position"),
            text("Nats-Msg-Id"),
        ) {
            let cursor = Cursor {
                tx_id,
                global_position,
            };
            relay = Some((cursor, id.to_owned()));
            break;
        }
    }
    if relay.is_none() {
        // Published by someone else (an operator's copy, or a stranger's message): it tells
        // nothing about what the stream holds of ours, so the checkpoint is trusted.
        tracing::warn!(
            last,
            "none of the stream's last messages is the relay's; trusting the checkpoint"
        );
    }
    Ok(Some(Tail {
        last_sequence: last,
        relay,
    }))
}

/// The aggregate, id, sequence and chain-hash prefix a message id names
/// ([`StoredEvent::message_id`]); no hash for ids written before it was added.
fn named_event(message_id: &str) -> Option<(&str, &str, i64, Option<&str>)> {
    let (rest, last) = message_id.rsplit_once('/')?;
    let (rest, sequence, hash) = match last.parse::<i64>() {
        Ok(sequence) => (rest, sequence, None),
        Err(_) => {
            let (rest, sequence) = rest.rsplit_once('/')?;
            (rest, sequence.parse().ok()?, Some(last))
        }
    };
    let (aggregate_type, aggregate_id) = rest.split_once('/')?;
    Some((aggregate_type, aggregate_id, sequence, hash))
}

/// The stream sequence saved with the checkpoint (0: not known).
async fn checkpoint_stream_sequence(pool: &PgPool) -> anyhow::Result<u64> {
    let saved: i64 =
        sqlx::query_scalar("SELECT stream_sequence FROM relay_checkpoint WHERE id = 1")
            .fetch_one(pool)
            .await?;
    Ok(u64::try_from(saved).unwrap_or(0))
}

async fn load_checkpoint(pool: &PgPool) -> anyhow::Result<Cursor> {
    let (tx_id, global_position): (i64, i64) =
        sqlx::query_as("SELECT tx_id, global_position FROM relay_checkpoint WHERE id = 1")
            .fetch_one(pool)
            .await?;
    Ok(Cursor {
        tx_id,
        global_position,
    })
}

/// Moves the checkpoint from `from` to `to`, whose event JetStream holds at `stream_sequence`
/// (0: not known); `false` if it was not at `from` any more.
async fn save_checkpoint<'e>(
    executor: impl sqlx::PgExecutor<'e>,
    from: Cursor,
    to: Cursor,
    stream_sequence: u64,
) -> anyhow::Result<bool> {
    let moved = sqlx::query(
        "UPDATE relay_checkpoint SET tx_id = $3, global_position = $4, stream_sequence = $5, \
         updated_at = now() WHERE id = 1 AND tx_id = $1 AND global_position = $2",
    )
    .bind(from.tx_id)
    .bind(from.global_position)
    .bind(to.tx_id)
    .bind(to.global_position)
    .bind(i64::try_from(stream_sequence).unwrap_or(i64::MAX))
    .execute(executor)
    .await?;
    Ok(moved.rows_affected() == 1)
}

/// Operator command: republish every event from global position `position` on (0: all), in
/// commit order. The running leader notices and continues from there.
pub async fn republish_from(pool: &PgPool, position: i64) -> anyhow::Result<Cursor> {
    // The first event in commit order among those at or after `position` (positions and
    // transaction ids need not be in the same order).
    let first: Option<(i64, i64)> = sqlx::query_as(
        "SELECT tx_id::text::bigint, global_position FROM events WHERE global_position >= $1 \
         ORDER BY tx_id, global_position LIMIT 1",
    )
    .bind(position)
    .fetch_optional(pool)
    .await?;
    let (tx_id, global_position) =
        first.with_context(|| format!("no event at or after global position {position}"))?;
    let cursor = if position <= 1 {
        Cursor::START
    } else {
        Cursor {
            tx_id,
            global_position: global_position - 1,
        }
    };
    // Also the operator's word that this cluster's history is the one to publish from.
    sqlx::query(
        "UPDATE relay_checkpoint SET tx_id = $1, global_position = $2, updated_at = now(), \
         stream_sequence = 0, \
         system_identifier = (SELECT system_identifier FROM pg_control_system()) WHERE id = 1",
    )
    .bind(cursor.tx_id)
    .bind(cursor.global_position)
    .execute(pool)
    .await?;
    Ok(cursor)
}

/// Sets the leading flag for as long as it lives.
struct Leading(Arc<AtomicBool>);

impl Leading {
    fn start(flag: &Arc<AtomicBool>) -> Self {
        flag.store(true, Ordering::SeqCst);
        Self(flag.clone())
    }
}

impl Drop for Leading {
    fn drop(&mut self) {
        self.0.store(false, Ordering::SeqCst);
    }
}

/// Completes when `wake` changes (never, if its sender is gone).
async fn changed(wake: &mut watch::Receiver<u64>) {
    if wake.changed().await.is_err() {
        std::future::pending::<()>().await;
    }
}

/// Tells the relay leader in another process that this one committed events, with one
/// `NOTIFY` per burst of commits (waking on every change of `wake`, so commits made while a
/// notification is sent are covered by the next one). The notification is sent outside the
/// commands' transactions: inside them it would serialise their commits (docs/adr/0008).
/// Nothing is sent while this process leads: its relay wakes on `wake` directly.
pub(crate) async fn announce(
    pool: PgPool,
    mut wake: watch::Receiver<u64>,
    leading: Arc<AtomicBool>,
) {
    while wake.changed().await.is_ok() {
        if leading.load(Ordering::SeqCst) {
            continue;
        }
        if let Err(error) = sqlx::query("SELECT pg_notify($1, '')")
            .bind(CHANNEL)
            .execute(&pool)
            .await
        {
            tracing::debug!(%error, "could not notify the relay leader; it will poll");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wanted() -> stream::Config {
        stream::Config {
            name: "LINKD_EVENTS".into(),
            subjects: vec!["linkd.events.>".into()],
            storage: stream::StorageType::File,
            duplicate_window: Duration::from_secs(120),
            max_age: Duration::from_secs(3600),
            num_replicas: 3,
            ..Default::default()
        }
    }

    #[test]
    fn a_stream_as_configured_differs_in_nothing_the_bounds_aside() {
        let mut current = wanted();
        current.max_age = Duration::from_secs(60);
        assert!(differences(&current, &wanted()).is_empty());
    }

    #[test]
    fn each_other_difference_is_named_with_its_setting() {
        let current = stream::Config {
            num_replicas: 1,
            subjects: vec!["other.>".into()],
            storage: stream::StorageType::Memory,
            duplicate_window: Duration::from_secs(10),
            ..wanted()
        };
        let found = differences(&current, &wanted()).join("; ");
        for phrase in [
            "replicas 1 (configured 3, LINKD_STREAM_REPLICAS)",
            "LINKD_SUBJECT_PREFIX",
            "storage Memory",
            "duplicate window 10s",
        ] {
            assert!(found.contains(phrase), "{phrase} not in {found}");
        }
    }
}

#[cfg(test)]
mod message_id_tests {
    use super::named_event;

    #[test]
    fn a_message_id_names_its_event_with_or_without_a_hash() {
        assert_eq!(
            named_event("device/d-1/3/abcdef"),
            Some(("device", "d-1", 3, Some("abcdef")))
        );
        assert_eq!(
            named_event("account/anna/1"),
            Some(("account", "anna", 1, None))
        );
        // An id with a slash in it is read from the right.
        assert_eq!(
            named_event("account/a/b/2/ff"),
            Some(("account", "a/b", 2, Some("ff")))
        );
        assert_eq!(named_event("garbage"), None);
        assert_eq!(named_event("x/y/notanumber/ff"), None);
    }
}
