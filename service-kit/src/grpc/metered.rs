//! Per-call metrics, for every call the server answers (linkd's services, health and
//! reflection): `linkd_grpc_server_handled_total{grpc_service, grpc_method, grpc_code}` and
//! `linkd_grpc_server_handling_seconds{grpc_service, grpc_method}`, from the call's arrival to
//! its status (the trailers; the headers for a trailers-only answer).
//!
//! The labels are bounded: a path that names no method of the descriptor sets the server
//! serves is counted as `grpc_service="unknown", grpc_method="unknown"`, so a stranger calling
//! made-up paths cannot grow the series without end. The code is the one the client receives
//! (this layer wraps the others). A call whose answer the client abandoned before its status
//! counts as `CANCELLED`.

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prost::Message as _;
use tokio::time::Instant;
use tonic::body::Body;
use tonic::codegen::http;

use crate::metrics::Metrics;

/// The gRPC status codes by number, as the gRPC specification names them.
const CODES: [&str; 17] = [
    "OK",
    "CANCELLED",
    "UNKNOWN",
    "INVALID_ARGUMENT",
    "DEADLINE_EXCEEDED",
    "NOT_FOUND",
    "ALREADY_EXISTS",
    "PERMISSION_DENIED",
    "RESOURCE_EXHAUSTED",
    "FAILED_PRECONDITION",
    "ABORTED",
    "OUT_OF_RANGE",
    "UNIMPLEMENTED",
    "INTERNAL",
    "UNAVAILABLE",
    "DATA_LOSS",
    "UNAUTHENTICATED",
];

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(super) struct MethodLabels {
    grpc_service: String,
    grpc_method: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HandledLabels {
    grpc_service: String,
    grpc_method: String,
    grpc_code: &'static str,
}

type Latencies = Family<MethodLabels, Histogram, fn() -> Histogram>;

/// 0.5 ms to about 16 s, doubling.
fn latency_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.000_5, 2.0, 16))
}

/// The series of one server, and the methods it knows.
#[derive(Clone)]
pub(super) struct RpcMetrics {
    handled: Family<HandledLabels, Counter>,
    handling: Latencies,
    known: Arc<HashMap<String, MethodLabels>>,
    unknown: MethodLabels,
}

impl std::fmt::Debug for RpcMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RpcMetrics")
            .field("known", &self.known.len())
            .finish_non_exhaustive()
    }
}

impl RpcMetrics {
    /// Registers the server's series in `metrics`; the methods are those of
    /// `descriptor_sets` (encoded `FileDescriptorSet`s).
    pub(super) fn register(metrics: &Metrics, descriptor_sets: &[&[u8]]) -> Self {
        let handled = Family::<HandledLabels, Counter>::default();
        metrics.register(
            "grpc_server_handled",
            "gRPC calls answered, by service, method and status code",
            handled.clone(),
        );
        let handling: Latencies = Family::new_with_constructor(latency_histogram);
        metrics.register(
            "grpc_server_handling_seconds",
            "Time from a gRPC call's arrival to its status, by service and method",
            handling.clone(),
        );
        Self {
            handled,
            handling,
            known: Arc::new(methods(descriptor_sets)),
            unknown: MethodLabels {
                grpc_service: "unknown".into(),
                grpc_method: "unknown".into(),
            },
        }
    }

    fn method(&self, path: &str) -> &MethodLabels {
        self.known.get(path).unwrap_or(&self.unknown)
    }
}

/// `/<package>.<Service>/<Method>` of every method in `descriptor_sets`.
pub(super) fn methods(descriptor_sets: &[&[u8]]) -> HashMap<String, MethodLabels> {
    let mut known = HashMap::new();
    for encoded in descriptor_sets {
        let Ok(set) = prost_types::FileDescriptorSet::decode(*encoded) else {
            continue;
        };
        for file in set.file {
            let package = file.package.unwrap_or_default();
            for service in file.service {
                let service_name = if package.is_empty() {
                    service.name().to_owned()
                } else {
                    format!("{package}.{}", service.name())
                };
                for method in service.method {
                    known.insert(
                        format!("/{service_name}/{}", method.name()),
                        MethodLabels {
                            grpc_service: service_name.clone(),
                            grpc_method: method.name().to_owned(),
                        },
                    );
                }
            }
        }
    }
    known
}

