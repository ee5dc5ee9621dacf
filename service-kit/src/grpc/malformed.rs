//! tonic answers two kinds of malformed request with codes that blame the server: a request
//! over the decoding limit gets `OUT_OF_RANGE`, and one that does not decode (a string field
//! holding bytes that are not UTF-8, a truncated varint …) gets `INTERNAL`. Both are the
//! client's doing, so both are answered `INVALID_ARGUMENT`: the first with the limit named, the
//! second with prost's own description (which names the field). No request is ever reported as
//! an outage it did not cause. The status may travel in the headers (trailers-only reply) or in
//! the trailers, so both are rewritten.

use http_body_util::BodyExt as _;
use tonic::codegen::http;

/// Rewrites the status of a reply refused for its size or its encoding (see the module doc).
pub(super) fn malformed_is_invalid_argument(
    mut response: http::Response<tonic::body::Body>,
) -> http::Response<tonic::body::Body> {
    rewrite_malformed_status(response.headers_mut());
    response.map(|body| {
        tonic::body::Body::new(body.map_frame(|frame| match frame.into_trailers() {
            Ok(mut trailers) => {
                rewrite_malformed_status(&mut trailers);
                http_body::Frame::trailers(trailers)
            }
            Err(frame) => frame,
        }))
    })
}

fn rewrite_malformed_status(headers: &mut http::HeaderMap) {
    let status = headers.get("grpc-status").map(http::HeaderValue::as_bytes);
    // The message is percent-encoded on the wire.
    let message = headers
        .get("grpc-message")
        .and_then(|message| message.to_str().ok())
        .unwrap_or_default();
    let over_limit = status == Some(b"11") && message.contains("message%20length%20too%20large");
    let undecodable =
        status == Some(b"13") && message.starts_with("failed%20to%20decode%20Protobuf%20message");
    if over_limit {
        headers.insert("grpc-status", http::HeaderValue::from_static("3"));
        headers.insert(
            "grpc-message",
            http::HeaderValue::from_static(LIMIT_MESSAGE),
        );
    } else if undecodable {
        headers.insert("grpc-status", http::HeaderValue::from_static("3"));
    }
}

/// "the request message exceeds the 64 KiB limit", percent-encoded as grpc-message is.
const LIMIT_MESSAGE: &str = "the%20request%20message%20exceeds%20the%2064%20KiB%20limit";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_limit_message_names_the_limit() {
        let kib = super::super::MAX_MESSAGE_BYTES / 1024;
        assert!(
            LIMIT_MESSAGE.contains(&format!("%20{kib}%20KiB")),
            "{LIMIT_MESSAGE}"
        );
    }

    #[test]
    fn an_undecodable_request_is_invalid_not_internal() {
        let mut undecodable = http::HeaderMap::new();
        undecodable.insert("grpc-status", http::HeaderValue::from_static("13"));
        undecodable.insert(
            "grpc-message",
            http::HeaderValue::from_static(
                "failed%20to%20decode%20Protobuf%20message:%20ScanQrRequest.qr_payload:%20invalid%20string%20value",
            ),
        );
        let mut internal = http::HeaderMap::new();
        internal.insert("grpc-status", http::HeaderValue::from_static("13"));
        internal.insert(
            "grpc-message",
            http::HeaderValue::from_static("internal%20error"),
        );

        rewrite_malformed_status(&mut undecodable);
        rewrite_malformed_status(&mut internal);

        assert_eq!(
            undecodable.get("grpc-status").map(|v| v.as_bytes()),
            Some(&b"3"[..])
        );
        assert!(
            undecodable
                .get("grpc-message")
                .is_some_and(|m| m.as_bytes().starts_with(b"failed%20to%20decode")),
            "prost's description is kept"
        );
        assert_eq!(
            internal.get("grpc-status").map(|v| v.as_bytes()),
            Some(&b"13"[..])
        );
    }

    #[test]
    fn only_the_size_refusal_is_rewritten() {
        let mut oversized = http::HeaderMap::new();
        oversized.insert("grpc-status", http::HeaderValue::from_static("11"));
        oversized.insert(
            "grpc-message",
            http::HeaderValue::from_static("decoded%20message%20length%20too%20large"),
        );
        let mut other = oversized.clone();
        other.insert(
            "grpc-message",
            http::HeaderValue::from_static("out%20of%20range"),
        );

        rewrite_malformed_status(&mut oversized);
        rewrite_malformed_status(&mut other);

        assert_eq!(
            oversized.get("grpc-status").map(|v| v.as_bytes()),
            Some(&b"3"[..])
        );
        assert_eq!(
            other.get("grpc-status").map(|v| v.as_bytes()),
            Some(&b"11"[..])
        );
    }
}
