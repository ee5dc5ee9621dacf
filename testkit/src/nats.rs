//! Scratch JetStream streams: a stream name and subject prefix of one test's own on the shared
//! nats-server, so that tests running at once never see each other's messages; the stream is
//! deleted when its guard is dropped.

use std::time::Duration;

use async_nats::jetstream::{self, stream};
use uuid::Uuid;

/// The NATS server tests share (`LINKD_TEST_NATS_URL`).
pub fn nats_url() -> String {
    std::env::var("LINKD_TEST_NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".to_owned())
}

/// A stream and subject prefix of one test's own, deleted with this guard.
#[derive(Debug)]
pub struct TestStream {
    /// The NATS server.
    pub nats_url: String,
    /// The stream name.
    pub name: String,
    /// The subject prefix (the stream takes `<prefix>.>`).
    pub prefix: String,
}

impl TestStream {
    /// A fresh name `LINKD_T_<uuid>` and prefix `t<uuid>.events` on `nats_url`. Nothing is
    /// created yet: linkd's relay creates its stream, [`TestStream::create`] does it otherwise.
    pub fn new(nats_url: String) -> Self {
        Self::tagged(nats_url, "t")
    }

    /// [`TestStream::new`] with another tag: `LINKD_<TAG>_<uuid>` and `<tag><uuid>.events`, so
    /// that a leftover stream tells which tests made it.
    pub fn tagged(nats_url: String, tag: &str) -> Self {
        let id = Uuid::new_v4().simple().to_string();
        Self {
            nats_url,
            name: format!("LINKD_{}_{id}", tag.to_uppercase()),
            prefix: format!("{}{id}.events", tag.to_lowercase()),
        }
    }

    /// Creates the stream as linkd's relay does: file storage, subjects `<prefix>.>`, and a
    /// two-minute window in which a repeated `Nats-Msg-Id` is dropped.
    pub async fn create(&self) -> anyhow::Result<()> {
        let client = async_nats::connect(seeds(&self.nats_url)).await?;
        jetstream::new(client)
            .create_stream(stream::Config {
                name: self.name.clone(),
                subjects: vec![format!("{}.>", self.prefix)],
                storage: stream::StorageType::File,
                duplicate_window: Duration::from_secs(120),
                ..Default::default()
            })
            .await?;
        Ok(())
    }
}

/// A URL or comma-separated seed list as the client's server list.
fn seeds(urls: &str) -> Vec<&str> {
    urls.split(',')
        .map(str::trim)
        .filter(|url| !url.is_empty())
        .collect()
}

impl Drop for TestStream {
    fn drop(&mut self) {
        let (url, name) = (self.nats_url.clone(), self.name.clone());
        // As for databases: a runtime of its own, on a thread of its own. A server that is gone
        // (a test's own, stopped) took its streams with it, hence the short timeout.
        let _ = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            runtime.block_on(async {
                let client =
                    tokio::time::timeout(Duration::from_secs(2), async_nats::connect(seeds(&url)))
                        .await??;
                let _ = jetstream::new(client).delete_stream(&name).await;
                anyhow::Ok(())
            })
        })
        .join();
    }
}
