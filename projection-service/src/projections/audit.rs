//! The audit log: one row per event (every aggregate), with its account and device resolved:
//! a link attempt's events before authentication get the account once it is known.

use std::collections::HashMap;

use proto::convert::{TextForm as _, aggregate};
use proto::v1::event_envelope::Event;
use proto::v1::{self, EventEnvelope};
use serde_json::json;
use sqlx::{Postgres, Transaction};

use super::{ProjectionError, Projector, event_time};

#[cfg(test)]
mod tests;

/// The projector's name.
pub(crate) const NAME: &str = "audit";

/// Projects every event into `audit_log`.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct AuditLog;

fn product(product: Option<&v1::LuxTrustProduct>) -> Result<serde_json::Value, ProjectionError> {
    Ok(match product {
        Some(p) => json!({ "kind": v1::ProductKind::text_of(p.kind)?, "serial": p.serial }),
        None => serde_json::Value::Null,
    })
}

/// The device an event is about (if any) and its facts, as JSON; poison if it names a value this
/// build does not know.
fn device_and_details(
    event: &EventEnvelope,
    payload: &Event,
) -> Result<(Option<String>, serde_json::Value), ProjectionError> {
    let own_device =
        (event.aggregate_type == aggregate::DEVICE).then(|| event.aggregate_id.clone());
    Ok(match payload {
        Event::AccountRegistered(registered) => (None, json!({ "language": registered.language })),
        Event::AccountEmailChanged(_) => (None, json!({})),
        Event::PortalLoginRecorded(login) => {
            (None, json!({ "product": product(login.product.as_ref())? }))
        }
        Event::QrIssued(issued) => (None, json!({ "browser_address": issued.browser_address })),
        Event::QrConsumed(consumed) => (
            Some(consumed.device_id.clone()),
            json!({ "link_attempt_id": consumed.link_attempt_id }),
        ),
        Event::LinkRequested(requested) => (
            Some(requested.device_id.clone()),
            json!({ "device_name": requested.device_name,
                    "method": v1::LinkMethod::text_of(requested.method)?,
                    "app_version": requested.app_version,
                    "device_model": requested.device_model }),
        ),
        Event::QrAccepted(accepted) => (
            None,
            json!({ "qr_id": accepted.qr_id,
                    "confirmation_required": accepted.confirm_by.is_some(),
                    "client_address": accepted.client_address }),
        ),
        Event::LinkConfirmed(_) => (None, json!({})),
        Event::LinkDeclined(declined) => (
            None,
            json!({ "reason": v1::DeclineReason::text_of(declined.reason)? }),
        ),
        Event::LuxtrustAuthenticated(authenticated) => (
            None,
            json!({ "product": product(authenticated.product.as_ref())? }),
        ),
        Event::LinkCompleted(_) => (None, json!({})),
        Event::DeviceLinked(linked) => (
            own_device,
            json!({ "link_id": linked.link_id, "device_name": linked.device_name,
                    "method": v1::LinkMethod::text_of(linked.method)?,
                    "product": product(linked.product.as_ref())?,
                    "app_version": linked.app_version }),
        ),
        Event::BiometricsEnabled(_)
        | Event::BiometricsSkipped(_)
        | Event::BiometricsDisabled(_)
        | Event::SecretCodeVerified(_) => (own_device, json!({})),
        Event::SecretCodeFailed(failed) => (
            own_device,
            json!({ "consecutive_failures": failed.consecutive_failures,
                    // Absent from messages an older relay published: the limit was 5 then.
                    "attempts_left": failed.attempts_left.unwrap_or_else(
                        || 5u32.saturating_sub(failed.consecutive_failures)) }),
        ),
        Event::DeviceUnlinked(unlinked) => (
            own_device,
            json!({ "link_id": unlinked.link_id,
                    "reason": v1::UnlinkReason::text_of(unlinked.reason)?,
                    "in_bulk": unlinked.in_bulk }),
        ),
        Event::InactivityWarned(warned) => (
            own_device,
            json!({ "link_id": warned.link_id,
                    "unlink_at": warned.unlink_at.as_ref().map(|t| t.seconds) }),
        ),
        Event::DevicesUnlinkedTogether(together) => (
            None,
            json!({ "device_ids": together.device_ids,
                    "reason": v1::UnlinkReason::text_of(together.reason)? }),
        ),
        Event::AccountErased(erased) => {
            (None, json!({ "link_attempt_ids": erased.link_attempt_ids }))
        }
    })
}

// Both statements reach `audit_log` by key, one probe per link attempt (`OFFSET 0` keeps the
// planner from turning the probes into a join): with `= ANY` over the ids, PostgreSQL without
// fresh statistics combined the indexes on the account and on the aggregate type instead, a scan
// of every link attempt's rows that grew with the table (1.3 s per batch in the bench).

