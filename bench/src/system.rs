//! The system's back ends as the bench sees them: the event store, the stream and its durable
//! consumers. Between phases the bench waits until the relay has published every stored event
//! and every projector has consumed it, so one phase's backlog is not measured in the next.

use std::time::{Duration, Instant};

use anyhow::Context as _;
use async_nats::jetstream;
use sqlx::PgPool;
use sqlx::postgres::PgPoolOptions;
// tonic re-exports tokio-stream; using it keeps the bench's dependencies (and Cargo.lock) as
// they are.
use tonic::codegen::tokio_stream::StreamExt as _;

use crate::config::Target;

/// Connections to the event store and to JetStream.
#[derive(Debug, Clone)]
pub(crate) struct System {
    /// The command service's database.
    pub(crate) command_db: PgPool,
    /// The NATS client (for the server's version).
    pub(crate) nats: async_nats::Client,
    jetstream: jetstream::Context,
    stream: String,
}

/// Where publishing and consuming stand.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Backlog {
    /// Events in the store.
    pub(crate) stored: u64,
    /// Messages in the stream.
    pub(crate) published: u64,
    /// Messages durable consumers have not yet acknowledged.
    pub(crate) unconsumed: u64,
}

impl Backlog {
    /// Whether everything stored is published and consumed.
    pub(crate) fn is_empty(&self) -> bool {
        self.published >= self.stored && self.unconsumed == 0
    }
}

impl System {
    /// Connects to the command database and NATS.
    pub(crate) async fn connect(target: &Target) -> anyhow::Result<Self> {
        let command_db = PgPoolOptions::new()
            .max_connections(4)
            .connect(&target.command_db)
            .await
            .context("connecting to the command database")?;
        let nats = async_nats::connect(&target.nats_url)
            .await
            .with_context(|| format!("connecting to NATS at {}", target.nats_url))?;
        Ok(Self {
            command_db,
            jetstream: jetstream::new(nats.clone()),
            nats,
            stream: target.stream.clone(),
        })
    }

    /// Events in the store, optionally of one aggregate type.
    pub(crate) async fn stored_events(&self, aggregate_type: Option<&str>) -> anyhow::Result<u64> {
        let count: i64 = sqlx::query_scalar(
            "SELECT count(*) AS linkd_bench FROM events \
             WHERE $1::text IS NULL OR aggregate_type = $1",
        )
        .bind(aggregate_type)
        .fetch_one(&self.command_db)
        .await
        .context("counting stored events")?;
        Ok(u64::try_from(count)?)
    }

    /// Messages in the stream.
    pub(crate) async fn published(&self) -> anyhow::Result<u64> {
        let mut stream = self
            .jetstream
            .get_stream(&self.stream)
            .await
            .with_context(|| format!("opening stream {}", self.stream))?;
        Ok(stream.info().await?.state.messages)
    }

    /// Where publishing and consuming stand now.
    pub(crate) async fn backlog(&self) -> anyhow::Result<Backlog> {
        let stored = self.stored_events(None).await?;
        let stream = self
            .jetstream
            .get_stream(&self.stream)
            .await
            .with_context(|| format!("opening stream {}", self.stream))?;
        let published = stream.get_info().await?.state.messages;
        let mut unconsumed = 0;
        let mut consumers = stream.consumers();
        while let Some(info) = consumers.next().await {
            let info = info.map_err(|e| anyhow::anyhow!("listing consumers: {e}"))?;
            // Ephemeral consumers (a rebuild's replay) are nobody's backlog.
            if info.config.durable_name.is_some() {
                unconsumed += info.num_pending + u64::try_from(info.num_ack_pending)?;
            }
        }
        Ok(Backlog {
            stored,
            published,
            unconsumed,
        })
    }

    /// Waits (at most `timeout`) until every stored event is published and consumed; warns on
    /// stderr if it was not.
    pub(crate) async fn quiesce(&self, timeout: Duration) -> anyhow::Result<Backlog> {
        let started = Instant::now();
        loop {
            let backlog = self.backlog().await?;
            if backlog.is_empty() {
                return Ok(backlog);
            }
            if started.elapsed() > timeout {
                eprintln!(
                    "warning: after {} s the backlog is not empty: {} events stored, {} \
                     published, {} not consumed; going on",
                    timeout.as_secs(),
                    backlog.stored,
                    backlog.published,
                    backlog.unconsumed
                );
                return Ok(backlog);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// Deletes `stream` (and its consumers) if it exists.
pub(crate) async fn drop_stream(nats_url: &str, stream: &str) -> anyhow::Result<()> {
    let client = async_nats::connect(nats_url)
        .await
        .with_context(|| format!("connecting to NATS at {nats_url}"))?;
    let context = jetstream::new(client);
    if context.get_stream(stream).await.is_ok() {
        context
            .delete_stream(stream)
            .await
            .with_context(|| format!("deleting stream {stream}"))?;
    }
    Ok(())
}
