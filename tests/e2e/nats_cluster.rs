//! linkd on a NATS cluster (issue 18): a three-node JetStream cluster of the test's own on
//! loopback, both services given its seed list.

use std::time::Duration;

use async_nats::jetstream;
use e2e::{OwnNatsCluster, spawn_system_on_and};

const WITHIN: Duration = Duration::from_secs(30);

#[tokio::test]
async fn both_services_on_a_seed_list_link_through_a_stream_the_relay_made_with_three_replicas() {
    // Arrange: three nodes; the services know all three, and the relay creates the stream.
    let cluster = OwnNatsCluster::start(3).await;
    let mut app = spawn_system_on_and(cluster.seed_list(), |settings| {
        settings.stream_replicas = 3;
    })
    .await;

    // Act: a link flow end to end.
    app.register("anna").await;
    app.link_by_qr("anna").await;

    // Assert: every read model holds it, through a stream kept on three nodes.
    app.wait_until_every_read_model_is_exact(WITHIN).await;
    let name = app.stream.as_ref().expect("a stream").name.clone();
    let seeds: Vec<String> = cluster.nodes.iter().map(|node| node.url.clone()).collect();
    let client = async_nats::connect(seeds)
        .await
        .expect("connecting to the cluster");
    let mut stream = jetstream::new(client)
        .get_stream(&name)
        .await
        .expect("the relay's stream");
    let info = stream.info().await.expect("its state").clone();
    assert_eq!(info.config.num_replicas, 3);
    let replicas = info.cluster.expect("clustered").replicas.len();
    assert_eq!(replicas, 2, "a leader and two replicas");
    assert!(info.state.messages >= 4, "{:?}", info.state);
    // The durable consumer, created without a replica count, is kept on three nodes too.
    let mut consumer = stream
        .get_consumer::<jetstream::consumer::pull::Config>("linkd-test-read-models")
        .await
        .expect("the read models' consumer");
    let consumer = consumer.info().await.expect("its state");
    let replicas = consumer.cluster.as_ref().expect("clustered").replicas.len();
    assert_eq!(replicas, 2, "the consumer's leader and two replicas");
}
