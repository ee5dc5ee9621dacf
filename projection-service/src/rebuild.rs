//! Rebuild: replays the stream from its first event into fresh tables for every read model,
//! then switches the live read models over (`projection-service rebuild`).
//!
//! 1. Fresh `devices`, `audit_heads`, `email_accounts`, `email_devices` and
//!    `projector_positions` tables in a schema of their own, and a scratch `email_outbox`.
//! 2. An ephemeral consumer from the stream's start is read in large pulls, decoded, and each
//!    pull applied with the live path's rules (the same guards: skip what was applied, hold
//!    back what comes after a gap, park what cannot apply, pass over an unknown event type):
//!    the devices by folding the pull in memory, in one transaction (ADR 0007); the audit
//!    witness and the notifier's state with the live consumer's batch (`consumer::batch`). The next
//!    pull is read while the previous one is written.
//! 3. Under an exclusive lock on the live tables (the live consumer waits), the last events are
//!    applied, the fresh guards are checked not to be behind the live ones, the live tables move
//!    aside, the fresh ones take their place, and the lock is released; the live consumer
//!    resumes on the fresh tables, its guards skipping what the rebuild already applied.
//!
//! A rebuild never sends an email again: what the notifier queues while replaying goes to the
//! scratch outbox, which is dropped; the live outbox (queued, sent and given-up emails) stays
//! as it is. Only the emails of events the live notifier had not reached yet when the switch
//! began (the rebuild read them first) are moved to the live outbox, to go out once.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use async_nats::jetstream::{self, consumer};
use futures_util::StreamExt as _;
use proto::v1::EventEnvelope;
use proto::v1::event_envelope::Event;
use service_kit::bus_signing::BusVerifier;
use sqlx::{Executor as _, PgPool};
use tokio::sync::mpsc;
use tracing::Instrument as _;
use uuid::Uuid;

use crate::consumer::{ConsumerSettings, batch};
use crate::projections::replay::{self, BatchOutcome, Replayed};
use crate::projections::{self, Outcome, ProjectionError, Projector, ReadModel, devices::Devices};
use crate::sealed::Opener;

/// What a rebuild did.
#[derive(Debug, Clone, Copy)]
pub struct Rebuilt {
    /// Messages read from the stream.
    pub events: u64,
    /// How long it took.
    pub elapsed: Duration,
}

