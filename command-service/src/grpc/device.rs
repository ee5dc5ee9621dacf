//! `DeviceService`: the mobile app, before and after linking.

use chrono::Utc;
use domain::{
    Account, Device, DeviceCommand, DeviceId, LinkAttempt, LinkAttemptCommand, LinkAttemptId,
    LinkQr, LinkQrCommand, LuxTrustProduct, MAX_SECRET_CODE_FAILURES, ProductKind, QrId,
};
use proto::v1::device_service_server::DeviceService;
use proto::v1::{
    AuthenticateWithLuxTrustRequest, AuthenticateWithLuxTrustResponse, ScanQrRequest,
    ScanQrResponse, SetBiometricsRequest, SetBiometricsResponse, SetSecretCodeRequest,
    SetSecretCodeResponse, StartLinkRequest, StartLinkResponse, UnlinkThisDeviceRequest,
    UnlinkThisDeviceResponse, VerifySecretCodeRequest, VerifySecretCodeResponse,
};
use tonic::{Request, Response, Status};
use uuid::Uuid;

use super::{CallMeta, Commands, Shared, timestamp};
use crate::credentials::StoredCredential;
use crate::error::CommandError;
use crate::secrets::{self, CodeHasher, PresentedToken, TokenKind};
use crate::store::{self, Loaded, Metadata, retry_on_conflict};
use crate::validate;
use identity::{LuxTrustClaims, TokenError};

/// The `DeviceService` implementation.
#[derive(Debug, Clone)]
pub struct DeviceApi(pub Shared);

/// A linked device, authenticated by its credential (no `Debug`: it holds the verifier).
struct LinkedDevice {
    link_id: LinkAttemptId,
    device_id: DeviceId,
    credential: StoredCredential,
    metadata: Metadata,
    /// The device as loaded to check the credential, for the command that follows.
    loaded: Loaded<Device>,
}

/// Runs Argon2id off the async runtime's worker threads.
async fn blocking<T: Send + 'static>(
    hasher: &CodeHasher,
    work: impl FnOnce(&CodeHasher) -> Result<T, argon2::password_hash::Error> + Send + 'static,
) -> Result<T, CommandError> {
    hasher
        .run(work)
        .await
        .ok_or_else(|| CommandError::Internal("hashing task failed".into()))?
        .map_err(|e| CommandError::Internal(format!("hashing failed: {e}")))
}

impl Commands {
    /// The link attempt named by a `link_token`, once its secret is checked.
    async fn link_attempt(
        &self,
        meta: &CallMeta,
        link_token: &str,
    ) -> Result<(LinkAttemptId, PresentedToken, Metadata), CommandError> {
        validate::required("link_token", link_token)?;
        let token = secrets::parse(TokenKind::LinkAttempt, link_token).ok_or_else(|| {
            CommandError::InvalidArgument(
                "link_token is malformed; pass the link_token StartLink returned, unchanged".into(),
            )
        })?;
        let stored = self
            .credentials
            .bearer_hash(TokenKind::LinkAttempt, token.id)
            .await?;
        if !stored.is_some_and(|hash| token.matches(&hash)) {
            return Err(CommandError::Unauthenticated(
                "link_token is not valid".into(),
            ));
        }
        let metadata = Metadata {
            actor: format!("app:link_attempt:{}", token.id),
            request_id: meta.call_id.clone(),
            account_id: None,
        };
        Ok((LinkAttemptId(token.id), token, metadata))
    }

    /// The linked device whose credential the call carries.
    async fn linked_device(&self, meta: &CallMeta) -> Result<LinkedDevice, CommandError> {
        let text = meta.bearer().ok_or_else(|| {
            CommandError::Unauthenticated(
                "missing device credential: send `authorization: Bearer <device credential>`"
                    .into(),
            )
        })?;
        let token = secrets::parse(TokenKind::DeviceCredential, text).ok_or_else(|| {
            CommandError::Unauthenticated("the device credential is malformed".into())
        })?;
        let credential = self
            .credentials
            .device_credential(token.id)
            .await?
            .filter(|stored| token.matches(&stored.credential_hash))
            .ok_or_else(|| {
                CommandError::Unauthenticated(
                    "the device credential is not valid; the device may have been unlinked".into(),
                )
            })?;
        let device_id = DeviceId(credential.device_id);
        let link_id = LinkAttemptId(token.id);
        let loaded = self
            .store
            .load_for_command::<Device>(&device_id.to_string())
            .await?;
        let device = loaded.state();
        let Some(account_id) = device
            .linked_account()
            .filter(|_| device.link_id() == Some(link_id))
        else {
            return Err(domain::DeviceError::CredentialRevoked.into());
        };
        let metadata = Metadata {
            actor: format!("device:{device_id}"),
            request_id: meta.call_id.clone(),
            account_id: Some(account_id.0.clone()),
        };
        Ok(LinkedDevice {
            link_id,
            device_id,
            credential,
            metadata,
            loaded,
        })
    }

