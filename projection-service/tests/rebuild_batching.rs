//! The rebuild (`projection_service::rebuild`) against the per-event path the live consumer
//! uses: the same rows, the same guards and the same dead letters, over many small batches, with
//! duplicates, gaps and poison events in the stream; and (ignored; run it with `--release`) its
//! throughput on a stream of realistic device histories.
//!
//! Each test uses a scratch database `linkd_rebuildtest_<uuid>` and a scratch stream
//! `LINKD_REBUILDTEST_<uuid>` (prefix `rebuildtest<uuid>.events`), both deleted afterwards.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a failed step should fail the test loudly"
)]

use std::collections::HashMap;
use std::time::Instant;

use async_nats::jetstream::{self, message::PublishMessage};
use projection_service::consumer::ConsumerSettings;
use projection_service::projections::{self, ProjectionError, devices::Devices};
use projection_service::rebuild::{self, RebuildOptions};
use prost::Message as _;
use proto::v1::event_envelope::Event;
use proto::v1::{self, EventEnvelope};
use sqlx::PgPool;
use sqlx::postgres::PgConnectOptions;
use testkit::{TestDatabase, TestStream, nats_url};
use uuid::Uuid;

/// A scratch read-model database and a scratch stream (created here, as the relay would create
/// it), both removed when dropped.
struct Scratch {
    database: TestDatabase,
    stream: TestStream,
}

impl Scratch {
    async fn new() -> Self {
        let database = TestDatabase::create("linkd_rebuildtest").await.unwrap();
        let stream = TestStream::tagged(nats_url(), "rebuildtest");
        stream.create().await.unwrap();
        Self { database, stream }
    }

    fn url(&self) -> &str {
        &self.database.url
    }

    fn settings(&self) -> ConsumerSettings {
        ConsumerSettings {
            nats_url: self.stream.nats_url.clone(),
            stream: self.stream.name.clone(),
            subject_prefix: self.stream.prefix.clone(),
            consumer_prefix: "linkd-rebuildtest".into(),
            // These tests publish by hand, unsigned.
            verifier: None,
            nats_auth: service_kit::nats::NatsAuth::default(),
            opener: None,
            notices: projection_service::consumer::Notices::default(),
        }
    }

    /// Publishes `messages` in order, awaiting every acknowledgement.
    async fn publish(&self, messages: &[Published]) {
        let client = async_nats::connect(&self.stream.nats_url).await.unwrap();
        let context = jetstream::new(client);
        for chunk in messages.chunks(4096) {
            let mut acks = Vec::with_capacity(chunk.len());
            for message in chunk {
                let mut publish = PublishMessage::build().payload(message.payload.clone().into());
                if let Some(id) = &message.id {
                    publish = publish.message_id(id);
                }
                let subject = format!("{}.{}", self.stream.prefix, message.subject);
                acks.push(context.send_publish(subject, publish).await.unwrap());
            }
            for ack in acks {
                ack.await.unwrap();
            }
        }
    }
}

/// A message to publish: subject below the prefix, body, and `Nats-Msg-Id` (none for a copy
/// republished after the duplicate window).
#[derive(Clone)]
struct Published {
    subject: String,
    payload: Vec<u8>,
    id: Option<String>,
}

impl Published {
    fn event(event: &EventEnvelope) -> Self {
        Self {
            subject: format!("{}.{}", event.aggregate_type, event.event_type),
            payload: event.encode_to_vec(),
            id: Some(event.event_id.clone()),
        }
    }

    fn is_device(&self) -> bool {
        self.subject.starts_with("device.")
    }
}

/// splitmix64: deterministic, good enough to shape test data.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn percent(&mut self, p: u64) -> bool {
        self.below(100) < p
    }

    fn uuid(&mut self) -> String {
        Uuid::from_u64_pair(self.next(), self.next()).to_string()
    }
}

const EPOCH: i64 = 1_800_000_000;

fn stamp(seconds: i64, nanos: i32) -> Option<prost_types::Timestamp> {
    Some(prost_types::Timestamp {
        seconds: EPOCH + seconds,
        nanos,
    })
}

