//! A live batch writes exactly what the same events write one at a time, whether the batch holds
//! a whole history or continues one stored before it.

use proto::v1::event_envelope::Event;
use proto::v1::{self, EventEnvelope};
use sqlx::PgPool;
use testkit::TestDatabase;

use super::*;
use crate::email::Templates;
use crate::projections::audit::AuditHeads;
use crate::projections::devices::Devices;
use crate::projections::notifier::Notifier;

const ACCOUNT: &str = "anna";
const DEVICE: &str = "7d0e8a59-2c1f-4b0e-9a53-2b1c1d9f0a01";
const ATTEMPT: &str = "0b5c7a12-9f3e-4d2a-8c61-5e4f3a2b1c0d";
const QR: &str = "c3a1e5f7-2b4d-4e6f-8a0c-1d3e5f7a9b2c";
const LINK: &str = "6f1d2e3c-4b5a-4c6d-8e7f-9a0b1c2d3e4f";

fn now() -> Option<prost_types::Timestamp> {
    let now = chrono::Utc::now();
    Some(prost_types::Timestamp {
        seconds: now.timestamp(),
        nanos: 0,
    })
}

fn linked(name: &str) -> Event {
    Event::DeviceLinked(v1::DeviceLinked {
        link_id: LINK.into(),
        device_name: name.into(),
        method: v1::LinkMethod::Qr.into(),
        product: None,
        platform: v1::Platform::Android.into(),
        app_version: "2.1".into(),
        at: now(),
    })
}

/// A history over four aggregates, in stream order: a link attempt whose first events name no
/// account and whose later ones do (and one after them that names none again), a device linked,
/// used, unlinked and linked again.
fn history() -> Vec<EventEnvelope> {
    let steps: Vec<(&str, &str, i64, &str, Event)> = vec![
        (
            "account",
            ACCOUNT,
            1,
            "",
            Event::AccountRegistered(v1::AccountRegistered {
                email: "anna@example.lu".into(),
                language: "fr".into(),
                at: now(),
            }),
        ),
        (
            "link_qr",
            QR,
            1,
            ACCOUNT,
            Event::QrIssued(v1::QrIssued {
                at: now(),
                expires_at: now(),
                browser_address: "192.0.2.1".into(),
            }),
        ),
        (
            "link_attempt",
            ATTEMPT,
            1,
            "",
            Event::LinkRequested(v1::LinkRequested {
                device_id: DEVICE.into(),
                device_name: "Anna's phone".into(),
                method: v1::LinkMethod::Qr.into(),
                platform: v1::Platform::Android.into(),
                app_version: "2.1".into(),
                at: now(),
                expires_at: now(),
                device_model: "Pixel 8".into(),
            }),
        ),
        (
            "link_qr",
            QR,
            2,
            ACCOUNT,
            Event::QrConsumed(v1::QrConsumed {
                link_attempt_id: ATTEMPT.into(),
                device_id: DEVICE.into(),
                at: now(),
            }),
        ),
        (
            "link_attempt",
            ATTEMPT,
            2,
            "",
            Event::QrAccepted(v1::QrAccepted {
                qr_id: QR.into(),
                at: now(),
                confirm_by: None,
                client_address: "198.51.100.7".into(),
            }),
        ),
        (
            "link_attempt",
            ATTEMPT,
            3,
            ACCOUNT,
            Event::LinkCompleted(v1::LinkCompleted { at: now() }),
        ),
        ("device", DEVICE, 1, ACCOUNT, linked("Anna's phone")),
        (
            "link_attempt",
            ATTEMPT,
            4,
            "",
            Event::LinkCompleted(v1::LinkCompleted { at: now() }),
        ),
        (
            "device",
            DEVICE,
            2,
            ACCOUNT,
            Event::BiometricsEnabled(v1::BiometricsEnabled { at: now() }),
        ),
        (
            "device",
            DEVICE,
            3,
            ACCOUNT,
            Event::SecretCodeVerified(v1::SecretCodeVerified { at: now() }),
        ),
        (
            "device",
            DEVICE,
            4,
            ACCOUNT,
            Event::DeviceUnlinked(v1::DeviceUnlinked {
                link_id: LINK.into(),
                reason: v1::UnlinkReason::FromPortal.into(),
                at: now(),
                in_bulk: false,
            }),
        ),
        ("device", DEVICE, 5, ACCOUNT, linked("Anna's other phone")),
    ];
    steps
        .into_iter()
        .zip(1..)
        .map(
            |((aggregate_type, id, sequence, account, event), position)| EventEnvelope {
                event_id: format!("{aggregate_type}/{id}/{sequence}"),
                global_position: position,
                aggregate_type: aggregate_type.into(),
                aggregate_id: id.into(),
                sequence,
                event_type: "Test".into(),
                occurred_at: now(),
                account_id: account.into(),
                actor: "test".into(),
                request_id: format!("request-{position}"),
                traceparent: String::new(),
                data_subject: String::new(),
                event_version: "1".into(),
                opaque_payload: Vec::new(),
                event: Some(event),
            },
        )
        .collect()
}