    #[tracing::instrument(skip_all, fields(device_id = ?body.device_id, link_attempt_id), err(level = "info"))]
    async fn start_link(
        &self,
        meta: &CallMeta,
        body: &StartLinkRequest,
    ) -> Result<StartLinkResponse, CommandError> {
        let device_id = validate::device_id("device_id", &body.device_id)?;
        let device_name = validate::device_name(&body.device_name)?;
        let method = validate::method(body.method)?;
        let platform = validate::platform(body.platform)?;
        let app_version = validate::app_version(&body.app_version)?;
        let device: Device = self.store.load(&device_id.to_string()).await?;
        if device.linked_account().is_some() {
            return Err(domain::DeviceError::DeviceAlreadyLinked.into());
        }
        let now = Utc::now();
        let expires_at = now + self.link_attempt_ttl;
        let attempt_id = LinkAttemptId(Uuid::new_v4());
        tracing::Span::current().record("link_attempt_id", tracing::field::display(attempt_id));
        let token = secrets::mint(TokenKind::LinkAttempt, attempt_id.0);
        let nonce = secrets::random_nonce();
        self.credentials
            .insert_bearer(
                TokenKind::LinkAttempt,
                attempt_id.0,
                &token.hash,
                expires_at,
            )
            .await?;
        let command = LinkAttemptCommand::Start {
            device_id,
            device_name,
            method,
            platform,
            app_version,
            nonce: nonce.clone(),
            at: now,
            expires_at,
        };
        let metadata = Metadata {
            actor: format!("app:{device_id}"),
            request_id: meta.call_id.clone(),
            account_id: None,
        };
        let attempt = self.store.fresh::<LinkAttempt>(&attempt_id.to_string());
        let executed = self
            .store
            .execute_loaded(attempt, command, &metadata)
            .await?;
        let consistency_token = store::token([&executed.position]);
        Ok(StartLinkResponse {
            link_token: token.text,
            luxtrust_nonce: nonce,
            expires_at: Some(timestamp(expires_at)),
            consistency_token,
        })
    }

    #[tracing::instrument(skip_all, fields(link_attempt_id, qr_id), err(level = "info"))]
    async fn scan_qr(
        &self,
        meta: &CallMeta,
        body: &ScanQrRequest,
    ) -> Result<ScanQrResponse, CommandError> {
        validate::required("link_token", &body.link_token)?;
        validate::required("qr_payload", &body.qr_payload)?;
        let qr_token = secrets::parse(TokenKind::Qr, &body.qr_payload).ok_or_else(|| {
            CommandError::InvalidArgument("qr_payload is not a linkd QR code".into())
        })?;
        let (attempt_id, _, metadata) = self.link_attempt(meta, &body.link_token).await?;
        let qr_id = QrId(qr_token.id);
        let span = tracing::Span::current();
        span.record("link_attempt_id", tracing::field::display(attempt_id));
        span.record("qr_id", tracing::field::display(qr_id));
        let unknown_qr = || CommandError::NotFound("unknown QR code".into());
        let stored = self.credentials.bearer_hash(TokenKind::Qr, qr_id.0).await?;
        if !stored.is_some_and(|hash| qr_token.matches(&hash)) {
            return Err(unknown_qr());
        }
        let qr = self
            .store
            .load_for_command::<LinkQr>(&qr_id.to_string())
            .await?;
        let account_id = qr.state().account_id().cloned().ok_or_else(unknown_qr)?;
        let attempt = self
            .store
            .load_for_command::<LinkAttempt>(&attempt_id.to_string())
            .await?;
        let device_id = attempt
            .state()
            .device_id()
            .ok_or(domain::LinkAttemptError::NotStarted)?;
        let now = Utc::now();
        let accept = LinkAttemptCommand::AcceptQr {
            qr_id,
            account_id: account_id.clone(),
            at: now,
        };
        // Refuse before consuming the QR code if the attempt cannot use it.
        attempt.state().decide(accept.clone())?;
        let metadata = metadata.for_account(&account_id.0);
        let consume = LinkQrCommand::Consume {
            attempt_id,
            device_id,
            at: now,
        };
        let consumed = self.store.execute_loaded(qr, consume, &metadata).await?;
        let accepted = self
            .store
            .execute_loaded(attempt, accept, &metadata)
            .await?;
        let consistency_token = store::token([&consumed.position, &accepted.position]);
        Ok(ScanQrResponse { consistency_token })
    }

