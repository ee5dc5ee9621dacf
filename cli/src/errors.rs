//! How linkctl shows a gRPC error: its code and message, then what the rich error details add
//! (`google.rpc.RetryInfo` on RESOURCE_EXHAUSTED, the `DEVICE_LIMIT` PreconditionFailure).

use tonic::{Code, Status};
use tonic_types::StatusExt as _;

/// `Code: message`, then one indented line per detail the status carries that linkctl knows:
/// `retry in N s` (RetryInfo on RESOURCE_EXHAUSTED, rounded up to whole seconds) and
/// `least recently used device: <id>` (a `DEVICE_LIMIT` violation).
pub fn describe(status: &Status) -> String {
    let mut text = format!("{:?}: {}", status.code(), status.message());
    // A failed connection (a TLS handshake refused, say) says why only in its sources.
    let mut source = std::error::Error::source(status);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    for line in details(status) {
        text.push_str("\n  ");
        text.push_str(&line);
    }
    text
}

/// The lines [`describe`] adds below the message (none if the status carries no known detail).
pub fn details(status: &Status) -> Vec<String> {
    let mut lines = Vec::new();
    if status.code() == Code::ResourceExhausted
        && let Some(delay) = status
            .get_details_retry_info()
            .and_then(|info| info.retry_delay)
    {
        let seconds = delay.as_secs() + u64::from(delay.subsec_nanos() > 0);
        lines.push(format!("retry in {seconds} s"));
    }
    if let Some(device) = least_recently_used(status) {
        lines.push(format!("least recently used device: {device}"));
    }
    lines
}

/// The device a `DEVICE_LIMIT` refusal names (the account's least recently used one, to unlink
/// to make room); `None` for any other status.
pub fn least_recently_used(status: &Status) -> Option<String> {
    let failure = status.get_details_precondition_failure()?;
    let violation = failure
        .violations
        .into_iter()
        .find(|violation| violation.r#type == "DEVICE_LIMIT")?;
    Some(match violation.subject.strip_prefix("devices/") {
        Some(device) => device.to_owned(),
        None => violation.subject,
    })
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tonic_types::ErrorDetails;

    use super::*;

    #[test]
    fn a_rate_limit_says_when_to_retry_in_whole_seconds_rounded_up() {
        let status = Status::with_error_details(
            Code::ResourceExhausted,
            "too many scans",
            ErrorDetails::with_retry_info(Some(Duration::from_millis(2_300))),
        );

        assert_eq!(
            describe(&status),
            "ResourceExhausted: too many scans\n  retry in 3 s"
        );
    }

    #[test]
    fn a_device_limit_names_the_least_recently_used_device() {
        let status = Status::with_error_details(
            Code::FailedPrecondition,
            "this account already links 2 devices",
            ErrorDetails::with_precondition_failure_violation(
                "DEVICE_LIMIT",
                "devices/0b5e0e4c-6b8e-4a39-9d55-31d1a2f4c8e1",
                "unlink it",
            ),
        );

        assert_eq!(
            details(&status),
            ["least recently used device: 0b5e0e4c-6b8e-4a39-9d55-31d1a2f4c8e1"]
        );
    }

    #[test]
    fn a_status_without_known_details_is_its_code_and_message() {
        let plain = Status::failed_precondition("this account already links 2 devices");
        let other = Status::with_error_details(
            Code::FailedPrecondition,
            "terms",
            ErrorDetails::with_precondition_failure_violation("TOS", "terms/1", "accept them"),
        );

        assert_eq!(
            describe(&plain),
            "FailedPrecondition: this account already links 2 devices"
        );
        assert!(details(&other).is_empty());
    }
}