fn event_type(event: &Event) -> &'static str {
    match event {
        Event::AccountRegistered(_) => "AccountRegistered",
        Event::AccountEmailChanged(_) => "AccountEmailChanged",
        Event::PortalLoginRecorded(_) => "PortalLoginRecorded",
        Event::QrIssued(_) => "QrIssued",
        Event::QrConsumed(_) => "QrConsumed",
        Event::LinkRequested(_) => "LinkRequested",
        Event::QrAccepted(_) => "QrAccepted",
        Event::LinkConfirmed(_) => "LinkConfirmed",
        Event::LinkDeclined(_) => "LinkDeclined",
        Event::DevicesUnlinkedTogether(_) => "DevicesUnlinkedTogether",
        Event::InactivityWarned(_) => "InactivityWarned",
        Event::LuxtrustAuthenticated(_) => "LuxTrustAuthenticated",
        Event::LinkCompleted(_) => "LinkCompleted",
        Event::DeviceLinked(_) => "DeviceLinked",
        Event::BiometricsEnabled(_) => "BiometricsEnabled",
        Event::BiometricsSkipped(_) => "BiometricsSkipped",
        Event::BiometricsDisabled(_) => "BiometricsDisabled",
        Event::SecretCodeVerified(_) => "SecretCodeVerified",
        Event::SecretCodeFailed(_) => "SecretCodeFailed",
        Event::DeviceUnlinked(_) => "DeviceUnlinked",
        Event::AccountErased(_) => "AccountErased",
    }
}

/// An event at `time` seconds after the epoch; `time` also orders the stream.
struct Timed {
    time: i64,
    envelope: EventEnvelope,
}

fn envelope(
    aggregate: (&str, &str),
    sequence: i64,
    (time, nanos): (i64, i32),
    account: &str,
    event: Event,
) -> Timed {
    let (aggregate_type, aggregate_id) = aggregate;
    Timed {
        time,
        envelope: EventEnvelope {
            event_id: format!("{aggregate_type}/{aggregate_id}/{sequence}"),
            global_position: 0,
            aggregate_type: aggregate_type.into(),
            aggregate_id: aggregate_id.into(),
            sequence,
            event_type: event_type(&event).into(),
            occurred_at: stamp(time, nanos),
            account_id: account.into(),
            actor: format!("device:{aggregate_id}"),
            request_id: format!("req-{sequence}-{time}"),
            traceparent: String::new(),
            data_subject: String::new(),
            event_version: "1".into(),
            opaque_payload: Vec::new(),
            event: Some(event),
        },
    }
}

