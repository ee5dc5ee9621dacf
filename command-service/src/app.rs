//! The use cases: what linkd does, in the words of the help page. Each function takes a caller
//! who has been authenticated ([`auth`]) and inputs already validated into domain types, loads
//! the aggregates it needs, lets them decide, commits, and returns domain outputs with the
//! consistency token of what it wrote. No protobuf message, no gRPC status here: `grpc`
//! translates both ways. Use cases record the ids they learn (`qr_id`, `link_attempt_id`,
//! `device_id` …) in the current tracing span, which the translator opened for the call.
//!
//! - [`auth`]: who is calling (portal back end, re-authenticated citizen, link attempt, linked
//!   device).
//! - [`accounts`]: registering an account, changing its email, recording portal logins.
//! - [`linking`]: the QR code, starting a link attempt, scanning the QR or authenticating with
//!   LuxTrust.
//! - [`confirmation`]: the holder following, confirming or declining a scanned QR code.
//! - [`ceremony`]: setting the secret code, which links the device.
//! - [`devices`]: using and unlinking linked devices.

pub(crate) mod accounts;
pub(crate) mod auth;
pub(crate) mod ceremony;
pub(crate) mod confirmation;
pub(crate) mod devices;
pub(crate) mod inactivity;
pub(crate) mod linking;
#[cfg(test)]
pub(crate) mod testing;

use crate::credentials::Credentials;
use crate::error::CommandError;
use crate::hashing::{CodeHasher, Refused};
use crate::secrets::SecretCode;
use crate::store::EventStore;
use identity::KeySet;
use uuid::Uuid;

/// Everything the use cases share.
#[derive(Debug)]
pub(crate) struct App {
    /// The event store.
    pub(crate) store: EventStore,
    /// Hashes of secrets.
    pub(crate) credentials: Credentials,
    /// The identity provider's keys (portal JWTs).
    pub(crate) idp: KeySet,
    /// The keys that sign LuxTrust assertions.
    pub(crate) luxtrust: KeySet,
    /// Argon2id with the pepper.
    pub(crate) hasher: CodeHasher,
    /// How long things live.
    pub(crate) lifetimes: Lifetimes,
    /// The key matching codes are derived under ([`crate::matching::key`]).
    pub(crate) matching_key: Vec<u8>,
    /// The most devices one account may link.
    pub(crate) device_cap: u32,
    /// Rate limits on the calls a stranger or one device can repeat.
    pub(crate) limits: crate::limits::RateLimits,
}

/// How long tokens and sessions live.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Lifetimes {
    /// A link QR code.
    pub(crate) qr: chrono::Duration,
    /// A link attempt.
    pub(crate) link_attempt: chrono::Duration,
    /// The most `auth_time` may lie in the past for calls that need re-authentication.
    pub(crate) reauth_max_age: chrono::Duration,
    /// How long the holder has to confirm a scanned QR code; `None`: no confirmation asked.
    pub(crate) confirmation: Option<chrono::Duration>,
    /// A device's use is recorded at most this often (`device_credentials.used_at`).
    pub(crate) use_record_every: chrono::Duration,
}

/// What a call carries besides its message, as the transport read it.
#[derive(Clone)]
pub(crate) struct Call {
    /// The bearer token (`authorization: Bearer …`), if any.
    pub(crate) bearer: Option<String>,
    /// The server-side id of this call (from `x-request-id`, or generated), stored with every
    /// event it writes.
    pub(crate) call_id: String,
    /// The client's network address: the TCP peer, or the address the trusted proxies
    /// forwarded (`LINKD_TRUSTED_PROXY_HOPS`).
    pub(crate) client_address: Option<std::net::IpAddr>,
}

impl std::fmt::Debug for Call {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Call")
            .field("call_id", &self.call_id)
            .finish_non_exhaustive()
    }
}

impl App {
    /// The Argon2id verifier of `code`, computed on the hashing threads for `caller` (one job
    /// per caller at a time).
    async fn hash_code(&self, caller: Uuid, code: &SecretCode) -> Result<String, CommandError> {
        let code = code.clone();
        self.hashing(caller, move |hasher| hasher.hash(code.as_str()))
            .await
    }

    /// Whether `code` matches `verifier`, checked on the hashing threads for `caller`.
    async fn code_matches(
        &self,
        caller: Uuid,
        code: &SecretCode,
        verifier: &str,
    ) -> Result<bool, CommandError> {
        let (code, verifier) = (code.clone(), verifier.to_owned());
        self.hashing(caller, move |hasher| {
            hasher.verify(code.as_str(), &verifier)
        })
        .await
    }

    /// Runs Argon2id off the async runtime's worker threads; refused at once when the caller
    /// or the pool is busy.
    async fn hashing<T: Send + 'static>(
        &self,
        caller: Uuid,
        work: impl FnOnce(&CodeHasher) -> Result<T, argon2::password_hash::Error> + Send + 'static,
    ) -> Result<T, CommandError> {
        match self.hasher.run(caller, work).await {
            Ok(done) => done.map_err(|e| CommandError::Internal(format!("hashing failed: {e}"))),
            Err(Refused::Failed) => Err(CommandError::Internal("hashing task failed".into())),
            Err(busy @ (Refused::Busy | Refused::CallerBusy)) => {
                Err(CommandError::Busy(busy.to_string()))
            }
        }
    }
}
