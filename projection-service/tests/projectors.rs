//! The projector guard, exercised directly on a read-model database: each test migrates a
//! scratch database of its own (`linkd_projectortest_<uuid>`, dropped afterwards) and feeds
//! events to the projectors, without NATS.
#![allow(
    clippy::unwrap_used,
    reason = "a failed step should fail the test loudly"
)]

use projection_service::consumer::batch;
use projection_service::projections::devices::Devices;
use projection_service::projections::{self, Outcome, ProjectionError};
use proto::v1::event_envelope::Event;
use proto::v1::{self, EventEnvelope};
use testkit::TestDatabase;

const DEVICE: &str = "7d0e8a59-2c1f-4b0e-9a53-2b1c1d9f0a01";

fn envelope(sequence: i64, event: Event) -> EventEnvelope {
    EventEnvelope {
        event_id: format!("device/{DEVICE}/{sequence}"),
        global_position: sequence,
        aggregate_type: "device".into(),
        aggregate_id: DEVICE.into(),
        sequence,
        event_type: "Test".into(),
        occurred_at: Some(prost_types::Timestamp {
            seconds: 1_800_000_000,
            nanos: 0,
        }),
        account_id: "anna".into(),
        actor: "test".into(),
        request_id: "test".into(),
        traceparent: String::new(),
        data_subject: String::new(),
        event_version: "1".into(),
        opaque_payload: Vec::new(),
        event: Some(event),
    }
}

fn linked() -> EventEnvelope {
    envelope(
        1,
        Event::DeviceLinked(v1::DeviceLinked {
            link_id: "6f1d2e3c-4b5a-4c6d-8e7f-9a0b1c2d3e4f".into(),
            device_name: "Anna's phone".into(),
            method: v1::LinkMethod::Qr.into(),
            product: None,
            platform: v1::Platform::Ios.into(),
            app_version: "1.0".into(),
            at: stamp(),
        }),
    )
}

/// Event 2, an unlink with an unknown reason: decodes, but the devices projector refuses it.
fn broken() -> EventEnvelope {
    envelope(
        2,
        Event::DeviceUnlinked(v1::DeviceUnlinked {
            link_id: String::new(),
            reason: 99,
            at: stamp(),
            in_bulk: false,
        }),
    )
}

fn stamp() -> Option<prost_types::Timestamp> {
    Some(prost_types::Timestamp {
        seconds: 1_800_000_100,
        nanos: 0,
    })
}

async fn read_model() -> (TestDatabase, sqlx::PgPool) {
    let database = TestDatabase::create("linkd_projectortest").await.unwrap();
    let pool = projection_service::startup::connect_and_migrate(&database.url)
        .await
        .unwrap();
    (database, pool)
}

#[tokio::test]
async fn concurrent_deliveries_of_the_same_events_never_move_the_guard_back() {
    // Arrange: three events of one device; twelve workers deliver all three, in order, at once
    // (as redeliveries and several instances can).
    let (_database, pool) = read_model().await;
    let events = vec![
        linked(),
        envelope(
            2,
            Event::BiometricsEnabled(v1::BiometricsEnabled { at: stamp() }),
        ),
        envelope(
            3,
            Event::SecretCodeVerified(v1::SecretCodeVerified { at: stamp() }),
        ),
    ];

    // Act
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..12 {
        let (pool, events) = (pool.clone(), events.clone());
        workers.spawn(async move {
            for event in &events {
                loop {
                    match projections::apply(&pool, &Devices, event).await {
                        Ok(_) => break,
                        Err(ProjectionError::Gap { .. } | ProjectionError::Transient(_)) => {
                            tokio::task::yield_now().await;
                        }
                        Err(other) => panic!("{other}"),
                    }
                }
            }
        });
    }
    while let Some(done) = workers.join_next().await {
        done.unwrap();
    }

    // Assert: every effect is there and the guard is at 3.
    let (biometrics, last_used): (bool, Option<chrono::DateTime<chrono::Utc>>) =
        sqlx::query_as("SELECT biometrics_enabled, last_used_at FROM devices")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert!(
        biometrics,
        "BiometricsEnabled survived the duplicate DeviceLinked"
    );
    assert!(last_used.is_some());
    let guard: i64 = sqlx::query_scalar("SELECT last_sequence FROM projector_positions")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(guard, 3);
}

