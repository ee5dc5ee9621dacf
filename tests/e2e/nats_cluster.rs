//! linkd on a NATS cluster (issue 18): a three-node JetStream cluster of the test's own on
//! loopback, both services given its seed list.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_nats::jetstream;
use e2e::mail::SmtpSink;
use e2e::{
    OwnNatsCluster, TestApp, eventually, nats_server_binary, spawn_read_side_with,
    spawn_system_on_and, spawn_system_on_with_mail_and,
};
use tokio::task::JoinHandle;
use tokio::time::Instant;

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

#[tokio::test]
async fn services_started_while_the_first_node_of_their_seed_list_is_down_connect_to_another() {
    // Arrange: the relay made the stream, and the projection service its consumer, with all
    // three nodes up; then both services stop, and a node goes down.
    let mut cluster = OwnNatsCluster::start(3).await;
    let mut app = spawn_system_on_and(cluster.seed_list(), |settings| {
        settings.stream_replicas = 3;
    })
    .await;
    app.register("anna").await;
    app.link_by_qr("anna").await;
    app.wait_until_every_read_model_is_exact(WITHIN).await;
    assert!(app.stop_command_service_gracefully(WITHIN).await);
    let read = app.read.take().expect("a read side");
    let mut read_settings = read.settings.clone();
    assert!(read.stop_gracefully(WITHIN).await);
    // Not the meta leader: NATS 2.9 can take minutes to place anything after losing the leader
    // of a cluster that has just formed, which is the server's matter, not the client's
    // (the test below kills whichever node the services use).
    let down = (cluster.meta_leader().await + 1) % cluster.nodes.len();
    cluster.nodes[down].stop();
    let seeds = cluster.seed_list_from(down);

    // Act: both services start with the stopped node first in their seed list.
    app.restart_command_service(|settings| settings.nats_url = seeds.clone(), None)
        .await;
    read_settings.nats_url = seeds.clone();
    app.read = Some(spawn_read_side_with(read_settings).await);
    app.link_by_qr("anna").await;

    // Assert: they reached the cluster through the other nodes.
    app.wait_until_every_read_model_is_exact(WITHIN).await;
    for name in ["linkd-relay", "linkd-projection"] {
        let node = eventually(WITHIN, name, || cluster.node_with_connection(name)).await;
        assert_ne!(node, down, "{name}");
    }
}

/// What one client linking devices until told to stop had acknowledged.
struct Acknowledged {
    app: TestApp,
    devices: BTreeSet<String>,
}

/// Registers an account and links a device to it, over and over, until `stop` is set.
fn link_until(mut app: TestApp, stop: Arc<AtomicBool>) -> JoinHandle<Acknowledged> {
    tokio::spawn(async move {
        let mut devices = BTreeSet::new();
        for n in 0.. {
            if stop.load(Ordering::SeqCst) {
                break;
            }
            let holder = format!("holder-{n}");
            app.register(&holder).await;
            devices.insert(app.link_by_qr(&holder).await.device_id);
        }
        Acknowledged { app, devices }
    })
}