/// The device of each link attempt of `$1` (ids), as its first event's row names it.
pub(crate) const ATTEMPT_DEVICES: &str = "SELECT k.id, r.device_id \
     FROM unnest($1::text[]) AS k (id) \
     CROSS JOIN LATERAL ( \
         SELECT device_id FROM audit_log \
         WHERE aggregate_type = 'link_attempt' AND aggregate_id = k.id AND sequence = 1 \
         OFFSET 0) AS r";

/// Gives the rows of each link attempt of `$1` (ids) that name no account the matching account
/// of `$2`, through their row addresses.
pub(crate) const GIVE_ACCOUNTS: &str = "UPDATE audit_log a SET account_id = g.account \
     FROM (SELECT r.row, k.account \
           FROM unnest($1::text[], $2::text[]) AS k (id, account) \
           CROSS JOIN LATERAL ( \
               SELECT ctid AS row FROM audit_log \
               WHERE aggregate_type = 'link_attempt' AND aggregate_id = k.id \
                 AND account_id = '' \
               OFFSET 0) AS r) AS g \
     WHERE a.ctid = g.row";

/// One event's row, as [`AuditLog`] writes it.
struct Row<'a> {
    event: &'a EventEnvelope,
    account: String,
    /// `None`: a link attempt's event that names its device through the attempt's first one.
    device: Option<String>,
    occurred_at: chrono::DateTime<chrono::Utc>,
    details: serde_json::Value,
}

impl<'a> Row<'a> {
    fn of(event: &'a EventEnvelope) -> Result<Self, ProjectionError> {
        let Some(payload) = &event.event else {
            return Err(ProjectionError::Poison("no event".into()));
        };
        let (device, details) = device_and_details(event, payload)?;
        let device = match device {
            None if event.aggregate_type == aggregate::LINK_ATTEMPT => None,
            other => Some(other.unwrap_or_default()),
        };
        let occurred_at = event_time(event.occurred_at.as_ref())?;
        let account = if event.account_id.is_empty() && event.aggregate_type == aggregate::ACCOUNT {
            event.aggregate_id.clone()
        } else {
            event.account_id.clone()
        };
        Ok(Self {
            event,
            account,
            device,
            occurred_at,
            details,
        })
    }
}

impl AuditLog {
    /// The devices of link attempts `ids` as their first events' rows name them.
    async fn attempt_devices(
        tx: &mut Transaction<'static, Postgres>,
        ids: &[&str],
    ) -> Result<HashMap<String, String>, ProjectionError> {
        if ids.is_empty() {
            return Ok(HashMap::new());
        }
        let found: Vec<(String, String)> = sqlx::query_as(ATTEMPT_DEVICES)
            .bind(ids)
            .fetch_all(&mut **tx)
            .await?;
        Ok(found.into_iter().collect())
    }
}

