//! The audit log's witness (docs/adr/0029): the audit log itself is served from the event
//! store (`crate::read::audit`); this read model keeps, per account and aggregate, the last event
//! it applied and the device concerned (`audit_heads`), which the event store cannot say about
//! itself: `VerifyHistory` detects with it a history cut short, and an erasure finds with it
//! every device of the account. Also what an event says, as the audit log shows it
//! ([`device_of`], [`details`]).

use std::collections::HashMap;

use proto::convert::{TextForm as _, aggregate};
use proto::v1::event_envelope::Event;
use proto::v1::{self, EventEnvelope};
use serde_json::json;
use sqlx::{Postgres, Transaction};

use super::{ProjectionError, Projector, event_time};

#[cfg(test)]
mod tests;

/// The projector's name (its guards', since it wrote every event into a copy of the store).
pub(crate) const NAME: &str = "audit";

/// Keeps `audit_heads`: per account and aggregate, the last event applied and its device.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct AuditHeads;

fn product(product: Option<&v1::LuxTrustProduct>) -> Result<serde_json::Value, ProjectionError> {
    Ok(match product {
        Some(p) => json!({ "kind": v1::ProductKind::text_of(p.kind)?, "serial": p.serial }),
        None => serde_json::Value::Null,
    })
}

/// The device an event names itself, if any: a device's events their own; a QR code's
/// consumption and a link request the device that made them. A link attempt's other events
/// concern the device of its first event, which the caller looks up.
pub(crate) fn device_of(event: &EventEnvelope, payload: &Event) -> Option<String> {
    match payload {
        Event::QrConsumed(consumed) => Some(consumed.device_id.clone()),
        Event::LinkRequested(requested) => Some(requested.device_id.clone()),
        Event::DeviceLinked(_)
        | Event::BiometricsEnabled(_)
        | Event::BiometricsSkipped(_)
        | Event::BiometricsDisabled(_)
        | Event::SecretCodeVerified(_)
        | Event::SecretCodeFailed(_)
        | Event::DeviceUnlinked(_)
        | Event::InactivityWarned(_) => {
            (event.aggregate_type == aggregate::DEVICE).then(|| event.aggregate_id.clone())
        }
        Event::AccountRegistered(_)
        | Event::AccountEmailChanged(_)
        | Event::PortalLoginRecorded(_)
        | Event::QrIssued(_)
        | Event::QrAccepted(_)
        | Event::LinkConfirmed(_)
        | Event::LinkDeclined(_)
        | Event::LuxtrustAuthenticated(_)
        | Event::LinkCompleted(_)
        | Event::DevicesUnlinkedTogether(_)
        | Event::AccountErased(_) => None,
    }
}

