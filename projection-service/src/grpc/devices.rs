//! `DeviceQueryService`: the holder's devices, from the read model, with read-your-writes.
//! A translator: request → [`read::devices`] → `DeviceView`.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, Utc};
use proto::consistency::{ConsistencyToken, MalformedToken};
use proto::convert::{TextForm as _, timestamp};
use proto::v1::device_query_service_server::DeviceQueryService;
use proto::v1::{
    self, DeviceStatus, DeviceView, GetDeviceRequest, ListDevicesRequest, ListDevicesResponse,
};
use tonic::{Request, Response, Status};
use uuid::Uuid;

use super::{Queries, deadline, next_page_token, page_size};
use crate::limits::QueryRule;
use crate::read::devices::{self, DeviceRow};
use crate::status::{QueryError, to_status};

#[cfg(test)]
mod tests;

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

/// The page token after `row`: its link time and id, bound to the caller.
fn page_token(account_id: &str, row: &DeviceRow) -> String {
    let raw = format!(
        "{}|{}|{account_id}",
        row.linked_at.timestamp_micros(),
        row.device_id
    );
    URL_SAFE_NO_PAD.encode(raw)
}

fn parse_page_token(account_id: &str, token: &str) -> Result<(DateTime<Utc>, Uuid), QueryError> {
    let invalid =
        || QueryError::InvalidArgument("page_token is not one this service gave you".into());
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

/// The consistency token of a request, if any.
fn consistency_token(raw: &str) -> Result<Option<ConsistencyToken>, QueryError> {
    if raw.is_empty() {
        return Ok(None);
    }
    raw.parse()
        .map(Some)
        .map_err(|e: MalformedToken| QueryError::InvalidArgument(e.to_string()))
}

impl Queries {
    async fn list(
        &self,
        request: Request<ListDevicesRequest>,
    ) -> Result<ListDevicesResponse, QueryError> {
        let account_id = self.reauthenticated(&self.claims(&request)?)?;
        self.admit(QueryRule::ListDevices, &account_id).await?;
        let wait = deadline(&request);
        let body = request.into_inner();
        let page_size = page_size(body.page_size, 20, 100)?;
        let after = match body.page_token.as_str() {
            "" => None,
            token => Some(parse_page_token(&account_id, token)?),
        };
        if let Some(token) = consistency_token(&body.consistency_token)? {
            devices::caught_up(&self.pool, &token, wait).await?;
        }
        let mut rows = devices::linked(&self.pool, &account_id, after, page_size + 1).await?;
        let next_page_token =
            next_page_token(&mut rows, page_size, |row| page_token(&account_id, row));
        Ok(ListDevicesResponse {
            devices: rows.into_iter().map(DeviceView::from).collect(),
            next_page_token,
        })
    }

    async fn get(&self, request: Request<GetDeviceRequest>) -> Result<DeviceView, QueryError> {
        let account_id = self.reauthenticated(&self.claims(&request)?)?;
        self.admit(QueryRule::GetDevice, &account_id).await?;
        let wait = deadline(&request);
        let body = request.into_inner();
        let device_id = Uuid::try_parse(&body.device_id)
            .map_err(|_| QueryError::InvalidArgument("device_id must be a UUID".into()))?;
        if let Some(token) = consistency_token(&body.consistency_token)? {
            devices::caught_up(&self.pool, &token, wait).await?;
        }
        let row = devices::of_account(&self.pool, device_id, &account_id).await?;
        row.map(DeviceView::from).ok_or_else(|| {
            QueryError::NotFound(format!(
                "no device {device_id} was ever linked to your account"
            ))
        })
    }
}

#[tonic::async_trait]
impl DeviceQueryService for Queries {
    #[tracing::instrument(skip_all, err(level = "info"))]
    async fn list_devices(
        &self,
        request: Request<ListDevicesRequest>,
    ) -> Result<Response<ListDevicesResponse>, Status> {
        self.list(request)
            .await
            .map(Response::new)
            .map_err(to_status)
    }

    #[tracing::instrument(skip_all, err(level = "info"))]
    async fn get_device(
        &self,
        request: Request<GetDeviceRequest>,
    ) -> Result<Response<DeviceView>, Status> {
        self.get(request)
            .await
            .map(Response::new)
            .map_err(to_status)
    }
}
