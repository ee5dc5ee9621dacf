//! `PortalService`: the browser side of the portal and the portal back end.

use domain::DeviceId;
use proto::convert::{datetime, timestamp};
use proto::v1::portal_service_server::PortalService;
use proto::v1::{
    ChangeAccountEmailRequest, ChangeAccountEmailResponse, ConfirmLinkRequest, ConfirmLinkResponse,
    DeclineLinkRequest, DeclineLinkResponse, EraseAccountRequest, EraseAccountResponse,
    GetLinkQrRequest, IssueLinkQrRequest, IssueLinkQrResponse, LinkQrState,
    RecordPortalLoginRequest, RecordPortalLoginResponse, RegisterAccountRequest,
    RegisterAccountResponse, RevokeAllDevicesRequest, UnlinkDevicesRequest, UnlinkDevicesResponse,
    WatchLinkQrRequest,
};
use tonic::{Request, Response, Status};

use super::Api;
use super::confirmation::{self, WatchStream, confirm_link, decline_link};
use crate::app::accounts::Registration;
use crate::app::devices::{Selection, UnlinkReport};
use crate::app::{App, Call};
use crate::error::CommandError;
use crate::limits::Rule;
use crate::validate;

/// The most devices one `UnlinkDevices` call may name.
const MAX_UNLINK_BATCH: usize = 50;

#[tracing::instrument(skip_all, fields(account_id = ?body.account_id), err(level = "info"))]
async fn register_account(
    app: &App,
    call: &Call,
    body: &RegisterAccountRequest,
) -> Result<RegisterAccountResponse, CommandError> {
    let system = app.system(call)?;
    let registration = Registration {
        account_id: validate::account_id(&body.account_id)?,
        email: validate::email(&body.email)?,
        language: validate::language(&body.language)?,
    };
    let account_id = registration.account_id.0.clone();
    let written = app.register_account(&system, registration).await?;
    Ok(RegisterAccountResponse {
        account_id,
        consistency_token: written.to_string(),
    })
}

#[tracing::instrument(skip_all, fields(account_id = ?body.account_id), err(level = "info"))]
async fn change_account_email(
    app: &App,
    call: &Call,
    body: &ChangeAccountEmailRequest,
) -> Result<ChangeAccountEmailResponse, CommandError> {
    let system = app.system(call)?;
    let account_id = validate::account_id(&body.account_id)?;
    let email = validate::email(&body.email)?;
    let written = app
        .change_account_email(&system, &account_id, email)
        .await?;
    Ok(ChangeAccountEmailResponse {
        consistency_token: written.to_string(),
    })
}

#[tracing::instrument(skip_all, fields(account_id = ?body.account_id), err(level = "info"))]
async fn record_portal_login(
    app: &App,
    call: &Call,
    body: &RecordPortalLoginRequest,
) -> Result<RecordPortalLoginResponse, CommandError> {
    let system = app.system(call)?;
    let account_id = validate::account_id(&body.account_id)?;
    let product = validate::product(body.product.as_ref())?;
    let written = app
        .record_portal_login(&system, &account_id, product)
        .await?;
    Ok(RecordPortalLoginResponse {
        consistency_token: written.to_string(),
    })
}

#[tracing::instrument(skip_all, fields(account_id, qr_id), err(level = "info"))]
async fn issue_link_qr(
    app: &App,
    call: &Call,
    body: &IssueLinkQrRequest,
) -> Result<IssueLinkQrResponse, CommandError> {
    let browser_address = validate::ip_address("browser_address", &body.browser_address)?;
    let holder = app.reauthenticated_citizen(call)?;
    app.limits
        .by_key(Rule::IssueQrByAccount, &holder.account_id().0)
        .await?;
    let issued = app.issue_link_qr(&holder, browser_address).await?;
    Ok(IssueLinkQrResponse {
        consistency_token: issued.written.to_string(),
        qr_id: issued.qr_id.to_string(),
        qr_payload: issued.payload,
        qr_svg: issued.svg,
        expires_at: Some(timestamp(issued.expires_at)),
    })
}

#[tracing::instrument(skip_all, fields(account_id, devices = body.device_ids.len()), err(level = "info"))]
async fn unlink_devices(
    app: &App,
    call: &Call,
    body: &UnlinkDevicesRequest,
) -> Result<UnlinkDevicesResponse, CommandError> {
    let holder = app.reauthenticated_citizen(call)?;
    tracing::Span::current().record("account_id", tracing::field::display(holder.account_id()));
    let report = app.unlink_devices(&holder, selection(body)?).await?;
    Ok(unlinked(report))
}

#[tracing::instrument(skip_all, fields(account_id = ?body.account_id), err(level = "info"))]
async fn revoke_all_devices(
    app: &App,
    call: &Call,
    body: &RevokeAllDevicesRequest,
) -> Result<UnlinkDevicesResponse, CommandError> {
    let system = app.system(call)?;
    let account_id = validate::account_id(&body.account_id)?;
    let report = app.revoke_all_devices(&system, &account_id).await?;
    tracing::warn!(
        devices = report.unlinked.len(),
        "help desk revoked every device"
    );
    Ok(unlinked(report))
}