    #[tracing::instrument(skip_all, fields(link_attempt_id), err(level = "info"))]
    async fn authenticate_with_luxtrust(
        &self,
        meta: &CallMeta,
        body: &AuthenticateWithLuxTrustRequest,
    ) -> Result<AuthenticateWithLuxTrustResponse, CommandError> {
        validate::required("link_token", &body.link_token)?;
        validate::required("assertion", &body.assertion)?;
        let claims: LuxTrustClaims = match self.luxtrust.verify(&body.assertion) {
            Ok(claims) => claims,
            Err(TokenError::Malformed) => {
                return Err(CommandError::InvalidArgument(
                    "assertion is not a signed LuxTrust assertion (compact JWS)".into(),
                ));
            }
            Err(rejected @ TokenError::Rejected(_)) => {
                return Err(CommandError::Unauthenticated(format!(
                    "the LuxTrust assertion {rejected}"
                )));
            }
        };
        let (attempt_id, _, metadata) = self.link_attempt(meta, &body.link_token).await?;
        tracing::Span::current().record("link_attempt_id", tracing::field::display(attempt_id));
        let account_id = validate::account_id(&claims.sub).map_err(|_| {
            CommandError::InvalidArgument(
                "the LuxTrust assertion's sub is not an account id".into(),
            )
        })?;
        let kind = match claims.product_kind.as_str() {
            "mobile" => ProductKind::Mobile,
            "scan" => ProductKind::Scan,
            other => {
                return Err(CommandError::InvalidArgument(format!(
                    "the LuxTrust assertion's product_kind must be mobile or scan, got {other:?}"
                )));
            }
        };
        let product = LuxTrustProduct {
            kind,
            serial: validate::serial(&claims.product_serial)?,
        };
        let metadata = metadata.for_account(&account_id.0);
        let now = Utc::now();
        let executed = retry_on_conflict(|| async {
            let account: Account = self.store.load(&account_id.0).await?;
            if !account.is_registered() {
                return Err(CommandError::FailedPrecondition(
                    "the LuxTrust assertion names an account that is not registered on the portal; \
                     register in the browser first"
                        .into(),
                ));
            }
            let command = LinkAttemptCommand::AcceptLuxTrust {
                account_id: account_id.clone(),
                product: product.clone(),
                product_used_for_login: account.has_logged_in_with(&product),
                nonce: claims.nonce.clone(),
                at: now,
            };
            self.store
                .execute::<LinkAttempt>(&attempt_id.to_string(), command, &metadata)
                .await
        })
        .await?;
        let consistency_token = store::token([&executed.position]);
        Ok(AuthenticateWithLuxTrustResponse { consistency_token })
    }

