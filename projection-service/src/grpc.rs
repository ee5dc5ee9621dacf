//! `DeviceQueryService`: the holder's devices, from the read model, with read-your-writes.

use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, Utc};
use identity::{KeySet, PortalClaims};
use proto::consistency::ConsistencyToken;
use proto::convert::{TextForm as _, aggregate, timestamp};
use proto::v1::device_query_service_server::DeviceQueryService;
use proto::v1::{
    self, DeviceStatus, DeviceView, GetDeviceRequest, ListDevicesRequest, ListDevicesResponse,
};
use sqlx::PgPool;
use tonic::{Request, Response, Status};
use uuid::Uuid;

use crate::projections::{applied_sequence, devices};

/// The longest a query waits for the read model to reach a consistency token.
const MAX_WAIT: Duration = Duration::from_secs(10);
/// Used when the client sets no deadline.
const DEFAULT_WAIT: Duration = Duration::from_secs(5);

/// The query API's shared state.
#[derive(Debug, Clone)]
pub struct Queries {
    /// The read-model database.
    pub pool: PgPool,
    /// The identity provider's keys.
    pub idp: KeySet,
    /// Maximum age of `auth_time`.
    pub reauth_max_age: Duration,
}

#[derive(sqlx::FromRow)]
struct DeviceRow {
    device_id: Uuid,
    name: String,
    method: String,
    product_kind: Option<String>,
    product_serial: Option<String>,
    platform: String,
    app_version: String,
    linked_at: DateTime<Utc>,
    last_used_at: Option<DateTime<Utc>>,
    biometrics_enabled: bool,
    status: String,
    unlinked_at: Option<DateTime<Utc>>,
    unlink_reason: Option<String>,
}

const COLUMNS: &str = "device_id, name, method, product_kind, product_serial, platform, \
    app_version, linked_at, last_used_at, biometrics_enabled, status, unlinked_at, unlink_reason";

/// A stored row as the holder sees it. A stored text this build does not know answers
/// `*_UNSPECIFIED` (proto::convert's rule), never a guess.
impl From<DeviceRow> for DeviceView {
    fn from(row: DeviceRow) -> Self {
        let product = row.product_kind.map(|kind| v1::LuxTrustProduct {
            kind: v1::ProductKind::answer(&kind),
            serial: row.product_serial.unwrap_or_default(),
        });
        Self {
            device_id: row.device_id.to_string(),
            name: row.name,
            method: v1::LinkMethod::answer(&row.method),
            product,
            linked_at: Some(timestamp(row.linked_at)),
            last_used_at: row.last_used_at.map(timestamp),
            biometrics_enabled: row.biometrics_enabled,
            platform: v1::Platform::answer(&row.platform),
            app_version: row.app_version,
            status: DeviceStatus::answer(&row.status),
            unlinked_at: row.unlinked_at.map(timestamp),
            unlink_reason: row.unlink_reason.as_deref().map_or(
                v1::UnlinkReason::Unspecified.into(),
                v1::UnlinkReason::answer,
            ),
        }
    }
}

fn internal(error: &sqlx::Error) -> Status {
    tracing::error!(%error, "read model query failed");
    Status::unavailable("the read model is unavailable; retry later")
}

/// The client's deadline from `grpc-timeout` (e.g. `5S`, `250m`), capped at [`MAX_WAIT`].
fn deadline<T>(request: &Request<T>) -> Duration {
    let parsed = request
        .metadata()
        .get("grpc-timeout")
        .and_then(|v| v.to_str().ok())
        .and_then(|raw| {
            let (digits, unit) = raw.split_at(raw.len().checked_sub(1)?);
            let n: u64 = digits.parse().ok()?;
            Some(match unit {
                "H" => Duration::from_secs(n.saturating_mul(3600)),
                "M" => Duration::from_secs(n.saturating_mul(60)),
                "S" => Duration::from_secs(n),
                "m" => Duration::from_millis(n),
                "u" => Duration::from_micros(n),
                "n" => Duration::from_nanos(n),
                _ => return None,
            })
        });
    // Leave a little time to answer before the client gives up.
    parsed
        .map_or(DEFAULT_WAIT, |d| {
            d.saturating_sub(d.mul_f64(0.2).max(Duration::from_millis(100)))
        })
        .min(MAX_WAIT)
}

