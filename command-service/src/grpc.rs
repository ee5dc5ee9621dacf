//! The gRPC edge: translators only. Each RPC reads the call's metadata, checks the request's
//! fields into domain inputs (`validate`), authenticates the caller (`app::auth`) in the order
//! the API documents, runs the use case (`app`) under the request log (a retried `request_id`
//! replays the first answer) and turns its output into the response, or its error into a
//! status (`status`).

/// Serves one RPC: `$translate(&app, &call, &body)` under the request log, mapped to a gRPC
/// response or status.
macro_rules! idempotent {
    ($api:expr, $request:expr, $method:literal, $translate:ident) => {{
        let call = $crate::grpc::call_of(&$request);
        let body = $request.into_inner();
        let api = &$api;
        let credentials = call.bearer.clone().unwrap_or_default();
        let scope = $crate::grpc::Scoped::scope(&body, &credentials).to_owned();
        api.requests
            .run(
                $method,
                &body.request_id,
                &scope,
                &credentials,
                &body,
                || $translate(&api.app, &call, &body),
            )
            .await
            .map(tonic::Response::new)
            .map_err($crate::status::to_status)
    }};
}

mod device;
mod portal;

use std::sync::Arc;

use tonic::Request;
use uuid::Uuid;

use crate::app::{App, Call};
use crate::idempotency::RequestLog;

/// `PortalService` and `DeviceService`: the use cases and the request log.
#[derive(Debug, Clone)]
pub(crate) struct Api {
    pub(crate) app: Arc<App>,
    pub(crate) requests: RequestLog,
}

/// Whose request ids a request's `request_id` lives among: AIP-155 keys are scoped by RPC and
/// by the credential the call carries (the bearer token, or the link token in the message), so
/// someone who learns another client's `request_id` cannot claim it first. `StartLink` carries
/// no credential; its scope is the device it starts linking.
pub(crate) trait Scoped {
    /// The scope, given the call's bearer token (empty if none).
    fn scope<'a>(&'a self, bearer: &'a str) -> &'a str {
        bearer
    }
}

macro_rules! scoped_by_bearer {
    ($($request:ty),*) => {$(impl Scoped for $request {})*};
}

scoped_by_bearer!(
    proto::v1::RegisterAccountRequest,
    proto::v1::ChangeAccountEmailRequest,
    proto::v1::RecordPortalLoginRequest,
    proto::v1::IssueLinkQrRequest,
    proto::v1::UnlinkDevicesRequest,
    proto::v1::SetBiometricsRequest,
    proto::v1::VerifySecretCodeRequest,
    proto::v1::UnlinkThisDeviceRequest
);

impl Scoped for proto::v1::StartLinkRequest {
    fn scope<'a>(&'a self, _bearer: &'a str) -> &'a str {
        &self.device_id
    }
}

macro_rules! scoped_by_link_token {
    ($($request:ty),*) => {$(
        impl Scoped for $request {
            fn scope<'a>(&'a self, _bearer: &'a str) -> &'a str {
                &self.link_token
            }
        }
    )*};
}

scoped_by_link_token!(
    proto::v1::ScanQrRequest,
    proto::v1::AuthenticateWithLuxTrustRequest,
    proto::v1::SetSecretCodeRequest
);

/// The call's bearer token and server-side id, from its metadata.
fn call_of<T>(request: &Request<T>) -> Call {
    let call_id = request
        .metadata()
        .get("x-request-id")
        .and_then(|value| value.to_str().ok())
        .map(str::trim)
        .filter(|id| {
            !id.is_empty()
                && id.len() <= 64
                && id
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        })
        .map_or_else(|| Uuid::new_v4().to_string(), str::to_owned);
    Call {
        bearer: service_kit::grpc::bearer(request.metadata()).map(str::to_owned),
        call_id,
    }
}
