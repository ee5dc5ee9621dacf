//! The one mapping from a failed command to a gRPC status. Exhaustive on purpose: a new domain
//! error does not compile until someone chooses its code. Internal details are logged, not sent.

use std::time::Duration;

use domain::{AccountError, DeviceError, LinkAttemptError, LinkQrError};
use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt as _};

/// How long a client should wait before retrying work refused because the service is busy.
const BUSY_RETRY: Duration = Duration::from_secs(1);

/// `RESOURCE_EXHAUSTED` with `message` and a `google.rpc.RetryInfo` of `retry_in`.
pub(crate) fn exhausted(message: impl Into<String>, retry_in: Duration) -> Status {
    Status::with_error_details(
        Code::ResourceExhausted,
        message,
        ErrorDetails::with_retry_info(Some(retry_in)),
    )
}

use crate::error::CommandError;

/// The status a client receives for `error`.
pub(crate) fn to_status(error: CommandError) -> Status {
    let message = error.to_string();
    match error {
        CommandError::Account(refusal) => match refusal {
            AccountError::AlreadyRegistered => Status::already_exists(message),
            AccountError::NotRegistered => Status::not_found(message),
            AccountError::Erased | AccountError::DevicesStillLinked { .. } => {
                Status::failed_precondition(message)
            }
        },
        CommandError::Qr(refusal) => match refusal {
            LinkQrError::AlreadyIssued => Status::already_exists(message),
            LinkQrError::AccountNotRegistered | LinkQrError::NotIssued => {
                Status::not_found(message)
            }
            LinkQrError::QrAlreadyConsumed
            | LinkQrError::QrExpired { .. }
            | LinkQrError::NotScanned => Status::failed_precondition(message),
        },
        CommandError::Attempt(refusal) => match refusal {
            LinkAttemptError::AlreadyStarted => Status::already_exists(message),
            LinkAttemptError::NotStarted => Status::not_found(message),
            LinkAttemptError::NonceMismatch => Status::permission_denied(message),
            LinkAttemptError::Expired { .. }
            | LinkAttemptError::DeviceAlreadyLinked
            | LinkAttemptError::AccountNotRegistered
            | LinkAttemptError::WrongMethod { .. }
            | LinkAttemptError::AlreadyAuthenticated
            | LinkAttemptError::ProductNeverUsedForLogin
            | LinkAttemptError::NotAuthenticated
            | LinkAttemptError::AlreadyCompleted
            | LinkAttemptError::AwaitingConfirmation
            | LinkAttemptError::ConfirmationExpired { .. }
            | LinkAttemptError::Declined { .. }
            | LinkAttemptError::NothingToConfirm
            | LinkAttemptError::AlreadyConfirmed
            | LinkAttemptError::ScannedAnotherQr
            | LinkAttemptError::UnconfirmedScan => Status::failed_precondition(message),
            LinkAttemptError::ScanNotRecorded => Status::aborted(message),
        },
        CommandError::Device(refusal) => match refusal {
            DeviceError::DeviceAlreadyLinked => Status::failed_precondition(message),
            DeviceError::CredentialRevoked => Status::unauthenticated(message),
            DeviceError::NotLinkedToAccount => Status::not_found(message),
            DeviceError::NotDueForInactivity => Status::failed_precondition(message),
        },
        CommandError::Conflict => {
            Status::aborted("too many concurrent updates to the same object; retry the call")
        }
        CommandError::InvalidArgument(_) => Status::invalid_argument(message),
        CommandError::Unauthenticated(_) => Status::unauthenticated(message),
        CommandError::PermissionDenied(_) => Status::permission_denied(message),
        CommandError::NotFound(_) => Status::not_found(message),
        CommandError::InProgress(_) => Status::aborted(message),
        CommandError::RateLimited { retry_in, .. } => exhausted(message, retry_in),
        CommandError::DeviceLimitUnnamed { .. } => Status::failed_precondition(message),
        CommandError::DeviceLimit {
            least_recently_used,
            ..
        } => Status::with_error_details(
            Code::FailedPrecondition,
            message,
            ErrorDetails::with_precondition_failure_violation(
                "DEVICE_LIMIT",
                format!("devices/{least_recently_used}"),
                "the account's least recently used device: unlink it (PortalService.UnlinkDevices) \
                 to make room",
            ),
        ),
        CommandError::Busy(_) => exhausted(format!("{message}; retry in a second"), BUSY_RETRY),
        CommandError::Unavailable(detail) => {
            tracing::error!(error = %detail, "event store unavailable");
            Status::unavailable("storage is unavailable; retry later")
        }
        CommandError::NewerVersion(detail) => {
            tracing::warn!(error = %detail, "a history written by a newer linkd");
            Status::unavailable(detail)
        }
        CommandError::Internal(detail) => {
            tracing::error!(error = %detail, "command failed unexpectedly");
            Status::internal("internal error")
        }
    }
}

#[cfg(test)]
mod tests {
    use chrono::DateTime;
    use tonic::Code;

    use super::*;

    fn answer(error: CommandError) -> (Code, String) {
        let status = to_status(error);
        (status.code(), status.message().to_owned())
    }

    /// The rules that moved from the handlers into the domain (issue 11) answer as they did.
    #[test]
    fn rules_the_domain_now_decides_keep_their_codes_and_messages() {
        assert_eq!(
            answer(LinkQrError::AccountNotRegistered.into()),
            (
                Code::NotFound,
                "the account is not registered; accounts are created by registering on the portal"
                    .into()
            )
        );
        assert_eq!(
            answer(LinkAttemptError::DeviceAlreadyLinked.into()),
            (
                Code::FailedPrecondition,
                "this device is already linked to an account; unlink it first".into()
            )
        );
        assert_eq!(
            answer(LinkAttemptError::AccountNotRegistered.into()),
            (
                Code::FailedPrecondition,
                "the LuxTrust assertion names an account that is not registered on the portal; \
                 register in the browser first"
                    .into()
            )
        );
    }

    #[test]
    fn the_same_refusal_reads_the_same_from_either_aggregate() {
        assert_eq!(
            answer(LinkQrError::AccountNotRegistered.into()).1,
            answer(AccountError::NotRegistered.into()).1
        );
        assert_eq!(
            answer(LinkAttemptError::DeviceAlreadyLinked.into()),
            answer(DeviceError::DeviceAlreadyLinked.into())
        );
    }

    #[test]
    fn internals_are_logged_not_sent() {
        let expired = LinkAttemptError::Expired {
            expired_at: DateTime::from_timestamp(1_800_000_000, 0).unwrap_or_default(),
        };
        assert_eq!(answer(expired.into()).0, Code::FailedPrecondition);
        assert_eq!(
            answer(CommandError::Internal("relation \"events\" is gone".into())),
            (Code::Internal, "internal error".into())
        );
        assert_eq!(
            answer(CommandError::Unavailable("connection refused".into())),
            (
                Code::Unavailable,
                "storage is unavailable; retry later".into()
            )
        );
    }
}
