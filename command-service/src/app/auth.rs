//! Who is calling. Each caller type can only be made here, by checking the call's credentials
//! (their fields are private to this module), so a use case that takes one cannot run for
//! anyone else:
//!
//! - [`System`]: the portal back end (a portal JWT with the `portal-system` role);
//! - [`Citizen`]: an account holder who re-authenticated within the configured age;
//! - [`AccountHolder`]: an account holder with any valid portal token (for reads);
//! - [`AttemptHolder`]: the app holding a link attempt's `link_token`;
//! - [`LinkedDevice`]: a linked device presenting the credential of its current link.

use chrono::Utc;
use domain::{AccountId, Device, DeviceId, LinkAttemptId};
use identity::{LuxTrustClaims, PortalClaims, TokenError};

use super::{App, Call};
use crate::credentials::StoredCredential;
use crate::error::CommandError;
use crate::secrets::{self, TokenKind};
use crate::store::{Loaded, Metadata};
use crate::validate;

/// The portal back end.
#[derive(Debug)]
pub(crate) struct System {
    metadata: Metadata,
}

impl System {
    /// Who is acting, for the events written.
    pub(crate) fn metadata(&self) -> &Metadata {
        &self.metadata
    }
}

/// An account holder who re-authenticated recently.
#[derive(Debug)]
pub(crate) struct Citizen {
    account_id: AccountId,
    metadata: Metadata,
}

impl Citizen {
    /// A citizen, as `reauthenticated_citizen` would make one, for use-case tests.
    #[cfg(test)]
    pub(crate) fn for_tests(account_id: &str) -> Self {
        Self {
            account_id: AccountId(account_id.to_owned()),
            metadata: Metadata {
                actor: format!("citizen:{account_id}"),
                request_id: "test".into(),
                account_id: Some(account_id.to_owned()),
            },
        }
    }

    /// The holder's account.
    pub(crate) fn account_id(&self) -> &AccountId {
        &self.account_id
    }

    /// Who is acting, for the events written.
    pub(crate) fn metadata(&self) -> &Metadata {
        &self.metadata
    }
}

/// An account holder with a valid portal token, however long ago they authenticated: enough to
/// read the state of their own things, not to change them.
#[derive(Debug)]
pub(crate) struct AccountHolder {
    account_id: AccountId,
}

impl AccountHolder {
    /// The holder's account.
    pub(crate) fn account_id(&self) -> &AccountId {
        &self.account_id
    }
}

/// The app, holding the live `link_token` of a link attempt.
#[derive(Debug)]
pub(crate) struct AttemptHolder {
    attempt_id: LinkAttemptId,
    metadata: Metadata,
}

impl AttemptHolder {
    /// The link attempt.
    pub(crate) fn attempt_id(&self) -> LinkAttemptId {
        self.attempt_id
    }

    /// Who is acting, for the events written.
    pub(crate) fn metadata(&self) -> &Metadata {
        &self.metadata
    }
}

/// A linked device, authenticated by the credential of its current link (no `Debug`: it holds
/// the verifier).
pub(crate) struct LinkedDevice {
    link_id: LinkAttemptId,
    device_id: DeviceId,
    credential: StoredCredential,
    metadata: Metadata,
    /// The device as loaded to check the credential, for the command that follows.
    loaded: Loaded<Device>,
}

impl LinkedDevice {
    /// The link its credential belongs to (the device's current link).
    pub(crate) fn link_id(&self) -> LinkAttemptId {
        self.link_id
    }

    /// The device.
    pub(crate) fn device_id(&self) -> DeviceId {
        self.device_id
    }

    /// The verifier of the link's secret code.
    pub(crate) fn code_verifier(&self) -> &str {
        &self.credential.code_verifier
    }

    /// Who is acting, for the events written.
    pub(crate) fn metadata(&self) -> &Metadata {
        &self.metadata
    }

    /// The device as loaded to check the credential, for the command that follows.
    pub(crate) fn into_loaded(self) -> Loaded<Device> {
        self.loaded
    }
}

impl App {
    fn portal_claims(&self, call: &Call) -> Result<PortalClaims, CommandError> {
        let token = call.bearer.as_deref().ok_or_else(|| {
            CommandError::Unauthenticated(
                "missing credentials: send `authorization: Bearer <JWT from the identity provider>`"
                    .into(),
            )
        })?;
        self.idp.verify(token).map_err(|error| match error {
            TokenError::Malformed | TokenError::Rejected(_) => {
                CommandError::Unauthenticated(format!("the portal token {error}"))
            }
        })
    }

    /// The portal back end, or a refusal.
    pub(crate) fn system(&self, call: &Call) -> Result<System, CommandError> {
        let claims = self.portal_claims(call)?;
        if !claims.is_system() {
            return Err(CommandError::PermissionDenied(
                "this call is reserved to the portal back end (role portal-system)".into(),
            ));
        }
        Ok(System {
            metadata: Metadata {
                actor: format!("system:{}", claims.sub),
                request_id: call.call_id.clone(),
                account_id: None,
            },
        })
    }

