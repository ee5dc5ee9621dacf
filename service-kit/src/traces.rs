//! Distributed traces (ADR 0024): W3C trace context carried from a gRPC call to what it causes
//! elsewhere (the relay's publish, the projectors, the email sent), as a `traceparent` string.
//!
//! Everything here does nothing unless [`crate::telemetry::init`] installed an OpenTelemetry
//! exporter (`OTEL_EXPORTER_OTLP_ENDPOINT`): then no `traceparent` is computed, stored or sent,
//! and the spans that only continue a trace are not created at all.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};

use opentelemetry::propagation::TextMapPropagator as _;
use opentelemetry::trace::TraceContextExt as _;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

/// The W3C header (HTTP, gRPC metadata, NATS headers) and event metadata key.
pub const TRACEPARENT: &str = "traceparent";

/// The longest `traceparent` read from outside (version 00 is 55 characters; later versions
/// may append fields): anything longer is ignored, not parsed.
const MAX_TRACEPARENT: usize = 256;

static EXPORTING: AtomicBool = AtomicBool::new(false);

/// Marks traces as exported ([`crate::telemetry::init`] does when it installs an exporter;
/// tests that install [`crate::telemetry::subscriber`] themselves call it).
pub fn set_exporting() {
    EXPORTING.store(true, Ordering::Relaxed);
}

/// Whether spans are exported (an OTLP endpoint was configured).
pub fn exporting() -> bool {
    EXPORTING.load(Ordering::Relaxed)
}

/// The `traceparent` of `span`, to carry to what it causes; `None` when traces are not
/// exported or the span has no valid context.
pub fn traceparent(span: &tracing::Span) -> Option<String> {
    if !exporting() {
        return None;
    }
    let context = span.context();
    if !context.span().span_context().is_valid() {
        return None;
    }
    let mut carrier = HashMap::new();
    TraceContextPropagator::new().inject_context(&context, &mut carrier);
    carrier.remove(TRACEPARENT)
}

/// The `traceparent` of the current span ([`traceparent`]).
pub fn current_traceparent() -> Option<String> {
    traceparent(&tracing::Span::current())
}

/// Makes `span` (just created, not yet entered) a child of the remote span `traceparent`
/// names, and records its ids ([`record_ids`]). A value that does not parse, or is too long,
/// is ignored: the span then starts a trace of its own (it is whatever a caller sent).
pub fn continue_from(span: &tracing::Span, traceparent: Option<&str>) {
    if !exporting() {
        return;
    }
    if let Some(traceparent) = traceparent.filter(|value| value.len() <= MAX_TRACEPARENT) {
        let carrier = HashMap::from([(TRACEPARENT.to_owned(), traceparent.to_owned())]);
        let parent = TraceContextPropagator::new().extract(&carrier);
        if parent.span().span_context().is_valid() {
            let _ = span.set_parent(parent);
        }
    }
    record_ids(span);
}

/// Records `span`'s trace and span ids in its `trace_id` and `span_id` fields (declared
/// `Empty` where it is created), so that the log lines inside it carry them (in JSON mode,
/// under `span` and `spans`).
pub fn record_ids(span: &tracing::Span) {
    if !exporting() {
        return;
    }
    let context = span.context();
    let otel = context.span();
    let ids = otel.span_context();
    if ids.is_valid() {
        span.record("trace_id", tracing::field::display(ids.trace_id()));
        span.record("span_id", tracing::field::display(ids.span_id()));
    }
}
