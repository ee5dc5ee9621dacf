//! JSON log lines written inside a traced span carry its trace and span ids (ADR 0024). A test
//! file of its own: it marks traces as exported for its whole process.
#![allow(
    clippy::unwrap_used,
    reason = "a failed step should fail the test loudly"
)]

use std::sync::{Arc, Mutex, PoisonError};

use opentelemetry_sdk::trace::SdkTracerProvider;

/// Log output kept in memory.
#[derive(Debug, Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Captured {
    type Writer = Self;

    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

#[test]
fn json_log_lines_inside_a_traced_span_carry_its_trace_and_span_ids() {
    // Arrange: the services' subscriber, JSON, with a tracer (nothing exported anywhere).
    let provider = SdkTracerProvider::builder().build();
    let captured = Captured::default();
    let subscriber = service_kit::telemetry::subscriber(true, captured.clone(), Some(&provider));
    service_kit::traces::set_exporting();

    // Act: a line inside a span that continues a caller's trace (as the gRPC layer's does),
    // and a line outside any span.
    tracing::subscriber::with_default(subscriber, || {
        let span = tracing::info_span!(
            target: "service_kit::grpc",
            "grpc",
            trace_id = tracing::field::Empty,
            span_id = tracing::field::Empty,
        );
        service_kit::traces::continue_from(
            &span,
            Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
        );
        span.in_scope(|| tracing::info!("inside"));
        tracing::info!("outside");
    });

    // Assert: the line inside names the caller's trace and a span of its own.
    let output = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
    let lines: Vec<serde_json::Value> = output
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    let inside = lines
        .iter()
        .find(|line| line["fields"]["message"] == "inside")
        .unwrap();
    assert_eq!(
        inside["span"]["trace_id"], "4bf92f3577b34da6a3ce929d0e0e4736",
        "{output}"
    );
    let span_id = inside["span"]["span_id"].as_str().unwrap();
    assert_eq!(span_id.len(), 16);
    assert_ne!(span_id, "00f067aa0ba902b7");
    let outside = lines
        .iter()
        .find(|line| line["fields"]["message"] == "outside")
        .unwrap();
    assert!(outside.get("span").is_none(), "{output}");
}