#[tokio::test]
async fn an_event_that_cannot_apply_is_parked_and_does_not_block_its_aggregate() {
    let (_database, pool) = read_model().await;
    let broken = broken();
    let next = envelope(
        3,
        Event::BiometricsEnabled(v1::BiometricsEnabled { at: stamp() }),
    );

    assert_eq!(
        projections::apply(&pool, &Devices, &linked())
            .await
            .unwrap(),
        Outcome::Applied
    );
    assert_eq!(
        projections::apply(&pool, &Devices, &broken).await.unwrap(),
        Outcome::Parked
    );
    assert_eq!(
        projections::apply(&pool, &Devices, &next).await.unwrap(),
        Outcome::Applied
    );

    let parked: Vec<(String, String)> = sqlx::query_as("SELECT event_id, reason FROM dead_letters")
        .fetch_all(&pool)
        .await
        .unwrap();
    assert_eq!(parked.len(), 1);
    assert_eq!(parked[0].0, broken.event_id);
    assert!(parked[0].1.contains("unlink reason"), "{parked:?}");
    let (status, biometrics): (String, bool) =
        sqlx::query_as("SELECT status, biometrics_enabled FROM devices")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(status, "linked", "the parked event changed nothing");
    assert!(biometrics, "the event after it applied");
}

fn biometrics(sequence: i64) -> EventEnvelope {
    envelope(
        sequence,
        Event::BiometricsEnabled(v1::BiometricsEnabled { at: stamp() }),
    )
}

async fn biometrics_enabled(pool: &sqlx::PgPool) -> bool {
    sqlx::query_scalar("SELECT biometrics_enabled FROM devices")
        .fetch_one(pool)
        .await
        .unwrap()
}

async fn guard(pool: &sqlx::PgPool) -> Option<i64> {
    sqlx::query_scalar("SELECT last_sequence FROM projector_positions")
        .fetch_optional(pool)
        .await
        .unwrap()
}

#[tokio::test]
async fn a_batch_applies_in_order_skips_what_was_applied_and_holds_back_gaps() {
    // Arrange: a redelivered first event, and the third before the second.
    let (_database, pool) = read_model().await;
    let events = [linked(), linked(), biometrics(3), biometrics(2)];

    // Act
    let verdicts = batch::apply(&pool, &[&Devices], &events).await.unwrap();

    // Assert
    assert!(
        matches!(verdicts[0], Ok(Outcome::Applied)),
        "{:?}",
        verdicts[0]
    );
    assert!(
        matches!(verdicts[1], Ok(Outcome::AlreadyApplied)),
        "{:?}",
        verdicts[1]
    );
    assert!(
        matches!(
            verdicts[2],
            Err(ProjectionError::Gap {
                expected: 2,
                got: 3,
                ..
            })
        ),
        "{:?}",
        verdicts[2]
    );
    assert!(
        matches!(verdicts[3], Ok(Outcome::Applied)),
        "{:?}",
        verdicts[3]
    );
    assert_eq!(guard(&pool).await, Some(2));
    // The held-back event applies when it is delivered again.
    let again = batch::apply(&pool, &[&Devices], &[biometrics(3)])
        .await
        .unwrap();
    assert!(matches!(again[0], Ok(Outcome::Applied)), "{:?}", again[0]);
    assert_eq!(guard(&pool).await, Some(3));
}

#[tokio::test]
async fn a_poison_event_rolls_its_batch_back_and_is_parked_one_by_one() {
    let (_database, pool) = read_model().await;
    let broken = broken();
    let events = [linked(), broken, biometrics(3)];

    let refused = batch::apply(&pool, &[&Devices], &events).await;
    assert!(
        matches!(refused, Err(ProjectionError::Poison(_))),
        "{refused:?}"
    );
    assert_eq!(
        guard(&pool).await.unwrap_or(0),
        0,
        "nothing of the batch committed"
    );
    let verdicts = batch::one_by_one(&pool, &[&Devices], &events).await;

    let outcomes: Vec<Outcome> = verdicts.into_iter().map(Result::unwrap).collect();
    assert_eq!(
        outcomes,
        [Outcome::Applied, Outcome::Parked, Outcome::Applied]
    );
    assert_eq!(guard(&pool).await, Some(3));
}

