//! The data keys events are sealed under (see [`crate::sealing`]): one per data subject, created
//! with the subject's first event, kept wrapped in `data_keys`.
//!
//! Keys for *sealing* are cached in memory: a key erased while cached only makes what is sealed
//! with it unreadable at once, which is what erasure wants. Keys for *opening* are never taken
//! from the cache: every load reads each row's key with the row, so nothing is opened once its
//! key is erased.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;

use sqlx::PgPool;

use super::{Loaded, StoreError, Stored};
use crate::sealing::{DataKey, Keks};

/// The most keys cached for sealing; the cache starts again empty when full.
const CACHED: usize = 10_000;

/// The KEKs and the cache of data keys.
pub(crate) struct Keyring {
    pub(super) keks: Keks,
    cache: Mutex<HashMap<String, DataKey>>,
}

impl Keyring {
    pub(super) fn new(keks: Keks) -> Self {
        Self {
            keks,
            cache: Mutex::new(HashMap::new()),
        }
    }

    fn cached(&self, subject: &str) -> Option<DataKey> {
        self.cache.lock().ok()?.get(subject).cloned()
    }

    /// Drops the keys of `subjects` from the cache (they were just erased).
    pub(super) fn forget(&self, subjects: &[String]) {
        if let Ok(mut cache) = self.cache.lock() {
            for subject in subjects {
                cache.remove(subject);
            }
        }
    }

    /// A new key for `subject`, and its row for `data_keys`, to be inserted by the statement that
    /// writes the subject's first events ([`super::EventStore::commit_events`]): one write
    /// transaction instead of two for a subject that starts with its aggregate.
    pub(super) fn fresh(&self, subject: &str) -> (DataKey, NewKey) {
        let (key, bytes) = DataKey::generate();
        let (kek_id, wrapped) = self.keks.wrap(subject, &bytes);
        let row = NewKey {
            subject: subject.to_owned(),
            kek_id,
            wrapped,
        };
        (key, row)
    }

    /// Whether a key for `subject` is cached.
    pub(super) fn is_cached(&self, subject: &str) -> bool {
        self.cached(subject).is_some()
    }

    /// Remembers `key` for sealing more of `subject`'s events.
    pub(super) fn remember(&self, subject: &str, key: &DataKey) {
        if let Ok(mut cache) = self.cache.lock() {
            if cache.len() >= CACHED {
                cache.clear();
            }
            cache.insert(subject.to_owned(), key.clone());
        }
    }

    /// The key to seal `subject`'s events with: cached, stored, or created now (a concurrent
    /// creator's key wins, and is the one returned).
    pub(super) async fn for_sealing(
        &self,
        pool: &PgPool,
        subject: &str,
    ) -> Result<DataKey, StoreError> {
        if let Some(key) = self.cached(subject) {
            return Ok(key);
        }
        let (fresh, bytes) = DataKey::generate();
        let (kek_id, wrapped) = self.keks.wrap(subject, &bytes);
        // A row committed by another writer after this statement's snapshot makes the INSERT do
        // nothing and stays invisible to the SELECT: the statement is then run again.
        for _ in 0..3 {
            let row: Option<(bool, String, Option<Vec<u8>>)> = sqlx::query_as(
                "WITH created AS ( \
                     INSERT INTO data_keys (subject, kek_id, wrapped) VALUES ($1, $2, $3) \
                     ON CONFLICT (subject) DO NOTHING RETURNING kek_id, wrapped) \
                 SELECT true, kek_id, wrapped FROM created \
                 UNION ALL \
                 SELECT false, kek_id, wrapped FROM data_keys \
                 WHERE subject = $1 AND NOT EXISTS (SELECT 1 FROM created)",
            )
            .bind(subject)
            .bind(&kek_id)
            .bind(&wrapped)
            .fetch_optional(pool)
            .await?;
            let key = match row {
                None => continue,
                Some((true, ..)) => fresh,
                Some((false, _, None)) => return Err(StoreError::Erased(subject.to_owned())),
                Some((false, stored_kek, Some(stored))) => {
                    self.keks.unwrap(subject, &stored_kek, &stored)?
                }
            };
            self.remember(subject, &key);
            return Ok(key);
        }
        Err(StoreError::Corrupt(format!(
            "the data key of {subject} could neither be created nor read"
        )))
    }
}

