//! Which aggregates a verification of one account reads (`history::aggregates_of`, behind
//! `VerifyHistory` and `command-service verify`), and which events its audit log lists
//! (`history::ACCOUNT_POSITIONS`, `EVENTS_AT`, `ACCOUNT_LINKS`, behind `AuditService`): the
//! right ones, found through indexes however large the event store, so that a holder's
//! verification or history costs their history, not everyone's.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a failed step should fail the test loudly"
)]

use sqlx::PgPool;
use testkit::TestDatabase;

/// A migrated scratch event store.
async fn store() -> (TestDatabase, PgPool) {
    let database = TestDatabase::create("linkd_verification_test")
        .await
        .unwrap();
    let pool = database.connect().await.unwrap();
    sqlx::migrate!("./migrations").run(&pool).await.unwrap();
    (database, pool)
}

/// Appends one event row as the store would (the database chains it).
async fn event(
    pool: &PgPool,
    (aggregate_type, aggregate_id, sequence): (&str, &str, i64),
    account: Option<&str>,
    data_subject: Option<&str>,
) {
    let metadata = match account {
        Some(account) => serde_json::json!({ "account_id": account, "actor": "test" }),
        None => serde_json::json!({ "actor": "test" }),
    };
    sqlx::query(
        "INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type, event_version, \
         payload, metadata, data_subject) VALUES ($1, $2, $3, 'Test', '1', '{}', $4::json, $5)",
    )
    .bind(aggregate_type)
    .bind(aggregate_id)
    .bind(sequence)
    .bind(metadata.to_string())
    .bind(data_subject)
    .execute(pool)
    .await
    .unwrap();
}

/// 30,000 events of 10,000 accounts: a third of them link attempts', a tenth written before
/// sealing (no data subject, the account in their metadata only).
async fn many_accounts(pool: &PgPool) {
    sqlx::raw_sql(
        "INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type, event_version, \
         payload, metadata, data_subject) \
         SELECT CASE WHEN n % 3 = 0 THEN 'link_attempt' ELSE 'device' END, 'x' || n, 1, \
                'DeviceLinked', '1', '{}', json_build_object('account_id', 'acc' || n % 10000), \
                CASE WHEN n % 10 = 0 THEN NULL ELSE 'account:acc' || n % 10000 END \
         FROM generate_series(1, 30000) AS n",
    )
    .execute(pool)
    .await
    .unwrap();
}

#[tokio::test]
async fn an_accounts_aggregates_are_those_sealed_for_it_its_own_and_its_legacy_ones() {
    // Arrange: anna's account; a device and a QR code sealed for her; a link attempt that began
    // under its own key and then named her; a device written before sealing existed (no data
    // subject) whose metadata names her; and bob's, which must not come back.
    let (_database, pool) = store().await;
    event(&pool, ("account", "anna", 1), None, Some("account:anna")).await;
    event(
        &pool,
        ("device", "d-anna", 1),
        Some("anna"),
        Some("account:anna"),
    )
    .await;
    event(
        &pool,
        ("link_qr", "q-anna", 1),
        Some("anna"),
        Some("account:anna"),
    )
    .await;
    event(
        &pool,
        ("link_attempt", "a-anna", 1),
        None,
        Some("link_attempt:a-anna"),
    )
    .await;
    event(
        &pool,
        ("link_attempt", "a-anna", 2),
        Some("anna"),
        Some("account:anna"),
    )
    .await;
    event(&pool, ("device", "d-legacy", 1), Some("anna"), None).await;
    event(&pool, ("account", "bob", 1), None, Some("account:bob")).await;
    event(
        &pool,
        ("device", "d-bob", 1),
        Some("bob"),
        Some("account:bob"),
    )
    .await;
    event(
        &pool,
        ("link_attempt", "a-nobody", 1),
        None,
        Some("link_attempt:a-nobody"),
    )
    .await;
    event(&pool, ("device", "d-bob-legacy", 1), Some("bob"), None).await;

    // Act
    let found = history::aggregates_of(&pool, "anna").await.unwrap();

    // Assert
    let found: Vec<(String, String)> = found
        .into_iter()
        .map(|known| (known.aggregate_type, known.aggregate_id))
        .collect();
    let expected: Vec<(String, String)> = [
        ("account", "anna"),
        ("device", "d-anna"),
        ("device", "d-legacy"),
        ("link_attempt", "a-anna"),
        ("link_qr", "q-anna"),
    ]
    .into_iter()
    .map(|(t, i)| (t.to_owned(), i.to_owned()))
    .collect();
    assert_eq!(found, expected);
    assert!(matches!(
        history::verify_account(&pool, "anna").await.unwrap(),
        history::Verdict::Intact { events: 6, .. }
    ));
}