/// One device's life: linked (by QR code or LuxTrust), biometrics chosen, then used (mostly
/// correct codes, some wrong ones, biometrics toggled), sometimes unlinked and linked again.
/// Its link attempts' events come along (the device projector never sees them).
fn device_life(
    rng: &mut Rng,
    (account, start, pause): (&str, i64, u64),
    out: &mut Vec<Timed>,
) -> usize {
    let device = rng.uuid();
    let mut time = start;
    let mut sequence = 0;
    let mut device_events = 0;
    let mut push = |out: &mut Vec<Timed>, time: i64, rng: &mut Rng, event: Event| {
        sequence += 1;
        let nanos = i32::try_from(rng.below(1_000_000_000)).unwrap();
        out.push(envelope(
            ("device", &device),
            sequence,
            (time, nanos),
            account,
            event,
        ));
    };
    loop {
        let link_id = rng.uuid();
        let luxtrust = rng.percent(30);
        let at = stamp(time, 0);
        let attempt = [
            Event::LinkRequested(v1::LinkRequested {
                device_id: device.clone(),
                device_name: "Phone".into(),
                method: if luxtrust {
                    v1::LinkMethod::Luxtrust.into()
                } else {
                    v1::LinkMethod::Qr.into()
                },
                platform: v1::Platform::Ios.into(),
                app_version: "2.3.1".into(),
                at,
                expires_at: at,
                device_model: String::new(),
            }),
            Event::QrAccepted(v1::QrAccepted {
                qr_id: rng.uuid(),
                at,
                ..Default::default()
            }),
            Event::LinkCompleted(v1::LinkCompleted { at }),
        ];
        for (n, event) in (1..).zip(attempt) {
            out.push(envelope(
                ("link_attempt", &link_id),
                n,
                (time, 0),
                account,
                event,
            ));
        }
        let product = luxtrust.then(|| v1::LuxTrustProduct {
            kind: if rng.percent(50) {
                v1::ProductKind::LuxtrustScan.into()
            } else {
                v1::ProductKind::LuxtrustMobile.into()
            },
            serial: format!("SERIAL-{}", rng.below(1_000_000)),
        });
        let linked = Event::DeviceLinked(v1::DeviceLinked {
            link_id: link_id.clone(),
            device_name: format!("Phone {}", rng.below(1000)),
            method: if luxtrust {
                v1::LinkMethod::Luxtrust.into()
            } else {
                v1::LinkMethod::Qr.into()
            },
            product,
            platform: if rng.percent(55) {
                v1::Platform::Android.into()
            } else {
                v1::Platform::Ios.into()
            },
            app_version: format!("2.{}.{}", rng.below(5), rng.below(10)),
            at: stamp(time, i32::try_from(rng.below(1_000_000_000)).unwrap()),
        });
        push(out, time, rng, linked);
        time += 1 + i64::try_from(rng.below(60)).unwrap();
        let biometrics = if rng.percent(70) {
            Event::BiometricsEnabled(v1::BiometricsEnabled { at: stamp(time, 0) })
        } else {
            Event::BiometricsSkipped(v1::BiometricsSkipped { at: stamp(time, 0) })
        };
        push(out, time, rng, biometrics);
        device_events += 2;
        let mut failures = 0;
        let uses = 2 + rng.below(14);
        let mut unlinked = false;
        for _ in 0..uses {
            time += 1 + i64::try_from(rng.below(pause)).unwrap();
            let at = stamp(time, i32::try_from(rng.below(1_000_000_000)).unwrap());
            let roll = rng.below(100);
            let event = if roll < 80 {
                failures = 0;
                Event::SecretCodeVerified(v1::SecretCodeVerified { at })
            } else if roll < 92 {
                failures += 1;
                Event::SecretCodeFailed(v1::SecretCodeFailed {
                    consecutive_failures: failures,
                    at,
                    attempts_left: Some(5u32.saturating_sub(failures)),
                })
            } else if roll < 94 {
                Event::BiometricsDisabled(v1::BiometricsDisabled { at })
            } else if roll < 96 {
                Event::BiometricsEnabled(v1::BiometricsEnabled { at })
            } else {
                unlinked = true;
                Event::DeviceUnlinked(v1::DeviceUnlinked {
                    link_id: link_id.clone(),
                    reason: if rng.percent(50) {
                        v1::UnlinkReason::FromPortal.into()
                    } else {
                        v1::UnlinkReason::FromDevice.into()
                    },
                    at,
                    in_bulk: false,
                })
            };
            push(out, time, rng, event);
            device_events += 1;
            if unlinked {
                break;
            }
        }
        if !(unlinked && rng.percent(50)) {
            return device_events;
        }
        time += 1 + i64::try_from(rng.below(pause)).unwrap();
    }
}

/// Accounts registered, then at least `device_events` device events (and their link attempts'),
/// interleaved in time order as the relay would publish them. Devices are used up to once a day, or (`spread`) at
/// random over the whole history, so that consecutive events are mostly of different devices,
/// as in a long-lived deployment with many devices.
fn history(rng: &mut Rng, device_events: usize, spread: bool) -> Vec<EventEnvelope> {
    let accounts = (device_events / 20).max(1) as u64;
    let span = i64::try_from(device_events).unwrap() * 50;
    let pause = if spread {
        u64::try_from(span / 4).unwrap()
    } else {
        86_400
    };
    // Each account registered before anything else happens to it (the notifier needs its
    // address to queue the emails its devices' events cause).
    let mut timed: Vec<Timed> = (0..accounts)
        .map(|n| {
            let account = format!("account-{n}");
            let registered = Event::AccountRegistered(v1::AccountRegistered {
                email: format!("{account}@example.lu"),
                language: "fr".into(),
                at: stamp(-1, 0),
            });
            envelope(("account", &account), 1, (-1, 0), &account, registered)
        })
        .collect();
    let mut count = 0;
    while count < device_events {
        let account = format!("account-{}", rng.below(accounts));
        let start = i64::try_from(rng.below(u64::try_from(span).unwrap())).unwrap();
        count += device_life(rng, (&account, start, pause), &mut timed);
    }
    // Stable: an aggregate's events keep their order when two share a second.
    timed.sort_by_key(|t| t.time);
    (1..)
        .zip(timed)
        .map(|(position, mut t)| {
            t.envelope.global_position = position;
            t.envelope
        })
        .collect()
}

