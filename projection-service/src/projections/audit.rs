//! The audit log: one row per event (every aggregate), with its account and device resolved:
//! a link attempt's events before authentication get the account once it is known.

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
            json!({ "consecutive_failures": failed.consecutive_failures }),
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
    })
}

impl Projector for AuditLog {
    fn name(&self) -> &'static str {
        NAME
    }

    fn filter(&self) -> &'static str {
        ">"
    }

    async fn apply<'a>(
        &'a self,
        tx: &'a mut Transaction<'static, Postgres>,
        event: &'a EventEnvelope,
    ) -> Result<(), ProjectionError> {
        let Some(payload) = &event.event else {
            return Err(ProjectionError::Poison("no event".into()));
        };
        let (device, details) = device_and_details(event, payload)?;
        // A link attempt's later events name its device through its first one.
        let device = match device {
            Some(device) => device,
            None if event.aggregate_type == aggregate::LINK_ATTEMPT => sqlx::query_scalar(
                "SELECT device_id FROM audit_log WHERE aggregate_type = 'link_attempt' \
                 AND aggregate_id = $1 AND sequence = 1",
            )
            .bind(&event.aggregate_id)
            .fetch_optional(&mut **tx)
            .await?
            .unwrap_or_default(),
            None => String::new(),
        };
        let occurred_at = event_time(event.occurred_at.as_ref())?;
        let account = if event.account_id.is_empty() && event.aggregate_type == aggregate::ACCOUNT {
            event.aggregate_id.clone()
        } else {
            event.account_id.clone()
        };
        sqlx::query(
            "INSERT INTO audit_log (event_id, global_position, aggregate_type, aggregate_id, \
             sequence, event_type, occurred_at, actor, request_id, account_id, device_id, details) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12) \
             ON CONFLICT (event_id) DO NOTHING",
        )
        .bind(&event.event_id)
        .bind(event.global_position)
        .bind(&event.aggregate_type)
        .bind(&event.aggregate_id)
        .bind(event.sequence)
        .bind(&event.event_type)
        .bind(occurred_at)
        .bind(&event.actor)
        .bind(&event.request_id)
        .bind(&account)
        .bind(&device)
        .bind(details)
        .execute(&mut **tx)
        .await?;
        // Once a link attempt knows its account, its earlier events belong to it too.
        if event.aggregate_type == aggregate::LINK_ATTEMPT && !account.is_empty() {
            sqlx::query(
                "UPDATE audit_log SET account_id = $2 WHERE aggregate_type = 'link_attempt' \
                 AND aggregate_id = $1 AND account_id = ''",
            )
            .bind(&event.aggregate_id)
            .bind(&account)
            .execute(&mut **tx)
            .await?;
        }
        Ok(())
    }
}
