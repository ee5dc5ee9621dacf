//! A PostgreSQL cluster of one test's own, for tests that crash PostgreSQL under a running
//! system: the shared server must keep running for every other test, so such a test makes its
//! own cluster (`initdb`) in a scratch directory, on a free loopback port, and crashes that one.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use uuid::Uuid;

use crate::eventually;

/// A PostgreSQL cluster of one test's own, on a free loopback port with trust authentication;
/// stopped, and its directory removed, when dropped.
#[derive(Debug)]
pub struct OwnPostgres {
    /// `postgres://postgres@127.0.0.1:<port>/postgres`.
    pub url: String,
    port: u16,
    dir: PathBuf,
    bin: PathBuf,
}

impl OwnPostgres {
    /// Creates a cluster (`initdb` from `LINKD_TEST_PG_BIN`, else `pg_config --bindir`, else
    /// Debian's newest `/usr/lib/postgresql/<version>/bin`) with `settings` (`name=value`, as
    /// `postgres -c`), starts it and waits until it accepts connections. As root, the cluster
    /// runs as the `postgres` user (PostgreSQL refuses to run as root).
    pub async fn start(settings: &[&str]) -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|listener| listener.local_addr())
            .expect("a free port")
            .port();
        let dir = std::env::temp_dir().join(format!("linkd-pg-{}", Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).expect("a cluster directory");
        let cluster = Self {
            url: format!("postgres://postgres@127.0.0.1:{port}/postgres"),
            port,
            dir,
            bin: bin_dir(),
        };
        if as_root() {
            let chown = Command::new("chown")
                .args(["-R", "postgres:"])
                .arg(&cluster.dir)
                .output()
                .expect("running chown");
            assert!(chown.status.success(), "chown: {chown:?}");
        }
        let initdb = cluster.run(
            "initdb",
            &[
                "-D",
                &cluster.data().to_string_lossy(),
                "-U",
                "postgres",
                "--auth=trust",
                "--no-sync",
            ],
        );
        assert!(initdb.status.success(), "initdb: {}", describe(&initdb));
        let mut config = format!(
            "port = {port}\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = '{}'\n",
            cluster.dir.display()
        );
        for setting in settings {
            config.push_str(setting);
            config.push('\n');
        }
        let conf = cluster.data().join("postgresql.conf");
        let mut existing = std::fs::read_to_string(&conf).expect("reading postgresql.conf");
        existing.push_str(&config);
        std::fs::write(&conf, existing).expect("writing postgresql.conf");
        cluster.resume().await;
        cluster
    }

    /// A URL of database `name` on this cluster.
    pub fn database_url(&self, name: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{name}", self.port)
    }

    /// Stops the server at once, as a crash does (`pg_ctl stop -m immediate`: no checkpoint, the
    /// next start recovers from the WAL).
    pub fn crash(&self) {
        let stopped = self.stop_immediately();
        assert!(
            stopped.status.success(),
            "pg_ctl stop: {}",
            describe(&stopped)
        );
    }

    fn stop_immediately(&self) -> Output {
        self.run(
            "pg_ctl",
            &[
                "stop",
                "-D",
                &self.data().to_string_lossy(),
                "-m",
                "immediate",
            ],
        )
    }

    /// Starts the server (again) and waits until it accepts connections.
    pub async fn resume(&self) {
        let log = self.dir.join("server.log");
        let started = self.run(
            "pg_ctl",
            &[
                "start",
                "-D",
                &self.data().to_string_lossy(),
                "-l",
                &log.to_string_lossy(),
                "-w",
            ],
        );
        assert!(
            started.status.success(),
            "pg_ctl start: {}\n{}",
            describe(&started),
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        let url = self.url.clone();
        eventually(Duration::from_secs(30), "PostgreSQL accepting", || {
            let url = url.clone();
            async move {
                use sqlx::Connection as _;
                sqlx::PgConnection::connect(&url).await.ok().map(|_| ())
            }
        })
        .await;
    }

    fn data(&self) -> PathBuf {
        self.dir.join("data")
    }

    /// Runs one of PostgreSQL's programs, as `postgres` when this process is root.
    fn run(&self, program: &str, args: &[&str]) -> Output {
        let program = self.bin.join(program);
        let mut command = if as_root() {
            let mut command = Command::new("runuser");
            command.args(["-u", "postgres", "--"]).arg(program);
            command
        } else {
            Command::new(program)
        };
        command
            .args(args)
            .current_dir(&self.dir)
            .output()
            .expect("running a PostgreSQL program")
    }
}

impl Drop for OwnPostgres {
    fn drop(&mut self) {
        if self.data().join("postmaster.pid").exists() {
            let _ = self.stop_immediately();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn as_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|out| out.stdout.trim_ascii() == b"0")
}

fn bin_dir() -> PathBuf {
    if let Ok(bin) = std::env::var("LINKD_TEST_PG_BIN") {
        return PathBuf::from(bin);
    }
    if let Ok(out) = Command::new("pg_config").arg("--bindir").output()
        && out.status.success()
    {
        let bin = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        if bin.join("initdb").exists() {
            return bin;
        }
    }
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|dir| dir.filter_map(|entry| Some(entry.ok()?.path())).collect())
        .unwrap_or_default();
    versions.sort_by_key(|path| {
        path.file_name()
            .and_then(|name| name.to_str()?.parse::<u32>().ok())
    });
    versions
        .pop()
        .map(|version| version.join("bin"))
        .filter(|bin| Path::new(bin).join("initdb").exists())
        .expect("PostgreSQL's programs (set LINKD_TEST_PG_BIN to the directory holding initdb)")
}

fn describe(output: &Output) -> String {
    format!(
        "{}: {}{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}