#[tokio::test]
async fn concurrent_batches_of_the_same_events_apply_each_once() {
    // Twelve workers deliver the same batch at once (redeliveries, several instances).
    let (_database, pool) = read_model().await;
    let events = vec![linked(), biometrics(2), biometrics(3)];
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..12 {
        let (pool, events) = (pool.clone(), events.clone());
        workers.spawn(async move {
            loop {
                match batch::apply(&pool, &[&Devices], &events).await {
                    Ok(verdicts) => {
                        assert!(verdicts.iter().all(Result::is_ok), "{verdicts:?}");
                        break;
                    }
                    Err(ProjectionError::Transient(_)) => tokio::task::yield_now().await,
                    Err(other) => panic!("{other}"),
                }
            }
        });
    }
    while let Some(done) = workers.join_next().await {
        done.unwrap();
    }
    assert_eq!(guard(&pool).await, Some(3));
    assert!(biometrics_enabled(&pool).await);
}

#[tokio::test]
async fn batch_guards_are_reached_by_key_whatever_the_statistics() {
    // Arrange: 5,000 guards of the projector. Without statistics (autovacuum off, or a table
    // that grew since the last ANALYZE) PostgreSQL once joined a batch's keys to all of them.
    let (_database, pool) = read_model().await;
    sqlx::query(
        "INSERT INTO projector_positions (projector, aggregate_type, aggregate_id, last_sequence) \
         SELECT 'devices', 'device', 'device-' || n, n FROM generate_series(1, 5000) AS n",
    )
    .execute(&pool)
    .await
    .unwrap();
    let mut connection = pool.acquire().await.unwrap();
    sqlx::raw_sql(&format!(
        "PREPARE lock_guards AS {}; PREPARE move_guards AS {};",
        batch::LOCK_GUARDS,
        batch::MOVE_GUARDS
    ))
    .execute(&mut *connection)
    .await
    .unwrap();

    // Act
    let situations = testkit::plans::in_every_situation(
        &mut connection,
        "projector_positions",
        &[
            "lock_guards(ARRAY['devices', 'devices'], ARRAY['device', 'device'], \
             ARRAY['device-7', 'device-9'])",
            "move_guards(ARRAY['(0,1)', '(0,2)']::tid[], ARRAY[8, 10]::bigint[])",
        ],
    )
    .await;

    // Assert
    for (situation, plans) in situations {
        let (lock, moved) = (&plans[0], &plans[1]);
        assert!(
            lock.contains("Index Scan using projector_positions_pkey")
                && !lock.contains("Seq Scan on projector_positions")
                && !lock.contains("Bitmap Heap Scan"),
            "{situation}: locking guards does not probe by key:\n{lock}"
        );
        assert!(
            moved.contains("Tid Scan on projector_positions")
                && !moved.contains("Seq Scan on projector_positions"),
            "{situation}: moving guards does not go by row address:\n{moved}"
        );
    }
}

/// A read model of the test's own: counts how often each event reached it, so that an event
/// applied twice shows (`n` = 2). With `wait_at`, it refuses that sequence the first
/// `refusals` times it meets it, as a read model waiting for something another aggregate brings.
struct Tally {
    name: &'static str,
    wait_at: Option<i64>,
    refusals: std::sync::atomic::AtomicU32,
}

impl Tally {
    fn new(name: &'static str) -> Self {
        Self {
            name,
            wait_at: None,
            refusals: std::sync::atomic::AtomicU32::new(0),
        }
    }
}

impl projections::Projector for Tally {
    fn name(&self) -> &'static str {
        self.name
    }

    fn aggregate_types(&self) -> Option<&'static [&'static str]> {
        None
    }

    async fn apply<'a>(
        &'a self,
        tx: &'a mut sqlx::Transaction<'static, sqlx::Postgres>,
        event: &'a EventEnvelope,
    ) -> Result<(), ProjectionError> {
        let refuse = |left: u32| left.checked_sub(1);
        if self.wait_at == Some(event.sequence)
            && self
                .refusals
                .fetch_update(
                    std::sync::atomic::Ordering::SeqCst,
                    std::sync::atomic::Ordering::SeqCst,
                    refuse,
                )
                .is_ok()
        {
            return Err(ProjectionError::Waiting("the test says not yet".into()));
        }
        sqlx::query(
            "INSERT INTO tally (projector, event_id, n) VALUES ($1, $2, 1) \
             ON CONFLICT (projector, event_id) DO UPDATE SET n = tally.n + 1",
        )
        .bind(self.name)
        .bind(&event.event_id)
        .execute(&mut **tx)
        .await?;
        Ok(())
    }
}

