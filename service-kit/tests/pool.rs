//! The services' pools hand out connections without a check when they were returned less than
//! a second ago, and check (and replace) a connection that sat idle longer.
#![allow(
    clippy::unwrap_used,
    reason = "a failed step should fail the test loudly"
)]

use std::time::Duration;

use service_kit::database::{TRUSTED_IDLE, pool_options};
use sqlx::Connection as _;
use testkit::TestDatabase;

async fn backend(pool: &sqlx::PgPool) -> sqlx::Result<i32> {
    sqlx::query_scalar("SELECT pg_backend_pid()")
        .fetch_one(pool)
        .await
}

#[tokio::test]
async fn a_connection_the_server_dropped_while_idle_is_replaced_before_use() {
    let database = TestDatabase::create("linkd_pooltest").await.unwrap();
    let pool = pool_options(1).connect(&database.url).await.unwrap();
    let first = backend(&pool).await.unwrap();

    let mut admin = sqlx::PgConnection::connect(&database.url).await.unwrap();
    let terminated: bool = sqlx::query_scalar("SELECT pg_terminate_backend($1, 5000)")
        .bind(first)
        .fetch_one(&mut admin)
        .await
        .unwrap();
    assert!(terminated);
    admin.close().await.unwrap();

    tokio::time::sleep(TRUSTED_IDLE + Duration::from_millis(200)).await;
    let second = backend(&pool)
        .await
        .expect("the idle connection is checked, and a new one opened, before the statement");
    assert_ne!(first, second);
    pool.close().await;
}

#[tokio::test]
async fn a_connection_in_use_is_handed_out_again_without_a_check() {
    let database = TestDatabase::create("linkd_pooltest").await.unwrap();
    let pool = pool_options(1).connect(&database.url).await.unwrap();
    let first = backend(&pool).await.unwrap();

    let mut admin = sqlx::PgConnection::connect(&database.url).await.unwrap();
    sqlx::query_scalar::<_, bool>("SELECT pg_terminate_backend($1, 5000)")
        .bind(first)
        .fetch_one(&mut admin)
        .await
        .unwrap();
    admin.close().await.unwrap();

    // Reused at once, the connection is not checked: its statement meets the dropped backend
    // (the cost of no round trip per acquire; the caller answers UNAVAILABLE), and the pool
    // replaces it for the next call.
    let failed = backend(&pool).await.unwrap_err();
    assert!(service_kit::database::is_unavailable(&failed), "{failed:?}");
    let second = backend(&pool).await.unwrap();
    assert_ne!(first, second);
    pool.close().await;
}

#[tokio::test]
async fn the_asynchronous_commit_pool_does_not_wait_for_the_flush_and_the_pool_it_came_from_still_does()
 {
    let database = TestDatabase::create("linkd_pooltest").await.unwrap();
    let pool = pool_options(2).connect(&database.url).await.unwrap();
    let lenient = service_kit::database::asynchronous_commit_pool(&pool, 2);

    let setting = |pool: sqlx::PgPool| async move {
        sqlx::query_scalar::<_, String>("SHOW synchronous_commit")
            .fetch_one(&pool)
            .await
            .unwrap()
    };

    assert_eq!(setting(lenient.clone()).await, "off");
    assert_eq!(setting(pool.clone()).await, "on");
    // The counters written through it are counted as ever.
    let rate = service_kit::ratelimit::Rate::new(1, 60);
    sqlx::query("CREATE TABLE rate_limits (key bytea PRIMARY KEY, tat timestamptz NOT NULL)")
        .execute(&pool)
        .await
        .unwrap();
    let first = service_kit::ratelimit::take(&lenient, "rule", "key", rate).await;
    let second = service_kit::ratelimit::take(&lenient, "rule", "key", rate).await;
    assert!(matches!(first, Ok(Ok(()))), "{first:?}");
    assert!(matches!(second, Ok(Err(_))), "{second:?}");
    lenient.close().await;
    pool.close().await;
}
