//! Structured logs, and traces when asked for.
//!
//! Logs: `RUST_LOG` filters (default `info`); `LINKD_LOG_FORMAT=json` for deployment (one JSON
//! object per line; inside a traced span, its `trace_id` and `span_id` are among the span's
//! fields). Colours only on a terminal, so log files stay plain text.
//!
//! Traces (ADR 0024): with `OTEL_EXPORTER_OTLP_ENDPOINT` set (the standard variable, e.g.
//! `http://127.0.0.1:4317`), spans are exported over OTLP/gRPC in batches, under the service's
//! name; unset, nothing is exported and [`crate::traces`] does nothing. An `https://` endpoint
//! is reached over TLS, trusting `OTEL_EXPORTER_OTLP_CERTIFICATE` (a PEM CA file) or else the
//! system's roots. Only linkd's own spans are exported (at `info`, through `RUST_LOG` as the
//! logs), not its dependencies' nor the workers' lifelong spans, and no log events: a span
//! says where time went, the logs say what happened.

use std::sync::Arc;

use anyhow::Context as _;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::error::{OTelSdkError, OTelSdkResult};
use opentelemetry_sdk::trace::{SdkTracerProvider, SpanData, SpanExporter};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::Layer as _;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;

/// What [`init`] installed; [`Telemetry::shutdown`] sends the spans still buffered.
#[derive(Debug)]
#[must_use = "call shutdown() before the process exits, or the last spans are lost"]
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Telemetry {
    /// Exports the spans still buffered and stops the exporter (at most a few seconds).
    pub async fn shutdown(self) {
        if let Some(provider) = self.provider {
            // The SDK's shutdown blocks until its exporting thread is done.
            let _ = tokio::task::spawn_blocking(move || provider.shutdown()).await;
        }
    }
}

/// Installs the global subscriber (once; later calls install nothing) for the service named
/// `service`, exporting traces to `OTEL_EXPORTER_OTLP_ENDPOINT` if it is set. Call it inside
/// the Tokio runtime: the exporter sends from it.
pub fn init(service: &'static str) -> anyhow::Result<Telemetry> {
    let endpoint = std::env::var("OTEL_EXPORTER_OTLP_ENDPOINT")
        .ok()
        .filter(|value| !value.trim().is_empty());
    init_with(service, endpoint.as_deref())
}

/// [`init`] with the OTLP endpoint given (`None`: no traces).
pub fn init_with(service: &'static str, otlp_endpoint: Option<&str>) -> anyhow::Result<Telemetry> {
    let json = std::env::var("LINKD_LOG_FORMAT").is_ok_and(|format| format == "json");
    let provider = match otlp_endpoint {
        Some(endpoint) => Some(provider(service, endpoint)?),
        None => None,
    };
    let installed = subscriber(json, std::io::stderr, provider.as_ref())
        .try_init()
        .is_ok();
    if !installed {
        // Another subscriber is in place (a test process): its spans, not ours.
        return Ok(Telemetry { provider: None });
    }
    if let Some(endpoint) = otlp_endpoint {
        crate::traces::set_exporting();
        tracing::info!(endpoint, service, "exporting traces over OTLP");
    }
    Ok(Telemetry { provider })
}

/// What [`init`] installs: `RUST_LOG`'s filter, log lines to `writer` (JSON with `json`), and,
/// given a provider, linkd's spans to its tracer. (Public for the test that reads the JSON lines;
/// a service calls [`init`].)
pub fn subscriber<W>(
    json: bool,
    writer: W,
    provider: Option<&SdkTracerProvider>,
) -> impl tracing::Subscriber + Send + Sync + 'static
where
    W: for<'w> tracing_subscriber::fmt::MakeWriter<'w> + Send + Sync + 'static,
{
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let ansi = !json && std::io::IsTerminal::is_terminal(&std::io::stderr());
    let logs = tracing_subscriber::fmt::layer()
        .with_target(false)
        .with_ansi(ansi)
        .with_writer(writer);
    let logs = if json {
        logs.json().boxed()
    } else {
        logs.boxed()
    };
    let traces = provider.map(|provider| {
        tracing_opentelemetry::layer()
            .with_tracer(provider.tracer("linkd"))
            .with_tracked_inactivity(false)
            .with_filter(tracing_subscriber::filter::filter_fn(exported))
    });
    tracing_subscriber::registry()
        .with(filter)
        .with(logs)
        .with(traces)
}

/// The crates whose spans are exported.
const LINKD_CRATES: [&str; 5] = [
    "command_service",
    "projection_service",
    "service_kit",
    "identity",
    "history",
];

/// Whether a span is exported: linkd's own, except the workers' spans that last as long as
/// the process (`relay`, `consumer`, `email`); no events.
fn exported(metadata: &tracing::Metadata<'_>) -> bool {
    let crate_name = metadata.target().split("::").next().unwrap_or_default();
    metadata.is_span()
        && LINKD_CRATES.contains(&crate_name)
        && !matches!(metadata.name(), "relay" | "consumer" | "email")
}

fn provider(service: &'static str, endpoint: &str) -> anyhow::Result<SdkTracerProvider> {
    use opentelemetry_otlp::{WithExportConfig as _, WithTonicConfig as _};
    let runtime = tokio::runtime::Handle::try_current()
        .context("traces are exported from the Tokio runtime: start it first")?;
    let mut builder = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .with_endpoint(endpoint);
    if endpoint.starts_with("https://") {
        let tls = tonic::transport::ClientTlsConfig::new();
        let tls = match std::env::var("OTEL_EXPORTER_OTLP_CERTIFICATE") {
            Ok(ca) if !ca.trim().is_empty() => {
                let pem = std::fs::read(ca.trim())
                    .with_context(|| format!("reading OTEL_EXPORTER_OTLP_CERTIFICATE={ca}"))?;
                tls.ca_certificate(tonic::transport::Certificate::from_pem(pem))
            }
            Ok(_) | Err(_) => tls.with_native_roots(),
        };
        builder = builder.with_tls_config(tls);
    }
    let exporter = builder
        .build()
        .with_context(|| format!("OTEL_EXPORTER_OTLP_ENDPOINT={endpoint} cannot be used"))?;
    let resource = opentelemetry_sdk::Resource::builder()
        .with_service_name(service)
        .build();
    Ok(SdkTracerProvider::builder()
        .with_batch_exporter(OnRuntime {
            inner: Arc::new(exporter),
            runtime,
        })
        .with_resource(resource)
        .build())
}

/// The OTLP exporter, run on the service's Tokio runtime: the SDK's batch processor exports
/// from a thread of its own, where tonic's client (which needs a Tokio reactor) cannot run.
#[derive(Debug)]
struct OnRuntime<E> {
    inner: Arc<E>,
    runtime: tokio::runtime::Handle,
}

impl<E: SpanExporter + 'static> SpanExporter for OnRuntime<E> {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        let inner = self.inner.clone();
        self.runtime
            .spawn(async move { inner.export(batch).await })
            .await
            .unwrap_or_else(|error| {
                Err(OTelSdkError::InternalFailure(format!(
                    "the export task ended: {error}"
                )))
            })
    }

    fn shutdown_with_timeout(&self, timeout: std::time::Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn set_resource(&mut self, resource: &opentelemetry_sdk::Resource) {
        // Called once, when the provider is built, before any clone of `inner` exists.
        if let Some(inner) = Arc::get_mut(&mut self.inner) {
            inner.set_resource(resource);
        }
    }
}
