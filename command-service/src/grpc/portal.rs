//! `PortalService`: the browser side of the portal and the portal back end.

use chrono::Utc;
use domain::{
    Account, AccountCommand, AccountId, Device, DeviceCommand, DeviceError, LinkQrCommand, QrId,
};
use proto::v1::portal_service_server::PortalService;
use proto::v1::{
    ChangeAccountEmailRequest, ChangeAccountEmailResponse, IssueLinkQrRequest, IssueLinkQrResponse,
    RecordPortalLoginRequest, RecordPortalLoginResponse, RegisterAccountRequest,
    RegisterAccountResponse, UnlinkDevicesRequest, UnlinkDevicesResponse,
};
use tonic::{Request, Response, Status};
use uuid::Uuid;

use super::{CallMeta, Commands, Shared, timestamp};
use crate::error::CommandError;
use crate::secrets::{self, TokenKind};
use crate::store::{self, Metadata};
use crate::validate;
use identity::{PortalClaims, TokenError};

/// The most devices one `UnlinkDevices` call may name.
const MAX_UNLINK_BATCH: usize = 50;

/// The `PortalService` implementation.
#[derive(Debug, Clone)]
pub struct PortalApi(pub Shared);

impl Commands {
    fn portal_claims(&self, meta: &CallMeta) -> Result<PortalClaims, CommandError> {
        let token = meta.bearer().ok_or_else(|| {
            CommandError::Unauthenticated(
                "missing credentials: send `authorization: Bearer <JWT from the identity provider>`"
                    .into(),
            )
        })?;
        self.idp.verify(token).map_err(|error| match error {
            TokenError::Malformed | TokenError::Rejected(_) => {
                CommandError::Unauthenticated(format!("the portal token {error}"))
            }
        })
    }

    fn system(&self, meta: &CallMeta) -> Result<Metadata, CommandError> {
        let claims = self.portal_claims(meta)?;
        if !claims.is_system() {
            return Err(CommandError::PermissionDenied(
                "this call is reserved to the portal back end (role portal-system)".into(),
            ));
        }
        Ok(Metadata {
            actor: format!("system:{}", claims.sub),
            request_id: meta.call_id.clone(),
            account_id: None,
        })
    }

    /// The citizen calling, who must have re-authenticated recently.
    fn reauthenticated_citizen(
        &self,
        meta: &CallMeta,
    ) -> Result<(AccountId, Metadata), CommandError> {
        let claims = self.portal_claims(meta)?;
        let sub = claims
            .reauthenticated_citizen(Utc::now().timestamp(), self.reauth_max_age.num_seconds())
            .map_err(|refusal| CommandError::PermissionDenied(refusal.to_string()))?;
        let account_id = validate::account_id(sub).map_err(|_| {
            CommandError::Unauthenticated("the portal token's sub is not an account id".into())
        })?;
        let metadata = Metadata {
            actor: format!("citizen:{account_id}"),
            request_id: meta.call_id.clone(),
            account_id: Some(account_id.0.clone()),
        };
        Ok((account_id, metadata))
    }

    /// Executes a portal back end's command on an account; returns the consistency token.
    async fn account_command(
        &self,
        account_id: &AccountId,
        command: AccountCommand,
        metadata: &Metadata,
    ) -> Result<String, CommandError> {
        let executed = self
            .store
            .execute::<Account>(&account_id.0, command, &metadata.for_account(&account_id.0))
            .await?;
        Ok(store::token([&executed.position]))
    }

    #[tracing::instrument(skip_all, fields(account_id = ?body.account_id), err(level = "info"))]
    async fn register_account(
        &self,
        meta: &CallMeta,
        body: &RegisterAccountRequest,
    ) -> Result<RegisterAccountResponse, CommandError> {
        let metadata = self.system(meta)?;
        let account_id = validate::account_id(&body.account_id)?;
        let command = AccountCommand::Register {
            email: validate::email(&body.email)?,
            language: validate::language(&body.language)?,
            at: Utc::now(),
        };
        let consistency_token = self
            .account_command(&account_id, command, &metadata)
            .await?;
        Ok(RegisterAccountResponse {
            account_id: account_id.0,
            consistency_token,
        })
    }

    #[tracing::instrument(skip_all, fields(account_id = ?body.account_id), err(level = "info"))]
    async fn change_account_email(
        &self,
        meta: &CallMeta,
        body: &ChangeAccountEmailRequest,
    ) -> Result<ChangeAccountEmailResponse, CommandError> {
        let metadata = self.system(meta)?;
        let account_id = validate::account_id(&body.account_id)?;
        let command = AccountCommand::ChangeEmail {
            email: validate::email(&body.email)?,
            at: Utc::now(),
        };
        let consistency_token = self
            .account_command(&account_id, command, &metadata)
            .await?;
        Ok(ChangeAccountEmailResponse { consistency_token })
    }

