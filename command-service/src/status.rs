//! The one mapping from a failed command to a gRPC status. Exhaustive on purpose: a new domain
//! error does not compile until someone chooses its code. Internal details are logged, not sent.

use domain::{AccountError, DeviceError, LinkAttemptError, LinkQrError};
use tonic::Status;

use crate::error::CommandError;

/// The status a client receives for `error`.
pub(crate) fn to_status(error: CommandError) -> Status {
    let message = error.to_string();
    match error {
        CommandError::Account(refusal) => match refusal {
            AccountError::AlreadyRegistered => Status::already_exists(message),
            AccountError::NotRegistered => Status::not_found(message),
        },
        CommandError::Qr(refusal) => match refusal {
            LinkQrError::AlreadyIssued => Status::already_exists(message),
            LinkQrError::AccountNotRegistered | LinkQrError::NotIssued => {
                Status::not_found(message)
            }
            LinkQrError::QrAlreadyConsumed | LinkQrError::QrExpired { .. } => {
                Status::failed_precondition(message)
            }
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
            | LinkAttemptError::AlreadyCompleted => Status::failed_precondition(message),
        },
        CommandError::Device(refusal) => match refusal {
            DeviceError::DeviceAlreadyLinked => Status::failed_precondition(message),
            DeviceError::CredentialRevoked => Status::unauthenticated(message),
            DeviceError::NotLinkedToAccount => Status::not_found(message),
        },
        CommandError::Conflict => {
            Status::aborted("too many concurrent updates to the same object; retry the call")
        }
        CommandError::InvalidArgument(_) => Status::invalid_argument(message),
        CommandError::Unauthenticated(_) => Status::unauthenticated(message),
        CommandError::PermissionDenied(_) => Status::permission_denied(message),
        CommandError::NotFound(_) => Status::not_found(message),
        CommandError::InProgress(_) => Status::aborted(message),
        CommandError::Unavailable(detail) => {
            tracing::error!(error = %detail, "event store unavailable");
            Status::unavailable("storage is unavailable; retry later")
        }
        CommandError::Internal(detail) => {
            tracing::error!(error = %detail, "command failed unexpectedly");
            Status::internal("internal error")
        }
    }
}
