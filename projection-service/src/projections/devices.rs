//! The device read model: every device with its current (or last) link, for the holder's list
//! and for "is this device linked, and to which account".

use proto::v1::event_envelope::Event;
use proto::v1::{self, EventEnvelope};
use sqlx::{Postgres, Transaction};
use uuid::Uuid;

use super::{ProjectionError, Projector, event_time};

/// Projects `device` events into `devices`.
#[derive(Debug, Clone, Copy, Default)]
pub struct Devices;

/// The projector's name (guard key, consumer suffix).
pub const NAME: &str = "devices";

fn uuid(field: &str, raw: &str) -> Result<Uuid, ProjectionError> {
    Uuid::try_parse(raw).map_err(|_| ProjectionError::Poison(format!("{field} is not a UUID")))
}

impl Projector for Devices {
    fn name(&self) -> &'static str {
        NAME
    }

    fn filter(&self) -> &'static str {
        "device.>"
    }

    async fn apply<'a>(
        &'a self,
        tx: &'a mut Transaction<'static, Postgres>,
        event: &'a EventEnvelope,
    ) -> Result<(), ProjectionError> {
        if event.aggregate_type != "device" {
            return Ok(());
        }
        let device_id = uuid("aggregate_id", &event.aggregate_id)?;
        let Some(payload) = &event.event else {
            return Err(ProjectionError::Poison("no event".into()));
        };
        let update = |sql: &'static str| sqlx::query(sql).bind(device_id);
        match payload {
            Event::DeviceLinked(linked) => {
                let method = match v1::LinkMethod::try_from(linked.method) {
                    Ok(v1::LinkMethod::Qr) => "qr",
                    Ok(v1::LinkMethod::Luxtrust) => "luxtrust",
                    Ok(v1::LinkMethod::Unspecified) | Err(_) => {
                        return Err(ProjectionError::Poison("unknown link method".into()));
                    }
                };
                let platform = match v1::Platform::try_from(linked.platform) {
                    Ok(v1::Platform::Ios) => "ios",
                    Ok(v1::Platform::Android) => "android",
                    Ok(v1::Platform::Unspecified) | Err(_) => {
                        return Err(ProjectionError::Poison("unknown platform".into()));
                    }
                };
                let kind =
                    linked
                        .product
                        .as_ref()
                        .map(|p| match v1::ProductKind::try_from(p.kind) {
                            Ok(v1::ProductKind::LuxtrustScan) => "scan",
                            Ok(v1::ProductKind::LuxtrustMobile | v1::ProductKind::Unspecified)
                            | Err(_) => "mobile",
                        });
                sqlx::query(
                    "INSERT INTO devices (device_id, account_id, link_id, name, method, \
                     product_kind, product_serial, platform, app_version, linked_at, status) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, 'linked') \
                     ON CONFLICT (device_id) DO UPDATE SET account_id = EXCLUDED.account_id, \
                     link_id = EXCLUDED.link_id, name = EXCLUDED.name, method = EXCLUDED.method, \
                     product_kind = EXCLUDED.product_kind, \
                     product_serial = EXCLUDED.product_serial, platform = EXCLUDED.platform, \
                     app_version = EXCLUDED.app_version, linked_at = EXCLUDED.linked_at, \
                     last_used_at = NULL, biometrics_enabled = false, status = 'linked', \
                     unlinked_at = NULL, unlink_reason = NULL",
                )
                .bind(device_id)
                .bind(&event.account_id)
                .bind(uuid("link_id", &linked.link_id)?)
                .bind(&linked.device_name)
                .bind(method)
                .bind(kind)
                .bind(linked.product.as_ref().map(|p| p.serial.as_str()))
                .bind(platform)
                .bind(&linked.app_version)
                .bind(event_time(linked.at.as_ref())?)
                .execute(&mut **tx)
                .await?;
            }
            Event::BiometricsEnabled(_) => {
                update("UPDATE devices SET biometrics_enabled = true WHERE device_id = $1")
                    .execute(&mut **tx)
                    .await?;
            }
            Event::BiometricsSkipped(_) | Event::BiometricsDisabled(_) => {
                update("UPDATE devices SET biometrics_enabled = false WHERE device_id = $1")
                    .execute(&mut **tx)
                    .await?;
            }
            Event::SecretCodeVerified(verified) => {
                update("UPDATE devices SET last_used_at = $2 WHERE device_id = $1")
                    .bind(event_time(verified.at.as_ref())?)
                    .execute(&mut **tx)
                    .await?;
            }
            Event::DeviceUnlinked(unlinked) => {
                let reason = match v1::UnlinkReason::try_from(unlinked.reason) {
                    Ok(v1::UnlinkReason::FromDevice) => "from_device",
                    Ok(v1::UnlinkReason::FromPortal) => "from_portal",
                    Ok(v1::UnlinkReason::LockedOut) => "locked_out",
                    Ok(v1::UnlinkReason::Unspecified) | Err(_) => {
                        return Err(ProjectionError::Poison("unknown unlink reason".into()));
                    }
                };
                update(
                    "UPDATE devices SET status = 'unlinked', unlinked_at = $2, unlink_reason = $3 \
                     WHERE device_id = $1",
                )
                .bind(event_time(unlinked.at.as_ref())?)
                .bind(reason)
                .execute(&mut **tx)
                .await?;
            }
            Event::SecretCodeFailed(_)
            | Event::AccountRegistered(_)
            | Event::AccountEmailChanged(_)
            | Event::PortalLoginRecorded(_)
            | Event::QrIssued(_)
            | Event::QrConsumed(_)
            | Event::LinkRequested(_)
            | Event::QrAccepted(_)
            | Event::LuxtrustAuthenticated(_)
            | Event::LinkCompleted(_) => {}
        }
        Ok(())
    }
}