    #[tracing::instrument(skip_all, fields(link_attempt_id, device_id), err(level = "info"))]
    async fn set_secret_code(
        &self,
        meta: &CallMeta,
        body: &SetSecretCodeRequest,
    ) -> Result<SetSecretCodeResponse, CommandError> {
        validate::required("link_token", &body.link_token)?;
        secrets::check_new_code(&body.secret_code)
            .map_err(|refusal| CommandError::InvalidArgument(refusal.to_string()))?;
        let (attempt_id, link_token, metadata) = self.link_attempt(meta, &body.link_token).await?;
        let span = tracing::Span::current();
        span.record("link_attempt_id", tracing::field::display(attempt_id));
        // The credential is derived from the link token, so every call for this attempt (a
        // retry, or a double submit racing the first) returns the same credential.
        let credential = link_token.derive(TokenKind::DeviceCredential, attempt_id.0);
        let now = Utc::now();
        let attempt = self
            .store
            .load_for_command::<LinkAttempt>(&attempt_id.to_string())
            .await?;
        let ready = match attempt.state().ready_to_link(now) {
            Ok(ready) => ready,
            Err(domain::LinkAttemptError::AlreadyCompleted) => {
                return self
                    .repeat_completed_link(attempt_id, attempt.state(), credential, body)
                    .await;
            }
            Err(refusal) => return Err(refusal.into()),
        };
        span.record("device_id", tracing::field::display(ready.device_id));
        let device = self
            .store
            .load_for_command::<Device>(&ready.device_id.to_string())
            .await?;
        let state = device.state();
        if state.linked_account().is_some() && state.link_id() != Some(attempt_id) {
            return Err(domain::DeviceError::DeviceAlreadyLinked.into());
        }
        let code = body.secret_code.clone();
        let verifier = blocking(&self.hasher, move |hasher| hasher.hash(&code)).await?;
        // Stored before the link, so a linked device always has its credential; a refused link
        // removes the row again (ADR 0002).
        self.credentials
            .put_device_credential(attempt_id.0, ready.device_id.0, &credential.hash, &verifier)
            .await?;
        let metadata = metadata.for_account(&ready.account_id.0);
        let link = DeviceCommand::Link {
            link_id: attempt_id,
            account_id: ready.account_id.clone(),
            device_name: ready.device_name.clone(),
            method: ready.method,
            product: ready.product.clone(),
            platform: ready.platform,
            app_version: ready.app_version.clone(),
            at: now,
        };
        let linked = match self.store.execute_loaded(device, link, &metadata).await {
            Ok(linked) => linked,
            Err(refusal) => {
                self.credentials.delete_link(attempt_id.0).await?;
                return Err(refusal);
            }
        };
        let complete = LinkAttemptCommand::Complete { at: now };
        let completed = match self
            .store
            .execute_loaded(attempt, complete, &metadata)
            .await
        {
            Ok(completed) => completed.position,
            // A concurrent call for the same attempt completed it: same link, same credential.
            Err(CommandError::Attempt(domain::LinkAttemptError::AlreadyCompleted)) => {
                self.store
                    .load_with_position::<LinkAttempt>(&attempt_id.to_string())
                    .await?
                    .1
            }
            Err(other) => return Err(other),
        };
        tracing::info!(method = ?ready.method, "device linked");
        let consistency_token = store::token([&linked.position, &completed]);
        let linked = linked.state;
        Ok(SetSecretCodeResponse {
            device_credential: credential.text,
            device_id: ready.device_id.to_string(),
            linked_at: Some(timestamp(linked.linked_at().unwrap_or(now))),
            consistency_token,
        })
    }

    /// `SetSecretCode` again for an attempt that already linked its device: the same answer, if
    /// the device is still linked by this attempt and the code is the one that was set.
    async fn repeat_completed_link(
        &self,
        attempt_id: LinkAttemptId,
        attempt: &LinkAttempt,
        credential: secrets::MintedToken,
        body: &SetSecretCodeRequest,
    ) -> Result<SetSecretCodeResponse, CommandError> {
        let completed = || CommandError::Attempt(domain::LinkAttemptError::AlreadyCompleted);
        let device_id = attempt.device_id().ok_or_else(completed)?;
        let (device, position) = self
            .store
            .load_with_position::<Device>(&device_id.to_string())
            .await?;
        let stored = self.credentials.device_credential(attempt_id.0).await?;
        let (Some(linked_at), Some(stored)) = (device.linked_at(), stored) else {
            return Err(completed());
        };
        if device.link_id() != Some(attempt_id) {
            return Err(completed());
        }
        let code = body.secret_code.clone();
        let verifier = stored.code_verifier;
        if !blocking(&self.hasher, move |hasher| hasher.verify(&code, &verifier)).await? {
            return Err(completed());
        }
        let consistency_token = store::token([&position]);
        Ok(SetSecretCodeResponse {
            device_credential: credential.text,
            device_id: device_id.to_string(),
            linked_at: Some(timestamp(linked_at)),
            consistency_token,
        })
    }

    #[tracing::instrument(skip_all, fields(device_id), err(level = "info"))]
    async fn set_biometrics(
        &self,
        meta: &CallMeta,
        body: &SetBiometricsRequest,
    ) -> Result<SetBiometricsResponse, CommandError> {
        let device = self.linked_device(meta).await?;
        tracing::Span::current().record("device_id", tracing::field::display(device.device_id));
        let command = DeviceCommand::SetBiometrics {
            link_id: device.link_id,
            enabled: body.enabled,
            at: Utc::now(),
        };
        let executed = self
            .store
            .execute_loaded(device.loaded, command, &device.metadata)
            .await?;
        let consistency_token = store::token([&executed.position]);
        Ok(SetBiometricsResponse {
            biometrics_enabled: body.enabled,
            consistency_token,
        })
    }

