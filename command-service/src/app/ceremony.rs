//! The end of the linking ceremony (R4, R5, R7): the app sets the 6-digit secret code of an
//! authenticated link attempt, and from that moment the device is linked. In order:
//!
//! 1. the attempt must be ready (authenticated — for a QR link, confirmed by the holder in the
//!    browser: ADR 0011 —, not expired, not completed; a confirmation deadline that passed
//!    ends the link token too). A completed
//!    attempt's link token is dead, so no call after completion ever reaches a secret code: a
//!    lost answer is recovered only by retrying with the same `request_id` (AIP-155);
//! 2. the device must not be linked by another attempt (R5) — refused before any hashing;
//! 3. the code's verifier and a fresh, random device credential are claimed for the link —
//!    *before* the link, so a linked device always has its credential. Exactly one call per
//!    attempt can claim them; a concurrent call is refused and changes nothing (ADR 0003);
//! 4. the device is linked (`DeviceLinked`), the attempt completed (`LinkCompleted`), and the
//!    link token ended. A refused link releases the claim again.

use chrono::{DateTime, Utc};
use domain::{
    Device, DeviceCommand, DeviceId, LinkAttempt, LinkAttemptCommand, LinkAttemptError,
    LinkAttemptId, ReadyToLink,
};
use proto::consistency::{ConsistencyToken, Written};

use super::App;
use super::auth::AttemptHolder;
use crate::credentials::{Claim, Claimed};
use crate::error::CommandError;
use crate::secrets::{self, MintedToken, SecretCode, TokenKind};
use crate::store::{Executed, Loaded, Metadata};

/// A device, linked (no `Debug`: the credential is a secret).
pub(crate) struct DeviceLinkedNow {
    /// The device's credential for its later calls; returned here only, once.
    pub(crate) device_credential: String,
    pub(crate) device_id: DeviceId,
    pub(crate) linked_at: DateTime<Utc>,
    pub(crate) written: ConsistencyToken,
}

impl App {
    /// R4: the secret code is set and the device linked.
    pub(crate) async fn set_secret_code(
        &self,
        holder: AttemptHolder,
        code: SecretCode,
    ) -> Result<DeviceLinkedNow, CommandError> {
        let attempt_id = holder.attempt_id();
        let span = tracing::Span::current();
        span.record("link_attempt_id", tracing::field::display(attempt_id));
        let now = Utc::now();
        let attempt = self
            .store
            .load::<LinkAttempt>(&attempt_id.to_string())
            .await?;
        let confirmation_required = self.lifetimes.confirmation.is_some();
        let ready = match attempt.state().ready_to_link(now, confirmation_required) {
            Ok(ready) => ready,
            Err(dead @ LinkAttemptError::ConfirmationExpired { .. }) => {
                // The holder never confirmed: the token's purpose can no longer be served.
                self.credentials
                    .delete_bearer(TokenKind::LinkAttempt, attempt_id.0)
                    .await?;
                return Err(dead.into());
            }
            Err(refused) => return Err(refused.into()),
        };
        span.record("device_id", tracing::field::display(ready.device_id));
        let device = self
            .store
            .load::<Device>(&ready.device_id.to_string())
            .await?;
        let link = link_command(attempt_id, &ready, now);
        device.state().decide(link.clone())?;
        let credential = self.claim_credential(attempt_id, &ready, &code).await?;
        let metadata = holder.metadata().for_account(&ready.account_id.0);
        let linked = self
            .link_device(device, link, &metadata, attempt_id, &credential)
            .await?;
        let completed = self
            .complete_attempt(attempt, now, confirmation_required, &metadata)
            .await?;
        self.credentials
            .delete_bearer(TokenKind::LinkAttempt, attempt_id.0)
            .await?;
        tracing::info!(method = ?ready.method, "device linked");
        Ok(DeviceLinkedNow {
            device_credential: credential.text,
            device_id: ready.device_id,
            linked_at: linked.state.linked_at().unwrap_or(now),
            written: ConsistencyToken::of([&linked.position, &completed]),
        })
    }

    /// Step 3: a fresh credential and the code's verifier, stored under the link's id unless
    /// another call for the same attempt got there first, or the account already links as many
    /// devices as it may (the device cap, decided here under a per-account lock).
    async fn claim_credential(
        &self,
        link_id: LinkAttemptId,
        ready: &ReadyToLink,
        code: &SecretCode,
    ) -> Result<MintedToken, CommandError> {
        let verifier = self.hash_code(link_id.0, code).await?;
        let credential = secrets::mint(TokenKind::DeviceCredential, link_id.0);
        let claim = Claim {
            link_id: link_id.0,
            device_id: ready.device_id.0,
            account_id: &ready.account_id.0,
            credential_hash: &credential.hash,
            code_verifier: &verifier,
        };
        let claimed = self
            .credentials
            .claim_device_credential(&claim, self.device_cap)
            .await?
            .or_device_limit(self.device_cap)?;
        if claimed == Claimed::Taken {
            return Err(CommandError::InProgress(
                "another SetSecretCode call for this link attempt set its secret code first; \
                 this call changed nothing (to recover a lost answer, retry with the same \
                 request_id)"
                    .into(),
            ));
        }
        Ok(credential)
    }

    /// Step 4a: the device is linked; if that is refused, the credential this call claimed
    /// goes (and only that one).
    async fn link_device(
        &self,
        device: Loaded<Device>,
        link: DeviceCommand,
        metadata: &Metadata,
        link_id: LinkAttemptId,
        credential: &MintedToken,
    ) -> Result<Executed<Device>, CommandError> {
        match self.store.execute(device, link, metadata).await {
            Ok(linked) => Ok(linked),
            Err(refusal) => {
                self.credentials
                    .release_device_credential(link_id.0, &credential.hash)
                    .await?;
                Err(refusal)
            }
        }
    }

    /// Step 4b: the attempt is over.
    async fn complete_attempt(
        &self,
        attempt: Loaded<LinkAttempt>,
        at: DateTime<Utc>,
        qr_confirmation_required: bool,
        metadata: &Metadata,
    ) -> Result<Written, CommandError> {
        let id = attempt.position().aggregate_id;
        let complete = LinkAttemptCommand::Complete {
            at,
            qr_confirmation_required,
        };
        match self.store.execute(attempt, complete, metadata).await {
            Ok(completed) => Ok(completed.position),
            // Only the call that claimed the credential gets here; a crash after the link and
            // before this point is finished by no one else, so this is the same link.
            Err(CommandError::Attempt(LinkAttemptError::AlreadyCompleted)) => {
                Ok(self.store.load::<LinkAttempt>(&id).await?.position())
            }
            Err(other) => Err(other),
        }
    }
}

/// The device's link, as the ready attempt describes it.
fn link_command(link_id: LinkAttemptId, ready: &ReadyToLink, at: DateTime<Utc>) -> DeviceCommand {
    DeviceCommand::Link {
        link_id,
        account_id: ready.account_id.clone(),
        device_name: ready.device_name.clone(),
        method: ready.method,
        product: ready.product.clone(),
        platform: ready.platform,
        app_version: ready.app_version.clone(),
        at,
    }
}
