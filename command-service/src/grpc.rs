//! The gRPC edge: translators only. Each RPC reads the call's metadata, checks the request's
//! fields into domain inputs (`validate`), authenticates the caller (`app::auth`) in the order
//! the API documents, runs the use case (`app`) under the request log (a retried `request_id`
//! replays the first answer) and turns its output into the response, or its error into a
//! status (`status`).

/// Serves one RPC: `$translate(&app, &call, &body)` under the request log, mapped to a gRPC
/// response or status. The call runs to its end in a task of its own: a client that goes away,
/// or the server's call timeout, stops the waiting for the answer, never the work halfway (the
/// answer is still recorded for a retry with the same `request_id`; ADR 0012).
macro_rules! idempotent {
    ($api:expr, $request:expr, $method:literal, $translate:ident) => {{
        let api: $crate::grpc::Api = ($api).clone();
        let call = api.call_of(&$request);
        let body = $request.into_inner();
        let work = async move {
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
        };
        match tokio::spawn(tracing::Instrument::in_current_span(work)).await {
            Ok(answer) => answer
                .map(tonic::Response::new)
                .map_err($crate::status::to_status),
            Err(_) => Err($crate::status::to_status(
                $crate::error::CommandError::Internal("the call's task failed".into()),
            )),
        }
    }};
}

mod confirmation;
mod device;
mod portal;

pub(crate) use confirmation::Watches;

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
    /// Reverse proxies in front of the service that append to `x-forwarded-for`.
    pub(crate) trusted_proxy_hops: usize,
    /// One permit per open `WatchLinkQr` stream, and the count per account.
    pub(crate) qr_watches: confirmation::Watches,
    /// Turns true when the service begins to shut down.
    pub(crate) stopping: tokio::sync::watch::Receiver<bool>,
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
    proto::v1::ConfirmLinkRequest,
    proto::v1::DeclineLinkRequest,
    proto::v1::UnlinkDevicesRequest,
    proto::v1::RevokeAllDevicesRequest,
    proto::v1::EraseAccountRequest,
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

impl Api {
    /// The call's bearer token, server-side id and client address, from its metadata.
    pub(crate) fn call_of<T>(&self, request: &Request<T>) -> Call {
        Call {
            client_address: client_address(request, self.trusted_proxy_hops),
            ..call_of(request)
        }
    }
}

/// The client's address: with `hops` trusted proxies in front, the entry of `x-forwarded-for`
/// the outermost trusted proxy appended ([`service_kit::forwarded::client_address`]); with
/// none, the TCP peer. (README, `LINKD_TRUSTED_PROXY_HOPS`.)
fn client_address<T>(request: &Request<T>, hops: usize) -> Option<std::net::IpAddr> {
    if hops == 0 {
        return request.remote_addr().map(|peer| peer.ip());
    }
    let lines = request
        .metadata()
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|value| value.to_str().ok());
    service_kit::forwarded::client_address(lines, hops)
}

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
        client_address: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_forwarded(lines: &[&str]) -> Request<()> {
        let mut request = Request::new(());
        for line in lines {
            request
                .metadata_mut()
                .append("x-forwarded-for", line.parse().unwrap());
        }
        request
    }

    fn forwarded(lines: &[&str], hops: usize) -> Option<String> {
        client_address(&with_forwarded(lines), hops).map(|a| a.to_string())
    }

    #[test]
    fn the_client_is_the_entry_the_outermost_trusted_proxy_appended() {
        assert_eq!(
            forwarded(&["203.0.113.9, 198.51.100.23"], 1).as_deref(),
            Some("198.51.100.23")
        );
        assert_eq!(
            forwarded(&["203.0.113.9, 198.51.100.23", "10.0.0.2"], 2).as_deref(),
            Some("198.51.100.23"),
            "several header lines count in order"
        );
        assert_eq!(
            forwarded(&["198.51.100.23:4711"], 1).as_deref(),
            Some("198.51.100.23")
        );
        assert_eq!(
            forwarded(&["[2001:db8::1]:443"], 1).as_deref(),
            Some("2001:db8::1")
        );
        assert_eq!(
            forwarded(&["[2001:db8::1]"], 1).as_deref(),
            Some("2001:db8::1")
        );
        assert_eq!(
            forwarded(&["2001:db8::1"], 1).as_deref(),
            Some("2001:db8::1")
        );
    }

    #[test]
    fn a_short_or_garbled_header_gives_no_address() {
        assert_eq!(forwarded(&["198.51.100.23"], 2), None);
        assert_eq!(forwarded(&[], 1), None);
        assert_eq!(forwarded(&["unknown"], 1), None);
        assert_eq!(
            forwarded(&["198.51.100.23"], 0),
            None,
            "no proxies: the TCP peer"
        );
    }
}
