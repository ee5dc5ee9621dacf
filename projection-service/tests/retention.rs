//! Retention (issue 19, fourth point): a sweep deletes exactly the sent and failed emails and
//! the dead letters past their periods, never a pending email, and one instance sweeps a round.
#![allow(
    clippy::unwrap_used,
    reason = "a failed step should fail the test loudly"
)]

use std::time::Duration;

use projection_service::retention::{Purged, Retention, sweep};
use sqlx::PgPool;
use testkit::TestDatabase;

async fn database() -> (TestDatabase, PgPool) {
    let database = TestDatabase::create("linkd_retentiontest").await.unwrap();
    let pool = projection_service::startup::connect_and_migrate(&database.url)
        .await
        .unwrap();
    (database, pool)
}

/// An outbox row `status`, queued `queued_days_ago`, sent `sent_days_ago` (for sent rows).
async fn email(pool: &PgPool, name: &str, status: &str, queued_days_ago: i32, sent_days_ago: i32) {
    sqlx::query(
        "INSERT INTO email_outbox (event_id, kind, recipient, language, message_id, subject, \
         text_body, html_body, status, created_at, sent_at) \
         VALUES ($1, 'device_linked', 'anna@example.lu', 'fr', $1, 's', 't', 'h', $2, \
         now() - make_interval(days => $3), \
         CASE WHEN $2 = 'sent' THEN now() - make_interval(days => $4) END)",
    )
    .bind(name)
    .bind(status)
    .bind(queued_days_ago)
    .bind(sent_days_ago)
    .execute(pool)
    .await
    .unwrap();
}

async fn dead_letter(pool: &PgPool, name: &str, days_ago: i32) {
    sqlx::query(
        "INSERT INTO dead_letters (projector, subject, event_id, reason, payload, received_at) \
         VALUES ('p', 's', $1, 'poison', '\\x00', now() - make_interval(days => $2))",
    )
    .bind(name)
    .bind(days_ago)
    .execute(pool)
    .await
    .unwrap();
}

async fn left(pool: &PgPool) -> (Vec<String>, Vec<String>) {
    let emails = sqlx::query_scalar("SELECT event_id FROM email_outbox ORDER BY event_id")
        .fetch_all(pool)
        .await
        .unwrap();
    let letters = sqlx::query_scalar("SELECT event_id FROM dead_letters ORDER BY event_id")
        .fetch_all(pool)
        .await
        .unwrap();
    (emails, letters)
}

const DAY: Duration = Duration::from_secs(24 * 3600);

/// The audit witness's row of link attempt `attempt`, for `account` ('' before it named one),
/// `days_ago` old, naming a phone.
async fn attempt_row(pool: &PgPool, attempt: &str, account: &str, days_ago: i32) {
    sqlx::query(
        "INSERT INTO audit_heads (account_id, aggregate_type, aggregate_id, device_id, \
         last_sequence, last_position, first_at) \
         VALUES ($2, 'link_attempt', $1, 'd', 1, (SELECT count(*) + 1 FROM audit_heads), \
         now() - make_interval(days => $3))",
    )
    .bind(attempt)
    .bind(account)
    .bind(days_ago)
    .execute(pool)
    .await
    .unwrap();
}

async fn attempts_left(pool: &PgPool) -> Vec<String> {
    sqlx::query_scalar("SELECT aggregate_id FROM audit_heads ORDER BY aggregate_id")
        .fetch_all(pool)
        .await
        .unwrap()
}

