//! Traces (issue 16, second point; ADR 0024), in a process of their own: the OpenTelemetry
//! exporter is process-wide, and here it sends to an OTLP receiver in this process (the
//! OpenTelemetry project's generated trace service, served with tonic).
//!
//! One trace, started by the caller's `traceparent` on `SetSecretCode`, holds the call, the
//! relay's publish of the events it wrote, the read side's applying of them, and the email
//! they caused leaving.
#![allow(
    clippy::unwrap_used,
    reason = "a failed step should fail the test loudly"
)]

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use e2e::mail::SmtpSink;
use e2e::{CODE, eventually, spawn_system_with_mail};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::trace::v1::Span;
use proto::v1::{LinkMethod, SetSecretCodeRequest};
use tonic::{Request, Response, Status};

const WITHIN: Duration = Duration::from_secs(60);

/// Every span exported to it.
#[derive(Debug, Clone, Default)]
struct Receiver {
    spans: Arc<Mutex<Vec<Span>>>,
}

#[tonic::async_trait]
impl TraceService for Receiver {
    async fn export(
        &self,
        request: Request<ExportTraceServiceRequest>,
    ) -> Result<Response<ExportTraceServiceResponse>, Status> {
        let mut spans = self.spans.lock().unwrap_or_else(PoisonError::into_inner);
        for resource in request.into_inner().resource_spans {
            for scope in resource.scope_spans {
                spans.extend(scope.spans);
            }
        }
        Ok(Response::new(ExportTraceServiceResponse::default()))
    }
}

impl Receiver {
    /// Serves on a free port; its `http://` address.
    async fn start(&self) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let service = TraceServiceServer::new(self.clone());
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
        );
        format!("http://{addr}")
    }

    /// The spans of the trace `trace_id` received so far.
    fn trace(&self, trace_id: &[u8]) -> Vec<Span> {
        self.spans
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .filter(|span| span.trace_id == trace_id)
            .cloned()
            .collect()
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

/// The span's `rpc.grpc.status_code` attribute.
fn grpc_status(span: &Span) -> Option<i64> {
    use opentelemetry_proto::tonic::common::v1::any_value::Value;
    span.attributes
        .iter()
        .find(|attribute| attribute.key == "rpc.grpc.status_code")
        .and_then(|attribute| attribute.value.as_ref()?.value.as_ref())
        .and_then(|value| {
            if let Value::IntValue(code) = value {
                Some(*code)
            } else {
                None
            }
        })
}

/// A 32-hex-digit trace id as bytes.
fn trace_bytes_of(trace_id: &str) -> Vec<u8> {
    (0..16)
        .map(|i| u8::from_str_radix(&trace_id[2 * i..2 * i + 2], 16).unwrap())
        .collect()
}

fn named<'a>(spans: &'a [Span], name: &str) -> Option<&'a Span> {
    spans.iter().find(|span| span.name == name)
}

