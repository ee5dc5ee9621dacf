//! When a call's gRPC status becomes known, for the layers that report it (metrics, traces).

use tonic::body::Body;
use tonic::codegen::http;

use http_body_util::BodyExt as _;

/// The `grpc-status` code `headers` carry, if any.
pub(super) fn status_code(headers: &http::HeaderMap) -> Option<u32> {
    headers.get("grpc-status")?.to_str().ok()?.parse().ok()
}

/// `response`, calling `seen` once with the call's status code when it is known: at once for
/// an answer that carries it in its headers (an error answered before any message), otherwise
/// when the trailers pass, after the last message (`None` if they carry no status). If the body
/// is dropped before its trailers, `seen` is dropped without being called.
pub(super) fn when_status_known<F>(response: http::Response<Body>, seen: F) -> http::Response<Body>
where
    F: FnOnce(Option<u32>) + Send + 'static,
{
    if let Some(code) = status_code(response.headers()) {
        seen(Some(code));
        return response;
    }
    let mut seen = Some(seen);
    response.map(|body| {
        Body::new(body.map_frame(move |frame| {
            if let Some(trailers) = frame.trailers_ref()
                && let Some(seen) = seen.take()
            {
                seen(status_code(trailers));
            }
            frame
        }))
    })
}