fn notifier() -> Notifier {
    Notifier {
        templates: Templates::default(),
        sender: "usermanagement@security.public.lu".into(),
        default_language: "en".into(),
        max_event_age: std::time::Duration::from_secs(3600),
    }
}

async fn database() -> (TestDatabase, PgPool) {
    let database = TestDatabase::create("linkd_batchtest").await.unwrap();
    let pool = crate::startup::connect_and_migrate(&database.url)
        .await
        .unwrap();
    (database, pool)
}

/// Every row of every read model, as text, in a fixed order.
async fn contents(pool: &PgPool) -> Vec<String> {
    let mut rows = Vec::new();
    for query in [
        "SELECT concat_ws('|', account_id, aggregate_type, aggregate_id, device_id, \
         last_sequence, last_position, first_at) FROM audit_heads ORDER BY 1",
        "SELECT concat_ws('|', device_id, account_id, link_id, name, method, product_kind, \
         product_serial, platform, app_version, linked_at, last_used_at, biometrics_enabled, \
         status, unlinked_at, unlink_reason) FROM devices ORDER BY device_id",
        "SELECT concat_ws('|', event_id, kind, recipient, language, message_id, subject, \
         text_body, html_body) FROM email_outbox ORDER BY message_id",
        "SELECT concat_ws('|', account_id, email, language) FROM email_accounts",
        "SELECT concat_ws('|', device_id, name) FROM email_devices",
        "SELECT concat_ws('|', projector, aggregate_type, aggregate_id, last_sequence) \
         FROM projector_positions ORDER BY 1",
    ] {
        let found: Vec<String> = sqlx::query_scalar(query).fetch_all(pool).await.unwrap();
        rows.push(format!("-- {query}"));
        rows.extend(found);
    }
    rows
}

