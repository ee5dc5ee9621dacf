//! The read side commits without waiting for its WAL flush and acknowledges only what is
//! flushed (ADR 0018): PostgreSQL crashed right after a batch, or while acknowledgements wait
//! for the flush, loses no acknowledged message. The test crashes a PostgreSQL cluster of its
//! own (`pg_ctl stop -m immediate`), never the shared server.

use std::time::Duration;

use async_nats::jetstream::{self, consumer::PullConsumer};
use prost::Message as _;
use proto::v1::event_envelope::Event;
use proto::v1::{self, EventEnvelope};
use testkit::{OwnPostgres, TestStream};

use e2e::spawn_read_side;

/// Accounts registered per round; rounds ended by a crash once everything is acknowledged, and
/// rounds ended by a crash while the read side is at work (after these many milliseconds).
const PER_ROUND: usize = 150;
const ROUNDS: usize = 4;
const MIDWAY_MS: [u64; 4] = [5, 20, 40, 70];

fn registered(account: &str) -> EventEnvelope {
    let at = Some(prost_types::Timestamp {
        seconds: chrono::Utc::now().timestamp(),
        nanos: 0,
    });
    EventEnvelope {
        event_id: format!("account/{account}/1"),
        global_position: 1,
        aggregate_type: "account".into(),
        aggregate_id: account.into(),
        sequence: 1,
        event_type: "AccountRegistered".into(),
        occurred_at: at,
        account_id: account.into(),
        actor: "test".into(),
        request_id: "test".into(),
        traceparent: String::new(),
        data_subject: String::new(),
        event_version: "1".into(),
        opaque_payload: Vec::new(),
        event: Some(Event::AccountRegistered(v1::AccountRegistered {
            email: format!("{account}@example.test"),
            language: "en".into(),
            at,
        })),
    }
}

#[tokio::test]
async fn a_crash_of_postgres_right_after_a_batch_loses_no_acknowledged_message() {
    // Arrange: a cluster of the test's own whose WAL writer flushes rarely (10 s), so that an
    // acknowledgement sent before the flush would name a commit the crash undoes.
    let postgres = OwnPostgres::start(&["wal_writer_delay = 10000", "fsync = on"]).await;
    let stream = TestStream::tagged(testkit::nats_url(), "crash");
    stream.create().await.unwrap();
    let read_side = spawn_read_side(postgres.database_url("postgres"), &stream).await;
    let client = async_nats::connect(&stream.nats_url).await.unwrap();
    let context = jetstream::new(client);

    for round in 0..ROUNDS {
        // Act: a round of events, and the crash as soon as JetStream holds none unacknowledged.
        publish_round(&context, &stream, round).await;
        let published = (round + 1) * PER_ROUND;
        let started = tokio::time::Instant::now();
        let acknowledged = all_acknowledged(&context, &stream, round).await;
        eprintln!("round {round}: acknowledged after {:?}", started.elapsed());
        postgres.crash();
        postgres.resume().await;

        // Assert: every acknowledged message's effects survived the crash.
        assert_eq!(acknowledged, u64::try_from(published).unwrap());
        assert_eq!(
            applied(&postgres).await,
            expected(published),
            "round {round}: acknowledged events lost in the crash"
        );
    }
    for (n, midway) in MIDWAY_MS.into_iter().enumerate() {
        // Act: a round of events, and the crash while batches are applied and acknowledgements
        // wait for the flush; then everything is delivered and acknowledged.
        let round = ROUNDS + n;
        publish_round(&context, &stream, round).await;
        tokio::time::sleep(std::time::Duration::from_millis(midway)).await;
        postgres.crash();
        postgres.resume().await;
        all_acknowledged(&context, &stream, round).await;

        // Assert: nothing acknowledged was lost (a lost one would never be applied again).
        assert_eq!(
            applied(&postgres).await,
            expected((round + 1) * PER_ROUND),
            "round {round} (crash after {midway} ms): an acknowledged event was lost"
        );
    }
    drop(read_side);
}

async fn publish_round(context: &jetstream::Context, stream: &TestStream, round: usize) {
    for n in 0..PER_ROUND {
        let account = format!("crash-{round}-{n}");
        context
            .publish(
                format!("{}.account.AccountRegistered", stream.prefix),
                registered(&account).encode_to_vec().into(),
            )
            .await
            .unwrap()
            .await
            .unwrap();
    }
}

/// Waits until the read side's consumer has every message acknowledged; its ack floor.
async fn all_acknowledged(context: &jetstream::Context, stream: &TestStream, round: usize) -> u64 {
    let started = tokio::time::Instant::now();
    loop {
        let mut consumer: PullConsumer = context
            .get_stream(&stream.name)
            .await
            .unwrap()
            .get_consumer(&format!(
                "linkd-test-{}",
                projection_service::consumer::CONSUMER
            ))
            .await
            .unwrap();
        let info = consumer.info().await.unwrap();
        if info.num_pending == 0 && info.num_ack_pending == 0 {
            return info.ack_floor.stream_sequence;
        }
        assert!(
            started.elapsed() < Duration::from_secs(90),
            "round {round}: the read side did not acknowledge everything: {info:?}"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// (audit witness rows, guards at their first event, notifier accounts) in the cluster.
async fn applied(postgres: &OwnPostgres) -> (i64, i64, i64) {
    let pool = sqlx::PgPool::connect(&postgres.database_url("postgres"))
        .await
        .unwrap();
    let counts = sqlx::query_as(
        "SELECT (SELECT count(*) FROM audit_heads), \
         (SELECT count(*) FROM projector_positions WHERE last_sequence = 1), \
         (SELECT count(*) FROM email_accounts)",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    pool.close().await;
    counts
}

/// What `published` registrations leave in the read models.
fn expected(published: usize) -> (i64, i64, i64) {
    let published = i64::try_from(published).unwrap();
    (published, 2 * published, published)
}