#[tokio::test]
async fn a_sweep_deletes_exactly_what_is_past_its_period() {
    // Arrange: sent 31 and 29 days ago; given up on, queued 91 and 89 days ago; pending for 400
    // days (never deleted); dead letters of 91 and 89 days.
    let (_database, pool) = database().await;
    email(&pool, "sent-old", "sent", 32, 31).await;
    email(&pool, "sent-recent", "sent", 40, 29).await;
    email(&pool, "failed-old", "failed", 91, 0).await;
    email(&pool, "failed-recent", "failed", 89, 0).await;
    email(&pool, "pending-ancient", "pending", 400, 0).await;
    dead_letter(&pool, "letter-old", 91).await;
    dead_letter(&pool, "letter-recent", 89).await;
    // Link attempts' witness rows: one that never named an account, 31 days old; one as old that
    // named anna (her history keeps it); one that never named an account, 29 days old.
    attempt_row(&pool, "unclaimed-old", "", 31).await;
    attempt_row(&pool, "claimed-old", "anna", 31).await;
    attempt_row(&pool, "unclaimed-recent", "", 29).await;
    let retention = Retention {
        sent_emails: 30 * DAY,
        failed_emails: 90 * DAY,
        dead_letters: 90 * DAY,
        unclaimed_attempts: 30 * DAY,
        every: Duration::from_secs(1),
    };

    // Act
    let purged = sweep(&pool, &retention).await.unwrap();

    // Assert
    assert_eq!(
        purged,
        Some(Purged {
            sent_emails: 1,
            failed_emails: 1,
            dead_letters: 1,
            unclaimed_attempts: 1,
        })
    );
    let (emails, letters) = left(&pool).await;
    assert_eq!(emails, ["failed-recent", "pending-ancient", "sent-recent"]);
    assert_eq!(letters, ["letter-recent"]);
    assert_eq!(
        attempts_left(&pool).await,
        ["claimed-old", "unclaimed-recent"]
    );
    // A second round finds nothing more.
    assert_eq!(
        sweep(&pool, &retention).await.unwrap(),
        Some(Purged::default())
    );
}

#[tokio::test]
async fn a_round_another_instance_holds_is_skipped() {
    // Arrange: another instance is in a round (holds the round's lock in its transaction).
    let (_database, pool) = database().await;
    email(&pool, "sent-old", "sent", 32, 31).await;
    let mut other = pool.begin().await.unwrap();
    let held: bool = sqlx::query_scalar("SELECT pg_try_advisory_xact_lock($1)")
        .bind(0x6c69_6e6b_7265_7401_i64)
        .fetch_one(&mut *other)
        .await
        .unwrap();
    assert!(held);

    // Act, Assert: this instance skips the round and deletes nothing; once the other is done,
    // the next round sweeps.
    assert_eq!(sweep(&pool, &Retention::default()).await.unwrap(), None);
    assert_eq!(left(&pool).await.0, ["sent-old"]);
    other.rollback().await.unwrap();
    assert_eq!(
        sweep(&pool, &Retention::default()).await.unwrap(),
        Some(Purged {
            sent_emails: 1,
            ..Purged::default()
        })
    );
}

#[tokio::test]
async fn every_round_counts_what_it_deleted_in_the_metrics() {
    // Arrange: a sent email and a dead letter past their periods; the sweeper running.
    let (_database, pool) = database().await;
    email(&pool, "sent-old", "sent", 32, 31).await;
    dead_letter(&pool, "letter-old", 91).await;
    let metrics = service_kit::metrics::Metrics::new();
    let counters = projection_service::retention::RetentionMetrics::register(&metrics);
    let retention = Retention {
        every: Duration::from_millis(50),
        ..Retention::default()
    };
    let sweeper = tokio::spawn(projection_service::retention::run(
        pool.clone(),
        retention,
        counters,
    ));

    // Act + Assert: the scrape shows each kind deleted, once.
    let text = testkit::eventually(Duration::from_secs(10), "the sweep's counts", || async {
        let text = metrics.encode().await;
        text.contains("linkd_retention_deleted_total{rows=\"dead_letter\"} 1")
            .then_some(text)
    })
    .await;
    sweeper.abort();
    assert!(
        text.contains("linkd_retention_deleted_total{rows=\"sent_email\"} 1"),
        "{text}"
    );
    assert!(
        text.contains("linkd_retention_deleted_total{rows=\"failed_email\"} 0"),
        "{text}"
    );
    assert!(
        text.contains("linkd_retention_deleted_total{rows=\"unclaimed_attempt\"} 0"),
        "{text}"
    );
    assert_eq!(left(&pool).await, (vec![], vec![]));
}
