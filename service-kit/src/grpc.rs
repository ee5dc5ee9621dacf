//! The gRPC server both services run, and the one rule for reading the caller's bearer token.
//!
//! [`GrpcServer`] adds, beside the services it is given: `grpc.health.v1` (each service
//! reported serving) and server reflection (linkd's and health's descriptors); a limit of
//! [`MAX_MESSAGE_BYTES`] per request, refused with `INVALID_ARGUMENT` naming the limit, and
//! requests that do not decode answered `INVALID_ARGUMENT` too, not `INTERNAL`
//! ([`malformed`]); admission ([`admission`]): a bound on calls in progress and on how long
//! one may take; per-call metrics when given a registry ([`metered`]); TLS or mutual TLS when
//! given a configuration ([`crate::tls`]); a span per call continuing the caller's W3C trace
//! while traces are exported ([`traced`]); and TCP_NODELAY on every accepted connection.

mod admission;
mod answer;
mod malformed;
mod metered;
mod traced;

pub use admission::Limits;

use std::convert::Infallible;
use std::future::Future;

use anyhow::Context as _;
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::body::Body;
use tonic::codegen::http;
use tonic::metadata::MetadataMap;
use tonic::server::NamedService;
use tonic::service::RoutesBuilder;
use tonic_health::ServingStatus;

/// Requests larger than this are refused before they are decoded. Set it on each generated
/// server with `.max_decoding_message_size(MAX_MESSAGE_BYTES)` (tonic's generated servers have
/// no common trait to set it through; [`GrpcServer`] sets it on health and reflection); the
/// server turns tonic's `OUT_OF_RANGE` for it into `INVALID_ARGUMENT`.
pub const MAX_MESSAGE_BYTES: usize = 64 * 1024;

/// The token of `authorization: Bearer <token>`, if the call carries one. The scheme is matched
/// without regard to case (RFC 7235 §2.1, which RFC 6750 follows), is separated from the token
/// by spaces (`1*SP`), and white space around the whole value is ignored; anything else (no
/// header, another scheme, a tab as separator, an empty token, bytes that are not visible
/// ASCII) is no bearer token at all.
pub fn bearer(metadata: &MetadataMap) -> Option<&str> {
    let value = metadata.get("authorization")?.to_str().ok()?.trim();
    let (scheme, token) = value.split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

/// The services of one gRPC server, to be served with health and reflection.
#[derive(Debug, Default)]
pub struct GrpcServer {
    routes: RoutesBuilder,
    serving: Vec<&'static str>,
    limits: Limits,
    metrics: Option<crate::metrics::Metrics>,
    tls: Option<tonic::transport::ServerTlsConfig>,
}

impl GrpcServer {
    /// A server with no service yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds `service` (a tonic-generated server), reported `SERVING` by the health service.
    #[must_use]
    pub fn service<S>(mut self, service: S) -> Self
    where
        S: tower::Service<http::Request<Body>, Response = http::Response<Body>, Error = Infallible>
            + NamedService
            + Clone
            + Send
            + Sync
            + 'static,
        S::Future: Send + 'static,
    {
        self.serving.push(S::NAME);
        self.routes.add_service(service);
        self
    }

    /// Sets how much the server takes on (default: [`Limits::default`]).
    #[must_use]
    pub fn limits(mut self, limits: Limits) -> Self {
        self.limits = limits;
        self
    }

    /// Counts every call in `metrics` ([`metered`]: calls by method and status code, and their
    /// latency).
    #[must_use]
    pub fn metrics(mut self, metrics: &crate::metrics::Metrics) -> Self {
        self.metrics = Some(metrics.clone());
        self
    }

    /// Serves TLS with `tls` ([`crate::tls::ServerTls::load`]); plain text without.
    #[must_use]
    pub fn tls(mut self, tls: Option<tonic::transport::ServerTlsConfig>) -> Self {
        self.tls = tls;
        self
    }

    /// Serves on `listener` until `shutdown` completes, then drains in-flight calls.
    pub async fn serve(
        mut self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send,
    ) -> anyhow::Result<()> {
        let (health, health_service) = tonic_health::server::health_reporter();
        for name in &self.serving {
            health
                .set_service_status(name, ServingStatus::Serving)
                .await;
        }
        let reflection = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .build_v1()
            .context("building the reflection service")?;
        self.routes
            .add_service(health_service.max_decoding_message_size(MAX_MESSAGE_BYTES))
            .add_service(reflection.max_decoding_message_size(MAX_MESSAGE_BYTES));
        let served = [
            proto::FILE_DESCRIPTOR_SET,
            tonic_health::pb::FILE_DESCRIPTOR_SET,
            tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET,
        ];
        let metered = self
            .metrics
            .as_ref()
            .map(|metrics| metered::RpcMetrics::register(metrics, &served));
        let traced = traced::TracedLayer::new(metered::methods(&served).into_keys().collect());
        let mut server = tonic::transport::Server::builder();
        if let Some(tls) = self.tls {
            server = server
                .tls_config(tls)
                .context("configuring TLS on the gRPC server")?;
        }
        server
            .layer(
                tower::ServiceBuilder::new()
                    .layer(traced)
                    .layer(metered::MeteredLayer::new(metered))
                    .layer(tower::util::MapResponseLayer::new(
                        malformed::malformed_is_invalid_argument,
                    ))
                    .layer(admission::AdmissionLayer::new(self.limits)),
            )
            .add_routes(self.routes.routes())
            .serve_with_incoming_shutdown(incoming(listener), shutdown)
            .await
            .context("serving gRPC")
    }
}

/// Accepted connections with Nagle's algorithm off: gRPC answers are small, and without this a
/// reply can wait for the peer's delayed acknowledgement (about 40 ms).
fn incoming(
    listener: TcpListener,
) -> impl tokio_stream::Stream<Item = std::io::Result<tokio::net::TcpStream>> {
    use tokio_stream::StreamExt as _;
    TcpListenerStream::new(listener).map(|accepted| {
        let stream = accepted?;
        stream.set_nodelay(true)?;
        Ok(stream)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_authorization(value: &str) -> MetadataMap {
        let mut metadata = MetadataMap::new();
        metadata.insert("authorization", value.parse().unwrap());
        metadata
    }

    #[test]
    fn the_bearer_scheme_is_matched_without_regard_to_case() {
        for value in [
            "Bearer abc",
            "bearer abc",
            "BEARER abc",
            "  Bearer   abc  ",
            "bEaReR abc",
        ] {
            assert_eq!(bearer(&with_authorization(value)), Some("abc"), "{value:?}");
        }
    }

    #[test]
    fn other_schemes_and_empty_tokens_are_no_bearer_token() {
        for value in [
            "Basic abc",
            "Bearer",
            "Bearer   ",
            "Bearerabc",
            "Bearer\tabc",
            "abc",
            "",
        ] {
            assert_eq!(bearer(&with_authorization(value)), None, "{value:?}");
        }
        assert_eq!(bearer(&MetadataMap::new()), None);
    }
}
