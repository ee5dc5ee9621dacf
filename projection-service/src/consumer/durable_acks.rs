//! Acknowledgements that wait for the WAL flush. The consumer's transactions commit with
//! `synchronous_commit = off`: the commit returns once its record is in the WAL buffers, before
//! it is on disk. The consumer hands each committed batch's acknowledgements here, and they are
//! sent only once PostgreSQL reports its WAL flushed past that commit, so that a message
//! JetStream forgets is never one whose effects a crash of PostgreSQL could undo.
//!
//! A batch handed over after its commit returned is durable once the flush position passes the
//! insert position read after it arrived (the commit record lies before that position). The WAL
//! is usually flushed within milliseconds by other transactions' synchronous commits (the command
//! side's, on a shared server) or by the WAL writer (`wal_writer_delay`); when it still is not
//! after [`FORCE_AFTER`], a one-row update that commits synchronously forces the flush.
//!
//! **Positions are only compared within one life of the server.** After a crash, PostgreSQL
//! writes new WAL from the end of what it recovered: positions read before the crash are reused
//! by new records, and a flush position past a target read before the crash proves nothing. So
//! every position is read on one dedicated connection, and each connection has a generation: the
//! consumer tags a batch with the generation current before the batch began, and a batch is
//! acknowledged only if that same connection, alive all along (a crash ends every backend), read
//! its target and then a flush position past it. When the connection fails, every waiting batch
//! is NAKed (delivered again at once: the guards skip what survived and apply what the crash
//! undid) and a new connection starts a new generation.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_nats::jetstream::{self, AckKind};
use sqlx::postgres::PgConnectOptions;
use sqlx::{Connection as _, PgConnection, PgPool};
use tokio::sync::mpsc;
use tokio::time::Instant;

/// The acknowledgements of one committed batch.
pub type Settled = Vec<(jetstream::Message, AckKind)>;

/// A committed batch: the generation current before it began, and its acknowledgements.
pub type Committed = (u64, Settled);

/// How often the flush position is read while acknowledgements wait.
const ROUND: Duration = Duration::from_millis(5);

/// How long acknowledgements wait for someone else to flush before a commit forces it.
const FORCE_AFTER: Duration = Duration::from_millis(50);

/// How long after a connection failure a new one is tried.
const RECONNECT_AFTER: Duration = Duration::from_millis(500);

/// `(insert position, flush position)` of the WAL, in bytes.
const POSITIONS: &str = "SELECT (pg_current_wal_insert_lsn() - '0/0')::bigint, \
     (pg_current_wal_flush_lsn() - '0/0')::bigint";

/// The generation of the position-reading connection: 0 while there is none.
#[derive(Debug, Clone, Default)]
pub struct Generation(Arc<AtomicU64>);

impl Generation {
    /// The current generation (read by the consumer before each batch).
    pub fn current(&self) -> u64 {
        self.0.load(Ordering::SeqCst)
    }
}

/// The position-reading side: its connection and generation.
struct Reader {
    options: PgConnectOptions,
    connection: Option<PgConnection>,
    generation: Generation,
}

impl Reader {
    /// A connection of its own (a new generation), if there is none.
    async fn connect(&mut self) -> Result<&mut PgConnection, sqlx::Error> {
        let connection = match self.connection.take() {
            Some(connection) => connection,
            None => {
                let connection = PgConnection::connect_with(&self.options).await?;
                self.generation.0.fetch_add(1, Ordering::SeqCst);
                connection
            }
        };
        Ok(self.connection.insert(connection))
    }

    /// The WAL's insert and flush positions; with `force`, after a synchronous commit has
    /// flushed everything inserted before it.
    async fn positions(&mut self, force: bool) -> Result<(i64, i64), sqlx::Error> {
        let connection = self.connect().await?;
        if force {
            // A commit waits for the flush only if its transaction wrote to the WAL. Dropped on
            // an error, the transaction rolls back.
            let mut tx = connection.begin().await?;
            sqlx::query("SET LOCAL synchronous_commit = on")
                .execute(&mut *tx)
                .await?;
            sqlx::query("UPDATE wal_flushes SET flushed_at = now() WHERE id = 1")
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
        }
        sqlx::query_as(POSITIONS).fetch_one(&mut *connection).await
    }
}

