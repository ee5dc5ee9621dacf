//! `DeviceService`: the mobile app, before and after linking.

use domain::LuxTrustProduct;
use proto::convert::{product_kind_from_claim, timestamp};
use proto::v1::device_service_server::DeviceService;
use proto::v1::{
    AuthenticateWithLuxTrustRequest, AuthenticateWithLuxTrustResponse, ScanQrRequest,
    ScanQrResponse, SetBiometricsRequest, SetBiometricsResponse, SetSecretCodeRequest,
    SetSecretCodeResponse, StartLinkRequest, StartLinkResponse, UnlinkThisDeviceRequest,
    UnlinkThisDeviceResponse, VerifySecretCodeRequest, VerifySecretCodeResponse,
};
use tonic::{Request, Response, Status};

use super::Api;
use crate::app::linking::{LinkRequest, LuxTrustAssertion};
use crate::app::{App, Call};
use crate::error::CommandError;
use crate::limits::Rule;
use crate::secrets::{self, SecretCode, TokenKind};
use crate::validate;

#[tracing::instrument(skip_all, fields(device_id = ?body.device_id, link_attempt_id), err(level = "info"))]
async fn start_link(
    app: &App,
    call: &Call,
    body: &StartLinkRequest,
) -> Result<StartLinkResponse, CommandError> {
    app.limits
        .by_address(Rule::StartLinkByAddress, call.client_address)?;
    let request = LinkRequest {
        device_id: validate::device_id("device_id", &body.device_id)?,
        device_name: validate::device_name(&body.device_name)?,
        method: validate::method(body.method)?,
        platform: validate::platform(body.platform)?,
        device_model: validate::device_model(&body.device_model)?,
        app_version: validate::app_version(&body.app_version)?,
    };
    app.limits
        .by_key(Rule::StartLinkByDevice, &request.device_id.to_string())
        .await?;
    let started = app.start_link(call, request).await?;
    Ok(StartLinkResponse {
        link_token: started.link_token,
        luxtrust_nonce: started.luxtrust_nonce,
        expires_at: Some(timestamp(started.expires_at)),
        consistency_token: started.written.to_string(),
    })
}

#[tracing::instrument(skip_all, fields(link_attempt_id, qr_id), err(level = "info"))]
async fn scan_qr(
    app: &App,
    call: &Call,
    body: &ScanQrRequest,
) -> Result<ScanQrResponse, CommandError> {
    validate::required("link_token", &body.link_token)?;
    validate::required("qr_payload", &body.qr_payload)?;
    let qr_token = secrets::parse(TokenKind::Qr, &body.qr_payload)
        .ok_or_else(|| CommandError::InvalidArgument("qr_payload is not a linkd QR code".into()))?;
    app.limits
        .by_address(Rule::ScanQrByAddress, call.client_address)?;
    let holder = app.link_attempt(call, &body.link_token).await?;
    app.limits
        .by_key(Rule::ScanQrByAttempt, &holder.attempt_id().to_string())
        .await?;
    let scanned = app.scan_qr(holder, qr_token, call.client_address).await?;
    Ok(ScanQrResponse {
        account_hint: scanned.account_hint,
        matching_code: scanned
            .matching_code
            .map(|code| code.code())
            .unwrap_or_default(),
        confirm_by: scanned.confirm_by.map(timestamp),
        consistency_token: scanned.written.to_string(),
    })
}

