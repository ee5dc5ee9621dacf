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
    /// The monitoring port (`-m`), for cluster nodes.
    monitor: Option<u16>,
    /// The server's name (`-n`), for cluster nodes.
    name: Option<String>,
    store: PathBuf,
    /// Extra arguments (a cluster node's name, cluster port and routes).
    args: Vec<String>,
    child: Option<std::process::Child>,
}

/// The nats-server binary the tests start: `LINKD_TEST_NATS_SERVER`, or Debian's.
pub fn nats_server_binary() -> String {
    std::env::var("LINKD_TEST_NATS_SERVER").unwrap_or_else(|_| "/usr/sbin/nats-server".to_owned())
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
        Self::start_with(&[]).await
    }

    /// [`OwnNats::start`] with more server arguments (`--user`, `--pass`, `--auth`, ...).
    pub async fn start_with(args: &[&str]) -> Self {
        let args = args.iter().map(|arg| (*arg).to_owned()).collect();
        let mut nats = Self::new(free_port(), None, args);
        nats.resume().await;
        nats
    }

    fn new(port: u16, name: Option<String>, mut args: Vec<String>) -> Self {
        let store = std::env::temp_dir().join(format!("linkd-nats-{}", Uuid::new_v4().simple()));
        let monitor = name.as_ref().map(|name| {
            let monitor = free_port();
            args.extend([
                "-n".to_owned(),
                name.clone(),
                "-m".to_owned(),
                monitor.to_string(),
            ]);
            monitor
        });
        Self {
            url: format!("nats://127.0.0.1:{port}"),
            port,
            monitor,
            name,
            store,
            args,
            child: None,
        }
    }

    /// The server's name (cluster nodes only).
    pub fn name(&self) -> Option<&str> {
        self.name.as_deref()
    }

    /// Its JetStream store directory (`-sd`): a test may change it while the server is stopped.
    pub fn store(&self) -> &std::path::Path {
        &self.store
    }

    /// Whether the process runs (it was started and not stopped since).
    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// The JSON a monitoring endpoint (`/connz`, `/jsz`, ...) answers; `None` if the server has
    /// no monitoring port or does not answer.
    pub async fn monitoring(&self, path: &str) -> Option<serde_json::Value> {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let mut socket = tokio::net::TcpStream::connect(("127.0.0.1", self.monitor?))
            .await
            .ok()?;
        let request = format!("GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n");
        socket.write_all(request.as_bytes()).await.ok()?;
        let mut answer = Vec::new();
        tokio::time::timeout(Duration::from_secs(5), socket.read_to_end(&mut answer))
            .await
            .ok()?
            .ok()?;
        let answer = String::from_utf8(answer).ok()?;
        let (head, body) = answer.split_once("\r\n\r\n")?;
        head.starts_with("HTTP/1.")
            .then(|| serde_json::from_str(body).ok())
            .flatten()
    }

    /// The names of the client connections this server holds now (`/connz`).
    pub async fn connection_names(&self) -> Vec<String> {
        let Some(connz) = self.monitoring("/connz").await else {
            return Vec::new();
        };
        connz["connections"]
            .as_array()
            .map(|connections| {
                connections
                    .iter()
                    .filter_map(|connection| connection["name"].as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The name of the JetStream meta leader as this server sees it (`/jsz`).
    pub async fn meta_leader(&self) -> Option<String> {
        let jsz = self.monitoring("/jsz").await?;
        jsz["meta_cluster"]["leader"]
            .as_str()
            .filter(|leader| !leader.is_empty())
            .map(str::to_owned)
    }

    /// Kills the server (SIGKILL; its store stays).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server again on the same port and store, and waits until it listens.
    pub async fn resume(&mut self) {
        let child = std::process::Command::new(nats_server_binary())
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
                    "--cluster".to_owned(),
                    format!("nats://127.0.0.1:{cluster_port}"),
                    "--routes".to_owned(),
                    routes.clone(),
                ];
                OwnNats::new(free_port(), Some(format!("{name}-{n}")), args)
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
        self.seed_list_from(0)
    }

    /// Every node's URL, comma-separated, node `first` first and the others after it in order.
    pub fn seed_list_from(&self, first: usize) -> String {
        let size = self.nodes.len();
        (0..size)
            .map(|n| self.nodes[(first + n) % size].url.as_str())
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The node holding a client connection named `name` now, if a running node does.
    pub async fn node_with_connection(&self, name: &str) -> Option<usize> {
        for (n, node) in self.nodes.iter().enumerate() {
            if node.is_running() && node.connection_names().await.iter().any(|c| c == name) {
                return Some(n);
            }
        }
        None
    }

    /// The JetStream meta leader, once every running node names the same one.
    pub async fn meta_leader(&self) -> usize {
        eventually(
            Duration::from_secs(30),
            "one JetStream meta leader",
            || async {
                let mut named = None;
                for node in self.nodes.iter().filter(|node| node.is_running()) {
                    let leader = node.meta_leader().await?;
                    if named.get_or_insert_with(|| leader.clone()) != &leader {
                        return None;
                    }
                }
                let named = named?;
                self.nodes
                    .iter()
                    .position(|node| node.name() == Some(named.as_str()))
            },
        )
        .await
    }
}