impl Projector for AuditLog {
    fn name(&self) -> &'static str {
        NAME
    }

    /// Every event, of every aggregate.
    fn aggregate_types(&self) -> Option<&'static [&'static str]> {
        None
    }

    async fn apply<'a>(
        &'a self,
        tx: &'a mut Transaction<'static, Postgres>,
        event: &'a EventEnvelope,
    ) -> Result<(), ProjectionError> {
        self.apply_many(tx, &[event]).await
    }

    /// Up to three statements for any number of events: the devices of the link attempts
    /// involved, the accounts of earlier rows of link attempts that now name one, and every row
    /// in one `INSERT`. Each row is what applying the events one at a time would write: a link
    /// attempt's event names the device of the attempt's first event (stored before the share, or
    /// earlier in it), and an attempt's event that names its account gives it to the attempt's
    /// earlier rows that have none.
    async fn apply_many<'a>(
        &'a self,
        tx: &'a mut Transaction<'static, Postgres>,
        events: &'a [&'a EventEnvelope],
    ) -> Result<(), ProjectionError> {
        let mut rows = events
            .iter()
            .map(|event| Row::of(event))
            .collect::<Result<Vec<_>, _>>()?;

        let mut unresolved: Vec<&str> = rows
            .iter()
            .filter(|row| row.device.is_none())
            .map(|row| row.event.aggregate_id.as_str())
            .collect();
        unresolved.sort_unstable();
        unresolved.dedup();
        let stored = Self::attempt_devices(tx, &unresolved).await?;
        // Per link attempt, as the share goes: the device its first event named (stored before
        // the share, which wins as it would one event at a time, or met earlier in it); its
        // rows in this share still without an account; and the first account it is given here,
        // which the rows stored before the share without one take (one at a time, the first
        // such event gives it to them).
        let mut first_devices: HashMap<String, String> = stored;
        let mut without_account: HashMap<String, Vec<usize>> = HashMap::new();
        let mut given: Vec<(String, String)> = Vec::new();
        for index in 0..rows.len() {
            let row = &mut rows[index];
            if row.event.aggregate_type != aggregate::LINK_ATTEMPT {
                continue;
            }
            let id = row.event.aggregate_id.clone();
            if row.device.is_none() {
                row.device = Some(first_devices.get(&id).cloned().unwrap_or_default());
            }
            if row.event.sequence == 1 {
                let device = row.device.clone().unwrap_or_default();
                first_devices.entry(id.clone()).or_insert(device);
            }
            if row.account.is_empty() {
                without_account.entry(id).or_default().push(index);
                continue;
            }
            let account = row.account.clone();
            if !given.iter().any(|(given_id, _)| *given_id == id) {
                given.push((id.clone(), account.clone()));
            }
            for earlier in without_account.remove(&id).unwrap_or_default() {
                rows[earlier].account.clone_from(&account);
            }
        }
        if !given.is_empty() {
            let (ids, accounts): (Vec<String>, Vec<String>) = given.into_iter().unzip();
            // Before the share's rows go in: only rows stored before it take the account here.
            sqlx::query(GIVE_ACCOUNTS)
                .bind(&ids)
                .bind(&accounts)
                .execute(&mut **tx)
                .await?;
        }

        let column =
            |f: for<'r> fn(&'r Row<'a>) -> &'r str| rows.iter().map(f).collect::<Vec<&str>>();
        sqlx::query(
            "INSERT INTO audit_log (event_id, global_position, aggregate_type, aggregate_id, \
             sequence, event_type, occurred_at, actor, request_id, account_id, device_id, details) \
             SELECT * FROM unnest($1::text[], $2::bigint[], $3::text[], $4::text[], $5::bigint[], \
             $6::text[], $7::timestamptz[], $8::text[], $9::text[], $10::text[], $11::text[], \
             $12::jsonb[]) ON CONFLICT (event_id) DO NOTHING",
        )
        .bind(column(|row| &row.event.event_id))
        .bind(
            rows.iter()
                .map(|row| row.event.global_position)
                .collect::<Vec<_>>(),
        )
        .bind(column(|row| &row.event.aggregate_type))
        .bind(column(|row| &row.event.aggregate_id))
        .bind(
            rows.iter()
                .map(|row| row.event.sequence)
                .collect::<Vec<_>>(),
        )
        .bind(column(|row| &row.event.event_type))
        .bind(rows.iter().map(|row| row.occurred_at).collect::<Vec<_>>())
        .bind(column(|row| &row.event.actor))
        .bind(column(|row| &row.event.request_id))
        .bind(column(|row| &row.account))
        .bind(column(|row| row.device.as_deref().unwrap_or_default()))
        .bind(
            rows.iter()
                .map(|row| row.details.clone())
                .collect::<Vec<_>>(),
        )
        .execute(&mut **tx)
        .await?;
        for event in events {
            if let Some(Event::AccountErased(_)) = &event.event {
                forget(tx, &event.aggregate_id).await?;
            }
        }
        Ok(())
    }
}

/// An erased account (docs/adr/0025): the personal facts of its `audit_log` rows and its
/// `devices` rows become the placeholders the sealed events now open to (`[erased]`, empty for
/// an optional field), so a rebuild reproduces the same rows.
async fn forget(
    tx: &mut Transaction<'static, Postgres>,
    account_id: &str,
) -> Result<(), ProjectionError> {
    let facts = sqlx::query(
        "UPDATE audit_log SET details = details \
             || CASE WHEN details ? 'device_name' \
                     THEN jsonb_build_object('device_name', $2::text) ELSE '{}' END \
             || CASE WHEN details ? 'device_model' \
                     THEN jsonb_build_object('device_model', '') ELSE '{}' END \
             || CASE WHEN details ? 'browser_address' \
                     THEN jsonb_build_object('browser_address', '') ELSE '{}' END \
             || CASE WHEN details ? 'client_address' \
                     THEN jsonb_build_object('client_address', '') ELSE '{}' END \
             || CASE WHEN jsonb_typeof(details -> 'product') = 'object' \
                     THEN jsonb_build_object('product', \
                              (details -> 'product') || jsonb_build_object('serial', $2::text)) \
                     ELSE '{}' END \
         WHERE account_id = $1",
    )
    .bind(account_id)
    .bind(service_kit::sealing::ERASED)
    .execute(&mut **tx)
    .await?;
    let devices = sqlx::query(
        "UPDATE devices SET name = $2, \
             product_serial = CASE WHEN product_serial IS NULL THEN NULL ELSE $2 END \
         WHERE account_id = $1",
    )
    .bind(account_id)
    .bind(service_kit::sealing::ERASED)
    .execute(&mut **tx)
    .await?;
    tracing::info!(
        account_id,
        audit_rows = facts.rows_affected(),
        devices = devices.rows_affected(),
        "an erased account's personal facts blanked"
    );
    Ok(())
}