/// Measures every call (see the module doc).
#[derive(Debug, Clone)]
pub(super) struct MeteredLayer {
    metrics: Option<RpcMetrics>,
}

impl MeteredLayer {
    pub(super) fn new(metrics: Option<RpcMetrics>) -> Self {
        Self { metrics }
    }
}

impl<S> tower::Layer<S> for MeteredLayer {
    type Service = Metered<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Metered {
            inner,
            metrics: self.metrics.clone(),
        }
    }
}

/// The service [`MeteredLayer`] makes.
#[derive(Debug, Clone)]
pub(super) struct Metered<S> {
    inner: S,
    metrics: Option<RpcMetrics>,
}

type Answer = Result<http::Response<Body>, Infallible>;

impl<S> tower::Service<http::Request<Body>> for Metered<S>
where
    S: tower::Service<http::Request<Body>, Response = http::Response<Body>, Error = Infallible>,
    S::Future: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Answer> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        let Some(metrics) = self.metrics.clone() else {
            return Box::pin(self.inner.call(request));
        };
        let method = metrics.method(request.uri().path()).clone();
        let mut call = Call {
            metrics,
            method,
            started: Instant::now(),
            done: false,
        };
        let answer = self.inner.call(request);
        Box::pin(async move {
            let Ok(response) = answer.await;
            Ok(super::answer::when_status_known(response, move |code| {
                call.finish(code.map_or("UNKNOWN", name));
            }))
        })
    }
}

/// A status code's name, as the gRPC specification names it.
fn name(code: u32) -> &'static str {
    usize::try_from(code)
        .ok()
        .and_then(|code| CODES.get(code).copied())
        .unwrap_or("UNKNOWN")
}

/// The status code `headers` carry, by name, if any.
#[cfg(test)]
fn status(headers: &http::HeaderMap) -> Option<&'static str> {
    super::answer::status_code(headers).map(name)
}

/// One call being measured: recorded once, when its status is known, or as `CANCELLED` if
/// its answer is dropped before.
struct Call {
    metrics: RpcMetrics,
    method: MethodLabels,
    started: Instant,
    done: bool,
}

impl Call {
    fn finish(&mut self, code: &'static str) {
        if std::mem::replace(&mut self.done, true) {
            return;
        }
        self.metrics
            .handling
            .get_or_create(&self.method)
            .observe(self.started.elapsed().as_secs_f64());
        self.metrics
            .handled
            .get_or_create(&HandledLabels {
                grpc_service: self.method.grpc_service.clone(),
                grpc_method: self.method.grpc_method.clone(),
                grpc_code: code,
            })
            .inc();
    }
}

impl Drop for Call {
    fn drop(&mut self) {
        self.finish("CANCELLED");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_method_of_linkd_health_and_reflection_is_known_and_nothing_else() {
        let metrics = RpcMetrics::register(
            &Metrics::new(),
            &[
                proto::FILE_DESCRIPTOR_SET,
                tonic_health::pb::FILE_DESCRIPTOR_SET,
            ],
        );
        let health = metrics.method("/grpc.health.v1.Health/Check");
        assert_eq!(
            (health.grpc_service.as_str(), health.grpc_method.as_str()),
            ("grpc.health.v1.Health", "Check")
        );
        let set_code = metrics.method("/linking.v1.DeviceService/SetSecretCode");
        assert_eq!(set_code.grpc_method, "SetSecretCode");
        for made_up in [
            "/linking.v1.DeviceService/Nope",
            "/x/y",
            "",
            "/linking.v1.DeviceService/SetSecretCode/",
        ] {
            assert_eq!(metrics.method(made_up).grpc_service, "unknown", "{made_up}");
        }
    }

    #[test]
    fn status_codes_are_named_as_the_specification_names_them() {
        let mut headers = http::HeaderMap::new();
        assert_eq!(status(&headers), None);
        headers.insert("grpc-status", http::HeaderValue::from_static("3"));
        assert_eq!(status(&headers), Some("INVALID_ARGUMENT"));
        headers.insert("grpc-status", http::HeaderValue::from_static("16"));
        assert_eq!(status(&headers), Some("UNAUTHENTICATED"));
        headers.insert("grpc-status", http::HeaderValue::from_static("99"));
        assert_eq!(status(&headers), Some("UNKNOWN"));
    }
}
