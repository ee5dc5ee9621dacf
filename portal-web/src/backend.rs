//! The two services, as the page calls them, and their errors as the holder reads them.

use proto::v1::audit_service_client::AuditServiceClient;
use proto::v1::device_query_service_client::DeviceQueryServiceClient;
use proto::v1::portal_service_client::PortalServiceClient;
use tonic::transport::Channel;
use tonic::{Code, Request, Status};
use tonic_types::StatusExt as _;

use crate::i18n::{Texts, fill};

/// gRPC clients of the command service (`PortalService`) and the projection service
/// (`DeviceQueryService`, `AuditService`). Channels connect lazily: the page starts, and says
/// "unavailable", while a service is down.
#[derive(Debug, Clone)]
pub struct Backend {
    /// `PortalService`.
    pub portal: PortalServiceClient<Channel>,
    /// `DeviceQueryService`.
    pub queries: DeviceQueryServiceClient<Channel>,
    /// `AuditService`.
    pub audit: AuditServiceClient<Channel>,
}

impl Backend {
    /// Clients for the services at these addresses (`http://host:port`, or `https://` with
    /// `tls`).
    pub fn connect_lazy(
        command_url: &str,
        query_url: &str,
        tls: &service_kit::tls::ClientTls,
    ) -> anyhow::Result<Self> {
        let channel = |url: &str| -> anyhow::Result<Channel> {
            Ok(tls
                .endpoint(url)?
                .connect_timeout(std::time::Duration::from_secs(5))
                .timeout(std::time::Duration::from_secs(35))
                .connect_lazy())
        };
        let commands = channel(command_url)?;
        let queries = channel(query_url)?;
        Ok(Self::from_channels(commands, queries))
    }

    /// Clients over existing channels.
    pub fn from_channels(commands: Channel, queries: Channel) -> Self {
        Self {
            portal: PortalServiceClient::new(commands),
            queries: DeviceQueryServiceClient::new(queries.clone()),
            audit: AuditServiceClient::new(queries),
        }
    }
}

/// `message` with the holder's token.
pub fn bearer<T>(message: T, token: &str) -> Result<Request<T>, Status> {
    linkctl::client::bearer(message, token)
        .map_err(|_| Status::unauthenticated("the session's token has invalid characters"))
}

/// Whether the services refused the call for want of a recent sign-in.
pub fn needs_reauthentication(status: &Status) -> bool {
    status.code() == Code::PermissionDenied
        && status.message().starts_with("re-authentication required")
}

/// Whether the holder's token is no longer accepted (expired or revoked): sign in again.
pub fn session_over(status: &Status) -> bool {
    status.code() == Code::Unauthenticated
}

/// A refusal, as the holder reads it: a sentence in their language, and the service's own
/// message (meant for developers, in English) to show folded.
#[derive(Debug, Clone)]
pub struct Explained {
    /// The sentence.
    pub text: String,
    /// The service's message.
    pub detail: Option<String>,
}

/// What to tell the holder about `status`.
pub fn explain(status: &Status, t: &Texts) -> Explained {
    let text = match status.code() {
        Code::NotFound => t.err_not_found.to_owned(),
        Code::PermissionDenied => t.err_permission.to_owned(),
        Code::Unauthenticated => t.session_ended.to_owned(),
        Code::ResourceExhausted => match retry_seconds(status) {
            Some(seconds) => fill(t.err_busy_retry, &[&seconds.to_string()]),
            None => t.err_busy.to_owned(),
        },
        Code::Unavailable | Code::DeadlineExceeded | Code::Cancelled => {
            t.err_unavailable.to_owned()
        }
        Code::InvalidArgument | Code::OutOfRange => t.err_invalid.to_owned(),
        Code::FailedPrecondition | Code::AlreadyExists | Code::Aborted => {
            t.err_precondition.to_owned()
        }
        Code::Ok | Code::Unknown | Code::Unimplemented | Code::Internal | Code::DataLoss => {
            t.err_generic.to_owned()
        }
    };
    let detail = (!status.message().is_empty()).then(|| status.message().to_owned());
    Explained { text, detail }
}

/// The `RetryInfo` delay of a RESOURCE_EXHAUSTED answer, in whole seconds rounded up.
fn retry_seconds(status: &Status) -> Option<u64> {
    let delay = status.get_details_retry_info()?.retry_delay?;
    Some(delay.as_secs() + u64::from(delay.subsec_nanos() > 0))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tonic_types::ErrorDetails;

    use super::*;
    use crate::i18n::Language;

    #[test]
    fn a_rate_limit_says_when_to_try_again() {
        let status = Status::with_error_details(
            Code::ResourceExhausted,
            "too many",
            ErrorDetails::with_retry_info(Some(Duration::from_millis(2_300))),
        );
        let explained = explain(&status, Language::En.texts());
        assert_eq!(explained.text, "Too many attempts. Try again in 3 seconds.");
        assert_eq!(explained.detail.as_deref(), Some("too many"));
    }

    #[test]
    fn a_stale_sign_in_is_recognised() {
        let status = Status::permission_denied(
            "re-authentication required: this call needs a token whose auth_time is at most 300 s old",
        );
        assert!(needs_reauthentication(&status));
        assert!(!needs_reauthentication(&Status::permission_denied(
            "this QR code was issued to another account"
        )));
    }

    #[test]
    fn every_language_explains_an_outage() {
        for language in Language::ALL {
            let explained = explain(&Status::unavailable("down"), language.texts());
            assert_eq!(explained.text, language.texts().err_unavailable);
        }
    }
}
