//! The design card's stack as a peer, measured in the same run: stock `cqrs-es` +
//! `postgres-es` (`CqrsFramework` over `PostgresEventRepository`, no gRPC, no authentication,
//! no relay) executing one command that creates one aggregate (one event), at a given
//! concurrency with a pool of that size. linkd's full gRPC commands are reported as a ratio to
//! it: what the chosen libraries cost on their own, before anything linkd adds.
//!
//! The peer's tables (`bench_peer_events_<id>`, `…_snapshots_<id>`, postgres-es's layout) are
//! scratch tables in the command database, dropped afterwards.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use cqrs_es::event_sink::EventSink;
use cqrs_es::persist::PersistedEventStore;
use cqrs_es::{Aggregate, CqrsFramework, DomainEvent};
use postgres_es::PostgresEventRepository;
use serde::{Deserialize, Serialize};
use sqlx::PgPool;

use crate::closed::{self, Deadline};
use crate::stats::{Failure, OpStats, Recorder};

/// The smallest aggregate: a note that can be created once.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Note {
    created: bool,
}

/// Create the note.
#[derive(Debug)]
struct Create {
    text: String,
}

/// The note was created.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
enum NoteEvent {
    Created { text: String },
}

impl DomainEvent for NoteEvent {
    fn event_type(&self) -> String {
        "Created".to_owned()
    }

    fn event_version(&self) -> String {
        "1.0".to_owned()
    }
}

/// A note exists already.
#[derive(Debug)]
struct Exists;

impl std::fmt::Display for Exists {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the note exists already")
    }
}

impl std::error::Error for Exists {}

impl Aggregate for Note {
    const TYPE: &'static str = "note";
    type Command = Create;
    type Event = NoteEvent;
    type Error = Exists;
    type Services = ();

    async fn handle(
        &mut self,
        command: Self::Command,
        _: &Self::Services,
        sink: &EventSink<Self>,
    ) -> Result<(), Self::Error> {
        if self.created {
            return Err(Exists);
        }
        sink.write(NoteEvent::Created { text: command.text }, self)
            .await;
        Ok(())
    }

    fn apply(&mut self, event: Self::Event) {
        match event {
            NoteEvent::Created { .. } => self.created = true,
        }
    }
}

/// The peer's scratch tables; dropped by [`Peer::drop_tables`].
#[derive(Debug)]
pub(crate) struct Peer {
    url: String,
    events: String,
    snapshots: String,
    admin: PgPool,
}

impl Peer {
    /// Creates the scratch tables (postgres-es's layout) in the command database.
    pub(crate) async fn create(command_db: &str) -> anyhow::Result<Self> {
        let admin = closed::warm_pool(command_db, 1, "peer's set-up").await?;
        let id = uuid::Uuid::new_v4().simple().to_string();
        let events = format!("bench_peer_events_{id}");
        let snapshots = format!("bench_peer_snapshots_{id}");
        for statement in [
            format!(
                "CREATE TABLE {events} (aggregate_type text NOT NULL, aggregate_id text NOT NULL, \
                 sequence bigint CHECK (sequence >= 0) NOT NULL, event_type text NOT NULL, \
                 event_version text NOT NULL, payload json NOT NULL, metadata json NOT NULL, \
                 PRIMARY KEY (aggregate_type, aggregate_id, sequence))"
            ),
            format!(
                "CREATE TABLE {snapshots} (aggregate_type text NOT NULL, aggregate_id text NOT \
                 NULL, last_sequence bigint CHECK (last_sequence >= 0) NOT NULL, \
                 current_snapshot bigint CHECK (current_snapshot >= 0) NOT NULL, payload json \
                 NOT NULL, PRIMARY KEY (aggregate_type, aggregate_id, last_sequence))"
            ),
        ] {
            sqlx::query(&statement)
                .execute(&admin)
                .await
                .context("creating the peer's scratch tables")?;
        }
        Ok(Self {
            url: command_db.to_owned(),
            events,
            snapshots,
            admin,
        })
    }

    /// `concurrency` clients each creating new notes, one command after another, for `length`,
    /// over a pool of that size.
    pub(crate) async fn measure(
        &self,
        concurrency: usize,
        length: Duration,
    ) -> anyhow::Result<OpStats> {
        let pool = closed::warm_pool(&self.url, concurrency, "peer").await?;
        let repository =
            PostgresEventRepository::new(pool.clone()).with_tables(&self.events, &self.snapshots);
        let cqrs: Arc<CqrsFramework<Note, PersistedEventStore<PostgresEventRepository, Note>>> =
            Arc::new(CqrsFramework::new(
                PersistedEventStore::new_event_store(repository),
                vec![],
                (),
            ));
        let deadline = Deadline::after(length);
        let started = Instant::now();
        let recorders = closed::each(vec![(); concurrency], |_, ()| {
            let cqrs = Arc::clone(&cqrs);
            async move {
                let mut recorder = Recorder::default();
                while !deadline.passed() {
                    let id = uuid::Uuid::new_v4().to_string();
                    let create = Create {
                        text: "bench note".to_owned(),
                    };
                    recorder
                        .time(async {
                            cqrs.execute(&id, create).await.map_err(|error| Failure {
                                code: "AGGREGATE",
                                message: error.to_string(),
                            })
                        })
                        .await;
                }
                recorder
            }
        })
        .await?;
        let elapsed = started.elapsed();
        pool.close().await;
        Ok(Recorder::merged(recorders).summary("cqrs-es + postgres-es command (peer)", elapsed))
    }

    /// Drops the scratch tables.
    pub(crate) async fn drop_tables(self) -> anyhow::Result<()> {
        sqlx::query(&format!(
            "DROP TABLE IF EXISTS {}, {}",
            self.events, self.snapshots
        ))
        .execute(&self.admin)
        .await
        .context("dropping the peer's scratch tables")?;
        self.admin.close().await;
        Ok(())
    }
}