/// An event's facts as the audit log shows them (JSON, text forms of `proto::convert` for
/// enums); an error if it names a value this build does not know.
pub(crate) fn details(payload: &Event) -> Result<serde_json::Value, ProjectionError> {
    Ok(match payload {
        Event::AccountRegistered(registered) => json!({ "language": registered.language }),
        Event::AccountEmailChanged(_)
        | Event::LinkConfirmed(_)
        | Event::LinkCompleted(_)
        | Event::BiometricsEnabled(_)
        | Event::BiometricsSkipped(_)
        | Event::BiometricsDisabled(_)
        | Event::SecretCodeVerified(_) => json!({}),
        Event::PortalLoginRecorded(login) => {
            json!({ "product": product(login.product.as_ref())? })
        }
        Event::QrIssued(issued) => json!({ "browser_address": issued.browser_address }),
        Event::QrConsumed(consumed) => json!({ "link_attempt_id": consumed.link_attempt_id }),
        Event::LinkRequested(requested) => {
            json!({ "device_name": requested.device_name,
                    "method": v1::LinkMethod::text_of(requested.method)?,
                    "app_version": requested.app_version,
                    "device_model": requested.device_model })
        }
        Event::QrAccepted(accepted) => {
            json!({ "qr_id": accepted.qr_id,
                    "confirmation_required": accepted.confirm_by.is_some(),
                    "client_address": accepted.client_address })
        }
        Event::LinkDeclined(declined) => {
            json!({ "reason": v1::DeclineReason::text_of(declined.reason)? })
        }
        Event::LuxtrustAuthenticated(authenticated) => {
            json!({ "product": product(authenticated.product.as_ref())? })
        }
        Event::DeviceLinked(linked) => {
            json!({ "link_id": linked.link_id, "device_name": linked.device_name,
                    "method": v1::LinkMethod::text_of(linked.method)?,
                    "product": product(linked.product.as_ref())?,
                    "app_version": linked.app_version })
        }
        Event::SecretCodeFailed(failed) => {
            json!({ "consecutive_failures": failed.consecutive_failures,
                    // Absent from messages an older relay published: the limit was 5 then.
                    "attempts_left": failed.attempts_left.unwrap_or_else(
                        || 5u32.saturating_sub(failed.consecutive_failures)) })
        }
        Event::DeviceUnlinked(unlinked) => {
            json!({ "link_id": unlinked.link_id,
                    "reason": v1::UnlinkReason::text_of(unlinked.reason)?,
                    "in_bulk": unlinked.in_bulk })
        }
        Event::InactivityWarned(warned) => {
            json!({ "link_id": warned.link_id,
                    "unlink_at": warned.unlink_at.as_ref().map(|t| t.seconds) })
        }
        Event::DevicesUnlinkedTogether(together) => {
            json!({ "device_ids": together.device_ids,
                    "reason": v1::UnlinkReason::text_of(together.reason)? })
        }
        Event::AccountErased(erased) => json!({ "link_attempt_ids": erased.link_attempt_ids }),
    })
}

/// The account whose history holds `event`, as the audit log reads it from the event store
/// (`history::ACCOUNT_EVENTS`): the one its metadata names, else the one it is sealed for, else
/// its own aggregate's if it is an account's; empty if none.
fn account_of(event: &EventEnvelope) -> String {
    if !event.account_id.is_empty() {
        return event.account_id.clone();
    }
    if let Some(account) = event.data_subject.strip_prefix("account:") {
        return account.to_owned();
    }
    if event.aggregate_type == aggregate::ACCOUNT {
        return event.aggregate_id.clone();
    }
    String::new()
}

/// What a share of events leaves in one row of `audit_heads`.
#[derive(Debug)]
struct Head {
    /// The account; empty for a link attempt that has not named one yet.
    account: String,
    aggregate_type: String,
    aggregate_id: String,
    /// The first device named (empty if none yet).
    device: String,
    last_sequence: i64,
    last_position: i64,
    first_at: chrono::DateTime<chrono::Utc>,
}

/// The rows of `audit_heads` `events` move, one per account and aggregate. An event that names
/// no account is left out (no one could list it), but for a link attempt's, whose row waits for
/// its account. A link attempt's row for its account takes the device its row without one
/// holds, when both are in the share (the statement cannot see rows it writes itself).
fn heads(events: &[&EventEnvelope]) -> Result<Vec<Head>, ProjectionError> {
    let mut heads: Vec<Head> = Vec::new();
    // Each head's place in `heads` by (account, aggregate type, aggregate id): a rebuild's pull
    // holds 10,000 events.
    let mut places: HashMap<(String, String, String), usize> = HashMap::new();
    for event in events {
        let Some(payload) = &event.event else {
            return Err(ProjectionError::Poison("no event".into()));
        };
        let account = account_of(event);
        if account.is_empty() && event.aggregate_type != aggregate::LINK_ATTEMPT {
            continue;
        }
        let device = device_of(event, payload).unwrap_or_default();
        let at = event_time(event.occurred_at.as_ref())?;
        let key = (
            account,
            event.aggregate_type.clone(),
            event.aggregate_id.clone(),
        );
        match places.get(&key) {
            Some(&place) => {
                let head = &mut heads[place];
                head.last_sequence = head.last_sequence.max(event.sequence);
                head.last_position = head.last_position.max(event.global_position);
                head.first_at = head.first_at.min(at);
                if head.device.is_empty() {
                    head.device = device;
                }
            }
            None => {
                places.insert(key.clone(), heads.len());
                let (account, aggregate_type, aggregate_id) = key;
                heads.push(Head {
                    account,
                    aggregate_type,
                    aggregate_id,
                    device,
                    last_sequence: event.sequence,
                    last_position: event.global_position,
                    first_at: at,
                });
            }
        }
    }
    let unclaimed: HashMap<String, String> = heads
        .iter()
        .filter(|head| head.account.is_empty() && !head.device.is_empty())
        .map(|head| (head.aggregate_id.clone(), head.device.clone()))
        .collect();
    for head in &mut heads {
        if head.device.is_empty()
            && head.aggregate_type == aggregate::LINK_ATTEMPT
            && let Some(device) = unclaimed.get(&head.aggregate_id)
        {
            head.device.clone_from(device);
        }
    }
    Ok(heads)
}

