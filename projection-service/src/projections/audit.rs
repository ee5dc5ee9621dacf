//! The audit log: one row per event (every aggregate), with its account and device resolved:
//! a link attempt's events before authentication get the account once it is known.

use proto::v1::event_envelope::Event;
use proto::v1::{self, EventEnvelope};
use serde_json::json;
use sqlx::{Postgres, Transaction};

use super::{ProjectionError, Projector, event_time};

/// The projector's name.
pub const NAME: &str = "audit";

/// Projects every event into `audit_log`.
#[derive(Debug, Clone, Copy, Default)]
pub struct AuditLog;

fn method(raw: i32) -> &'static str {
    match v1::LinkMethod::try_from(raw) {
        Ok(v1::LinkMethod::Qr) => "qr",
        Ok(v1::LinkMethod::Luxtrust) => "luxtrust",
        Ok(v1::LinkMethod::Unspecified) | Err(_) => "unknown",
    }
}

fn product(product: Option<&v1::LuxTrustProduct>) -> serde_json::Value {
    product.map_or(serde_json::Value::Null, |p| {
        let kind = match v1::ProductKind::try_from(p.kind) {
            Ok(v1::ProductKind::LuxtrustScan) => "scan",
            Ok(v1::ProductKind::LuxtrustMobile | v1::ProductKind::Unspecified) | Err(_) => "mobile",
        };
        json!({ "kind": kind, "serial": p.serial })
    })
}

/// The device an event is about (if any) and its facts, as JSON.
fn device_and_details(
    event: &EventEnvelope,
    payload: &Event,
) -> (Option<String>, serde_json::Value) {
    let own_device = (event.aggregate_type == "device").then(|| event.aggregate_id.clone());
    match payload {
        Event::AccountRegistered(registered) => (None, json!({ "language": registered.language })),
        Event::AccountEmailChanged(_) => (None, json!({})),
        Event::PortalLoginRecorded(login) => {
            (None, json!({ "product": product(login.product.as_ref()) }))
        }
        Event::QrIssued(_) => (None, json!({})),
        Event::QrConsumed(consumed) => (
            Some(consumed.device_id.clone()),
            json!({ "link_attempt_id": consumed.link_attempt_id }),
        ),
        Event::LinkRequested(requested) => (
            Some(requested.device_id.clone()),
            json!({ "device_name": requested.device_name, "method": method(requested.method),
                    "app_version": requested.app_version }),
        ),
        Event::QrAccepted(accepted) => (None, json!({ "qr_id": accepted.qr_id })),
        Event::LuxtrustAuthenticated(authenticated) => (
            None,
            json!({ "product": product(authenticated.product.as_ref()) }),
        ),
        Event::LinkCompleted(_) => (None, json!({})),
        Event::DeviceLinked(linked) => (
            own_device,
            json!({ "link_id": linked.link_id, "device_name": linked.device_name,
                    "method": method(linked.method), "product": product(linked.product.as_ref()),
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
        Event::DeviceUnlinked(unlinked) => {
            let reason = match v1::UnlinkReason::try_from(unlinked.reason) {
                Ok(v1::UnlinkReason::FromDevice) => "from_device",
                Ok(v1::UnlinkReason::FromPortal) => "from_portal",
                Ok(v1::UnlinkReason::LockedOut) => "locked_out",
                Ok(v1::UnlinkReason::Unspecified) | Err(_) => "unknown",
            };
            (
                own_device,
                json!({ "link_id": unlinked.link_id, "reason": reason }),
            )
        }
    }
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
        let (device, details) = device_and_details(event, payload);
        // A link attempt's later events name its device through its first one.
        let device = match device {
            Some(device) => device,
            None if event.aggregate_type == "link_attempt" => sqlx::query_scalar(
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
        let account = if event.account_id.is_empty() && event.aggregate_type == "account" {
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
        if event.aggregate_type == "link_attempt" && !account.is_empty() {
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