impl Queries {
    fn citizen<T>(&self, request: &Request<T>) -> Result<String, Status> {
        let claims = portal_claims(&self.idp, request)?;
        let max_age = i64::try_from(self.reauth_max_age.as_secs()).unwrap_or(i64::MAX);
        claims
            .reauthenticated_citizen(Utc::now().timestamp(), max_age)
            .map(str::to_owned)
            .map_err(|refusal| Status::permission_denied(refusal.to_string()))
    }

    /// Waits until the read model reflects `token` (device events only: no other aggregate
    /// changes a device list), or the wait runs out.
    async fn wait_for(&self, token: &str, wait: Duration) -> Result<(), Status> {
        if token.is_empty() {
            return Ok(());
        }
        let token: ConsistencyToken =
            token
                .parse()
                .map_err(|e: proto::consistency::MalformedToken| {
                    Status::invalid_argument(e.to_string())
                })?;
        let started = tokio::time::Instant::now();
        let devices = token
            .0
            .iter()
            .filter(|w| w.aggregate_type == aggregate::DEVICE);
        for written in devices {
            loop {
                let applied = applied_sequence(
                    &self.pool,
                    devices::NAME,
                    aggregate::DEVICE,
                    &written.aggregate_id,
                )
                .await
                .map_err(|e| internal(&e))?;
                if applied >= written.sequence {
                    break;
                }
                if started.elapsed() >= wait {
                    return Err(Status::unavailable(format!(
                        "the read model has not caught up with your last command yet: device {} \
                         is at event {applied} of {}; retry shortly",
                        written.aggregate_id, written.sequence
                    )));
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        Ok(())
    }
}

/// The verified claims of the call's `authorization: Bearer <JWT>`.
pub(crate) fn portal_claims<T>(idp: &KeySet, request: &Request<T>) -> Result<PortalClaims, Status> {
    let token = request
        .metadata()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .ok_or_else(|| {
            Status::unauthenticated(
                "missing credentials: send `authorization: Bearer <JWT from the identity provider>`",
            )
        })?;
    idp.verify(token.trim())
        .map_err(|error| Status::unauthenticated(format!("the portal token {error}")))
}

fn page_token(account_id: &str, row: &DeviceRow) -> String {
    let raw = format!(
        "{}|{}|{account_id}",
        row.linked_at.timestamp_micros(),
        row.device_id
    );
    URL_SAFE_NO_PAD.encode(raw)
}

fn parse_page_token(account_id: &str, token: &str) -> Result<(DateTime<Utc>, Uuid), Status> {
    let invalid = || Status::invalid_argument("page_token is not one this service gave you");
    let raw = URL_SAFE_NO_PAD.decode(token).map_err(|_| invalid())?;
    let raw = String::from_utf8(raw).map_err(|_| invalid())?;
    let mut parts = raw.splitn(3, '|');
    let (Some(micros), Some(device), Some(owner)) = (parts.next(), parts.next(), parts.next())
    else {
        return Err(invalid());
    };
    if owner != account_id {
        return Err(invalid());
    }
    let linked_at = micros
        .parse()
        .ok()
        .and_then(DateTime::from_timestamp_micros)
        .ok_or_else(invalid)?;
    Ok((linked_at, Uuid::try_parse(device).map_err(|_| invalid())?))
}

#[tonic::async_trait]
impl DeviceQueryService for Queries {
    #[tracing::instrument(skip_all, err(level = "info"))]
    async fn list_devices(
        &self,
        request: Request<ListDevicesRequest>,
    ) -> Result<Response<ListDevicesResponse>, Status> {
        let account_id = self.citizen(&request)?;
        let wait = deadline(&request);
        let body = request.into_inner();
        let page_size: i64 = match body.page_size {
            0 => 20,
            n if n < 0 => return Err(Status::invalid_argument("page_size must not be negative")),
            n => i64::from(n.min(100)),
        };
        let after = match body.page_token.as_str() {
            "" => None,
            token => Some(parse_page_token(&account_id, token)?),
        };
        self.wait_for(&body.consistency_token, wait).await?;
        let (after_time, after_device) = after.unzip();
        let mut rows: Vec<DeviceRow> = sqlx::query_as(&format!(
            "SELECT {COLUMNS} FROM devices WHERE account_id = $1 AND status = 'linked' \
             AND ($2::timestamptz IS NULL OR (linked_at, device_id) > ($2, $3)) \
             ORDER BY linked_at, device_id LIMIT $4"
        ))
        .bind(&account_id)
        .bind(after_time)
        .bind(after_device)
        .bind(page_size + 1)
        .fetch_all(&self.pool)
        .await
        .map_err(|e| internal(&e))?;
        let next_page_token = if rows.len() > usize::try_from(page_size).unwrap_or(usize::MAX) {
            rows.pop();
            rows.last()
                .map(|row| page_token(&account_id, row))
                .unwrap_or_default()
        } else {
            String::new()
        };
        Ok(Response::new(ListDevicesResponse {
            devices: rows.into_iter().map(DeviceView::from).collect(),
            next_page_token,
        }))
    }

    #[tracing::instrument(skip_all, err(level = "info"))]
    async fn get_device(
        &self,
        request: Request<GetDeviceRequest>,
    ) -> Result<Response<DeviceView>, Status> {
        let account_id = self.citizen(&request)?;
        let wait = deadline(&request);
        let body = request.into_inner();
        let device_id = Uuid::try_parse(&body.device_id)
            .map_err(|_| Status::invalid_argument("device_id must be a UUID"))?;
        self.wait_for(&body.consistency_token, wait).await?;
        let row: Option<DeviceRow> = sqlx::query_as(&format!(
            "SELECT {COLUMNS} FROM devices WHERE device_id = $1 AND account_id = $2"
        ))
        .bind(device_id)
        .bind(&account_id)
        .fetch_optional(&self.pool)
        .await
        .map_err(|e| internal(&e))?;
        row.map(|row| Response::new(row.into())).ok_or_else(|| {
            Status::not_found(format!(
                "no device {device_id} was ever linked to your account"
            ))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(edit: impl FnOnce(&mut DeviceRow)) -> DeviceRow {
        let mut row = DeviceRow {
            device_id: Uuid::nil(),
            name: "Anna's phone".into(),
            method: "luxtrust".into(),
            product_kind: Some("scan".into()),
            product_serial: Some("S-1".into()),
            platform: "ios".into(),
            app_version: "1.0".into(),
            linked_at: DateTime::from_timestamp(1_800_000_000, 0).unwrap(),
            last_used_at: None,
            biometrics_enabled: false,
            status: "unlinked".into(),
            unlinked_at: DateTime::from_timestamp(1_800_000_100, 0),
            unlink_reason: Some("locked_out".into()),
        };
        edit(&mut row);
        row
    }

    #[test]
    fn a_stored_row_answers_its_values() {
        let view = DeviceView::from(row(|_| {}));
        assert_eq!(view.method, i32::from(v1::LinkMethod::Luxtrust));
        let product = view.product.unwrap();
        assert_eq!(product.kind, i32::from(v1::ProductKind::LuxtrustScan));
        assert_eq!(product.serial, "S-1");
        assert_eq!(view.platform, i32::from(v1::Platform::Ios));
        assert_eq!(view.status, i32::from(DeviceStatus::Unlinked));
        assert_eq!(view.unlink_reason, i32::from(v1::UnlinkReason::LockedOut));
    }

    #[test]
    fn a_stored_text_this_build_does_not_know_answers_unspecified() {
        let view = DeviceView::from(row(|row| {
            row.method = "bogus".into();
            row.product_kind = Some("bogus".into());
            row.platform = "bogus".into();
            row.status = "bogus".into();
            row.unlink_reason = Some("bogus".into());
        }));
        assert_eq!(view.method, i32::from(v1::LinkMethod::Unspecified));
        let product = view.product.unwrap();
        assert_eq!(product.kind, i32::from(v1::ProductKind::Unspecified));
        assert_eq!(product.serial, "S-1");
        assert_eq!(view.platform, i32::from(v1::Platform::Unspecified));
        assert_eq!(view.status, i32::from(DeviceStatus::Unspecified));
        assert_eq!(view.unlink_reason, i32::from(v1::UnlinkReason::Unspecified));
    }
}