async fn with_tally() -> (TestDatabase, sqlx::PgPool) {
    let (database, pool) = read_model().await;
    sqlx::query(
        "CREATE TABLE tally (projector text, event_id text, n int, PRIMARY KEY (projector, event_id))",
    )
    .execute(&pool)
    .await
    .unwrap();
    (database, pool)
}

/// `(projector, event_id, n)` for every event a tally saw, in order.
async fn tallied(pool: &sqlx::PgPool) -> Vec<(String, String, i32)> {
    sqlx::query_as("SELECT projector, event_id, n FROM tally ORDER BY projector, event_id")
        .fetch_all(pool)
        .await
        .unwrap()
}

async fn guards(pool: &sqlx::PgPool) -> Vec<(String, i64)> {
    sqlx::query_as("SELECT projector, last_sequence FROM projector_positions ORDER BY projector")
        .fetch_all(pool)
        .await
        .unwrap()
}

fn outcomes(verdicts: batch::Verdicts) -> Vec<Outcome> {
    verdicts.into_iter().map(Result::unwrap).collect()
}

#[tokio::test]
async fn one_batch_feeds_every_read_model_each_with_its_own_guard() {
    // Arrange
    let (_database, pool) = with_tally().await;
    let tally = Tally::new("tally");
    let models: [&dyn projections::ReadModel; 2] = [&Devices, &tally];

    // Act: two events, then a redelivery of both with a third.
    let first = batch::apply(&pool, &models, &[linked(), biometrics(2)])
        .await
        .unwrap();
    let again = batch::apply(&pool, &models, &[linked(), biometrics(2), biometrics(3)])
        .await
        .unwrap();

    // Assert
    assert_eq!(outcomes(first), [Outcome::Applied, Outcome::Applied]);
    assert_eq!(
        outcomes(again),
        [
            Outcome::AlreadyApplied,
            Outcome::AlreadyApplied,
            Outcome::Applied
        ]
    );
    assert_eq!(
        guards(&pool).await,
        [("devices".to_owned(), 3), ("tally".to_owned(), 3)]
    );
    let seen = tallied(&pool).await;
    assert_eq!(seen.len(), 3);
    assert!(seen.iter().all(|(.., n)| *n == 1), "{seen:?}");
    assert!(biometrics_enabled(&pool).await);
}

#[tokio::test]
async fn a_read_model_ahead_of_the_others_skips_what_they_apply() {
    // Arrange: `rebuilt` already holds the first two events (as after a rebuild of it alone).
    let (_database, pool) = with_tally().await;
    let (live, rebuilt) = (Tally::new("live"), Tally::new("rebuilt"));
    sqlx::query("INSERT INTO projector_positions VALUES ('rebuilt', 'device', $1, 2)")
        .bind(DEVICE)
        .execute(&pool)
        .await
        .unwrap();
    sqlx::query("INSERT INTO tally VALUES ('rebuilt', $1, 1), ('rebuilt', $2, 1)")
        .bind(linked().event_id)
        .bind(biometrics(2).event_id)
        .execute(&pool)
        .await
        .unwrap();

    // Act
    let verdicts = batch::apply(
        &pool,
        &[&live, &rebuilt],
        &[linked(), biometrics(2), biometrics(3)],
    )
    .await
    .unwrap();

    // Assert
    assert_eq!(outcomes(verdicts), [Outcome::Applied; 3]);
    assert_eq!(
        guards(&pool).await,
        [("live".to_owned(), 3), ("rebuilt".to_owned(), 3)]
    );
    let seen = tallied(&pool).await;
    assert_eq!(seen.len(), 6);
    assert!(seen.iter().all(|(.., n)| *n == 1), "{seen:?}");
}

