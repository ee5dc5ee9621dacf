//! `linkd-bench otlp-sink`: an OTLP trace receiver that counts what it is sent and keeps
//! nothing, for measuring what exporting traces costs the services (`LINKD_BENCH_TRACES=on`
//! in `scripts/bench.sh`). It prints the spans received when stopped (SIGTERM or Ctrl-C).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::Context as _;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use tonic::{Request, Response, Status};

#[derive(Debug, Clone, Default)]
struct Counting {
    spans: Arc<AtomicU64>,
    requests: Arc<AtomicU64>,
}

#[tonic::async_trait]
impl TraceService for Counting {
    async fn export(
        &self,
        request: Request<ExportTraceServiceRequest>,
    ) -> Result<Response<ExportTraceServiceResponse>, Status> {
        let spans: usize = request
            .into_inner()
            .resource_spans
            .iter()
            .flat_map(|resource| &resource.scope_spans)
            .map(|scope| scope.spans.len())
            .sum();
        self.spans.fetch_add(spans as u64, Ordering::Relaxed);
        self.requests.fetch_add(1, Ordering::Relaxed);
        Ok(Response::new(ExportTraceServiceResponse::default()))
    }
}

/// Serves on `addr` until SIGTERM or Ctrl-C, then prints what it received.
pub(crate) async fn run(addr: SocketAddr) -> anyhow::Result<()> {
    let counting = Counting::default();
    let served = counting.clone();
    tonic::transport::Server::builder()
        .add_service(TraceServiceServer::new(served))
        .serve_with_shutdown(addr, async {
            let mut terminate =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                () = async {
                    match terminate.as_mut() {
                        Some(signal) => { signal.recv().await; }
                        None => std::future::pending().await,
                    }
                } => {}
            }
        })
        .await
        .with_context(|| format!("serving OTLP on {addr}"))?;
    eprintln!(
        "otlp-sink: {} spans in {} export requests",
        counting.spans.load(Ordering::Relaxed),
        counting.requests.load(Ordering::Relaxed)
    );
    Ok(())
}
