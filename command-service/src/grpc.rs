//! The gRPC edge: request -> validated domain command (+ metadata) -> event store -> response.

/// Serves one RPC: reads the call's metadata, then runs `Commands::$handler(&meta, &body)`
/// under the request log (so a retried `request_id` replays the first answer), and maps the
/// outcome to a gRPC response or status.
macro_rules! idempotent {
    ($api:expr, $request:expr, $method:literal, $handler:ident) => {{
        let meta = $crate::grpc::CallMeta::of(&$request);
        let body = $request.into_inner();
        let commands = &$api.0;
        commands
            .requests
            .run($method, &body.request_id, &meta.credentials, &body, || {
                commands.$handler(&meta, &body)
            })
            .await
            .map(tonic::Response::new)
            .map_err($crate::status::to_status)
    }};
}

mod device;
mod portal;

use std::sync::Arc;

use chrono::{DateTime, Utc};
use tonic::Request;
use uuid::Uuid;

use crate::credentials::Credentials;
use crate::idempotency::RequestLog;
use crate::secrets::CodeHasher;
use crate::store::EventStore;
use identity::KeySet;

pub use device::DeviceApi;
pub use portal::PortalApi;

/// Everything the command handlers share.
#[derive(Debug)]
pub struct Commands {
    /// The event store.
    pub store: EventStore,
    /// Answers of idempotent calls.
    pub requests: RequestLog,
    /// Hashes of secrets.
    pub credentials: Credentials,
    /// The identity provider's keys (portal JWTs).
    pub idp: KeySet,
    /// The keys that sign LuxTrust assertions.
    pub luxtrust: KeySet,
    /// Argon2id with the pepper.
    pub hasher: CodeHasher,
    /// Lifetime of a link QR code.
    pub qr_ttl: chrono::Duration,
    /// Lifetime of a link attempt.
    pub link_attempt_ttl: chrono::Duration,
    /// Maximum age of `auth_time` for re-authenticated calls.
    pub reauth_max_age: chrono::Duration,
}

/// What every call carries besides its message.
#[derive(Clone)]
pub struct CallMeta {
    /// The `authorization` value, without `Bearer ` (empty if absent).
    pub credentials: String,
    /// The server-side id of this call (from `x-request-id`, or generated).
    pub call_id: String,
}

impl std::fmt::Debug for CallMeta {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CallMeta")
            .field("call_id", &self.call_id)
            .finish_non_exhaustive()
    }
}

impl CallMeta {
    /// Reads the metadata of `request`.
    pub fn of<T>(request: &Request<T>) -> Self {
        let header = |name: &str| {
            request
                .metadata()
                .get(name)
                .and_then(|value| value.to_str().ok())
                .map(str::trim)
        };
        let credentials = header("authorization")
            .and_then(|value| {
                value
                    .strip_prefix("Bearer ")
                    .or_else(|| value.strip_prefix("bearer "))
            })
            .unwrap_or_default()
            .trim()
            .to_owned();
        let call_id = header("x-request-id")
            .filter(|id| {
                !id.is_empty()
                    && id.len() <= 64
                    && id
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
            })
            .map_or_else(|| Uuid::new_v4().to_string(), str::to_owned);
        Self {
            credentials,
            call_id,
        }
    }

    /// The bearer credentials, if any were sent.
    pub fn bearer(&self) -> Option<&str> {
        Some(self.credentials.as_str()).filter(|text| !text.is_empty())
    }
}

/// A shared handle, as both services need.
pub type Shared = Arc<Commands>;

/// A protobuf timestamp.
pub fn timestamp(at: DateTime<Utc>) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: at.timestamp(),
        nanos: i32::try_from(at.timestamp_subsec_nanos()).unwrap_or(0),
    }
}