#[tokio::test]
async fn the_node_each_service_is_connected_to_killed_under_load_loses_and_doubles_nothing() {
    // Arrange: both services on the cluster's seed list, a stream on three nodes, emails on.
    let mut cluster = OwnNatsCluster::start(3).await;
    let sink = SmtpSink::start().await;
    let app = spawn_system_on_with_mail_and(cluster.seed_list(), sink.settings(), |settings| {
        settings.stream_replicas = 3;
    })
    .await;
    let stream = app.stream.as_ref().expect("a stream").name.clone();
    let relay = eventually(WITHIN, "the relay connected", || {
        cluster.node_with_connection("linkd-relay")
    })
    .await;
    let projection = eventually(WITHIN, "the consumer connected", || {
        cluster.node_with_connection("linkd-projection")
    })
    .await;
    let stop = Arc::new(AtomicBool::new(false));
    let load = link_until(app, stop.clone());
    tokio::time::sleep(Duration::from_secs(2)).await;

    // Act: kill -9 the node the relay is connected to and, if another, the consumer's; each
    // comes back 10 s later (one at a time: two down of three would stop the stream).
    let mut victims = vec![relay];
    if projection != relay {
        victims.push(projection);
    }
    let mut last_return = Instant::now();
    for &node in &victims {
        cluster.nodes[node].stop();
        tokio::time::sleep(Duration::from_secs(10)).await;
        cluster.nodes[node].resume().await;
        last_return = Instant::now();
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    stop.store(true, Ordering::SeqCst);
    let Acknowledged { app, devices } = load.await.expect("the load ran");
    let load_stopped = Instant::now();

    // Assert: the read models converge on the store ...
    app.wait_until_every_read_model_is_exact(Duration::from_secs(120))
        .await;
    let converged = load_stopped.elapsed();
    let since_return = last_return.elapsed();
    // ... which holds every acknowledged link ...
    let linked: BTreeSet<String> =
        sqlx::query_scalar("SELECT aggregate_id FROM events WHERE event_type = 'DeviceLinked'")
            .fetch_all(&app.pool)
            .await
            .expect("reading the links")
            .into_iter()
            .collect();
    assert_eq!(
        linked, devices,
        "every acknowledged link is stored, and only those"
    );
    // ... and the stream every stored event once ...
    let events = u64::try_from(app.event_count().await).expect("a count");
    let seeds: Vec<String> = cluster.nodes.iter().map(|node| node.url.clone()).collect();
    let context = jetstream::new(async_nats::connect(seeds).await.expect("the cluster"));
    let ids = message_ids(&context, &stream, events).await;
    let distinct: BTreeSet<&String> = ids.iter().collect();
    assert_eq!(ids.len(), distinct.len(), "no event published twice");
    assert_eq!(ids.len() as u64, events, "every event published");
    // ... and one confirmation email went out per link.
    sink.wait_for(devices.len(), WITHIN).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let mails = sink.messages();
    let message_ids: BTreeSet<String> = mails
        .iter()
        .filter_map(|mail| mail.header("Message-ID"))
        .collect();
    assert_eq!(mails.len(), devices.len(), "one email per link");
    assert_eq!(message_ids.len(), devices.len(), "no email sent twice");
    eprintln!(
        "nodes killed: {} (relay on node {relay}, consumer on node {projection}); \
         acknowledged links: {}; events in the store: {events}, in the stream: {}; \
         read models exact {:.1} s after the load stopped, {:.1} s after the last node \
         returned",
        victims.len(),
        devices.len(),
        ids.len(),
        converged.as_secs_f64(),
        since_return.as_secs_f64(),
    );
}

/// The message id of every message in `stream`, read in order until `expected` were seen or
/// the stream has no more.
async fn message_ids(context: &jetstream::Context, stream: &str, expected: u64) -> Vec<String> {
    let mut stream = context.get_stream(stream).await.unwrap();
    let last = stream.info().await.unwrap().state.last_sequence;
    let mut ids = Vec::new();
    for sequence in 1..=last {
        let message = stream
            .get_raw_message(sequence)
            .await
            .unwrap_or_else(|e| panic!("message {sequence} of {last} (expected {expected}): {e}"));
        ids.push(
            message
                .headers
                .get("Nats-Msg-Id")
                .map(|id| id.as_str().to_owned())
                .unwrap_or_default(),
        );
    }
    ids
}

#[test]
fn the_example_cluster_configuration_is_one_nats_server_accepts() {
    // deploy/nats as shipped, for nats-server 2.10 or later; the server here may be Debian's
    // 2.9, which refuses only `sync_interval` (the configuration says so): without that line,
    // every node's file must be valid.
    let shipped = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/nats");
    let version = std::process::Command::new(nats_server_binary())
        .arg("--version")
        .output()
        .expect("running nats-server --version");
    let version = String::from_utf8_lossy(&version.stdout).into_owned();
    let copy = std::env::temp_dir().join(format!("linkd-deploy-nats-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&copy).expect("a scratch directory");
    for entry in std::fs::read_dir(&shipped).expect("deploy/nats") {
        let path = entry.expect("an entry").path();
        let mut text = std::fs::read_to_string(&path).expect("a configuration file");
        if version.contains("v2.9.") {
            text = text
                .lines()
                .filter(|line| !line.trim_start().starts_with("sync_interval:"))
                .map(|line| format!("{line}\n"))
                .collect();
        }
        std::fs::write(copy.join(path.file_name().expect("a name")), text).expect("copying");
    }
    let cluster = std::fs::read_to_string(shipped.join("cluster.conf")).expect("cluster.conf");
    assert!(cluster.contains("\n  sync_interval: always\n"), "{cluster}");
    for node in ["n1.conf", "n2.conf", "n3.conf"] {
        let checked = std::process::Command::new(nats_server_binary())
            .current_dir(&copy)
            .args(["-t", "-c", node])
            .output()
            .expect("running nats-server -t");
        assert!(
            checked.status.success(),
            "{node} ({version}): {}",
            String::from_utf8_lossy(&checked.stderr)
        );
    }
    let _ = std::fs::remove_dir_all(&copy);
}

#[tokio::test]
async fn both_services_link_through_a_nats_server_that_requires_a_password() {
    // Arrange: a server that admits only linkd's user; the password is in a file.
    let nats = e2e::OwnNats::start_with(&["--user", "linkd", "--pass", "bus-password"]).await;
    let password = std::env::temp_dir().join(format!("linkd-nats-pw-{}", uuid::Uuid::new_v4()));
    std::fs::write(&password, "bus-password\n").unwrap();
    let mut app = spawn_system_on_and(nats.url.clone(), |settings| {
        settings.nats_auth.user = Some(("linkd".into(), password.clone()));
    })
    .await;

    // Act, Assert: a link flow reaches every read model through it.
    app.register("anna").await;
    app.link_by_qr("anna").await;
    app.wait_until_every_read_model_is_exact(WITHIN).await;
    let _ = std::fs::remove_file(&password);
}