#[tokio::test]
async fn a_read_model_that_must_wait_does_not_hold_the_others_back() {
    // Arrange: `picky` refuses the second event the first two times it meets it.
    let (_database, pool) = with_tally().await;
    let tally = Tally::new("tally");
    let picky = Tally {
        wait_at: Some(2),
        refusals: 2.into(),
        ..Tally::new("picky")
    };
    let models: [&dyn projections::ReadModel; 2] = [&tally, &picky];
    let events = [linked(), biometrics(2), biometrics(3)];

    // Act: the batch rolls back and goes one by one; then the refused events come again.
    let refused = batch::apply(&pool, &models, &events).await;
    let verdicts = batch::one_by_one(&pool, &models, &events).await;
    let again = batch::apply(&pool, &models, &events[1..]).await.unwrap();

    // Assert
    assert!(
        matches!(refused, Err(ProjectionError::Waiting(_))),
        "{refused:?}"
    );
    assert!(matches!(verdicts[0], Ok(Outcome::Applied)), "{verdicts:?}");
    assert!(
        matches!(verdicts[1], Err(ProjectionError::Waiting(_))),
        "{verdicts:?}"
    );
    assert!(
        matches!(verdicts[2], Err(ProjectionError::Gap { .. })),
        "{verdicts:?}"
    );
    assert_eq!(outcomes(again), [Outcome::Applied, Outcome::Applied]);
    assert_eq!(
        guards(&pool).await,
        [("picky".to_owned(), 3), ("tally".to_owned(), 3)]
    );
    let seen = tallied(&pool).await;
    assert_eq!(seen.len(), 6);
    assert!(seen.iter().all(|(.., n)| *n == 1), "{seen:?}");
}

/// Whether `error` is PostgreSQL reporting a deadlock.
fn deadlock(error: &ProjectionError) -> bool {
    matches!(error, ProjectionError::Transient(e)
        if e.as_database_error().and_then(|db| db.code()).as_deref() == Some("40P01"))
}

#[tokio::test]
async fn concurrent_batches_for_several_read_models_apply_each_event_once_to_each() {
    // Twelve workers deliver overlapping batches at once (redeliveries, two instances), some as
    // batches, some one event at a time (a batch that rolled back), the read models listed in
    // either order: no deadlock, and each event applied once to each read model.
    let (_database, pool) = with_tally().await;
    let events = vec![linked(), biometrics(2), biometrics(3)];
    let mut workers = tokio::task::JoinSet::new();
    for worker in 0..12 {
        let (pool, events) = (pool.clone(), events.clone());
        workers.spawn(async move {
            let tally = Tally::new("tally");
            let models: [&dyn projections::ReadModel; 2] = if worker % 3 == 0 {
                [&tally, &Devices]
            } else {
                [&Devices, &tally]
            };
            // Half the workers deliver the batch from its second event, as a redelivery might.
            let from = worker % 2;
            loop {
                let verdicts = if worker % 4 < 2 {
                    batch::apply(&pool, &models, &events[from..]).await
                } else {
                    Ok(batch::one_by_one(&pool, &models, &events[from..]).await)
                };
                match verdicts {
                    Ok(verdicts)
                        if verdicts.iter().all(|v| {
                            !matches!(
                                v,
                                Err(ProjectionError::Gap { .. } | ProjectionError::Transient(_))
                            )
                        }) =>
                    {
                        assert!(verdicts.iter().all(Result::is_ok), "{verdicts:?}");
                        break;
                    }
                    Ok(verdicts) => {
                        assert!(
                            !verdicts.iter().flat_map(|v| v.as_ref().err()).any(deadlock),
                            "{verdicts:?}"
                        );
                        tokio::task::yield_now().await;
                    }
                    Err(error)
                        if !deadlock(&error) && matches!(error, ProjectionError::Transient(_)) =>
                    {
                        tokio::task::yield_now().await;
                    }
                    Err(other) => panic!("{other}"),
                }
            }
        });
    }
    while let Some(done) = workers.join_next().await {
        done.unwrap();
    }
    assert_eq!(
        guards(&pool).await,
        [("devices".to_owned(), 3), ("tally".to_owned(), 3)]
    );
    let seen = tallied(&pool).await;
    assert_eq!(seen.len(), 3);
    assert!(seen.iter().all(|(.., n)| *n == 1), "{seen:?}");
}
