//! tonic refuses a request over the decoding limit with `OUT_OF_RANGE`; for a client that is a
//! malformed request, so it is answered `INVALID_ARGUMENT` with the limit named. The status may
//! travel in the headers (trailers-only reply) or in the trailers, so both are rewritten.

use http_body_util::BodyExt as _;
use tonic::codegen::http;

/// Rewrites the status of a reply refused for its size (see the module doc).
pub(super) fn oversized_is_invalid_argument(
    mut response: http::Response<tonic::body::Body>,
) -> http::Response<tonic::body::Body> {
    rewrite_limit_status(response.headers_mut());
    response.map(|body| {
        tonic::body::Body::new(body.map_frame(|frame| match frame.into_trailers() {
            Ok(mut trailers) => {
                rewrite_limit_status(&mut trailers);
                http_body::Frame::trailers(trailers)
            }
            Err(frame) => frame,
        }))
    })
}

fn rewrite_limit_status(headers: &mut http::HeaderMap) {
    let over_limit = headers
        .get("grpc-status")
        .is_some_and(|status| status == "11")
        && headers
            .get("grpc-message")
            .and_then(|message| message.to_str().ok())
            // The message is percent-encoded on the wire.
            .is_some_and(|message| message.contains("message%20length%20too%20large"));
    if over_limit {
        headers.insert("grpc-status", http::HeaderValue::from_static("3"));
        headers.insert(
            "grpc-message",
            http::HeaderValue::from_static(LIMIT_MESSAGE),
        );
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

        rewrite_limit_status(&mut oversized);
        rewrite_limit_status(&mut other);

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