/// Moves each row of `$1`…`$7` (account, aggregate type and id, device, last sequence and
/// position, first time) forward. A link attempt's row for its account with no device yet takes
/// the one its row without an account holds; a row's device, once known, stays.
pub(crate) const MOVE_HEADS: &str = "INSERT INTO audit_heads AS h (account_id, aggregate_type, \
         aggregate_id, device_id, last_sequence, last_position, first_at) \
     SELECT k.account, k.kind, k.id, \
            CASE WHEN k.device = '' AND k.kind = 'link_attempt' AND k.account <> '' \
                 THEN coalesce((SELECT u.device_id FROM audit_heads u \
                                WHERE u.account_id = '' AND u.aggregate_type = 'link_attempt' \
                                  AND u.aggregate_id = k.id), '') \
                 ELSE k.device END, \
            k.sequence, k.position, k.at \
     FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::bigint[], $6::bigint[], \
                 $7::timestamptz[]) AS k (account, kind, id, device, sequence, position, at) \
     ON CONFLICT (account_id, aggregate_type, aggregate_id) DO UPDATE SET \
         last_sequence = greatest(h.last_sequence, EXCLUDED.last_sequence), \
         last_position = greatest(h.last_position, EXCLUDED.last_position), \
         first_at = least(h.first_at, EXCLUDED.first_at), \
         device_id = CASE WHEN h.device_id = '' THEN EXCLUDED.device_id ELSE h.device_id END";

impl Projector for AuditHeads {
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

    /// One statement for any number of events (one row per account and aggregate among them),
    /// and the blanking of an erased account's devices.
    async fn apply_many<'a>(
        &'a self,
        tx: &'a mut Transaction<'static, Postgres>,
        events: &'a [&'a EventEnvelope],
    ) -> Result<(), ProjectionError> {
        let heads = heads(events)?;
        if !heads.is_empty() {
            let column = |f: fn(&Head) -> &str| heads.iter().map(f).collect::<Vec<&str>>();
            sqlx::query(MOVE_HEADS)
                .bind(column(|head| &head.account))
                .bind(column(|head| &head.aggregate_type))
                .bind(column(|head| &head.aggregate_id))
                .bind(column(|head| &head.device))
                .bind(heads.iter().map(|h| h.last_sequence).collect::<Vec<_>>())
                .bind(heads.iter().map(|h| h.last_position).collect::<Vec<_>>())
                .bind(heads.iter().map(|h| h.first_at).collect::<Vec<_>>())
                .execute(&mut **tx)
                .await?;
        }
        for event in events {
            if let Some(Event::AccountErased(_)) = &event.event {
                forget(tx, &event.aggregate_id).await?;
            }
        }
        Ok(())
    }
}

/// An erased account (docs/adr/0025): the personal facts of its `devices` rows become the
/// placeholders the sealed events now open to (`[erased]`, empty for an optional field), so a
/// rebuild reproduces the same rows. Its audit log, read from the event store, opens to them
/// without being touched.
async fn forget(
    tx: &mut Transaction<'static, Postgres>,
    account_id: &str,
) -> Result<(), ProjectionError> {
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
        devices = devices.rows_affected(),
        "an erased account's personal facts blanked"
    );
    Ok(())
}
