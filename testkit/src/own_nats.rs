//! A nats-server of one test's own, for tests that stop and start NATS under a running system:
//! the shared server must keep running for every other test.

use std::path::PathBuf;
use std::time::Duration;

use uuid::Uuid;

use crate::eventually;

/// A nats-server process of one test's own (for tests that stop and start NATS), on a free
/// loopback port with its own store; killed, and its store removed, when dropped.
#[derive(Debug)]
pub struct OwnNats {
    /// `nats://127.0.0.1:<port>`.
    pub url: String,
    port: u16,
    store: PathBuf,
    /// Extra arguments (a cluster node's name, cluster port and routes).
    args: Vec<String>,
    child: Option<std::process::Child>,
}

/// A free loopback port (bound, then released).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("a free port")
        .port()
}

impl OwnNats {
    /// Starts one (Debian's `/usr/sbin/nats-server`, or `LINKD_TEST_NATS_SERVER`) and waits
    /// until it listens.
    pub async fn start() -> Self {
        let mut nats = Self::new(free_port(), Vec::new());
        nats.resume().await;
        nats
    }

    fn new(port: u16, args: Vec<String>) -> Self {
        let store = std::env::temp_dir().join(format!("linkd-nats-{}", Uuid::new_v4().simple()));
        Self {
            url: format!("nats://127.0.0.1:{port}"),
            port,
            store,
            args,
            child: None,
        }
    }

    /// Kills the server (its store stays).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server again on the same port and store, and waits until it listens.
    pub async fn resume(&mut self) {
        let binary = std::env::var("LINKD_TEST_NATS_SERVER")
            .unwrap_or_else(|_| "/usr/sbin/nats-server".to_owned());
        let child = std::process::Command::new(binary)
            .args([
                "-a",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-js",
                "-sd",
            ])
            .arg(&self.store)
            .args(&self.args)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("starting nats-server");
        self.child = Some(child);
        let addr = format!("127.0.0.1:{}", self.port);
        eventually(Duration::from_secs(10), "nats-server listening", || async {
            tokio::net::TcpStream::connect(&addr).await.ok().map(|_| ())
        })
        .await;
    }
}

impl Drop for OwnNats {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.store);
    }
}

/// A JetStream cluster of the test's own: `size` nats-server processes on loopback, each with its
/// own client port, cluster port and store, routed to one another (`--cluster_name`, `-n`,
/// `--cluster`, `--routes`). Dropped, every node is killed and its store removed.
#[derive(Debug)]
pub struct OwnNatsCluster {
    /// The nodes, in seed-list order.
    pub nodes: Vec<OwnNats>,
}

impl OwnNatsCluster {
    /// Starts `size` nodes and waits until the cluster's JetStream can place a stream on all of
    /// them.
    pub async fn start(size: usize) -> Self {
        let name = format!("linkd-{}", &Uuid::new_v4().simple().to_string()[..8]);
        let cluster_ports: Vec<u16> = (0..size).map(|_| free_port()).collect();
        let routes = cluster_ports
            .iter()
            .map(|port| format!("nats://127.0.0.1:{port}"))
            .collect::<Vec<_>>()
            .join(",");
        let mut nodes: Vec<OwnNats> = cluster_ports
            .iter()
            .enumerate()
            .map(|(n, cluster_port)| {
                let args = vec![
                    "--cluster_name".to_owned(),
                    name.clone(),
                    "-n".to_owned(),
                    format!("{name}-{n}"),
                    "--cluster".to_owned(),
                    format!("nats://127.0.0.1:{cluster_port}"),
                    "--routes".to_owned(),
                    routes.clone(),
                ];
                OwnNats::new(free_port(), args)
            })
            .collect();
        for node in &mut nodes {
            node.resume().await;
        }
        let cluster = Self { nodes };
        let seeds: Vec<String> = cluster.nodes.iter().map(|node| node.url.clone()).collect();
        eventually(
            Duration::from_secs(30),
            "the cluster's JetStream answering",
            || {
                let seeds = seeds.clone();
                async move {
                    // A stream on every node, created and deleted: JetStream is clustered
                    // and has all its peers. (async-nats's account query does not parse 2.9's
                    // answer.)
                    let context =
                        async_nats::jetstream::new(async_nats::connect(seeds).await.ok()?);
                    let name = format!("PROBE_{}", Uuid::new_v4().simple());
                    context
                        .create_stream(async_nats::jetstream::stream::Config {
                            name: name.clone(),
                            subjects: vec![format!("probe.{name}")],
                            num_replicas: size,
                            ..Default::default()
                        })
                        .await
                        .ok()?;
                    context.delete_stream(&name).await.ok().map(|_| ())
                }
            },
        )
        .await;
        cluster
    }

    /// Every node's URL, comma-separated (a seed list).
    pub fn seed_list(&self) -> String {
        self.nodes
            .iter()
            .map(|node| node.url.as_str())
            .collect::<Vec<_>>()
            .join(",")
    }
}