impl Rebuilt {
    /// Throughput.
    pub fn events_per_second(&self) -> f64 {
        self.events as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

/// How a rebuild reads and writes.
#[derive(Debug, Clone)]
pub struct RebuildOptions {
    /// Messages per pull from the stream, and events per transaction.
    pub batch_size: usize,
}

impl Default for RebuildOptions {
    fn default() -> Self {
        Self { batch_size: 10_000 }
    }
}

/// The tables a rebuild replaces.
const TABLES: [&str; 5] = [
    "projector_positions",
    "devices",
    "audit_heads",
    "email_accounts",
    "email_devices",
];

/// The tables a rebuild writes but never switches in: the emails the notifier queues while
/// replaying.
const SCRATCH: [&str; 1] = ["email_outbox"];

/// Guards written per statement at the end of a replay phase.
const GUARDS_PER_STATEMENT: usize = 10_000;

/// The advisory lock a rebuild holds while it runs (`'linkdRbd'` as bytes): one rebuild at a
/// time, and what a killed one left behind is removed only when none runs.
const REBUILD_LOCK: i64 = 0x6c69_6e6b_6452_6264;

/// Removes the schemas of rebuilds that were killed before they cleaned up (their fresh tables
/// hold copies of personal data that an erasure would not reach), if no rebuild runs now.
/// Returns how many it removed.
pub async fn remove_leftovers(pool: &PgPool) -> anyhow::Result<usize> {
    let mut connection = pool.acquire().await?;
    let free: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
        .bind(REBUILD_LOCK)
        .fetch_one(&mut *connection)
        .await?;
    if !free {
        return Ok(0);
    }
    let removed = drop_leftovers(&mut connection).await;
    sqlx::query("SELECT pg_advisory_unlock($1)")
        .bind(REBUILD_LOCK)
        .execute(&mut *connection)
        .await?;
    removed
}

async fn drop_leftovers(connection: &mut sqlx::PgConnection) -> anyhow::Result<usize> {
    let schemas: Vec<String> = sqlx::query_scalar(
        "SELECT nspname FROM pg_namespace WHERE nspname ~ '^(rebuild|retired)_[0-9a-f]{32}$'",
    )
    .fetch_all(&mut *connection)
    .await?;
    for schema in &schemas {
        connection
            .execute(format!("DROP SCHEMA IF EXISTS {schema} CASCADE").as_str())
            .await?;
        tracing::warn!(%schema, "removed what an interrupted rebuild left behind");
    }
    Ok(schemas.len())
}

/// How long a pull may go without a message before the rebuild gives up.
const SILENCE: Duration = Duration::from_secs(30);

/// Rebuilds the read models in the database at `database_url` from the stream.
pub async fn rebuild(database_url: &str, settings: &ConsumerSettings) -> anyhow::Result<Rebuilt> {
    rebuild_with(database_url, settings, &RebuildOptions::default()).await
}

/// [`rebuild`] with `options`.
pub async fn rebuild_with(
    database_url: &str,
    settings: &ConsumerSettings,
    options: &RebuildOptions,
) -> anyhow::Result<Rebuilt> {
    let started = Instant::now();
    let pool = crate::startup::connect_and_migrate(database_url).await?;
    // One rebuild at a time: the lock lives as long as this connection.
    let mut lock = pool.acquire().await?.detach();
    let free: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
        .bind(REBUILD_LOCK)
        .fetch_one(&mut lock)
        .await?;
    anyhow::ensure!(
        free,
        "another rebuild of this database is running; wait for it to finish"
    );
    drop_leftovers(&mut lock).await?;
    let fresh = format!("rebuild_{}", Uuid::new_v4().simple());
    let retired = format!("retired_{}", Uuid::new_v4().simple());
    pool.execute(format!("CREATE SCHEMA {fresh}").as_str())
        .await?;
    for table in TABLES.iter().chain(&SCRATCH) {
        pool.execute(
            format!("CREATE TABLE {fresh}.{table} (LIKE public.{table} INCLUDING ALL)").as_str(),
        )
        .await?;
    }
    let outcome = replay_and_switch(&pool, database_url, settings, options, &fresh, &retired).await;
    if outcome.is_err() {
        let _ = pool
            .execute(format!("DROP SCHEMA IF EXISTS {fresh} CASCADE").as_str())
            .await;
    }
    let events = outcome?;
    pool.execute(format!("DROP SCHEMA IF EXISTS {retired} CASCADE").as_str())
        .await?;
    pool.execute(format!("DROP SCHEMA IF EXISTS {fresh} CASCADE").as_str())
        .await?;
    Ok(Rebuilt {
        events,
        elapsed: started.elapsed(),
    })
}

async fn replay_and_switch(
    pool: &PgPool,
    database_url: &str,
    settings: &ConsumerSettings,
    options: &RebuildOptions,
    fresh: &str,
    retired: &str,
) -> anyhow::Result<u64> {
    // One connection that sees the fresh tables under the usual names (dead_letters, for parked
    // events, stays the live one), and writes them in order, one batch after the other.
    // The batches commit without waiting for their WAL to reach the disk. Nothing reads the
    // fresh tables before the switch, and the switch commits synchronously (on `pool`): WAL is
    // flushed in order, so once the switch is durable every batch before it is too. A crash
    // before that loses only the fresh schema, which is never switched in (ADR 0007).
    let search_path = format!("SET search_path TO {fresh}, public");
    let shadow = service_kit::database::pool_options(1)
        .after_connect(move |connection, _| {
            let search_path = search_path.clone();
            Box::pin(async move {
                connection.execute(search_path.as_str()).await?;
                connection.execute("SET synchronous_commit TO off").await?;
                Ok(())
            })
        })
        .connect(database_url)
        .await
        .context("connecting the rebuild's writer")?;
    let switched = replay_and_switch_with(pool, &shadow, settings, options, fresh, retired).await;
    // Its locks, if it failed inside a transaction, go with it before the fresh schema does.
    shadow.close().await;
    switched
}

async fn replay_and_switch_with(
    pool: &PgPool,
    shadow: &PgPool,
    settings: &ConsumerSettings,
    options: &RebuildOptions,
    fresh: &str,
    retired: &str,
) -> anyhow::Result<u64> {
    let models = settings.read_models();
    let shared: Vec<&dyn ReadModel> = models
        .iter()
        .map(AsRef::as_ref)
        .filter(|model| model.guard() != Devices.name())
        .collect();
    let rebuilt: Vec<&str> = models.iter().map(|model| model.guard()).collect();
    let client =
        service_kit::nats::connect(&settings.nats_url, "linkd-rebuild", &settings.nats_auth)
            .await?;
    let stream = jetstream::new(client)
        .get_stream(&settings.stream)
        .await
        .with_context(|| format!("opening stream {}", settings.stream))?;
    let mut replay = Replay {
        verifier: settings.verifier.clone(),
        opener: settings.opener.clone(),
        consumer: stream
            .create_consumer(consumer::pull::Config {
                filter_subject: format!("{}.>", settings.subject_prefix),
                deliver_policy: consumer::DeliverPolicy::All,
                ack_policy: consumer::AckPolicy::None,
                inactive_threshold: Duration::from_secs(60),
                ..Default::default()
            })
            .await
            .context("creating the replay consumer")?,
        batch_size: options.batch_size.max(1),
        replayed: Replayed::default(),
        read: 0,
        outcome: BatchOutcome::default(),
        shared: Shared::default(),
        waiting: Vec::new(),
        erasures: Vec::new(),
    };
    replay.drain(shadow, &shared).await?;
    tracing::info!(
        read = replay.read,
        applied = replay.outcome.applied,
        "replayed the stream; switching over"
    );

    let mut tx = pool.begin().await?;
    let locking = Instant::now();
    // The live consumer locks projector_positions first, then the read models' tables: same
    // order, no deadlock.
    let live: Vec<String> = TABLES
        .iter()
        .map(|table| format!("public.{table}"))
        .collect();
    sqlx::query(&format!(
        "LOCK TABLE {} IN ACCESS EXCLUSIVE MODE",
        live.join(", ")
    ))
    .execute(&mut *tx)
    .await?;
    // Pulls issued now see every message the live consumer has applied: it took each from the
    // stream before committing, and it committed before this lock was granted.
    replay.drain(shadow, &shared).await?;
    if !replay.replayed.held.is_empty() {
        // The live consumer cannot have applied these either (it waits for the same gaps, and
        // the check below proves it): it will apply them on the fresh tables when the gap fills.
        let waiting: Vec<String> = replay
            .replayed
            .held
            .waiting()
            .take(10)
            .map(|((kind, id), sequence)| format!("{kind}/{id}/{sequence}.."))
            .collect();
        tracing::warn!(
            events = replay.replayed.held.len(),
            ?waiting,
            "events after a gap in the stream stay unapplied"
        );
    }
    // Never switch to read models behind what readers have seen: that would mean the stream
    // lost events the live consumer applied (republish from 0, then rebuild). Only the guards
    // of aggregate types a read model reads count: an earlier version's notifier guarded every
    // type (ADR 0018), and those guards, read by no one, go with the live tables.
    let behind: Vec<(String, String, i64)> = sqlx::query_as(&format!(
        "SELECT l.projector, l.aggregate_type, count(*) FROM public.projector_positions l \
         LEFT JOIN {fresh}.projector_positions f USING (projector, aggregate_type, aggregate_id) \
         WHERE l.projector = ANY($1) AND l.last_sequence > coalesce(f.last_sequence, 0) \
         GROUP BY 1, 2"
    ))
    .bind(&rebuilt)
    .fetch_all(&mut *tx)
    .await?;
    let behind: i64 = behind
        .iter()
        .filter(|(projector, aggregate_type, _)| {
            models
                .iter()
                .any(|model| model.guard() == projector && model.reads(aggregate_type))
        })
        .map(|(.., count)| count)
        .sum();
    if behind > 0 {
        anyhow::bail!(
            "the stream lacks events the live read model applied ({behind} aggregates would go \
             back); republish the event store (command-service republish --from 0) and rebuild"
        );
    }
    // Guards of read models this build does not have (none today) are carried over unchanged.
    sqlx::query(&format!(
        "INSERT INTO {fresh}.projector_positions SELECT * FROM public.projector_positions \
         WHERE projector <> ALL($1)"
    ))
    .bind(&rebuilt)
    .execute(&mut *tx)
    .await?;
    // The emails of events the live notifier had not applied yet: it will skip those events
    // now (the fresh guards are past them), so their emails go to the live outbox from here.
    // Every other email the replay queued was queued (or deliberately not) by the live notifier
    // already: dropped with the scratch outbox.
    let columns: String = sqlx::query_scalar(
        "SELECT string_agg(quote_ident(column_name), ', ' ORDER BY ordinal_position) \
         FROM information_schema.columns \
         WHERE table_schema = 'public' AND table_name = 'email_outbox' \
           AND is_identity = 'NO'",
    )
    .fetch_one(&mut *tx)
    .await?;
    let handed_over = sqlx::query(&format!(
        "INSERT INTO public.email_outbox ({columns}) \
         SELECT {columns} FROM {fresh}.email_outbox f \
         WHERE NOT EXISTS ( \
             SELECT 1 FROM public.projector_positions l, \
                 regexp_match(f.event_id, '^([^/]+)/(.+)/([0-9]+)$') AS e (part) \
             WHERE l.projector = $1 AND l.aggregate_type = e.part[1] \
               AND l.aggregate_id = e.part[2] AND l.last_sequence >= e.part[3]::bigint) \
         ORDER BY f.id \
         ON CONFLICT DO NOTHING"
    ))
    .bind(crate::projections::notifier::NAME)
    .execute(&mut *tx)
    .await?
    .rows_affected();
    // An account erased by an event the live notifier had not reached: the rebuild forgot it in
    // its scratch outbox only, and the live consumer will skip the event now. Its live emails
    // (and any just handed over) are forgotten here, once the rebuilt tables are in place.
    let (accounts, sequences): (Vec<String>, Vec<i64>) = replay.erasures.iter().cloned().unzip();
    let erased: Vec<String> = sqlx::query_scalar(
        "SELECT f.id FROM unnest($2::text[], $3::bigint[]) AS f (id, sequence) \
         WHERE NOT EXISTS ( \
             SELECT 1 FROM public.projector_positions l \
             WHERE l.projector = $1 AND l.aggregate_type = 'account' \
               AND l.aggregate_id = f.id AND l.last_sequence >= f.sequence)",
    )
    .bind(crate::projections::notifier::NAME)
    .bind(&accounts)
    .bind(&sequences)
    .fetch_all(&mut *tx)
    .await?;
    // `LIKE … INCLUDING ALL` gave the fresh indexes generated names: match them with the live
    // ones by definition, to give them the live names once the live tables have moved aside
    // (migrations refer to indexes by name).
    let renames: Vec<(String, String)> = sqlx::query_as(
        "SELECT f.indexname, l.indexname FROM pg_indexes l JOIN pg_indexes f \
           ON f.tablename = l.tablename \
          AND regexp_replace(f.indexdef, '^.* USING ', '') \
            = regexp_replace(l.indexdef, '^.* USING ', '') \
          AND (f.indexdef LIKE 'CREATE UNIQUE %') = (l.indexdef LIKE 'CREATE UNIQUE %') \
         WHERE l.schemaname = 'public' AND f.schemaname = $1 AND l.tablename = ANY($2) \
           AND f.indexname <> l.indexname",
    )
    .bind(fresh)
    .bind(&TABLES[..])
    .fetch_all(&mut *tx)
    .await?;
    tx.execute(format!("CREATE SCHEMA {retired}").as_str())
        .await?;
    for table in TABLES {
        tx.execute(format!("ALTER TABLE public.{table} SET SCHEMA {retired}").as_str())
            .await?;
        tx.execute(format!("ALTER TABLE {fresh}.{table} SET SCHEMA public").as_str())
            .await?;
    }
    for (generated, live) in &renames {
        let quote = |name: &str| format!("\"{}\"", name.replace('"', "\"\""));
        tx.execute(
            format!(
                "ALTER INDEX public.{} RENAME TO {}",
                quote(generated),
                quote(live)
            )
            .as_str(),
        )
        .await?;
    }
    for account in &erased {
        crate::projections::notifier::Notifier::forget(&mut tx, account)
            .await
            .map_err(|e| anyhow::anyhow!("forgetting the erased account {account}: {e}"))?;
    }
    tx.commit().await?;
    let locked = locking.elapsed();
    let BatchOutcome {
        applied,
        already_applied,
        parked,
        held_back,
        unknown,
    } = replay.outcome;
    tracing::info!(
        read = replay.read,
        applied,
        already_applied,
        parked,
        held_back,
        unknown,
        aggregates = replay.replayed.aggregates(),
        audit_and_notifier_applied = replay.shared.applied,
        audit_and_notifier_after_a_gap = replay.shared.after_a_gap,
        emails_handed_over = handed_over,
        locked_ms = locked.as_millis(),
        "switched over"
    );
    Ok(replay.read)
}

/// The replay consumer and what came of its messages so far.
struct Replay {
    consumer: consumer::PullConsumer,
    /// The relay's keys: what they did not sign is skipped.
    verifier: Option<Arc<BusVerifier>>,
    /// What opens sealed personal fields.
    opener: Option<Opener>,
    batch_size: usize,
    replayed: Replayed,
    read: u64,
    /// What became of the device events.
    outcome: BatchOutcome,
    /// What became of the events for the other read models.
    shared: Shared,
    /// Events for the other read models held back behind a gap (or waiting for an account),
    /// tried again after each pull.
    waiting: Vec<EventEnvelope>,
    /// The `AccountErased` events replayed (account, sequence): those the live notifier had not
    /// reached are forgotten in the live tables at the switch.
    erasures: Vec<(String, i64)>,
}

/// What the read models other than the devices made of the replayed events.
#[derive(Debug, Default, Clone, Copy)]
struct Shared {
    /// Events applied to at least one of them, or passed over as of an unknown type.
    applied: u64,
    /// Events still held back behind a gap at the end (the stream lacks an earlier event of
    /// their aggregate): unapplied; the switch refuses if the live read models had applied them.
    after_a_gap: u64,
}

impl Replay {
    /// Applies messages until the consumer has nothing pending: pulls are read and decoded while
    /// the previous batch is written.
    async fn drain(&mut self, shadow: &PgPool, shared: &[&dyn ReadModel]) -> anyhow::Result<()> {
        let projector = &Devices;
        let (batches, mut received) = mpsc::channel::<Vec<EventEnvelope>>(2);
        // A task of its own, so that decoding runs beside the writer on another worker.
        let reader = tokio::spawn(
            pull(
                self.consumer.clone(),
                self.batch_size,
                self.verifier.clone(),
                self.opener.clone(),
                batches,
            )
            .in_current_span(),
        );
        let replayed = &mut self.replayed;
        let waiting = &mut self.waiting;
        let erasures = &mut self.erasures;
        let written = async {
            let mut outcome = BatchOutcome::default();
            let mut others = Shared::default();
            while let Some(events) = received.recv().await {
                erasures.extend(
                    events
                        .iter()
                        .filter(|event| matches!(event.event, Some(Event::AccountErased(_))))
                        .map(|event| (event.aggregate_id.clone(), event.sequence)),
                );
                let devices: Vec<EventEnvelope> = events
                    .iter()
                    .filter(|event| projector.reads(&event.aggregate_type))
                    .cloned()
                    .collect();
                if !devices.is_empty() {
                    let mut tx = shadow.begin().await?;
                    outcome += replay::apply_batch(&mut tx, projector, devices, replayed)
                        .await
                        .map_err(|e| anyhow::anyhow!("replaying: {e}"))?;
                    tx.commit().await?;
                }
                let (applied, held) = apply_shared(shadow, shared, &events).await?;
                others.applied += applied;
                // What waited behind a gap may apply now (its predecessor was in this pull),
                // and what it unblocks after it, as the live consumer's redeliveries would.
                while !waiting.is_empty() {
                    let before = waiting.len();
                    let (applied, still) = apply_shared(shadow, shared, waiting).await?;
                    others.applied += applied;
                    *waiting = still;
                    if waiting.len() == before {
                        break;
                    }
                }
                waiting.extend(held);
            }
            anyhow::Ok((outcome, others))
        }
        .await;
        let (outcome, others) = match written {
            Ok(written) => written,
            Err(error) => {
                reader.abort();
                return Err(error);
            }
        };
        self.shared.applied += others.applied;
        self.shared.after_a_gap = u64::try_from(self.waiting.len()).unwrap_or(u64::MAX);
        // The channel closes when the reader has finished (or failed).
        self.read += reader.await.context("the stream reader stopped")??;
        self.outcome += outcome;
        // Nothing reads the fresh guards before the switch, so they are written once here
        // rather than with every batch.
        let mut tx = shadow.begin().await?;
        self.replayed
            .store_guards(&mut tx, projector.name(), GUARDS_PER_STATEMENT)
            .await
            .map_err(|e| anyhow::anyhow!("writing the guards: {e}"))?;
        tx.commit().await?;
        Ok(())
    }
}

/// Pulls `batch_size` messages at a time and sends them on, decoded, until the consumer has
/// nothing pending; returns how many messages it read.
async fn pull(
    mut consumer: consumer::PullConsumer,
    batch_size: usize,
    verifier: Option<Arc<BusVerifier>>,
    opener: Option<Opener>,
    batches: mpsc::Sender<Vec<EventEnvelope>>,
) -> anyhow::Result<u64> {
    let mut read = 0;
    loop {
        let mut messages = consumer
            .fetch()
            .max_messages(batch_size)
            .messages()
            .await
            .map_err(|e| anyhow::anyhow!("fetching: {e}"))?;
        let mut events = Vec::with_capacity(batch_size);
        let mut got = 0;
        // A no-wait pull: the server answers at once with what it has, and ends the pull.
        while let Some(message) = tokio::time::timeout(SILENCE, messages.next())
            .await
            .context("the stream stopped answering a pull")?
        {
            let message = message.map_err(|e| anyhow::anyhow!("receiving: {e}"))?;
            got += 1;
            if let Err(forged) = projections::authenticate(verifier.as_deref(), &message) {
                // The live consumer parked it already.
                tracing::warn!(subject = %message.subject, %forged,
                    "skipping a message that is not the relay's");
                continue;
            }
            match projections::decode(&message.payload) {
                // Each read model chooses by the envelope's aggregate type, as in the live
                // consumer.
                Ok(event) => events.push(event),
                // Not an event at all: the live consumer parked it already.
                Err(_) => {
                    tracing::warn!(subject = %message.subject, "skipping an undecodable message");
                }
            }
        }
        read += got;
        // Sealed personal fields opened (placeholders for an erased subject), as the live
        // consumer does. One that does not open was parked by it and passed over: here it goes
        // on without its event, which every read model parks (once: the live dead letter is
        // there) and passes over the same way.
        let opened = Opener::open(opener.as_ref(), &mut events).await?;
        for (event, opened) in events.iter_mut().zip(opened) {
            if let Err(reason) = opened {
                tracing::warn!(%reason, "an event whose sealed fields do not open: parked");
                event.event = None;
            }
        }
        if !events.is_empty() {
            batches
                .send(events)
                .await
                .map_err(|_| anyhow::anyhow!("the writer stopped"))?;
        }
        if got < batch_size as u64
            && consumer
                .info()
                .await
                .map_err(|e| anyhow::anyhow!("reading the replay consumer: {e}"))?
                .num_pending
                == 0
        {
            return Ok(read);
        }
    }
}

/// Applies `events` (in stream order) to the read models `shared` in the fresh tables, as the
/// live consumer does: in one transaction, or one by one when one of them cannot apply (parked,
/// the guard moved past it). Returns how many applied (or were parked or passed over), and the
/// events held back behind a gap or waiting, to try again later.
async fn apply_shared(
    shadow: &PgPool,
    shared: &[&dyn ReadModel],
    events: &[EventEnvelope],
) -> anyhow::Result<(u64, Vec<EventEnvelope>)> {
    let verdicts = match batch::apply(shadow, shared, events).await {
        Ok(verdicts) => verdicts,
        Err(ProjectionError::Transient(error)) => {
            return Err(
                anyhow::Error::new(error).context("replaying into the audit log and notifier")
            );
        }
        Err(_) => batch::one_by_one(shadow, shared, events).await,
    };
    let mut applied = 0;
    let mut held = Vec::new();
    for (event, verdict) in events.iter().zip(verdicts) {
        match verdict {
            Ok(Outcome::Applied | Outcome::Parked | Outcome::Unknown) => applied += 1,
            Ok(Outcome::AlreadyApplied) => {}
            Err(ProjectionError::Gap { .. } | ProjectionError::Waiting(_)) => {
                held.push(event.clone());
            }
            Err(error) => anyhow::bail!("replaying into the audit log and notifier: {error}"),
        }
    }
    Ok((applied, held))
}
