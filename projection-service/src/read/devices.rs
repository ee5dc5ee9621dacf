//! The `devices` read model: one row per device, its current link or its last one. Written by
//! [`crate::projections::devices`]; read here for `DeviceQueryService`.

use std::time::Duration;

use chrono::{DateTime, Utc};
use proto::consistency::ConsistencyToken;
use proto::convert::aggregate;
use sqlx::PgPool;
use uuid::Uuid;

use crate::projections::{self, applied_sequence};
use crate::status::QueryError;

/// Every column of `devices`, in [`DeviceRow`]'s order.
pub(crate) const COLUMNS: &str = "device_id, account_id, link_id, name, method, product_kind, \
    product_serial, platform, app_version, linked_at, last_used_at, biometrics_enabled, status, \
    unlinked_at, unlink_reason";

/// A row of `devices`. Enum columns hold the text forms of `proto::convert`.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub(crate) struct DeviceRow {
    /// The device (aggregate id).
    pub(crate) device_id: Uuid,
    /// The account it is (or was last) linked to.
    pub(crate) account_id: String,
    /// Its current (or last) link.
    pub(crate) link_id: Uuid,
    /// Its name.
    pub(crate) name: String,
    /// `qr` or `luxtrust`.
    pub(crate) method: String,
    /// `mobile` or `scan`, for LuxTrust links.
    pub(crate) product_kind: Option<String>,
    /// The LuxTrust product's serial.
    pub(crate) product_serial: Option<String>,
    /// `ios` or `android`.
    pub(crate) platform: String,
    /// The app's version when linked.
    pub(crate) app_version: String,
    /// When the link completed.
    pub(crate) linked_at: DateTime<Utc>,
    /// The last correct secret code.
    pub(crate) last_used_at: Option<DateTime<Utc>>,
    /// Biometric unlocking on.
    pub(crate) biometrics_enabled: bool,
    /// `linked` or `unlinked`.
    pub(crate) status: String,
    /// When it was unlinked.
    pub(crate) unlinked_at: Option<DateTime<Utc>>,
    /// `from_device`, `from_portal` or `locked_out`.
    pub(crate) unlink_reason: Option<String>,
}

/// Up to `limit` devices linked to `account_id`, oldest link first, after the device at `after`
/// (its link time and id) if given.
pub(crate) async fn linked(
    pool: &PgPool,
    account_id: &str,
    after: Option<(DateTime<Utc>, Uuid)>,
    limit: i64,
) -> Result<Vec<DeviceRow>, QueryError> {
    let (after_time, after_device) = after.unzip();
    // `status = 'linked'` stays a literal: the partial index `devices_linked_by_account` needs it.
    sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM devices WHERE account_id = $1 AND status = 'linked' \
         AND ($2::timestamptz IS NULL OR (linked_at, device_id) > ($2, $3)) \
         ORDER BY linked_at, device_id LIMIT $4"
    ))
    .bind(account_id)
    .bind(after_time)
    .bind(after_device)
    .bind(limit)
    .fetch_all(pool)
    .await
    .map_err(QueryError::read_model)
}

/// The device `device_id` if it is, or was last, linked to `account_id`.
pub(crate) async fn of_account(
    pool: &PgPool,
    device_id: Uuid,
    account_id: &str,
) -> Result<Option<DeviceRow>, QueryError> {
    sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM devices WHERE device_id = $1 AND account_id = $2"
    ))
    .bind(device_id)
    .bind(account_id)
    .fetch_optional(pool)
    .await
    .map_err(QueryError::read_model)
}

/// Waits until the read model reflects `token` (device events only: no other aggregate changes
/// a device), or `wait` runs out.
pub(crate) async fn caught_up(
    pool: &PgPool,
    token: &ConsistencyToken,
    wait: Duration,
) -> Result<(), QueryError> {
    let started = tokio::time::Instant::now();
    let devices = token
        .0
        .iter()
        .filter(|w| w.aggregate_type == aggregate::DEVICE);
    for written in devices {
        loop {
            let applied = applied_sequence(
                pool,
                projections::devices::NAME,
                aggregate::DEVICE,
                &written.aggregate_id,
            )
            .await
            .map_err(QueryError::read_model)?;
            if applied >= written.sequence {
                break;
            }
            if started.elapsed() >= wait {
                return Err(QueryError::Behind {
                    device_id: written.aggregate_id.clone(),
                    applied,
                    wanted: written.sequence,
                });
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    Ok(())
}
