//! Erasing an account (docs/adr/0025): `AccountErased` and the destruction of the data keys of
//! the account and of its link attempts' first events, in one transaction. The transaction holds
//! the account's device-slot lock (`credentials::device_slots_lock`), under which the device cap
//! claims links: a link claimed or live makes the erasure refuse, and a claim after it finds the
//! account erased.

use chrono::Utc;
use domain::{Account, AccountCommand, LinkAttemptId};
use proto::consistency::Written;

use super::commit::Rows;
use super::{EventStore, Metadata, StoreError, decide, retry_on_conflict};
use crate::credentials::{links_held, lock_device_slots};
use crate::error::CommandError;

/// What an erasure did.
#[derive(Debug)]
pub(crate) struct Erasure {
    /// The account had been erased before (nothing changed).
    pub(crate) already_erased: bool,
    /// The account's last event.
    pub(crate) position: Written,
}

impl EventStore {
    /// Erases `account_id`: see the module's documentation. Decided again on a conflict.
    pub(crate) async fn erase_account(
        &self,
        account_id: &str,
        metadata: &Metadata,
    ) -> Result<Erasure, CommandError> {
        retry_on_conflict(|| self.erase_once(account_id, metadata)).await
    }

    async fn erase_once(
        &self,
        account_id: &str,
        metadata: &Metadata,
    ) -> Result<Erasure, CommandError> {
        let subject = crate::sealing::account_subject(account_id);
        let mut tx = self.pool.begin().await.map_err(StoreError::from)?;
        lock_device_slots(&mut tx, account_id)
            .await
            .map_err(StoreError::from)?;
        let linked = links_held(&mut tx, account_id)
            .await
            .map_err(StoreError::from)?;
        // The attempts of this account whose first events were sealed under their own key.
        let attempt_subjects: Vec<String> = sqlx::query_scalar(
            "SELECT DISTINCT e.data_subject FROM events e \
             WHERE e.aggregate_type = 'link_attempt' AND e.data_subject LIKE 'link_attempt:%' \
               AND e.aggregate_id IN ( \
                   SELECT aggregate_id FROM events \
                   WHERE data_subject = $1 AND aggregate_type = 'link_attempt') \
             ORDER BY 1",
        )
        .bind(&subject)
        .fetch_all(&mut *tx)
        .await
        .map_err(StoreError::from)?;
        let link_attempt_ids = attempt_subjects
            .iter()
            .filter_map(|s| s.strip_prefix("link_attempt:")?.parse().ok())
            .map(LinkAttemptId)
            .collect();
        let mut loaded = self.load_context::<Account>(account_id).await?;
        let command = AccountCommand::Erase {
            linked_devices: u32::try_from(linked).unwrap_or(u32::MAX),
            link_attempt_ids,
            at: Utc::now(),
        };
        let events = decide(&mut loaded.aggregate, command).await?;
        if events.is_empty() {
            return Ok(Erasure {
                already_erased: true,
                position: loaded.position(),
            });
        }
        // `AccountErased` holds nothing personal; its row names the subject like every other.
        let key = self.keys.for_sealing(&self.pool, &subject).await?;
        let mut rows = Rows::default();
        rows.push(&loaded, &events, (&subject, &key))?;
        let metadata = metadata.to_map();
        let written = self
            .insert_on(&mut *tx, rows, &metadata, None, None)
            .await?;
        let mut subjects = attempt_subjects;
        subjects.push(subject.clone());
        sqlx::query(
            "UPDATE data_keys SET wrapped = NULL, erased_at = now() \
             WHERE subject = ANY($1) AND wrapped IS NOT NULL",
        )
        .bind(&subjects)
        .execute(&mut *tx)
        .await
        .map_err(StoreError::from)?;
        tx.commit().await.map_err(StoreError::from)?;
        self.keys.forget(&subjects);
        self.advance(&mut loaded, &written, (&subject, &key));
        Ok(Erasure {
            already_erased: false,
            position: loaded.position(),
        })
    }
}