#[tokio::test]
async fn an_accounts_history_is_its_aggregates_events_and_every_event_of_its_link_attempts() {
    // Arrange: as above, and a link attempt's first event written before it named anna (sealed
    // under the attempt's own key), a device that was anna's and is now bob's, an attempt that
    // never named anyone.
    let (_database, pool) = store().await;
    for (key, account, subject) in [
        (("account", "anna", 1), None, Some("account:anna")),
        (
            ("link_attempt", "a-anna", 1),
            None,
            Some("link_attempt:a-anna"),
        ),
        (
            ("link_attempt", "a-nobody", 1),
            None,
            Some("link_attempt:a-nobody"),
        ),
        (
            ("link_attempt", "a-anna", 2),
            Some("anna"),
            Some("account:anna"),
        ),
        (("device", "d-moved", 1), Some("anna"), Some("account:anna")),
        (("device", "d-moved", 2), Some("bob"), Some("account:bob")),
        (("device", "d-legacy", 1), Some("anna"), None),
        (("account", "bob", 1), None, Some("account:bob")),
        (("device", "d-bob-legacy", 1), Some("bob"), None),
    ] {
        event(&pool, key, account, subject).await;
    }

    // Act: the events show once every transaction older than theirs has ended, in the whole
    // cluster (other tests run beside this one).
    let read = || async {
        let positions: Vec<i64> = sqlx::query_scalar(history::ACCOUNT_POSITIONS.as_str())
            .bind("anna")
            .bind(0_i64)
            .fetch_all(&pool)
            .await
            .unwrap();
        sqlx::query_as::<_, (String, String, i64)>(&format!(
            "SELECT aggregate_type, aggregate_id, sequence FROM ({}) AS e",
            history::EVENTS_AT.as_str()
        ))
        .bind(positions)
        .bind(Vec::<String>::new())
        .bind(None::<chrono::DateTime<chrono::Utc>>)
        .bind(None::<chrono::DateTime<chrono::Utc>>)
        .fetch_all(&pool)
        .await
        .unwrap()
    };
    let mut history = read().await;
    for _ in 0..100 {
        if history.len() >= 5 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        history = read().await;
    }

    // Assert: in position order.
    let expected: Vec<(String, String, i64)> = [
        ("account", "anna", 1),
        ("link_attempt", "a-anna", 1),
        ("link_attempt", "a-anna", 2),
        ("device", "d-moved", 1),
        ("device", "d-legacy", 1),
    ]
    .into_iter()
    .map(|(t, i, s)| (t.to_owned(), i.to_owned(), s))
    .collect();
    assert_eq!(history, expected);
}

#[tokio::test]
async fn an_accounts_aggregates_and_history_are_read_by_index_whatever_the_statistics() {
    // Arrange: 30,000 events of 10,000 accounts, and no statistics (autovacuum off, or a table
    // that grew since its last ANALYZE).
    let (_database, pool) = store().await;
    many_accounts(&pool).await;
    let mut connection = pool.acquire().await.unwrap();
    sqlx::raw_sql(&format!(
        "PREPARE aggregates_of AS {}; PREPARE account_positions AS {}; \
         PREPARE account_links AS {}; PREPARE events_at AS {};",
        history::AGGREGATES_OF,
        history::ACCOUNT_POSITIONS.as_str(),
        history::ACCOUNT_LINKS.as_str(),
        history::EVENTS_AT.as_str(),
    ))
    .execute(&mut *connection)
    .await
    .unwrap();

    // Act
    let situations = testkit::plans::in_every_situation(
        &mut connection,
        "events",
        &[
            "aggregates_of('acc42')",
            "account_positions('acc42', 0)",
            "account_links('acc42', now())",
            "events_at(ARRAY[42, 10042, 20042]::bigint[], ARRAY['DeviceLinked'], NULL, now())",
        ],
    )
    .await;

    // Assert: the account's aggregates and events through the indexes of AGGREGATES_OF and
    // ACCOUNT_EVENTS; the events of a chunk by position, each by itself.
    for (situation, plans) in situations {
        for plan in &plans {
            assert!(
                !plan.contains("Seq Scan"),
                "{situation}: the plan reads the whole store:\n{plan}"
            );
        }
        for plan in &plans[..3] {
            for index in [
                "events_data_subject",
                "events_pkey",
                "events_legacy_account",
            ] {
                assert!(
                    plan.contains(index),
                    "{situation}: {index} is not used:\n{plan}"
                );
            }
        }
        for plan in &plans[2..] {
            assert!(
                plan.contains("events_global_position"),
                "{situation}: the events are not fetched by position:\n{plan}"
            );
        }
    }
}