/// Applies device-subject messages one by one through the live path, as the live consumer
/// would: a message that is not an event is skipped (the consumer parks and TERMs it), a gap is
/// retried once its aggregate has moved (NAK and redelivery; devices do not depend on each
/// other, so when exactly does not matter).
async fn apply_like_the_live_consumer(pool: &PgPool, messages: &[Published]) {
    let mut waiting: HashMap<(String, String), Vec<EventEnvelope>> = HashMap::new();
    for message in messages.iter().filter(|m| m.is_device()) {
        let Ok(event) = projections::decode(&message.payload) else {
            continue;
        };
        let aggregate = (event.aggregate_type.clone(), event.aggregate_id.clone());
        match projections::apply(pool, &Devices, &event).await {
            Ok(_) => loop {
                let mut progress = false;
                for event in waiting.remove(&aggregate).unwrap_or_default() {
                    match projections::apply(pool, &Devices, &event).await {
                        Ok(_) => progress = true,
                        Err(ProjectionError::Gap { .. }) => {
                            waiting.entry(aggregate.clone()).or_default().push(event);
                        }
                        Err(other) => panic!("{other}"),
                    }
                }
                if !progress {
                    break;
                }
            },
            Err(ProjectionError::Gap { .. }) => waiting.entry(aggregate).or_default().push(event),
            Err(other) => panic!("{other}"),
        }
    }
}

type Snapshot = (Vec<String>, Vec<String>, Vec<String>);

/// The devices, and the guards and dead letters of the read models named by the pattern
/// `projectors` (SQL `LIKE`).
async fn snapshot(pool: &PgPool, projectors: &str) -> Snapshot {
    let devices = sqlx::query_scalar("SELECT d::text FROM devices d ORDER BY device_id")
        .fetch_all(pool)
        .await
        .unwrap();
    let guards = sqlx::query_scalar(
        "SELECT p::text FROM projector_positions p WHERE projector LIKE $1 \
         ORDER BY projector, aggregate_type, aggregate_id",
    )
    .bind(projectors)
    .fetch_all(pool)
    .await
    .unwrap();
    let parked = sqlx::query_scalar(
        "SELECT concat_ws(' ', projector, subject, event_id, reason) FROM dead_letters \
         WHERE projector LIKE $1 ORDER BY projector, event_id, reason",
    )
    .bind(projectors)
    .fetch_all(pool)
    .await
    .unwrap();
    (devices, guards, parked)
}

/// A [`history`] as published messages, [`poison`]ed.
fn poisoned_history(rng: &mut Rng, device_events: usize, spread: bool) -> Vec<Published> {
    let events = history(rng, device_events, spread);
    let mut messages: Vec<Published> = events.iter().map(Published::event).collect();
    poison(rng, &mut messages, &events);
    messages
}

