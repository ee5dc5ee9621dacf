//! The stream is bounded: the relay creates it with the configured age and size limits, and
//! brings an existing stream to new limits when they change.

use std::time::Duration;

use async_nats::jetstream;
use e2e::{eventually, spawn_system_with};

#[tokio::test]
async fn the_relay_creates_the_stream_with_its_bounds_and_follows_new_ones() {
    // Arrange: seven days and 64 MiB.
    let mut app = spawn_system_with(|settings| {
        settings.stream_limits = command_service::relay::StreamLimits {
            max_age: Duration::from_secs(7 * 24 * 3600),
            max_bytes: 64 << 20,
        };
    })
    .await;
    app.register("anna").await;
    let stream = app.stream.as_ref().unwrap();
    let context = jetstream::new(async_nats::connect(&stream.nats_url).await.unwrap());
    let name = stream.name.clone();
    let bounds = |context: jetstream::Context, name: String| async move {
        let mut stream = context.get_stream(&name).await.ok()?;
        let config = stream.info().await.ok()?.config.clone();
        Some((config.max_age, config.max_bytes))
    };

    // Assert 1: created with the bounds.
    let created = eventually(Duration::from_secs(10), "the stream", || {
        bounds(context.clone(), name.clone())
    })
    .await;
    assert_eq!(created, (Duration::from_secs(7 * 24 * 3600), 64 << 20));

    // Act: the command service restarts with other bounds.
    app.restart_command_service(
        |settings| {
            settings.stream_limits = command_service::relay::StreamLimits {
                max_age: Duration::from_secs(24 * 3600),
                max_bytes: 32 << 20,
            };
        },
        None,
    )
    .await;
    app.register("bob").await;

    // Assert 2: the stream follows.
    eventually(Duration::from_secs(10), "the new bounds", || {
        let (context, name) = (context.clone(), name.clone());
        async move {
            let now = bounds(context, name).await?;
            (now == (Duration::from_secs(24 * 3600), 32 << 20)).then_some(())
        }
    })
    .await;
}