/// Whether `ancestor` is `span`'s parent, or its parent's, and so on within `spans`.
fn descends(spans: &[Span], span: &Span, ancestor: &Span) -> bool {
    let mut parent = span.parent_span_id.clone();
    while !parent.is_empty() {
        if parent == ancestor.span_id {
            return true;
        }
        match spans.iter().find(|candidate| candidate.span_id == parent) {
            Some(next) => parent = next.parent_span_id.clone(),
            None => return false,
        }
    }
    false
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_trace_spans_the_call_the_relay_the_projector_and_the_email() {
    // Arrange: traces exported to the receiver; both services, emails on; a QR link attempt
    // confirmed by the holder, up to its secret code.
    let receiver = Receiver::default();
    let endpoint = receiver.start().await;
    let telemetry = service_kit::telemetry::init_with("linkd-test", Some(&endpoint)).unwrap();
    let sink = SmtpSink::start().await;
    let mut app = spawn_system_with_mail(sink.settings()).await;
    app.register("anna").await;
    let qr = app.issue_qr("anna").await;
    let device_id = uuid::Uuid::new_v4().to_string();
    let start = app.start_link(&device_id, LinkMethod::Qr).await;
    app.scan_and_confirm("anna", &start.link_token, &qr)
        .await
        .unwrap();
    let emails_before = sink.messages().len();

    // Act: the app sets its secret code, in a trace the caller started.
    let trace_id = uuid::Uuid::new_v4().simple().to_string();
    let caller_span = "00f067aa0ba902b7";
    let mut request = Request::new(SetSecretCodeRequest {
        link_token: start.link_token.clone(),
        secret_code: CODE.into(),
        request_id: String::new(),
    });
    request.metadata_mut().insert(
        "traceparent",
        format!("00-{trace_id}-{caller_span}-01").parse().unwrap(),
    );
    app.device.set_secret_code(request).await.unwrap();
    sink.wait_for(emails_before + 1, WITHIN).await;

    // Assert: the four steps in the caller's trace, each a child of the one before (the email
    // of the call itself: the event that caused it carries the call's context).
    let trace_bytes = trace_bytes_of(&trace_id);
    let spans = eventually(WITHIN, "the four spans of the trace", || {
        let spans = receiver.trace(&trace_bytes);
        let complete = [
            "linking.v1.DeviceService/SetSecretCode",
            "publish DeviceLinked",
            "apply DeviceLinked",
            "send email",
        ]
        .iter()
        .all(|name| named(&spans, name).is_some());
        std::future::ready(complete.then_some(spans))
    })
    .await;
    let call = named(&spans, "linking.v1.DeviceService/SetSecretCode").unwrap();
    let publish = named(&spans, "publish DeviceLinked").unwrap();
    let apply = named(&spans, "apply DeviceLinked").unwrap();
    let email = named(&spans, "send email").unwrap();
    assert_eq!(hex(&call.parent_span_id), caller_span);
    // The publish continues the context stored with the event: the call's, or a span within it.
    assert!(descends(&spans, publish, call), "{spans:#?}");
    // The consumer continues the publish's header.
    assert_eq!(apply.parent_span_id, publish.span_id);
    // The email continues the context its event carried: the call's.
    assert!(descends(&spans, email, call), "{spans:#?}");
    // Server, producer, consumer, client (OTLP's numbering).
    assert_eq!(
        [call.kind, publish.kind, apply.kind, email.kind],
        [2, 4, 5, 3]
    );
    // The call's span records its status: OK here.
    assert_eq!(grpc_status(call), Some(0), "{call:#?}");
    assert_ne!(call.status.as_ref().map(|status| status.code), Some(2));

    // A call that fails records its code, and its span is an error.
    let failing_trace = uuid::Uuid::new_v4().simple().to_string();
    let mut request = Request::new(SetSecretCodeRequest {
        link_token: "not-a-link-token".into(),
        secret_code: CODE.into(),
        request_id: String::new(),
    });
    request.metadata_mut().insert(
        "traceparent",
        format!("00-{failing_trace}-{caller_span}-01")
            .parse()
            .unwrap(),
    );
    let refused = app.device.set_secret_code(request).await.unwrap_err();
    let failing_bytes = trace_bytes_of(&failing_trace);
    let failed = eventually(WITHIN, "the failed call's span", || {
        let spans = receiver.trace(&failing_bytes);
        std::future::ready(named(&spans, "linking.v1.DeviceService/SetSecretCode").cloned())
    })
    .await;
    assert_eq!(grpc_status(&failed), Some(i64::from(refused.code() as i32)));
    assert_eq!(failed.status.as_ref().map(|status| status.code), Some(2));

    // A traceparent that does not parse, or is too long, is ignored: the call starts a trace
    // of its own instead of joining one a caller made up.
    let system = app.system();
    for (account, traceparent) in [
        ("bob", "00-not-a-trace-01".to_owned()),
        (
            "carl",
            format!("00-{trace_id}-{caller_span}-01{}", "-x".repeat(200)),
        ),
    ] {
        let mut request = Request::new(proto::v1::RegisterAccountRequest {
            account_id: account.into(),
            email: format!("{account}@example.lu"),
            language: "fr".into(),
            request_id: String::new(),
        });
        request
            .metadata_mut()
            .insert("traceparent", traceparent.parse().unwrap());
        request
            .metadata_mut()
            .insert("authorization", format!("Bearer {system}").parse().unwrap());
        app.portal.register_account(request).await.unwrap();
    }
    let registrations = eventually(WITHIN, "three registrations' spans", || {
        let spans: Vec<Span> = receiver
            .spans
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .filter(|span| span.name == "linking.v1.PortalService/RegisterAccount")
            .cloned()
            .collect();
        std::future::ready((spans.len() >= 3).then_some(spans))
    })
    .await;
    for span in &registrations {
        assert!(span.parent_span_id.is_empty(), "{span:#?}");
        assert_ne!(span.trace_id, trace_bytes, "{span:#?}");
    }
    telemetry.shutdown().await;
}
