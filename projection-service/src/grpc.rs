//! The query side's gRPC edge. The two services are translators only — request → read query,
//! rows → answer, [`QueryError`] → `Status` ([`crate::status::to_status`]):
//! [`devices`] (`DeviceQueryService`) and [`audit`] (`AuditService`). This module holds what
//! they share: their state, who the caller is, the client's deadline, and the paging rules.

pub(crate) mod audit;
pub(crate) mod devices;

use std::time::Duration;

use chrono::Utc;
use identity::{KeySet, PortalClaims};
use sqlx::PgPool;
use tonic::Request;

use crate::status::QueryError;

#[cfg(test)]
mod tests;

/// The longest a query waits for the read model to reach a consistency token.
const MAX_WAIT: Duration = Duration::from_secs(10);
/// Used when the client sets no deadline.
const DEFAULT_WAIT: Duration = Duration::from_secs(5);

/// What both query services need: the read-model pool and who may call.
#[derive(Debug, Clone)]
pub(crate) struct Queries {
    /// The read-model database.
    pub(crate) pool: PgPool,
    /// The identity provider's keys.
    pub(crate) idp: KeySet,
    /// Maximum age of `auth_time`.
    pub(crate) reauth_max_age: Duration,
    /// Rate limits on the queries.
    pub(crate) limits: crate::limits::QueryLimits,
    /// Where the rate limits are counted: the read-model database, committing without waiting
    /// for the WAL flush (`service_kit::database::asynchronous_commit_pool`).
    pub(crate) limits_pool: PgPool,
}

impl Queries {
    /// Counts a query of `rule` by `caller` (RESOURCE_EXHAUSTED past its limit).
    pub(crate) async fn admit(
        &self,
        rule: crate::limits::QueryRule,
        caller: &str,
    ) -> Result<(), crate::status::QueryError> {
        self.limits.admit(&self.limits_pool, rule, caller).await
    }
}

impl Queries {
    /// The verified claims of the call's `authorization: Bearer <JWT>`.
    pub(crate) fn claims<T>(&self, request: &Request<T>) -> Result<PortalClaims, QueryError> {
        let token = service_kit::grpc::bearer(request.metadata()).ok_or_else(|| {
            QueryError::Unauthenticated(
                "missing credentials: send `authorization: Bearer <JWT from the identity \
                     provider>`"
                    .into(),
            )
        })?;
        self.idp
            .verify(token)
            .map_err(|error| QueryError::Unauthenticated(format!("the portal token {error}")))
    }

    /// Refuses a token whose `auth_time` is missing or older than `reauth_max_age` (30 s of
    /// clock leeway), whoever it names: for auditors, who have roles and no account.
    pub(crate) fn recently_authenticated(&self, claims: &PortalClaims) -> Result<(), QueryError> {
        let max_age = i64::try_from(self.reauth_max_age.as_secs()).unwrap_or(i64::MAX);
        let age = claims
            .auth_time
            .and_then(|auth_time| Utc::now().timestamp().checked_sub(auth_time));
        match age {
            Some(age) if (-30..=max_age).contains(&age) => Ok(()),
            Some(_) | None => Err(QueryError::PermissionDenied(format!(
                "re-authentication required: an auditor's token needs an auth_time at most \
                 {max_age} s old; sign in again and retry with the new token"
            ))),
        }
    }

    /// The account of a holder who authenticated recently enough (`reauth_max_age`).
    pub(crate) fn reauthenticated(&self, claims: &PortalClaims) -> Result<String, QueryError> {
        let max_age = i64::try_from(self.reauth_max_age.as_secs()).unwrap_or(i64::MAX);
        let sub = claims
            .reauthenticated_citizen(Utc::now().timestamp(), max_age)
            .map_err(|refusal| QueryError::PermissionDenied(refusal.to_string()))?;
        account_id("the portal token's sub", sub)
    }
}

/// `raw` as an account id (`domain::AccountId::parse`); `what` names it in the refusal. Checked
/// before any query: PostgreSQL refuses some bytes (NUL) in text, and a request must never be
/// answered as an outage it caused.
pub(crate) fn account_id(what: &str, raw: &str) -> Result<String, QueryError> {
    domain::AccountId::parse(raw)
        .map(|account| account.0)
        .map_err(|refusal| QueryError::InvalidArgument(format!("{what} is not valid: {refusal}")))
}

/// How long the call may wait: the client's deadline from `grpc-timeout` (e.g. `5S`, `250m`)
/// less a margin to answer in, at most [`MAX_WAIT`]; [`DEFAULT_WAIT`] without one.
pub(crate) fn deadline<T>(request: &Request<T>) -> Duration {
    let parsed = request
        .metadata()
        .get("grpc-timeout")
        .and_then(|v| v.to_str().ok())
        .and_then(|raw| {
            let (digits, unit) = raw.split_at(raw.len().checked_sub(1)?);
            let n: u64 = digits.parse().ok()?;
            Some(match unit {
                "H" => Duration::from_secs(n.saturating_mul(3600)),
                "M" => Duration::from_secs(n.saturating_mul(60)),
                "S" => Duration::from_secs(n),
                "m" => Duration::from_millis(n),
                "u" => Duration::from_micros(n),
                "n" => Duration::from_nanos(n),
                _ => return None,
            })
        });
    // Leave a little time to answer before the client gives up.
    parsed
        .map_or(DEFAULT_WAIT, |d| {
            d.saturating_sub(d.mul_f64(0.2).max(Duration::from_millis(100)))
        })
        .min(MAX_WAIT)
}

/// A page size (AIP-158): 0 means `default`, more than `max` means `max`, negative is refused.
pub(crate) fn page_size(requested: i32, default: i64, max: i32) -> Result<i64, QueryError> {
    match requested {
        0 => Ok(default),
        n if n < 0 => Err(QueryError::InvalidArgument(
            "page_size must not be negative".into(),
        )),
        n => Ok(i64::from(n.min(max))),
    }
}

/// Pages are read one row too long: if `rows` has more than `page_size`, the extra row is
/// dropped and the token of the page's last row returned; otherwise the page is the last (an
/// empty token).
pub(crate) fn next_page_token<R>(
    rows: &mut Vec<R>,
    page_size: i64,
    token: impl FnOnce(&R) -> String,
) -> String {
    if rows.len() > usize::try_from(page_size).unwrap_or(usize::MAX) {
        rows.pop();
        rows.last().map(token).unwrap_or_default()
    } else {
        String::new()
    }
}