/// Events the live path must park, and messages that are not events at all.
fn poison(rng: &mut Rng, messages: &mut Vec<Published>, events: &[EventEnvelope]) {
    let corrupt = |messages: &mut Vec<Published>, wanted: &str, change: &dyn Fn(&mut Event)| {
        let Some(index) = messages.iter().position(|m| {
            m.subject.ends_with(wanted)
                && projections::decode(&m.payload).is_ok_and(|e| e.sequence > 1)
        }) else {
            return;
        };
        let mut event = projections::decode(&messages[index].payload).unwrap();
        if let Some(payload) = event.event.as_mut() {
            change(payload);
        }
        messages[index].payload = event.encode_to_vec();
    };
    corrupt(messages, "DeviceUnlinked", &|event| {
        if let Event::DeviceUnlinked(unlinked) = event {
            unlinked.reason = 99;
        }
    });
    corrupt(messages, "SecretCodeVerified", &|event| {
        if let Event::SecretCodeVerified(verified) = event {
            verified.at = None;
        }
    });
    // A relink whose link id is not a UUID: the row keeps its previous link.
    if let Some(index) = messages.iter().position(|m| {
        projections::decode(&m.payload)
            .is_ok_and(|e| e.sequence > 2 && matches!(e.event, Some(Event::DeviceLinked(_))))
    }) {
        let mut event = projections::decode(&messages[index].payload).unwrap();
        if let Some(Event::DeviceLinked(linked)) = event.event.as_mut() {
            linked.link_id = "not-a-uuid".into();
        }
        messages[index].payload = event.encode_to_vec();
    }
    // A device whose id is not a UUID: every event of it is parked, its guard still moves.
    let bogus: Vec<Published> = events
        .iter()
        .filter(|e| e.aggregate_type == "device")
        .take(3)
        .enumerate()
        .map(|(n, e)| {
            let mut e = e.clone();
            e.aggregate_id = "not-a-uuid-device".into();
            e.sequence = i64::try_from(n).unwrap() + 1;
            e.event_id = format!("device/not-a-uuid-device/{}", e.sequence);
            Published::event(&e)
        })
        .collect();
    for message in bogus {
        let at = usize::try_from(rng.below(messages.len() as u64)).unwrap();
        messages.insert(at, message);
    }
    // Not events at all: garbage, and an envelope without a sequence.
    let mut incomplete = events[0].clone();
    incomplete.sequence = 0;
    for payload in [b"not protobuf".to_vec(), incomplete.encode_to_vec()] {
        let at = usize::try_from(rng.below(messages.len() as u64)).unwrap();
        messages.insert(
            at,
            Published {
                subject: "device.DeviceLinked".into(),
                payload,
                id: None,
            },
        );
    }
    // Right subject, another aggregate type or an event the projector ignores: no change, the
    // guard moves.
    let mut account = events[0].clone();
    account.aggregate_type = "account".into();
    account.aggregate_id = "account-on-a-device-subject".into();
    account.sequence = 1;
    account.event_id = "account/account-on-a-device-subject/1".into();
    let mut foreign = events
        .iter()
        .find(|e| e.aggregate_type == "device")
        .unwrap()
        .clone();
    foreign.aggregate_id = rng.uuid();
    foreign.sequence = 1;
    foreign.event_id = format!("device/{}/1", foreign.aggregate_id);
    foreign.event = Some(Event::QrIssued(v1::QrIssued {
        at: stamp(0, 0),
        expires_at: stamp(0, 0),
        browser_address: String::new(),
    }));
    for event in [account, foreign] {
        let mut message = Published::event(&event);
        message.subject = "device.Odd".into();
        messages.push(message);
    }
}

/// Copies republished after the duplicate window, and events that arrive after their successor
/// (lost in the middle of the stream and republished).
fn disorder(rng: &mut Rng, messages: &mut Vec<Published>) {
    let device: Vec<usize> = (0..messages.len())
        .filter(|&i| messages[i].is_device())
        .collect();
    let mut copies = Vec::new();
    for &i in &device {
        if rng.percent(4) {
            let mut copy = messages[i].clone();
            copy.id = None;
            copies.push(copy);
        }
    }
    for copy in copies {
        let at = usize::try_from(rng.below(messages.len() as u64)).unwrap();
        messages.insert(at, copy);
    }
    // Move a few second events of a device to much later, past their successors.
    let seconds: Vec<usize> = (0..messages.len())
        .filter(|&i| {
            messages[i].is_device()
                && messages[i].id.is_some()
                && projections::decode(&messages[i].payload).is_ok_and(|e| e.sequence == 2)
        })
        .take(6)
        .collect();
    for (n, &index) in seconds.iter().enumerate().rev() {
        let message = messages.remove(index);
        let at = if n % 2 == 0 {
            messages.len()
        } else {
            (index + 40).min(messages.len())
        };
        messages.insert(at, message);
    }
}