    #[tracing::instrument(skip_all, fields(account_id = ?body.account_id), err(level = "info"))]
    async fn record_portal_login(
        &self,
        meta: &CallMeta,
        body: &RecordPortalLoginRequest,
    ) -> Result<RecordPortalLoginResponse, CommandError> {
        let metadata = self.system(meta)?;
        let account_id = validate::account_id(&body.account_id)?;
        let product = validate::product(body.product.as_ref())?;
        let command = AccountCommand::RecordPortalLogin {
            product,
            at: Utc::now(),
        };
        let consistency_token = self
            .account_command(&account_id, command, &metadata)
            .await?;
        Ok(RecordPortalLoginResponse { consistency_token })
    }

    #[tracing::instrument(skip_all, fields(account_id, qr_id), err(level = "info"))]
    async fn issue_link_qr(
        &self,
        meta: &CallMeta,
        _body: &IssueLinkQrRequest,
    ) -> Result<IssueLinkQrResponse, CommandError> {
        let (account_id, metadata) = self.reauthenticated_citizen(meta)?;
        tracing::Span::current().record("account_id", tracing::field::display(&account_id));
        let account: Account = self.store.load(&account_id.0).await?;
        if !account.is_registered() {
            return Err(domain::AccountError::NotRegistered.into());
        }
        let now = Utc::now();
        let expires_at = now + self.qr_ttl;
        let qr_id = QrId(Uuid::new_v4());
        tracing::Span::current().record("qr_id", tracing::field::display(&qr_id));
        let token = secrets::mint(TokenKind::Qr, qr_id.0);
        let svg = crate::qr::svg(&token.text)
            .map_err(|e| CommandError::Internal(format!("rendering the QR code: {e}")))?;
        self.credentials
            .insert_bearer(TokenKind::Qr, qr_id.0, &token.hash, expires_at)
            .await?;
        let command = LinkQrCommand::Issue {
            account_id,
            at: now,
            expires_at,
        };
        let qr = self.store.fresh::<domain::LinkQr>(&qr_id.to_string());
        let executed = self.store.execute_loaded(qr, command, &metadata).await?;
        let consistency_token = store::token([&executed.position]);
        Ok(IssueLinkQrResponse {
            consistency_token,
            qr_id: qr_id.to_string(),
            qr_payload: token.text,
            qr_svg: svg,
            expires_at: Some(timestamp(expires_at)),
        })
    }

    #[tracing::instrument(skip_all, fields(account_id, devices = body.device_ids.len()), err(level = "info"))]
    async fn unlink_devices(
        &self,
        meta: &CallMeta,
        body: &UnlinkDevicesRequest,
    ) -> Result<UnlinkDevicesResponse, CommandError> {
        let (account_id, metadata) = self.reauthenticated_citizen(meta)?;
        tracing::Span::current().record("account_id", tracing::field::display(&account_id));
        if body.device_ids.is_empty() || body.device_ids.len() > MAX_UNLINK_BATCH {
            return Err(CommandError::InvalidArgument(format!(
                "device_ids must name 1 to {MAX_UNLINK_BATCH} devices"
            )));
        }
        let mut device_ids = Vec::with_capacity(body.device_ids.len());
        for raw in &body.device_ids {
            let device_id = validate::device_id("device_ids", raw)?;
            if device_ids.contains(&device_id) {
                return Err(CommandError::InvalidArgument(format!(
                    "device_ids names {device_id} twice"
                )));
            }
            device_ids.push(device_id);
        }
        // Check every device first, so that an unknown id unlinks nothing. A device this account
        // already unlinked counts as done, so a retry after a partial failure finishes the job.
        let mut links = Vec::with_capacity(device_ids.len());
        let mut positions = Vec::with_capacity(device_ids.len());
        for device_id in &device_ids {
            let device = self
                .store
                .load_for_command::<Device>(&device_id.to_string())
                .await?;
            let state = device.state();
            match state
                .link_id()
                .filter(|_| state.linked_account() == Some(&account_id))
            {
                Some(link_id) => links.push((*device_id, link_id, device)),
                None if state.was_unlinked_from(&account_id) => positions.push(device.position()),
                None => {
                    return Err(CommandError::NotFound(format!(
                        "no device {device_id} is linked to your account; no device was unlinked"
                    )));
                }
            }
        }
        let now = Utc::now();
        for (device_id, link_id, device) in links {
            let command = DeviceCommand::UnlinkFromPortal {
                account_id: account_id.clone(),
                link_id,
                at: now,
            };
            let key = device_id.to_string();
            match self.store.execute_loaded(device, command, &metadata).await {
                Ok(executed) => positions.push(executed.position),
                // Unlinked concurrently (by the device itself, say): the goal is reached.
                Err(CommandError::Device(DeviceError::NotLinkedToAccount)) => {
                    positions.push(self.store.load_with_position::<Device>(&key).await?.1);
                }
                Err(other) => return Err(other),
            }
            self.credentials.delete_link(link_id.0).await?;
        }
        let consistency_token = store::token(&positions);
        Ok(UnlinkDevicesResponse {
            unlinked_device_ids: device_ids.iter().map(ToString::to_string).collect(),
            consistency_token,
        })
    }
}

#[tonic::async_trait]
impl PortalService for PortalApi {
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

    async fn unlink_devices(
        &self,
        request: Request<UnlinkDevicesRequest>,
    ) -> Result<Response<UnlinkDevicesResponse>, Status> {
        idempotent!(self, request, "UnlinkDevices", unlink_devices)
    }
}