#[tracing::instrument(skip_all, fields(account_id = ?body.account_id), err(level = "info"))]
async fn erase_account(
    app: &App,
    call: &Call,
    body: &EraseAccountRequest,
) -> Result<EraseAccountResponse, CommandError> {
    let system = app.system(call)?;
    let account_id = validate::account_id(&body.account_id)?;
    let (already_erased, written) = app.erase_account(&system, &account_id).await?;
    if !already_erased {
        tracing::warn!("account erased");
    }
    Ok(EraseAccountResponse {
        already_erased,
        consistency_token: written.to_string(),
    })
}

fn unlinked(report: UnlinkReport) -> UnlinkDevicesResponse {
    let texts = |ids: Vec<DeviceId>| ids.iter().map(ToString::to_string).collect();
    UnlinkDevicesResponse {
        unlinked_device_ids: texts(report.unlinked),
        already_unlinked_device_ids: texts(report.already_unlinked),
        relinked_device_ids: texts(report.relinked),
        consistency_token: report.written.to_string(),
    }
}

/// Exactly one of `device_ids`, `all_devices` and `linked_since`.
fn selection(body: &UnlinkDevicesRequest) -> Result<Selection, CommandError> {
    let given = usize::from(!body.device_ids.is_empty())
        + usize::from(body.all_devices)
        + usize::from(body.linked_since.is_some());
    if given != 1 {
        return Err(CommandError::InvalidArgument(
            "give exactly one of device_ids, all_devices and linked_since".into(),
        ));
    }
    if body.all_devices {
        return Ok(Selection::All);
    }
    if let Some(since) = &body.linked_since {
        return datetime(since).map(Selection::LinkedSince).ok_or_else(|| {
            CommandError::InvalidArgument("linked_since is not a valid timestamp".into())
        });
    }
    device_ids(&body.device_ids).map(Selection::Named)
}

/// 1 to [`MAX_UNLINK_BATCH`] distinct device ids.
fn device_ids(raw: &[String]) -> Result<Vec<DeviceId>, CommandError> {
    if raw.is_empty() || raw.len() > MAX_UNLINK_BATCH {
        return Err(CommandError::InvalidArgument(format!(
            "device_ids must name 1 to {MAX_UNLINK_BATCH} devices"
        )));
    }
    let mut device_ids = Vec::with_capacity(raw.len());
    for raw in raw {
        let device_id = validate::device_id("device_ids", raw)?;
        if device_ids.contains(&device_id) {
            return Err(CommandError::InvalidArgument(format!(
                "device_ids names {device_id} twice"
            )));
        }
        device_ids.push(device_id);
    }
    Ok(device_ids)
}

#[tonic::async_trait]
impl PortalService for Api {
    async fn register_account(
        &self,
        request: Request<RegisterAccountRequest>,
    ) -> Result<Response<RegisterAccountResponse>, Status> {
        idempotent!(self, request, "RegisterAccount", register_account)
    }

    async fn change_account_email(
        &self,
        request: Request<ChangeAccountEmailRequest>,
    ) -> Result<Response<ChangeAccountEmailResponse>, Status> {
        idempotent!(self, request, "ChangeAccountEmail", change_account_email)
    }

    async fn record_portal_login(
        &self,
        request: Request<RecordPortalLoginRequest>,
    ) -> Result<Response<RecordPortalLoginResponse>, Status> {
        idempotent!(self, request, "RecordPortalLogin", record_portal_login)
    }

    async fn issue_link_qr(
        &self,
        request: Request<IssueLinkQrRequest>,
    ) -> Result<Response<IssueLinkQrResponse>, Status> {
        idempotent!(self, request, "IssueLinkQr", issue_link_qr)
    }

    async fn get_link_qr(
        &self,
        request: Request<GetLinkQrRequest>,
    ) -> Result<Response<LinkQrState>, Status> {
        let call = self.call_of(&request);
        confirmation::get_link_qr(&self.app, &call, request.get_ref())
            .await
            .map(Response::new)
            .map_err(crate::status::to_status)
    }

    type WatchLinkQrStream = WatchStream;

    async fn watch_link_qr(
        &self,
        request: Request<WatchLinkQrRequest>,
    ) -> Result<Response<WatchStream>, Status> {
        let call = self.call_of(&request);
        self.open_qr_watch(&call, request.get_ref())
            .await
            .map(Response::new)
    }

    async fn confirm_link(
        &self,
        request: Request<ConfirmLinkRequest>,
    ) -> Result<Response<ConfirmLinkResponse>, Status> {
        idempotent!(self, request, "ConfirmLink", confirm_link)
    }

    async fn decline_link(
        &self,
        request: Request<DeclineLinkRequest>,
    ) -> Result<Response<DeclineLinkResponse>, Status> {
        idempotent!(self, request, "DeclineLink", decline_link)
    }

    async fn unlink_devices(
        &self,
        request: Request<UnlinkDevicesRequest>,
    ) -> Result<Response<UnlinkDevicesResponse>, Status> {
        idempotent!(self, request, "UnlinkDevices", unlink_devices)
    }

    async fn revoke_all_devices(
        &self,
        request: Request<RevokeAllDevicesRequest>,
    ) -> Result<Response<UnlinkDevicesResponse>, Status> {
        idempotent!(self, request, "RevokeAllDevices", revoke_all_devices)
    }

    async fn erase_account(
        &self,
        request: Request<EraseAccountRequest>,
    ) -> Result<Response<EraseAccountResponse>, Status> {
        idempotent!(self, request, "EraseAccount", erase_account)
    }
}
