//! The relay notices an event store that is not the history it published from (issue 16,
//! sixth point): a checkpoint written on another PostgreSQL cluster, a checkpoint ahead of the
//! store, a stream ahead of the store (a restore to an earlier point, a failover to a replica
//! that lagged). It stops publishing, says so (log, `linkd_relay_halted`), and resumes once an
//! operator has republished.

use std::time::Duration;

use async_nats::jetstream;
use e2e::metrics::scrape;
use e2e::{
    TestApp, TestDatabase, eventually, run_command_service, spawn_system_with, test_settings,
};

const WITHIN: Duration = Duration::from_secs(30);

fn any_port() -> Option<std::net::SocketAddr> {
    Some("127.0.0.1:0".parse().unwrap())
}

async fn messages_in_stream(app: &TestApp) -> u64 {
    let stream = app.stream.as_ref().unwrap();
    let context = jetstream::new(async_nats::connect(&stream.nats_url).await.unwrap());
    let mut stream = context.get_stream(&stream.name).await.unwrap();
    stream.info().await.unwrap().state.messages
}

async fn halted(addr: std::net::SocketAddr) {
    eventually(WITHIN, "the relay to say it stopped", || async {
        (scrape(addr).await.value("linkd_relay_halted") == Some(1.0)).then_some(())
    })
    .await;
}

/// A system with one linked device, published and projected; then `tamper` changes the
/// relay's checkpoint while the command service is down, and it starts again.
async fn restarted_after(tamper: &str) -> TestApp {
    let mut app = spawn_system_with(|settings| settings.metrics_addr = any_port()).await;
    app.register("anna").await;
    app.link_by_qr("anna").await;
    app.wait_until_every_read_model_is_exact(WITHIN).await;
    assert!(app.stop_command_service_gracefully(WITHIN).await);
    sqlx::query(tamper).execute(&app.pool).await.unwrap();
    app.restart_command_service(|_| {}, None).await;
    app
}

/// Commands are still stored while the relay is stopped, and nothing is published.
async fn a_link_is_stored_not_published(app: &mut TestApp) {
    let published = messages_in_stream(app).await;
    let stored = app.event_count().await;
    app.link_by_qr("anna").await;
    assert!(app.event_count().await > stored);
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        messages_in_stream(app).await,
        published,
        "nothing published"
    );
}

#[tokio::test]
async fn a_checkpoint_from_another_cluster_stops_the_relay_until_an_operator_republishes() {
    // Arrange: the checkpoint says it was written on another cluster (a logical copy of the
    // store, say, whose transaction ids mean nothing here).
    let mut app =
        restarted_after("UPDATE relay_checkpoint SET system_identifier = 42 WHERE id = 1").await;
    let metrics = app.command_metrics_addr();

    // Act
    halted(metrics).await;
    a_link_is_stored_not_published(&mut app).await;
    command_service::relay::republish_from(&app.pool, 0)
        .await
        .unwrap();

    // Assert: republish recorded this cluster; the relay resumed by itself and published the
    // link made meanwhile.
    app.wait_until_every_read_model_is_exact(WITHIN).await;
    assert_eq!(scrape(metrics).await.value("linkd_relay_halted"), Some(0.0));
    let recorded: Option<i64> =
        sqlx::query_scalar("SELECT system_identifier FROM relay_checkpoint WHERE id = 1")
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert_ne!(recorded, Some(42));
    assert!(recorded.is_some());
}

#[tokio::test]
async fn a_checkpoint_ahead_of_the_store_stops_the_relay() {
    // Arrange: the checkpoint points past the store's last event, as after restoring the
    // events but not the checkpoint.
    let mut app = restarted_after(
        "UPDATE relay_checkpoint SET global_position = global_position + 1000 WHERE id = 1",
    )
    .await;

    // Act, Assert
    halted(app.command_metrics_addr()).await;
    a_link_is_stored_not_published(&mut app).await;
    command_service::relay::republish_from(&app.pool, 0)
        .await
        .unwrap();
    app.wait_until_every_read_model_is_exact(WITHIN).await;
}

#[tokio::test]
async fn a_store_behind_its_stream_stops_the_relay() {
    // Arrange: a system that published a registration and a link.
    let mut app = spawn_system_with(|_| {}).await;
    app.register("anna").await;
    app.link_by_qr("anna").await;
    app.wait_until_every_read_model_is_exact(WITHIN).await;
    let published = messages_in_stream(&app).await;

    // Act: a command service on the same stream but another event store (restored to a point
    // before those events, then written to): more events than the stream's last position, so
    // only the stream's last event itself, missing from this store, tells.
    let restored = TestDatabase::create("linkd_e2e").await.unwrap();
    let mut settings = test_settings(restored.url.clone());
    settings.metrics_addr = any_port();
    settings.nats_url = app.settings.nats_url.clone();
    settings.stream = app.settings.stream.clone();
    settings.subject_prefix = app.settings.subject_prefix.clone();
    let quiet = run_command_service(settings.clone(), None).await;
    let mut portal = e2e::TestApp::clients_on(&quiet.channel).portal;
    for n in 0..12 {
        portal
            .register_account(e2e::bearer(
                proto::v1::RegisterAccountRequest {
                    account_id: format!("bob-{n}"),
                    email: format!("bob-{n}@example.lu"),
                    language: "en".into(),
                    request_id: String::new(),
                },
                &app.system(),
            ))
            .await
            .unwrap();
    }
    assert!(quiet.stop_gracefully(WITHIN).await);
    settings.relay_enabled = true;
    let behind = run_command_service(settings, None).await;

    // Assert: that instance's relay stops instead of publishing over the stream's history.
    halted(behind.metrics_addr.unwrap()).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(messages_in_stream(&app).await, published);
}
