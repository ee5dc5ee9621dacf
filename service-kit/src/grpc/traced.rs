//! While traces are exported: a span per call (`grpc`), named after the method, continuing the caller's trace when the
//! call carries a W3C `traceparent` (ADR 0024). Everything the handler does, and the
//! `traceparent` the command service stores with the events it writes, belongs to it.
//!
//! The method name comes from the request's path, which the caller chooses: a path that is not
//! one of the served methods is named `unknown`, so a stranger cannot mint span names.

use std::collections::HashSet;
use std::sync::Arc;
use std::task::{Context, Poll};

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

impl<S, B> tower::Service<http::Request<B>> for Traced<S>
where
    S: tower::Service<http::Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = tracing::instrument::Instrumented<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        if !traces::exporting() {
            // No trace to continue or start: no span (and log lines as they were).
            return self.inner.call(request).instrument(tracing::Span::none());
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
            trace_id = tracing::field::Empty,
            span_id = tracing::field::Empty,
        );
        let traceparent = request
            .headers()
            .get(traces::TRACEPARENT)
            .and_then(|value| value.to_str().ok());
        traces::continue_from(&span, traceparent);
        self.inner.call(request).instrument(span)
    }
}
