//! Acknowledgements that wait for the WAL flush. The consumer's transactions commit with
//! `synchronous_commit = off`: the commit returns once its record is in the WAL buffers, before
//! it is on disk. The consumer hands each committed batch's acknowledgements here, and they are
//! sent only once PostgreSQL reports its WAL flushed past that commit, so that a message
//! JetStream forgets is never one whose effects a crash of PostgreSQL could undo.
//!
//! A batch handed over after its commit returned is durable once the flush position passes the
//! insert position read after it arrived (the commit record lies before that position). Each
//! round reads both positions in one statement and acknowledges what is durable. The WAL is
//! usually flushed within milliseconds by other transactions' synchronous commits (the command
//! side's, on a shared server) or by the WAL writer (`wal_writer_delay`); when it still is not
//! after [`FORCE_AFTER`], a one-row update that commits synchronously forces the flush.

use std::collections::VecDeque;
use std::time::Duration;

use async_nats::jetstream::{self, AckKind};
use sqlx::PgPool;
use tokio::sync::mpsc;
use tokio::time::Instant;

/// The acknowledgements of one committed batch.
pub type Settled = Vec<(jetstream::Message, AckKind)>;

/// How often the flush position is read while acknowledgements wait.
const ROUND: Duration = Duration::from_millis(5);

/// How long acknowledgements wait for someone else to flush before a commit forces it.
const FORCE_AFTER: Duration = Duration::from_millis(50);

/// `(insert position, flush position)` of the WAL, in bytes.
const POSITIONS: &str = "SELECT (pg_current_wal_insert_lsn() - '0/0')::bigint, \
     (pg_current_wal_flush_lsn() - '0/0')::bigint";

/// Sends each batch's acknowledgements once its commit is durable, until `committed` closes
/// and everything received is acknowledged (or the database is gone: unacknowledged messages
/// are delivered again after the consumer's `ack_wait`).
pub async fn run(pool: PgPool, mut committed: mpsc::UnboundedReceiver<Settled>) {
    // (insert position it waits for, since when, acknowledgements)
    let mut waiting: VecDeque<(i64, Instant, Settled)> = VecDeque::new();
    let mut open = true;
    loop {
        let mut arrived = Vec::new();
        if waiting.is_empty() {
            if !open {
                return;
            }
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
        let overdue = waiting
            .front()
            .is_some_and(|(_, since, _)| since.elapsed() >= FORCE_AFTER);
        let (insert, flush) = match positions(&pool, overdue).await {
            Ok(positions) => positions,
            Err(error) => {
                tracing::warn!(%error, "reading the WAL positions; acknowledgements wait");
                tokio::time::sleep(Duration::from_millis(500)).await;
                if pool.is_closed() {
                    return;
                }
                // What arrived stays unacknowledged until a reading succeeds.
                let now = Instant::now();
                waiting.extend(arrived.into_iter().map(|batch| (i64::MAX, now, batch)));
                continue;
            }
        };
        let now = Instant::now();
        for (target, _, _) in &mut waiting {
            // Batches that arrived while the database could not be read.
            if *target == i64::MAX {
                *target = insert;
            }
        }
        waiting.extend(arrived.into_iter().map(|batch| (insert, now, batch)));
        while waiting.front().is_some_and(|(target, ..)| *target <= flush) {
            if let Some((.., batch)) = waiting.pop_front() {
                acknowledge(batch).await;
            }
        }
    }
}

/// The WAL's insert and flush positions; with `force`, the flush position after a synchronous
/// commit has flushed everything inserted before it.
async fn positions(pool: &PgPool, force: bool) -> Result<(i64, i64), sqlx::Error> {
    if force {
        // A commit waits for the flush only if its transaction wrote to the WAL.
        sqlx::raw_sql(
            "BEGIN; SET LOCAL synchronous_commit = on; \
             UPDATE wal_flushes SET flushed_at = now() WHERE id = 1; COMMIT",
        )
        .execute(pool)
        .await?;
    }
    sqlx::query_as(POSITIONS).fetch_one(pool).await
}

async fn acknowledge(batch: Settled) {
    for (message, kind) in batch {
        if let Err(error) = message.ack_with(kind).await {
            // Delivered again after `ack_wait`; the guards skip it.
            tracing::debug!(%error, "acknowledging");
        }
    }
}
