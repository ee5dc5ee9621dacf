//! A stream that loses messages while the services run (issue 17, point 5): the NATS server of
//! Debian (2.9) does not fsync, so a crash can lose the tail of what it acknowledged; an
//! operator can delete the stream. The relay publishes again from what the stream still holds,
//! the read models' consumer recreates itself, and nothing is lost or applied twice.

use std::collections::BTreeMap;
use std::time::Duration;

use async_nats::jetstream;
use e2e::{OwnNats, TestApp, eventually, spawn_system_on};
use prost::Message as _;
use proto::v1::EventEnvelope;

const WITHIN: Duration = Duration::from_secs(60);

/// Every message of the stream: its event id, how many times it is there.
async fn stream_events(app: &TestApp) -> Option<(u64, BTreeMap<String, u32>)> {
    let stream = app.stream.as_ref().unwrap();
    let context = jetstream::new(async_nats::connect(&stream.nats_url).await.ok()?);
    let mut source = context.get_stream(&stream.name).await.ok()?;
    let state = source.info().await.ok()?.state.clone();
    let mut events = BTreeMap::new();
    for sequence in state.first_sequence..=state.last_sequence {
        let Ok(message) = source.get_raw_message(sequence).await else {
            continue;
        };
        let envelope = EventEnvelope::decode(message.payload.as_ref()).ok()?;
        *events.entry(envelope.event_id).or_insert(0) += 1;
    }
    Some((state.last_sequence, events))
}

/// The event ids the store holds.
async fn stored_events(app: &TestApp) -> Vec<String> {
    sqlx::query_scalar(
        "SELECT aggregate_type || '/' || aggregate_id || '/' || sequence FROM events ORDER BY 1",
    )
    .fetch_all(&app.pool)
    .await
    .unwrap()
}

/// Waits until the stream holds each stored event exactly once.
async fn wait_until_the_stream_holds_the_store(app: &TestApp) {
    eventually(
        WITHIN,
        "the stream to hold every stored event once",
        || async {
            let stored = stored_events(app).await;
            let (_, published) = stream_events(app).await?;
            let once = published.values().all(|count| *count == 1);
            (once && published.keys().cloned().collect::<Vec<_>>() == stored).then_some(())
        },
    )
    .await;
}

/// Nothing parked. (Nothing applied twice is the exactness wait's: one audit row per stored
/// event and nothing else, every guard at its aggregate's last sequence.)
async fn assert_nothing_parked(app: &TestApp) {
    let parked: i64 = sqlx::query_scalar("SELECT count(*) FROM dead_letters")
        .fetch_one(&app.read_pool())
        .await
        .unwrap();
    assert_eq!(parked, 0);
}

/// The read models' durable consumer (`<consumer prefix>-read-models`).
const CONSUMER: &str = "linkd-test-read-models";

/// Now, in nanoseconds since the epoch.
fn time_now_nanos() -> i128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |since| {
            i128::try_from(since.as_nanos()).unwrap_or(i128::MAX)
        })
}

/// When the read models' consumer was created, in nanoseconds since the epoch (a consumer the
/// server recovers after a restart keeps its time, give or take a millisecond).
async fn consumer_created(nats: &OwnNats, stream: &str) -> Option<i128> {
    let context = jetstream::new(async_nats::connect(&nats.url).await.ok()?);
    let mut consumer: jetstream::consumer::PullConsumer = context
        .get_stream(stream)
        .await
        .ok()?
        .get_consumer(CONSUMER)
        .await
        .ok()?;
    Some(consumer.info().await.ok()?.created.unix_timestamp_nanos())
}

/// The stream sequence of the acknowledgement floor in a NATS 2.9 consumer state file
/// (`o.dat`: two header bytes, then unsigned varints, the floor's consumer sequence first).
fn persisted_ack_floor(path: &std::path::Path) -> Option<u64> {
    let bytes = std::fs::read(path).ok()?;
    let mut values = Vec::new();
    let (mut value, mut shift) = (0u64, 0);
    for byte in bytes.get(2..)? {
        value |= u64::from(byte & 0x7f) << shift;
        shift += 7;
        if byte & 0x80 == 0 {
            values.push(value);
            (value, shift) = (0, 0);
            if values.len() == 2 {
                return Some(values[1]);
            }
        }
    }
    None
}