    #[tracing::instrument(skip_all, fields(device_id), err(level = "info"))]
    async fn verify_secret_code(
        &self,
        meta: &CallMeta,
        body: &VerifySecretCodeRequest,
    ) -> Result<VerifySecretCodeResponse, CommandError> {
        secrets::check_code_format(&body.secret_code)
            .map_err(|refusal| CommandError::InvalidArgument(refusal.to_string()))?;
        let device = self.linked_device(meta).await?;
        tracing::Span::current().record("device_id", tracing::field::display(device.device_id));
        let code = body.secret_code.clone();
        let verifier = device.credential.code_verifier.clone();
        let matches = blocking(&self.hasher, move |hasher| hasher.verify(&code, &verifier)).await?;
        // The verdict leaves the server only once the check is recorded, so parallel guesses
        // cannot outrun the failure count (see docs/adr/0003).
        let command = DeviceCommand::RecordSecretCodeCheck {
            link_id: device.link_id,
            matches,
            at: Utc::now(),
        };
        let executed = self
            .store
            .execute_loaded(device.loaded, command, &device.metadata)
            .await?;
        let after = executed.state;
        let still_linked = after.link_id() == Some(device.link_id);
        if !still_linked {
            self.credentials.delete_link(device.link_id.0).await?;
        }
        let consistency_token = store::token([&executed.position]);
        Ok(VerifySecretCodeResponse {
            consistency_token,
            verified: matches,
            attempts_remaining: if still_linked {
                MAX_SECRET_CODE_FAILURES.saturating_sub(after.consecutive_failures())
            } else {
                0
            },
            device_unlinked: !still_linked,
        })
    }

    #[tracing::instrument(skip_all, fields(device_id), err(level = "info"))]
    async fn unlink_this_device(
        &self,
        meta: &CallMeta,
        _body: &UnlinkThisDeviceRequest,
    ) -> Result<UnlinkThisDeviceResponse, CommandError> {
        let device = self.linked_device(meta).await?;
        tracing::Span::current().record("device_id", tracing::field::display(device.device_id));
        let command = DeviceCommand::UnlinkFromDevice {
            link_id: device.link_id,
            at: Utc::now(),
        };
        let executed = self
            .store
            .execute_loaded(device.loaded, command, &device.metadata)
            .await?;
        self.credentials.delete_link(device.link_id.0).await?;
        let consistency_token = store::token([&executed.position]);
        Ok(UnlinkThisDeviceResponse { consistency_token })
    }
}

#[tonic::async_trait]
impl DeviceService for DeviceApi {
    async fn start_link(
        &self,
        request: Request<StartLinkRequest>,
    ) -> Result<Response<StartLinkResponse>, Status> {
        idempotent!(self, request, "StartLink", start_link)
    }

    async fn scan_qr(
        &self,
        request: Request<ScanQrRequest>,
    ) -> Result<Response<ScanQrResponse>, Status> {
        idempotent!(self, request, "ScanQr", scan_qr)
    }

    async fn authenticate_with_lux_trust(
        &self,
        request: Request<AuthenticateWithLuxTrustRequest>,
    ) -> Result<Response<AuthenticateWithLuxTrustResponse>, Status> {
        idempotent!(
            self,
            request,
            "AuthenticateWithLuxTrust",
            authenticate_with_luxtrust
        )
    }

    async fn set_secret_code(
        &self,
        request: Request<SetSecretCodeRequest>,
    ) -> Result<Response<SetSecretCodeResponse>, Status> {
        idempotent!(self, request, "SetSecretCode", set_secret_code)
    }

    async fn set_biometrics(
        &self,
        request: Request<SetBiometricsRequest>,
    ) -> Result<Response<SetBiometricsResponse>, Status> {
        idempotent!(self, request, "SetBiometrics", set_biometrics)
    }

    async fn verify_secret_code(
        &self,
        request: Request<VerifySecretCodeRequest>,
    ) -> Result<Response<VerifySecretCodeResponse>, Status> {
        idempotent!(self, request, "VerifySecretCode", verify_secret_code)
    }

    async fn unlink_this_device(
        &self,
        request: Request<UnlinkThisDeviceRequest>,
    ) -> Result<Response<UnlinkThisDeviceResponse>, Status> {
        idempotent!(self, request, "UnlinkThisDevice", unlink_this_device)
    }
}
