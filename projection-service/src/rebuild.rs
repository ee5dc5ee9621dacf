//! Rebuild: replays the stream from its first event into fresh tables, then switches the live
//! read models over (`projection-service rebuild`).
//!
//! 1. Fresh `devices` and `projector_positions` tables in a schema of their own (the guards of
//!    other projectors, such as the notifier, are carried over unchanged at the switch).
//! 2. An ephemeral consumer from the stream's start applies every event to them, through the
//!    same projector code and guard as the live consumer.
//! 3. Under an exclusive lock on the live tables (the live consumer waits), the last events are
//!    applied, the live tables move aside, the fresh ones take their place, and the lock is
//!    released; the live consumer resumes on the fresh tables, its guard skipping what the
//!    rebuild already applied.

use std::time::{Duration, Instant};

use anyhow::Context as _;
use async_nats::jetstream::{self, consumer};
use futures_util::StreamExt as _;
use sqlx::postgres::PgPoolOptions;
use sqlx::{Executor as _, PgPool};
use uuid::Uuid;

use crate::consumer::ConsumerSettings;
use crate::projections::{self, Projector, devices::Devices};

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

const TABLES: [&str; 2] = ["devices", "projector_positions"];

/// Rebuilds the read models in the database at `database_url` from the stream.
pub async fn rebuild(database_url: &str, settings: &ConsumerSettings) -> anyhow::Result<Rebuilt> {
    let started = Instant::now();
    let pool = crate::startup::connect_and_migrate(database_url).await?;
    let fresh = format!("rebuild_{}", Uuid::new_v4().simple());
    let retired = format!("retired_{}", Uuid::new_v4().simple());
    pool.execute(format!("CREATE SCHEMA {fresh}").as_str())
        .await?;
    for table in TABLES {
        pool.execute(
            format!("CREATE TABLE {fresh}.{table} (LIKE public.{table} INCLUDING ALL)").as_str(),
        )
        .await?;
    }
    let outcome = replay_and_switch(&pool, database_url, settings, &fresh, &retired).await;
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
    fresh: &str,
    retired: &str,
) -> anyhow::Result<u64> {
    // Connections that see the fresh tables under the usual names.
    // Fresh tables first; dead_letters (parked events) stays the live one.
    let search_path = format!("SET search_path TO {fresh}, public");
    let shadow = PgPoolOptions::new()
        .max_connections(2)
        .after_connect(move |connection, _| {
            let search_path = search_path.clone();
            Box::pin(async move {
                connection.execute(search_path.as_str()).await?;
                Ok(())
            })
        })
        .connect(database_url)
        .await?;
    let client = async_nats::connect(&settings.nats_url)
        .await
        .with_context(|| format!("connecting to NATS at {}", settings.nats_url))?;
    let stream = jetstream::new(client)
        .get_stream(&settings.stream)
        .await
        .with_context(|| format!("opening stream {}", settings.stream))?;
    let projector = Devices;
    let mut replay: consumer::PullConsumer = stream
        .create_consumer(consumer::pull::Config {
            filter_subject: format!("{}.{}", settings.subject_prefix, projector.filter()),
            deliver_policy: consumer::DeliverPolicy::All,
            ack_policy: consumer::AckPolicy::None,
            inactive_threshold: Duration::from_secs(60),
            ..Default::default()
        })
        .await
        .context("creating the replay consumer")?;
    let mut events = drain(&mut replay, &shadow, &projector).await?;

    let mut tx = pool.begin().await?;
    // The live consumer locks projector_positions first, then devices: same order, no deadlock.
    sqlx::query("LOCK TABLE public.projector_positions, public.devices IN ACCESS EXCLUSIVE MODE")
        .execute(&mut *tx)
        .await?;
    events += drain(&mut replay, &shadow, &projector).await?;
    // Other projectors' guards are not rebuilt here: carry them over unchanged.
    sqlx::query(&format!(
        "INSERT INTO {fresh}.projector_positions SELECT * FROM public.projector_positions \
         WHERE projector <> $1"
    ))
    .bind(projector.name())
    .execute(&mut *tx)
    .await?;
    tx.execute(format!("CREATE SCHEMA {retired}").as_str())
        .await?;
    for table in TABLES {
        tx.execute(format!("ALTER TABLE public.{table} SET SCHEMA {retired}").as_str())
            .await?;
        tx.execute(format!("ALTER TABLE {fresh}.{table} SET SCHEMA public").as_str())
            .await?;
    }
    tx.commit().await?;
    shadow.close().await;
    Ok(events)
}

/// Applies messages until the consumer has nothing pending.
async fn drain<P: Projector>(
    replay: &mut consumer::PullConsumer,
    shadow: &PgPool,
    projector: &P,
) -> anyhow::Result<u64> {
    let mut applied = 0;
    loop {
        let mut batch = replay
            .fetch()
            .max_messages(500)
            .expires(Duration::from_millis(250))
            .messages()
            .await
            .map_err(|e| anyhow::anyhow!("fetching: {e}"))?;
        let mut got = 0;
        while let Some(message) = batch.next().await {
            let message = message.map_err(|e| anyhow::anyhow!("receiving: {e}"))?;
            let Ok(event) = projections::decode(&message.payload) else {
                // Not an event at all: the live consumer parked it already.
                tracing::warn!(subject = %message.subject, "skipping an undecodable message");
                got += 1;
                continue;
            };
            projections::apply(shadow, projector, &event)
                .await
                .map_err(|e| anyhow::anyhow!("replaying {}: {e}", event.event_id))?;
            got += 1;
        }
        applied += got;
        if got == 0
            && replay
                .info()
                .await
                .map_err(|e| anyhow::anyhow!("{e}"))?
                .num_pending
                == 0
        {
            return Ok(applied);
        }
    }
}
