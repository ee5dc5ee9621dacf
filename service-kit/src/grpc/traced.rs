//! While traces are exported: a span per call (`grpc`), named after the method, continuing the caller's trace when the
//! call carries a W3C `traceparent` (ADR 0024). Everything the handler does, and the
//! `traceparent` the command service stores with the events it writes, belongs to it. The span
//! records the call's gRPC status (`rpc.grpc.status_code`; an error status marks the span as
//! an error) and ends when the answer does (after a stream's last message).
//!
//! The method name comes from the request's path, which the caller chooses: a path that is not
//! one of the served methods is named `unknown`, so a stranger cannot mint span names.

use std::collections::HashSet;
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tonic::body::Body;
use tonic::codegen::http;
use tracing::Instrument as _;

use crate::traces;

#[derive(Debug, Clone)]
pub(super) struct TracedLayer {
    known: Arc<HashSet<String>>,
}

impl TracedLayer {
    /// `known`: the paths (`/<package>.<Service>/<Method>`) of the methods served.
    pub(super) fn new(known: HashSet<String>) -> Self {
        Self {
            known: Arc::new(known),
        }
    }
}

impl<S> tower::Layer<S> for TracedLayer {
    type Service = Traced<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Traced {
            inner,
            known: self.known.clone(),
        }
    }
}

#[derive(Debug, Clone)]
pub(super) struct Traced<S> {
    inner: S,
    known: Arc<HashSet<String>>,
}

type Answer = Result<http::Response<Body>, Infallible>;

impl<S> tower::Service<http::Request<Body>> for Traced<S>
where
    S: tower::Service<http::Request<Body>, Response = http::Response<Body>, Error = Infallible>,
    S::Future: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Answer> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        if !traces::exporting() {
            // No trace to continue or start: no span (and log lines as they were).
            return Box::pin(self.inner.call(request));
        }
        let path = request.uri().path();
        let method = if self.known.contains(path) {
            path.trim_start_matches('/')
        } else {
            "unknown"
        };
        let span = tracing::info_span!(
            "grpc",
            otel.name = method,
            otel.kind = "server",
            rpc.system = "grpc",
            rpc.grpc.status_code = tracing::field::Empty,
            otel.status_code = tracing::field::Empty,
            trace_id = tracing::field::Empty,
            span_id = tracing::field::Empty,
        );
        let traceparent = request
            .headers()
            .get(traces::TRACEPARENT)
            .and_then(|value| value.to_str().ok());
        traces::continue_from(&span, traceparent);
        let answer = self.inner.call(request).instrument(span.clone());
        Box::pin(async move {
            let Ok(response) = answer.await;
            // The span lasts until the status is known (after a stream's last message).
            Ok(super::answer::when_status_known(response, move |code| {
                record(&span, code.unwrap_or(UNKNOWN));
            }))
        })
    }
}

/// gRPC's `UNKNOWN`, for trailers without a status.
const UNKNOWN: u32 = 2;

/// Records the call's status on its span; anything but OK marks the span as an error.
fn record(span: &tracing::Span, code: u32) {
    // As an i64: tracing-opentelemetry exports unsigned fields as text.
    span.record("rpc.grpc.status_code", i64::from(code));
    if code != 0 {
        span.record("otel.status_code", "ERROR");
    }
}