    /// The account holder calling, with any valid citizen token.
    pub(crate) fn account_holder(&self, call: &Call) -> Result<AccountHolder, CommandError> {
        let claims = self.portal_claims(call)?;
        let sub = claims
            .citizen()
            .map_err(|refusal| CommandError::PermissionDenied(refusal.to_string()))?;
        Ok(AccountHolder {
            account_id: account_of_sub(sub)?,
        })
    }

    /// The citizen calling, who must have re-authenticated recently.
    pub(crate) fn reauthenticated_citizen(&self, call: &Call) -> Result<Citizen, CommandError> {
        let claims = self.portal_claims(call)?;
        let sub = claims
            .reauthenticated_citizen(
                Utc::now().timestamp(),
                self.lifetimes.reauth_max_age.num_seconds(),
            )
            .map_err(|refusal| CommandError::PermissionDenied(refusal.to_string()))?;
        let account_id = account_of_sub(sub)?;
        let metadata = Metadata {
            actor: format!("citizen:{account_id}"),
            request_id: call.call_id.clone(),
            account_id: Some(account_id.0.clone()),
        };
        Ok(Citizen {
            account_id,
            metadata,
        })
    }

    /// The link attempt named by `link_token`, once its secret is checked.
    pub(crate) async fn link_attempt(
        &self,
        call: &Call,
        link_token: &str,
    ) -> Result<AttemptHolder, CommandError> {
        validate::required("link_token", link_token)?;
        let token = secrets::parse(TokenKind::LinkAttempt, link_token).ok_or_else(|| {
            CommandError::InvalidArgument(
                "link_token is malformed; pass the link_token StartLink returned, unchanged".into(),
            )
        })?;
        let stored = self.credentials.live_link_token(token.id).await?;
        if !stored.is_some_and(|hash| token.matches(&hash)) {
            return Err(CommandError::Unauthenticated(
                "link_token is not valid: it is unknown or expired, its link is complete, or the \
                 account holder declined it; \
                 start again with StartLink"
                    .into(),
            ));
        }
        Ok(AttemptHolder {
            attempt_id: LinkAttemptId(token.id),
            metadata: Metadata {
                actor: format!("app:link_attempt:{}", token.id),
                request_id: call.call_id.clone(),
                account_id: None,
            },
        })
    }

    /// The linked device whose credential the call carries.
    pub(crate) async fn linked_device(&self, call: &Call) -> Result<LinkedDevice, CommandError> {
        let text = call.bearer.as_deref().ok_or_else(|| {
            CommandError::Unauthenticated(
                "missing device credential: send `authorization: Bearer <device credential>`"
                    .into(),
            )
        })?;
        let token = secrets::parse(TokenKind::DeviceCredential, text).ok_or_else(|| {
            CommandError::Unauthenticated("the device credential is malformed".into())
        })?;
        let credential = self
            .credentials
            .device_credential(token.id)
            .await?
            .filter(|stored| token.matches(&stored.credential_hash))
            .ok_or_else(|| {
                CommandError::Unauthenticated(
                    "the device credential is not valid; the device may have been unlinked".into(),
                )
            })?;
        let device_id = DeviceId(credential.device_id);
        let link_id = LinkAttemptId(token.id);
        let loaded = self.store.load::<Device>(&device_id.to_string()).await?;
        let account_id = loaded.state().account_of_link(link_id)?;
        let metadata = Metadata {
            actor: format!("device:{device_id}"),
            request_id: call.call_id.clone(),
            account_id: Some(account_id.0.clone()),
        };
        Ok(LinkedDevice {
            link_id,
            device_id,
            credential,
            metadata,
            loaded,
        })
    }

    /// The claims of a LuxTrust assertion whose signature, audience and expiry verify.
    pub(crate) fn luxtrust_assertion(
        &self,
        assertion: &str,
    ) -> Result<LuxTrustClaims, CommandError> {
        match self.luxtrust.verify(assertion) {
            Ok(claims) => Ok(claims),
            Err(TokenError::Malformed) => Err(CommandError::InvalidArgument(
                "assertion is not a signed LuxTrust assertion (compact JWS)".into(),
            )),
            Err(rejected @ TokenError::Rejected(_)) => Err(CommandError::Unauthenticated(format!(
                "the LuxTrust assertion {rejected}"
            ))),
        }
    }
}

/// The account a citizen token's `sub` names.
fn account_of_sub(sub: &str) -> Result<AccountId, CommandError> {
    AccountId::parse(sub).map_err(|refusal| {
        CommandError::InvalidArgument(format!("the portal token's sub is not valid: {refusal}"))
    })
}
