//! A new aggregate's bearer token goes in with its events, or not at all.

use chrono::Utc;
use domain::{AccountId, LinkQr, LinkQrCommand};
use sqlx::PgPool;
use testkit::TestDatabase;
use uuid::Uuid;

use super::*;

async fn store() -> (EventStore, PgPool, TestDatabase) {
    let database = TestDatabase::create("linkd_storetest").await.unwrap();
    let pool = database.connect().await.unwrap();
    sqlx::migrate!("./migrations").run(&pool).await.unwrap();
    let store = EventStore::new(
        pool.clone(),
        snapshot::key(b"store-tests-pepper-0123456789012"),
        Keks::single("test", [7; 32]),
    );
    (store, pool, database)
}

fn issue() -> LinkQrCommand {
    LinkQrCommand::Issue {
        account_id: AccountId("anna".into()),
        account_registered: true,
        at: Utc::now(),
        expires_at: Utc::now() + chrono::Duration::seconds(120),
        browser_address: None,
    }
}

fn metadata() -> Metadata {
    Metadata {
        actor: "test".into(),
        request_id: "test".into(),
        account_id: Some("anna".into()),
    }
}

fn bearer(id: Uuid) -> BearerRow {
    BearerRow {
        kind: "qr",
        id,
        hash: vec![7; 32],
        expires_at: Utc::now() + chrono::Duration::seconds(120),
    }
}

/// The transaction that wrote each of the aggregate's events and its token (`xmin`).
async fn writers(pool: &PgPool, id: Uuid) -> (Vec<String>, Vec<String>) {
    let events = sqlx::query_scalar(
        "SELECT xmin::text FROM events WHERE aggregate_type = 'link_qr' AND aggregate_id = $1",
    )
    .bind(id.to_string())
    .fetch_all(pool)
    .await
    .unwrap();
    let tokens = sqlx::query_scalar("SELECT xmin::text FROM bearer_tokens WHERE id = $1")
        .bind(id)
        .fetch_all(pool)
        .await
        .unwrap();
    (events, tokens)
}

#[tokio::test]
async fn a_bearer_token_is_stored_by_the_statement_that_stores_its_aggregate() {
    let (store, pool, _database) = store().await;
    let id = Uuid::new_v4();
    let fresh = store.fresh::<LinkQr>(&id.to_string());
    store
        .execute_with_bearer(fresh, issue(), &metadata(), &bearer(id))
        .await
        .unwrap();
    let (events, tokens) = writers(&pool, id).await;
    assert_eq!(events.len(), 1);
    assert_eq!(tokens, events, "one transaction wrote both");
}

#[tokio::test]
async fn a_refused_or_conflicting_start_stores_no_token() {
    let (store, pool, _database) = store().await;
    let id = Uuid::new_v4();
    // Another call started the aggregate first, without this token.
    let first = store.fresh::<LinkQr>(&id.to_string());
    store.execute(first, issue(), &metadata()).await.unwrap();

    // This call's commit conflicts; decided again on what is stored, the command is refused.
    let stale = store.fresh::<LinkQr>(&id.to_string());
    let refused = store
        .execute_with_bearer(stale, issue(), &metadata(), &bearer(id))
        .await;
    assert!(refused.is_err(), "{refused:?}");
    let (events, tokens) = writers(&pool, id).await;
    assert_eq!(events.len(), 1);
    assert!(
        tokens.is_empty(),
        "no token for a start that did not happen"
    );
}
