//! The end of the linking ceremony (R4, R5, R7): the app sets the 6-digit secret code of an
//! authenticated link attempt, and from that moment the device is linked. In order:
//!
//! 1. the attempt must be ready (authenticated, not expired); one that already linked its
//!    device answers a retry with the same credential, if the same code is presented;
//! 2. the device must not be linked by another attempt (R5) — refused before any hashing;
//! 3. the code's verifier and the device credential are stored, *before* the link, so a linked
//!    device always has its credential (a refused link removes them again; ADR 0002);
//! 4. the device is linked (`DeviceLinked`), then the attempt completed (`LinkCompleted`).

use chrono::{DateTime, Utc};
use domain::{
    Device, DeviceCommand, DeviceId, LinkAttempt, LinkAttemptCommand, LinkAttemptError,
    LinkAttemptId, ReadyToLink,
};
use proto::consistency::{ConsistencyToken, Written};

use super::App;
use super::auth::AttemptHolder;
use crate::error::CommandError;
use crate::secrets::{MintedToken, SecretCode, TokenKind};
use crate::store::{Executed, Loaded, Metadata};

/// A device, linked (no `Debug`: the credential is a secret).
pub(crate) struct DeviceLinkedNow {
    /// The device's credential for its later calls; returned here only.
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
        let span = tracing::Span::current();
        span.record(
            "link_attempt_id",
            tracing::field::display(holder.attempt_id()),
        );
        // The credential is derived from the link token, so every call for this attempt (a
        // retry, or a double submit racing the first) returns the same credential.
        let credential = holder
            .token()
            .derive(TokenKind::DeviceCredential, holder.attempt_id().0);
        let now = Utc::now();
        let attempt = self
            .store
            .load::<LinkAttempt>(&holder.attempt_id().to_string())
            .await?;
        let ready = match attempt.state().ready_to_link(now) {
            Ok(ready) => ready,
            Err(LinkAttemptError::AlreadyCompleted) => {
                return self
                    .repeat_completed_link(&holder, attempt.state(), credential, &code)
                    .await;
            }
            Err(refusal) => return Err(refusal.into()),
        };
        span.record("device_id", tracing::field::display(ready.device_id));
        let device = self
            .store
            .load::<Device>(&ready.device_id.to_string())
            .await?;
        let link = link_command(holder.attempt_id(), &ready, now);
        device.state().decide(link.clone())?;
        self.store_credential(holder.attempt_id(), &ready, &credential, &code)
            .await?;
        let metadata = holder.metadata().for_account(&ready.account_id.0);
        let linked = self
            .link_device(device, link, &metadata, holder.attempt_id())
            .await?;
        let completed = self.complete_attempt(attempt, now, &metadata).await?;
        tracing::info!(method = ?ready.method, "device linked");
        Ok(DeviceLinkedNow {
            device_credential: credential.text,
            device_id: ready.device_id,
            linked_at: linked.state.linked_at().unwrap_or(now),
            written: ConsistencyToken::of([&linked.position, &completed]),
        })
    }

    /// Step 3: the code's verifier and the credential, stored under the link's id.
    async fn store_credential(
        &self,
        link_id: LinkAttemptId,
        ready: &ReadyToLink,
        credential: &MintedToken,
        code: &SecretCode,
    ) -> Result<(), CommandError> {
        let verifier = self.hash_code(code).await?;
        self.credentials
            .put_device_credential(link_id.0, ready.device_id.0, &credential.hash, &verifier)
            .await
    }

    /// Step 4a: the device is linked; if that is refused, the credential stored for it goes.
    async fn link_device(
        &self,
        device: Loaded<Device>,
        link: DeviceCommand,
        metadata: &Metadata,
        link_id: LinkAttemptId,
    ) -> Result<Executed<Device>, CommandError> {
        match self.store.execute(device, link, metadata).await {
            Ok(linked) => Ok(linked),
            Err(refusal) => {
                self.credentials.delete_link(link_id.0).await?;
                Err(refusal)
            }
        }
    }

    /// Step 4b: the attempt is over. A concurrent call for the same attempt that completed it
    /// first linked the same device with the same credential.
    async fn complete_attempt(
        &self,
        attempt: Loaded<LinkAttempt>,
        at: DateTime<Utc>,
        metadata: &Metadata,
    ) -> Result<Written, CommandError> {
        let id = attempt.position().aggregate_id;
        let complete = LinkAttemptCommand::Complete { at };
        match self.store.execute(attempt, complete, metadata).await {
            Ok(completed) => Ok(completed.position),
            Err(CommandError::Attempt(LinkAttemptError::AlreadyCompleted)) => {
                Ok(self.store.load::<LinkAttempt>(&id).await?.position())
            }
            Err(other) => Err(other),
        }
    }

    /// Step 1, for an attempt that already linked its device: the same answer, if the device
    /// is still linked by this attempt and the code is the one that was set.
    async fn repeat_completed_link(
        &self,
        holder: &AttemptHolder,
        attempt: &LinkAttempt,
        credential: MintedToken,
        code: &SecretCode,
    ) -> Result<DeviceLinkedNow, CommandError> {
        let completed = || CommandError::Attempt(LinkAttemptError::AlreadyCompleted);
        let device_id = attempt.device_id().ok_or_else(completed)?;
        let device = self.store.load::<Device>(&device_id.to_string()).await?;
        let stored = self
            .credentials
            .device_credential(holder.attempt_id().0)
            .await?;
        let (Some(linked_at), Some(stored)) = (device.state().linked_at(), stored) else {
            return Err(completed());
        };
        if device.state().link_id() != Some(holder.attempt_id()) {
            return Err(completed());
        }
        if !self.code_matches(code, &stored.code_verifier).await? {
            return Err(completed());
        }
        Ok(DeviceLinkedNow {
            device_credential: credential.text,
            device_id,
            linked_at,
            written: ConsistencyToken::of([&device.position()]),
        })
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