#[tokio::test]
async fn a_batch_writes_what_its_events_write_one_at_a_time() {
    let notifier = notifier();
    let models: [&dyn ReadModel; 3] = [&AuditHeads, &Devices, &notifier];
    let events = history();

    let (_one, one_at_a_time) = database().await;
    for event in &events {
        let outcome = projections::apply_all(&one_at_a_time, &models, event).await;
        assert_eq!(outcome.unwrap(), Outcome::Applied, "{}", event.event_id);
    }
    let expected = contents(&one_at_a_time).await;
    for (needle, what) in [
        ("device_linked", "a link email"),
        ("device_unlinked", "an unlink email"),
        (
            &format!("{ACCOUNT}|link_attempt|{ATTEMPT}|{DEVICE}|3|"),
            "the attempt's row for its account, with the device its first event named",
        ),
        (
            &format!("|link_attempt|{ATTEMPT}|{DEVICE}|4|"),
            "the attempt's row without an account",
        ),
        (
            &format!("{ACCOUNT}|link_qr|{QR}|{DEVICE}|2|"),
            "the QR code's row, with the device that consumed it",
        ),
        ("Anna's other phone", "the relinked device"),
    ] {
        assert!(
            expected.iter().any(|row| row.contains(needle)),
            "the history leaves {what}: {expected:#?}"
        );
    }

    // The whole history in one batch, and split at every point (the second batch continues
    // what the first stored).
    for split in 0..events.len() {
        let (_batched, batched) = database().await;
        for part in [&events[..split], &events[split..]] {
            if part.is_empty() {
                continue;
            }
            let verdicts = apply(&batched, &models, part).await.unwrap();
            assert!(
                verdicts
                    .iter()
                    .all(|verdict| matches!(verdict, Ok(Outcome::Applied))),
                "split at {split}: {verdicts:?}"
            );
        }
        assert_eq!(contents(&batched).await, expected, "split at {split}");
    }
}

#[tokio::test]
async fn a_share_reaches_its_rows_by_key_whatever_the_statistics() {
    // Arrange: 30,000 witness rows (a third of them link attempts', some without an account)
    // and 5,000 devices, no statistics (autovacuum off, or a table that grew since its last
    // ANALYZE).
    let (_database, pool) = database().await;
    sqlx::raw_sql(
        "INSERT INTO audit_heads (account_id, aggregate_type, aggregate_id, device_id, \
         last_sequence, last_position, first_at) \
         SELECT CASE WHEN n % 5 = 0 THEN '' ELSE 'anna' END, \
         CASE WHEN n % 3 = 0 THEN 'link_attempt' ELSE 'device' END, 'id' || n, 'd' || n, \
         1, n, now() FROM generate_series(1, 30000) AS n; \
         INSERT INTO devices (device_id, account_id, link_id, name, method, platform, \
         app_version, linked_at, status) \
         SELECT gen_random_uuid(), 'anna', gen_random_uuid(), 'phone', 'qr', 'ios', '1.0', \
         now(), 'linked' FROM generate_series(1, 5000);",
    )
    .execute(&pool)
    .await
    .unwrap();
    let mut connection = pool.acquire().await.unwrap();
    sqlx::raw_sql(&format!(
        "PREPARE move_heads AS {}; PREPARE load_devices AS {};",
        crate::projections::audit::MOVE_HEADS,
        crate::projections::devices::LOAD.as_str(),
    ))
    .execute(&mut *connection)
    .await
    .unwrap();

    // Act
    let situations = testkit::plans::in_every_situation(
        &mut connection,
        "audit_heads, devices",
        &[
            "move_heads(ARRAY['anna', ''], ARRAY['link_attempt', 'link_attempt'], \
             ARRAY['id3', 'id6'], ARRAY['', 'd6'], ARRAY[2, 1]::bigint[], \
             ARRAY[40001, 40002]::bigint[], ARRAY[now(), now()])",
            &format!("load_devices(ARRAY['{DEVICE}', '{LINK}']::uuid[])"),
        ],
    )
    .await;

    // Assert
    for (situation, plans) in situations {
        let (heads, loaded) = (&plans[0], &plans[1]);
        assert!(
            !heads.contains("Seq Scan on audit_heads") && heads.contains("audit_heads_pkey"),
            "{situation}: the attempts' rows without an account are not reached by key:\n{heads}"
        );
        assert!(
            loaded.contains("device_id = k.id") && !loaded.contains("Seq Scan on devices"),
            "{situation}: devices are not loaded by key:\n{loaded}"
        );
    }
}