#[tracing::instrument(skip_all, fields(link_attempt_id), err(level = "info"))]
async fn authenticate_with_luxtrust(
    app: &App,
    call: &Call,
    body: &AuthenticateWithLuxTrustRequest,
) -> Result<AuthenticateWithLuxTrustResponse, CommandError> {
    validate::required("link_token", &body.link_token)?;
    validate::required("assertion", &body.assertion)?;
    app.limits
        .by_address(Rule::LuxTrustByAddress, call.client_address)?;
    let claims = app.luxtrust_assertion(&body.assertion)?;
    let holder = app.link_attempt(call, &body.link_token).await?;
    app.limits
        .by_key(Rule::LuxTrustByAttempt, &holder.attempt_id().to_string())
        .await?;
    tracing::Span::current().record(
        "link_attempt_id",
        tracing::field::display(holder.attempt_id()),
    );
    let account_id = validate::account_id(&claims.sub).map_err(|_| {
        CommandError::InvalidArgument("the LuxTrust assertion's sub is not an account id".into())
    })?;
    let kind = product_kind_from_claim(&claims.product_kind).map_err(|_| {
        CommandError::InvalidArgument(format!(
            "the LuxTrust assertion's product_kind must be mobile or scan, got {:?}",
            claims.product_kind
        ))
    })?;
    let assertion = LuxTrustAssertion {
        account_id,
        product: LuxTrustProduct {
            kind,
            serial: validate::serial(&claims.product_serial)?,
        },
        nonce: claims.nonce,
    };
    app.limits
        .by_key(Rule::LuxTrustBySerial, &assertion.product.serial)
        .await?;
    let authenticated = app.authenticate_with_luxtrust(holder, assertion).await?;
    Ok(AuthenticateWithLuxTrustResponse {
        account_hint: authenticated.account_hint,
        consistency_token: authenticated.written.to_string(),
    })
}

#[tracing::instrument(skip_all, fields(link_attempt_id, device_id), err(level = "info"))]
async fn set_secret_code(
    app: &App,
    call: &Call,
    body: &SetSecretCodeRequest,
) -> Result<SetSecretCodeResponse, CommandError> {
    validate::required("link_token", &body.link_token)?;
    let code = SecretCode::new_code(&body.secret_code)
        .map_err(|refusal| CommandError::InvalidArgument(refusal.to_string()))?;
    app.limits
        .by_address(Rule::SetSecretCodeByAddress, call.client_address)?;
    let holder = app.link_attempt(call, &body.link_token).await?;
    app.limits
        .by_key(
            Rule::SetSecretCodeByAttempt,
            &holder.attempt_id().to_string(),
        )
        .await?;
    let linked = app.set_secret_code(holder, code).await?;
    Ok(SetSecretCodeResponse {
        device_credential: linked.device_credential,
        device_id: linked.device_id.to_string(),
        linked_at: Some(timestamp(linked.linked_at)),
        consistency_token: linked.written.to_string(),
    })
}

#[tracing::instrument(skip_all, fields(device_id), err(level = "info"))]
async fn set_biometrics(
    app: &App,
    call: &Call,
    body: &SetBiometricsRequest,
) -> Result<SetBiometricsResponse, CommandError> {
    let device = app.linked_device(call).await?;
    let written = app.set_biometrics(device, body.enabled).await?;
    Ok(SetBiometricsResponse {
        biometrics_enabled: body.enabled,
        consistency_token: written.to_string(),
    })
}

#[tracing::instrument(skip_all, fields(device_id), err(level = "info"))]
async fn verify_secret_code(
    app: &App,
    call: &Call,
    body: &VerifySecretCodeRequest,
) -> Result<VerifySecretCodeResponse, CommandError> {
    let code = SecretCode::typed(&body.secret_code)
        .map_err(|refusal| CommandError::InvalidArgument(refusal.to_string()))?;
    app.limits
        .by_address(Rule::VerifyByAddress, call.client_address)?;
    let device = app.linked_device(call).await?;
    app.limits
        .by_key(Rule::VerifyByDevice, &device.device_id().to_string())
        .await?;
    let verdict = app.verify_secret_code(device, code).await?;
    Ok(VerifySecretCodeResponse {
        consistency_token: verdict.written.to_string(),
        verified: verdict.verified,
        attempts_remaining: verdict.attempts_remaining,
        device_unlinked: verdict.device_unlinked,
    })
}

#[tracing::instrument(skip_all, fields(device_id), err(level = "info"))]
async fn unlink_this_device(
    app: &App,
    call: &Call,
    _body: &UnlinkThisDeviceRequest,
) -> Result<UnlinkThisDeviceResponse, CommandError> {
    let device = app.linked_device(call).await?;
    let written = app.unlink_this_device(device).await?;
    Ok(UnlinkThisDeviceResponse {
        consistency_token: written.to_string(),
    })
}

#[tonic::async_trait]
impl DeviceService for Api {
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
