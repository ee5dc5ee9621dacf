//! Linked devices in use (R4, R8): biometrics, unlocking with the secret code (five wrong codes
//! in a row unlink the device), and unlinking — by the device itself or by the holder from the
//! browser. Unlinking revokes the device's credential at once.

use chrono::{DateTime, Utc};
use domain::{Device, DeviceCommand, DeviceError, DeviceId, LinkAttemptId};
use proto::consistency::ConsistencyToken;

use super::App;
use super::auth::{Citizen, LinkedDevice};
use crate::error::CommandError;
use crate::secrets::SecretCode;
use crate::store::Executed;

/// The verdict on a secret code typed to unlock the app.
#[derive(Debug)]
pub(crate) struct CodeVerdict {
    pub(crate) verified: bool,
    /// Wrong codes the device may still take before it is unlinked (0 once unlinked).
    pub(crate) attempts_remaining: u32,
    /// Whether this wrong code was one too many: the device is no longer linked.
    pub(crate) device_unlinked: bool,
    pub(crate) written: ConsistencyToken,
}

impl App {
    /// R4: biometric unlocking turned on, or off (skipped, the first time).
    pub(crate) async fn set_biometrics(
        &self,
        device: LinkedDevice,
        enabled: bool,
    ) -> Result<ConsistencyToken, CommandError> {
        let executed = self
            .on_device(device, |link_id, at| DeviceCommand::SetBiometrics {
                link_id,
                enabled,
                at,
            })
            .await?;
        Ok(ConsistencyToken::of([&executed.position]))
    }

    /// The app checks the secret code typed to unlock it. The verdict leaves the server only
    /// once the check is recorded, so parallel guesses cannot outrun the failure count (see
    /// docs/adr/0003).
    pub(crate) async fn verify_secret_code(
        &self,
        device: LinkedDevice,
        code: SecretCode,
    ) -> Result<CodeVerdict, CommandError> {
        tracing::Span::current().record("device_id", tracing::field::display(device.device_id()));
        let matches = self.code_matches(&code, device.code_verifier()).await?;
        let link_id = device.link_id();
        let executed = self
            .on_device(device, |link_id, at| DeviceCommand::RecordSecretCodeCheck {
                link_id,
                matches,
                at,
            })
            .await?;
        let after = executed.state;
        let still_linked = after.link_id() == Some(link_id);
        if !still_linked {
            self.credentials.delete_link(link_id.0).await?;
        }
        Ok(CodeVerdict {
            verified: matches,
            attempts_remaining: after.secret_code_attempts_left(),
            device_unlinked: !still_linked,
            written: ConsistencyToken::of([&executed.position]),
        })
    }

    /// R8: the app unlinks its own device.
    pub(crate) async fn unlink_this_device(
        &self,
        device: LinkedDevice,
    ) -> Result<ConsistencyToken, CommandError> {
        let link_id = device.link_id();
        let executed = self
            .on_device(device, |link_id, at| DeviceCommand::UnlinkFromDevice {
                link_id,
                at,
            })
            .await?;
        self.credentials.delete_link(link_id.0).await?;
        Ok(ConsistencyToken::of([&executed.position]))
    }

    /// R8: the holder unlinks devices from the browser, all or none: every device is checked
    /// first, so that one not linked to the account unlinks nothing. A device this account
    /// already unlinked counts as done, so a retry after a partial failure finishes the job.
    pub(crate) async fn unlink_devices(
        &self,
        holder: &Citizen,
        device_ids: &[DeviceId],
    ) -> Result<ConsistencyToken, CommandError> {
        let mut links = Vec::with_capacity(device_ids.len());
        let mut positions = Vec::with_capacity(device_ids.len());
        for device_id in device_ids {
            let device = self.store.load::<Device>(&device_id.to_string()).await?;
            match device.state().portal_unlink_target(holder.account_id()) {
                Ok(Some(link_id)) => links.push((*device_id, link_id, device)),
                Ok(None) => positions.push(device.position()),
                Err(_) => {
                    return Err(CommandError::NotFound(format!(
                        "no device {device_id} is linked to your account; no device was unlinked"
                    )));
                }
            }
        }
        let now = Utc::now();
        for (device_id, link_id, device) in links {
            let command = DeviceCommand::UnlinkFromPortal {
                account_id: holder.account_id().clone(),
                link_id,
                at: now,
            };
            match self.store.execute(device, command, holder.metadata()).await {
                Ok(executed) => positions.push(executed.position),
                // Unlinked concurrently (by the device itself, say): the goal is reached.
                Err(CommandError::Device(DeviceError::NotLinkedToAccount)) => {
                    let key = device_id.to_string();
                    positions.push(self.store.load::<Device>(&key).await?.position());
                }
                Err(other) => return Err(other),
            }
            self.credentials.delete_link(link_id.0).await?;
        }
        Ok(ConsistencyToken::of(&positions))
    }

    /// Executes, on the device the caller authenticated as, the command `command` builds for
    /// the device's current link, now.
    async fn on_device(
        &self,
        device: LinkedDevice,
        command: impl FnOnce(LinkAttemptId, DateTime<Utc>) -> DeviceCommand,
    ) -> Result<Executed<Device>, CommandError> {
        tracing::Span::current().record("device_id", tracing::field::display(device.device_id()));
        let command = command(device.link_id(), Utc::now());
        let metadata = device.metadata().clone();
        self.store
            .execute(device.into_loaded(), command, &metadata)
            .await
    }
}
