//! The ceiling: what the PostgreSQL server under the command service does with the smallest
//! write transaction (BEGIN; one INSERT of one small row; COMMIT) through sqlx, at a given
//! concurrency with a pool of that size. Commands that write events cannot beat it.

use std::time::{Duration, Instant};

use anyhow::Context as _;
use sqlx::PgPool;

use crate::closed::{self, Deadline};
use crate::stats::{Failure, OpStats, Recorder};

/// A scratch table in the command database; dropped by [`Ceiling::drop_table`].
#[derive(Debug)]
pub(crate) struct Ceiling {
    url: String,
    table: String,
    admin: PgPool,
}

impl Ceiling {
    /// Creates the scratch table.
    pub(crate) async fn create(command_db: &str) -> anyhow::Result<Self> {
        let admin = closed::warm_pool(command_db, 1, "ceiling's set-up").await?;
        let table = format!("bench_ceiling_{}", uuid::Uuid::new_v4().simple());
        sqlx::query(&format!(
            "CREATE TABLE {table} (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, \
             client int NOT NULL, n bigint NOT NULL, payload text NOT NULL, \
             written_at timestamptz NOT NULL DEFAULT now())"
        ))
        .execute(&admin)
        .await
        .context("creating the ceiling's scratch table")?;
        Ok(Self {
            url: command_db.to_owned(),
            table,
            admin,
        })
    }

    /// Single-row INSERT transactions by `concurrency` clients over a pool of that size, for
    /// `length`.
    pub(crate) async fn measure(
        &self,
        concurrency: usize,
        length: Duration,
    ) -> anyhow::Result<OpStats> {
        let pool = closed::warm_pool(&self.url, concurrency, "ceiling").await?;
        let insert = format!(
            "INSERT INTO {} (client, n, payload) VALUES ($1, $2, $3)",
            self.table
        );
        let deadline = Deadline::after(length);
        let started = Instant::now();
        let recorders = closed::each(vec![(); concurrency], |client, ()| {
            let (pool, insert) = (pool.clone(), insert.clone());
            async move {
                let mut recorder = Recorder::default();
                let mut n = 0_i64;
                while !deadline.passed() {
                    n += 1;
                    recorder.time(transaction(&pool, &insert, client, n)).await;
                }
                recorder
            }
        })
        .await?;
        let elapsed = started.elapsed();
        pool.close().await;
        Ok(Recorder::merged(recorders).summary("INSERT transaction (ceiling)", elapsed))
    }

    /// Drops the scratch table.
    pub(crate) async fn drop_table(self) -> anyhow::Result<()> {
        sqlx::query(&format!("DROP TABLE IF EXISTS {}", self.table))
            .execute(&self.admin)
            .await
            .context("dropping the ceiling's scratch table")?;
        self.admin.close().await;
        Ok(())
    }
}

async fn transaction(pool: &PgPool, insert: &str, client: usize, n: i64) -> Result<(), Failure> {
    let database = |error: sqlx::Error| Failure {
        code: "DATABASE",
        message: error.to_string(),
    };
    let mut tx = pool.begin().await.map_err(database)?;
    sqlx::query(insert)
        .bind(i32::try_from(client).unwrap_or(i32::MAX))
        .bind(n)
        .bind("bench row")
        .execute(&mut *tx)
        .await
        .map_err(database)?;
    tx.commit().await.map_err(database)
}
