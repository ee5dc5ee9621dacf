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
    child: Option<std::process::Child>,
}

impl OwnNats {
    /// Starts one (Debian's `/usr/sbin/nats-server`, or `LINKD_TEST_NATS_SERVER`) and waits
    /// until it listens.
    pub async fn start() -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|listener| listener.local_addr())
            .expect("a free port")
            .port();
        let store = std::env::temp_dir().join(format!("linkd-nats-{}", Uuid::new_v4().simple()));
        let mut nats = Self {
            url: format!("nats://127.0.0.1:{port}"),
            port,
            store,
            child: None,
        };
        nats.resume().await;
        nats
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
