//! Scratch PostgreSQL databases: one per test, created with a random name on the test server and
//! dropped (with `FORCE`, so open connections do not keep it) when its guard is dropped, even if
//! the test failed.

use sqlx::{Connection as _, PgConnection, PgPool};
use uuid::Uuid;

/// The server that test databases are created on (`LINKD_TEST_DATABASE_URL`).
pub fn admin_url() -> String {
    std::env::var("LINKD_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned())
}

/// `url` with its database replaced by `database`.
pub fn with_database(url: &str, database: &str) -> String {
    match url.rsplit_once('/') {
        Some((server, _)) => format!("{server}/{database}"),
        None => format!("{url}/{database}"),
    }
}

/// A database that exists for one test and is dropped with this guard.
#[derive(Debug)]
pub struct TestDatabase {
    /// Its name: the prefix given to [`TestDatabase::create`], `_`, a random UUID.
    pub name: String,
    /// A URL that connects to it.
    pub url: String,
}

impl TestDatabase {
    /// Creates an empty database named `<prefix>_<uuid>` (migrating it is the caller's job).
    pub async fn create(prefix: &str) -> anyhow::Result<Self> {
        let name = format!("{prefix}_{}", Uuid::new_v4().simple());
        let mut admin = PgConnection::connect(&admin_url()).await?;
        sqlx::query(&format!("CREATE DATABASE \"{name}\""))
            .execute(&mut admin)
            .await?;
        admin.close().await?;
        Ok(Self {
            url: with_database(&admin_url(), &name),
            name,
        })
    }

    /// A pool on it, with sqlx's default options.
    pub async fn connect(&self) -> sqlx::Result<PgPool> {
        PgPool::connect(&self.url).await
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        let name = self.name.clone();
        // A fresh runtime on its own thread: Drop may run inside (or outside) a runtime.
        let dropped = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            runtime.block_on(async {
                let mut admin = PgConnection::connect(&admin_url()).await?;
                sqlx::query(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))
                    .execute(&mut admin)
                    .await?;
                anyhow::Ok(())
            })
        })
        .join();
        if !matches!(dropped, Ok(Ok(()))) {
            eprintln!("could not drop test database {}", self.name);
        }
    }
}