/// What a newer linkd's relay sends for an event type this build does not know, as this build
/// decodes it: the envelope of the device's `sequence`-th event whose `event` is a oneof member
/// numbered beyond this build's (dropped by the decoder as an unknown field).
fn newer_event(template: &EventEnvelope, sequence: i64) -> EventEnvelope {
    use prost::Message as _;
    use prost::encoding::{WireType, encode_key, encode_varint};

    let envelope = EventEnvelope {
        event_id: format!("device/{DEVICE}/{sequence}"),
        sequence,
        event_type: "DeviceRenamed".into(),
        event: None,
        ..template.clone()
    };
    let mut bytes = envelope.encode_to_vec();
    let member = v1::DeviceLinked {
        device_name: "Anna's renamed phone".into(),
        ..Default::default()
    }
    .encode_to_vec();
    encode_key(99, WireType::LengthDelimited, &mut bytes);
    encode_varint(member.len() as u64, &mut bytes);
    bytes.extend(member);
    let decoded = projections::decode(&bytes).unwrap();
    assert!(decoded.event.is_none(), "{decoded:?}");
    decoded
}

/// The history with an event of a newer version inserted as the device's third: the device's
/// later events move one sequence up.
fn history_with_a_newer_event() -> (Vec<EventEnvelope>, String) {
    let mut events = Vec::new();
    for mut event in history() {
        if event.aggregate_type == "device" && event.sequence >= 3 {
            if event.sequence == 3 {
                events.push(newer_event(&event, 3));
            }
            event.sequence += 1;
            event.event_id = format!("device/{DEVICE}/{}", event.sequence);
        }
        events.push(event);
    }
    (events, format!("device/{DEVICE}/3"))
}

#[tokio::test]
async fn an_event_type_this_build_does_not_know_moves_every_guard_and_applies_nothing() {
    // Arrange
    let notifier = notifier();
    let models: [&dyn ReadModel; 3] = [&AuditHeads, &Devices, &notifier];
    let (events, unknown) = history_with_a_newer_event();

    // Act: one at a time, then in batches split at every point.
    let (_one, one_at_a_time) = database().await;
    for event in &events {
        let outcome = projections::apply_all(&one_at_a_time, &models, event)
            .await
            .unwrap();
        let expected = if event.event_id == unknown {
            Outcome::Unknown
        } else {
            Outcome::Applied
        };
        assert_eq!(outcome, expected, "{}", event.event_id);
    }

    // Assert: every guard of the device passed it, its later events applied (unlinked, then
    // linked again), nothing of it in the audit witness, nothing parked.
    let expected = contents(&one_at_a_time).await;
    for projector in ["audit", "devices", "notifier"] {
        let guard = format!("{projector}|device|{DEVICE}|6");
        assert!(expected.contains(&guard), "{guard}: {expected:#?}");
    }
    assert!(
        expected
            .iter()
            .any(|row| row.contains("Anna's other phone") && row.contains("|linked")),
        "{expected:#?}"
    );
    assert!(
        expected.iter().any(|row| row.contains("device_unlinked")),
        "the unlink after it still sends its email: {expected:#?}"
    );
    assert!(!expected.iter().any(|row| row.starts_with(&unknown)));
    assert!(!expected.iter().any(|row| row.contains("renamed")));
    let parked: i64 = sqlx::query_scalar("SELECT count(*) FROM dead_letters")
        .fetch_one(&one_at_a_time)
        .await
        .unwrap();
    assert_eq!(parked, 0);

    for split in 0..events.len() {
        let (_batched, batched) = database().await;
        for part in [&events[..split], &events[split..]] {
            if part.is_empty() {
                continue;
            }
            let verdicts = apply(&batched, &models, part).await.unwrap();
            for (event, verdict) in part.iter().zip(&verdicts) {
                let expected = if event.event_id == unknown {
                    Outcome::Unknown
                } else {
                    Outcome::Applied
                };
                assert!(
                    matches!(verdict, Ok(outcome) if *outcome == expected),
                    "split at {split}, {}: {verdict:?}",
                    event.event_id
                );
            }
        }
        assert_eq!(contents(&batched).await, expected, "split at {split}");
    }
}