/// Connects the position reader (its first generation), so that the consumer's first batches
/// can be acknowledged; the returned task sends each batch's acknowledgements once its commit
/// is durable, until `committed` closes and nothing more can be acknowledged.
pub async fn start(
    pool: &PgPool,
    committed: mpsc::UnboundedReceiver<Committed>,
    ack_wait: Duration,
) -> Result<(Generation, impl Future<Output = ()> + Send + 'static), sqlx::Error> {
    let mut reader = Reader {
        options: (*pool.connect_options()).clone(),
        connection: None,
        generation: Generation::default(),
    };
    reader.connect().await?;
    let generation = reader.generation.clone();
    Ok((generation, run(reader, committed, ack_wait)))
}

/// One waiting batch: its generation, the insert position it waits for, since when.
struct Waiting {
    generation: u64,
    target: i64,
    since: Instant,
    settled: Settled,
}

async fn run(
    mut reader: Reader,
    mut committed: mpsc::UnboundedReceiver<Committed>,
    ack_wait: Duration,
) {
    let mut waiting: VecDeque<Waiting> = VecDeque::new();
    let mut open = true;
    loop {
        let mut arrived = Vec::new();
        if waiting.is_empty() {
            match committed.recv().await {
                Some(batch) => arrived.push(batch),
                None => return,
            }
        } else if open {
            // Wait a round, taking what arrives meanwhile.
            let deadline = tokio::time::sleep(ROUND);
            tokio::pin!(deadline);
            loop {
                tokio::select! {
                    () = &mut deadline => break,
                    batch = committed.recv() => match batch {
                        Some(batch) => arrived.push(batch),
                        None => { open = false; break; }
                    },
                }
            }
        } else {
            tokio::time::sleep(ROUND).await;
        }
        while let Ok(batch) = committed.try_recv() {
            arrived.push(batch);
        }
        // Messages JetStream has already delivered again need no acknowledgement from here.
        while waiting
            .front()
            .is_some_and(|batch| batch.since.elapsed() >= ack_wait)
        {
            waiting.pop_front();
        }
        let overdue = waiting
            .front()
            .is_some_and(|batch| batch.since.elapsed() >= FORCE_AFTER);
        let read = reader.positions(overdue).await;
        let current = reader.generation.current();
        let (insert, flush) = match read {
            Ok(positions) => positions,
            Err(error) => {
                // The connection (or the server) failed: nothing read before can be trusted.
                tracing::warn!(%error, "reading the WAL positions; the waiting messages are \
                    delivered again");
                reader.connection = None;
                for batch in waiting.drain(..) {
                    redeliver(batch.settled).await;
                }
                for (_, settled) in arrived {
                    redeliver(settled).await;
                }
                if !open {
                    return;
                }
                tokio::time::sleep(RECONNECT_AFTER).await;
                continue;
            }
        };
        let now = Instant::now();
        for (generation, settled) in arrived {
            if generation == current {
                waiting.push_back(Waiting {
                    generation,
                    target: insert,
                    since: now,
                    settled,
                });
            } else {
                // Committed under an earlier connection: no position read now can vouch for it.
                redeliver(settled).await;
            }
        }
        while waiting
            .front()
            .is_some_and(|batch| batch.generation == current && batch.target <= flush)
        {
            if let Some(batch) = waiting.pop_front() {
                acknowledge(batch.settled).await;
            }
        }
        if !open && waiting.is_empty() {
            return;
        }
    }
}

async fn acknowledge(settled: Settled) {
    for (message, kind) in settled {
        if let Err(error) = message.ack_with(kind).await {
            // Delivered again after `ack_wait`; the guards skip it.
            tracing::debug!(%error, "acknowledging");
        }
    }
}

/// Asks for the messages of a batch whose durability cannot be shown again, at once: applied
/// and durable, the guards skip them; undone by a crash, they apply again.
async fn redeliver(settled: Settled) {
    for (message, _) in settled {
        if let Err(error) = message.ack_with(AckKind::Nak(None)).await {
            tracing::debug!(%error, "asking for a message again");
        }
    }
}