#[tokio::test]
async fn a_rebuild_in_small_batches_equals_the_event_by_event_path() {
    // Arrange: the same messages applied one by one through the live path.
    let scratch = Scratch::new().await;
    let mut rng = Rng(7);
    let mut messages = poisoned_history(&mut rng, 3_000, false);
    disorder(&mut rng, &mut messages);
    scratch.publish(&messages).await;
    let pool = projection_service::startup::connect_and_migrate(scratch.url())
        .await
        .unwrap();
    // A scratch database: no need to wait for each of these commits to reach the disk.
    let options: PgConnectOptions = scratch.url().parse().unwrap();
    let live_path = PgPool::connect_with(options.options([("synchronous_commit", "off")]))
        .await
        .unwrap();
    apply_like_the_live_consumer(&live_path, &messages).await;
    // The live path here feeds the devices alone; the rebuild feeds every read model (the
    // others' equality with the live consumer is tests/e2e/rebuild.rs's).
    let live = snapshot(&pool, "devices").await;
    assert!(live.0.len() > 200, "{} devices", live.0.len());
    assert!(live.2.len() >= 5, "{:?}", live.2);

    // Act: batches of 97 cut aggregates, gaps and duplicates across batch boundaries.
    let options = RebuildOptions { batch_size: 97 };
    let rebuilt = rebuild::rebuild_with(scratch.url(), &scratch.settings(), &options)
        .await
        .unwrap();

    // Assert: the same rows, guards and dead letters (each parked once).
    assert_eq!(rebuilt.events, u64::try_from(messages.len()).unwrap());
    assert_eq!(snapshot(&pool, "devices").await, live);
}

#[tokio::test]
async fn a_second_rebuild_changes_nothing() {
    // Arrange
    let scratch = Scratch::new().await;
    let mut rng = Rng(11);
    let messages = poisoned_history(&mut rng, 1_000, true);
    scratch.publish(&messages).await;
    rebuild::rebuild(scratch.url(), &scratch.settings())
        .await
        .unwrap();
    let pool = PgPool::connect(scratch.url()).await.unwrap();
    let first = snapshot(&pool, "%").await;

    // Act
    rebuild::rebuild(scratch.url(), &scratch.settings())
        .await
        .unwrap();

    // Assert
    assert_eq!(snapshot(&pool, "%").await, first);
}

/// `cargo test --release -p projection-service --test rebuild_batching -- --ignored --nocapture`
/// (`LINKD_REBUILD_BENCH_EVENTS`, default 200,000 device events; `LINKD_REBUILD_BENCH_BATCH`,
/// default [`RebuildOptions::default`]; `LINKD_REBUILD_BENCH_DENSE=1`: devices used at most daily,
/// so that a batch holds several events per device, instead of spread over the whole history).
// Two workers, like the binary's runtime on this 2-CPU machine.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a benchmark: run it with --release"]
async fn rebuild_throughput() {
    let wanted: usize = std::env::var("LINKD_REBUILD_BENCH_EVENTS")
        .ok()
        .and_then(|raw| raw.parse().ok())
        .unwrap_or(200_000);
    let scratch = Scratch::new().await;
    let started = Instant::now();
    let dense = std::env::var("LINKD_REBUILD_BENCH_DENSE").is_ok_and(|v| v == "1");
    let events = history(&mut Rng(42), wanted, !dense);
    let messages: Vec<Published> = events.iter().map(Published::event).collect();
    let device_events = messages.iter().filter(|m| m.is_device()).count();
    scratch.publish(&messages).await;
    eprintln!(
        "published {} messages ({device_events} device events) in {:.1} s",
        messages.len(),
        started.elapsed().as_secs_f64()
    );

    let mut options = RebuildOptions::default();
    if let Some(batch_size) = std::env::var("LINKD_REBUILD_BENCH_BATCH")
        .ok()
        .and_then(|raw| raw.parse().ok())
    {
        options.batch_size = batch_size;
    }
    let rebuilt = rebuild::rebuild_with(scratch.url(), &scratch.settings(), &options)
        .await
        .unwrap();

    eprintln!(
        "rebuild (batches of {}): {} events in {:.2} s = {:.0} events/s",
        options.batch_size,
        rebuilt.events,
        rebuilt.elapsed.as_secs_f64(),
        rebuilt.events_per_second()
    );
    let pool = PgPool::connect(scratch.url()).await.unwrap();
    let applied: i64 = sqlx::query_scalar(
        "SELECT sum(last_sequence)::bigint FROM projector_positions WHERE projector = 'devices'",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(applied, i64::try_from(device_events).unwrap());
    assert_eq!(rebuilt.events, u64::try_from(messages.len()).unwrap());
}