#[tokio::test]
async fn a_stream_that_lost_its_tail_in_a_crash_is_published_again_and_read_again() {
    // Arrange: a system on a NATS server of the test's own, with events projected and the
    // consumer's acknowledgements on disk.
    let mut nats = OwnNats::start().await;
    let mut app = spawn_system_on(nats.url.clone()).await;
    app.register("anna").await;
    app.register("bob").await;
    app.link_by_qr("anna").await;
    app.link_by_qr("bob").await;
    app.wait_until_every_read_model_is_exact(WITHIN).await;
    wait_until_the_stream_holds_the_store(&app).await;
    let (before, _) = stream_events(&app).await.unwrap();
    let stream = app.stream.as_ref().unwrap().name.clone();
    let directory = nats
        .store()
        .join("jetstream")
        .join("$G")
        .join("streams")
        .join(&stream);
    let state = directory.join("obs").join(CONSUMER).join("o.dat");
    eventually(WITHIN, "the consumer's state on disk", || async {
        (persisted_ack_floor(&state)? >= before).then_some(())
    })
    .await;
    // The relay stays away until the consumer has dealt with the loss (otherwise it may fill
    // the stream up again before the consumer looks, and only the relay's branch runs).
    assert!(app.stop_command_service_gracefully(WITHIN).await);

    // Act: NATS is killed, and its stream comes back without the last part of its last block,
    // as after a crash before the data reached the disk (the block indexes are gone too, so
    // the server rebuilds them from what is left).
    let crashed = time_now_nanos();
    nats.stop();
    let messages = directory.join("msgs");
    let mut blocks: Vec<std::path::PathBuf> = std::fs::read_dir(&messages)
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .collect();
    blocks.sort();
    for index in blocks
        .iter()
        .filter(|path| path.extension().is_some_and(|extension| extension != "blk"))
    {
        std::fs::remove_file(index).unwrap();
    }
    let last_block = blocks
        .iter()
        .rev()
        .find(|path| path.extension().is_some_and(|extension| extension == "blk"))
        .unwrap();
    let size = std::fs::metadata(last_block).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(last_block)
        .unwrap()
        .set_len(size * 2 / 3)
        .unwrap();
    nats.resume().await;
    let (after_crash, _) = eventually(WITHIN, "the stream back", || stream_events(&app)).await;
    assert!(
        after_crash < before,
        "the crash lost no message ({after_crash} of {before})"
    );

    // Assert: the consumer, ahead of the stream, recreates itself; the relay, back, publishes
    // again from the last event the stream holds; the system goes on, nothing lost or doubled.
    eventually(WITHIN, "the consumer recreated", || async {
        (consumer_created(&nats, &stream).await? > crashed).then_some(())
    })
    .await;
    app.restart_command_service(|_| {}, None).await;
    wait_until_the_stream_holds_the_store(&app).await;
    app.link_by_qr("anna").await;
    app.wait_until_every_read_model_is_exact(WITHIN).await;
    wait_until_the_stream_holds_the_store(&app).await;
    assert_nothing_parked(&app).await;
}

#[tokio::test]
async fn a_deleted_stream_is_created_and_filled_again_and_the_consumer_recreated() {
    // Arrange
    let nats = OwnNats::start().await;
    let mut app = spawn_system_on(nats.url.clone()).await;
    app.register("anna").await;
    app.link_by_qr("anna").await;
    app.wait_until_every_read_model_is_exact(WITHIN).await;
    wait_until_the_stream_holds_the_store(&app).await;

    // Act: an operator deletes the stream (and its consumer with it) while both services run.
    let stream = app.stream.as_ref().unwrap().name.clone();
    let context = jetstream::new(async_nats::connect(&nats.url).await.unwrap());
    context.delete_stream(&stream).await.unwrap();

    // Assert: the relay created it again and published every event, the consumer came back and
    // skipped what it had applied, and a new link flows through.
    wait_until_the_stream_holds_the_store(&app).await;
    app.link_by_qr("anna").await;
    app.wait_until_every_read_model_is_exact(WITHIN).await;
    wait_until_the_stream_holds_the_store(&app).await;
    assert_nothing_parked(&app).await;
    let consumers = context
        .get_stream(&stream)
        .await
        .unwrap()
        .info()
        .await
        .unwrap()
        .state
        .consumer_count;
    assert_eq!(consumers, 1, "the read models' consumer is back");
}