/// A data key's row, inserted with the first events sealed under it.
#[derive(Debug)]
pub(super) struct NewKey {
    pub(super) subject: String,
    pub(super) kek_id: String,
    pub(super) wrapped: Vec<u8>,
}

/// Whose data key seals the events `loaded` is about to record: the account the call names, else
/// the account the state belongs to, else the aggregate itself (a link attempt before it knows
/// its account).
pub(super) fn subject_of<A: Stored>(
    loaded: &Loaded<A>,
    metadata: &BTreeMap<String, String>,
) -> String {
    let account = metadata
        .get("account_id")
        .cloned()
        .or_else(|| loaded.aggregate.owner_account(&loaded.aggregate_id));
    match account {
        Some(account) => crate::sealing::account_subject(&account),
        None => format!("{}:{}", A::TYPE, loaded.aggregate_id),
    }
}

/// How long [`rewrap_keys`] waits for keys another transaction holds (an erasure, the sweeper)
/// before it gives up without claiming to be done.
const REWRAP_PATIENCE: std::time::Duration = std::time::Duration::from_secs(60);

/// Wraps every data key still under an older KEK again under the current one, a batch per
/// transaction (rows locked, so an erasure waits and is never undone); returns how many. Keys
/// another transaction holds are skipped and come back until none is left under an older KEK,
/// so once it returns, the older KEKs can be removed from `LINKD_KEK_FILE`; it fails rather
/// than return while one is left after [`REWRAP_PATIENCE`].
pub async fn rewrap_keys(pool: &PgPool, keks: &Keks) -> Result<u64, crate::error::CommandError> {
    let current = keks.current_id().to_owned();
    let mut rewrapped = 0_u64;
    // Patience counts from the last batch that made progress.
    let mut waiting_since = std::time::Instant::now();
    loop {
        let mut tx = pool.begin().await.map_err(StoreError::from)?;
        let batch: Vec<(String, String, Vec<u8>)> = sqlx::query_as(
            "SELECT subject, kek_id, wrapped FROM data_keys \
             WHERE wrapped IS NOT NULL AND kek_id <> $1 \
             ORDER BY subject LIMIT 1000 FOR UPDATE SKIP LOCKED",
        )
        .bind(&current)
        .fetch_all(&mut *tx)
        .await
        .map_err(StoreError::from)?;
        if batch.is_empty() {
            tx.rollback().await.map_err(StoreError::from)?;
            let left: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM data_keys WHERE wrapped IS NOT NULL AND kek_id <> $1",
            )
            .bind(&current)
            .fetch_one(pool)
            .await
            .map_err(StoreError::from)?;
            if left == 0 {
                return Ok(rewrapped);
            }
            if waiting_since.elapsed() > REWRAP_PATIENCE {
                return Err(StoreError::Corrupt(format!(
                    "{left} data keys stayed locked by other transactions for {} s and are \
                     still under an older KEK; run rewrap-keys again, and keep the older KEKs \
                     until it succeeds",
                    REWRAP_PATIENCE.as_secs()
                ))
                .into());
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            continue;
        }
        let mut subjects = Vec::with_capacity(batch.len());
        let mut wrapped_keys = Vec::with_capacity(batch.len());
        for (subject, kek_id, wrapped) in batch {
            let bytes = keks
                .unwrap_bytes(&subject, &kek_id, &wrapped)
                .map_err(StoreError::from)?;
            wrapped_keys.push(keks.wrap(&subject, &bytes).1);
            subjects.push(subject);
        }
        let updated = sqlx::query(
            "UPDATE data_keys k SET kek_id = $1, wrapped = n.wrapped \
             FROM unnest($2::text[], $3::bytea[]) AS n (subject, wrapped) \
             WHERE k.subject = n.subject AND k.wrapped IS NOT NULL",
        )
        .bind(&current)
        .bind(&subjects)
        .bind(&wrapped_keys)
        .execute(&mut *tx)
        .await
        .map_err(StoreError::from)?;
        tx.commit().await.map_err(StoreError::from)?;
        rewrapped += updated.rows_affected();
        waiting_since = std::time::Instant::now();
    }
}
