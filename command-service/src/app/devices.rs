//! Linked devices in use (R4, R8): biometrics, unlocking with the secret code (five wrong codes
//! in a row unlink the device), and unlinking — by the device itself or by the holder from the
//! browser. Unlinking revokes the device's credential at once.

use chrono::{DateTime, Utc};
use domain::{
    Account, AccountCommand, AccountError, AccountId, Device, DeviceCommand, DeviceError, DeviceId,
    LinkAttemptId, UnlinkReason,
};
use proto::consistency::{ConsistencyToken, Written};

use super::App;
use super::auth::{Citizen, LinkedDevice, System};
use crate::error::CommandError;
use crate::secrets::SecretCode;
use crate::store::{Executed, Loaded, Metadata};

/// What `UnlinkDevices` did to each device it named, in the order named.
#[derive(Debug, Default)]
pub(crate) struct UnlinkReport {
    /// Devices whose link this call ended.
    pub(crate) unlinked: Vec<DeviceId>,
    /// Devices no longer linked to the account when this call reached them.
    pub(crate) already_unlinked: Vec<DeviceId>,
    /// Devices linked again by a new link while this call ran (that link was not ended).
    pub(crate) relinked: Vec<DeviceId>,
    pub(crate) written: ConsistencyToken,
    /// Where each aggregate the call touched stands (for `written`).
    positions: Vec<Written>,
}

/// Which devices an `UnlinkDevices` call names.
#[derive(Debug)]
pub(crate) enum Selection {
    /// These (all or none).
    Named(Vec<DeviceId>),
    /// Every device linked to the account now.
    All,
    /// Every device whose current link was made at or after this instant.
    LinkedSince(DateTime<Utc>),
}

/// Who unlinks, for which account, and why.
struct Unlinker<'a> {
    account_id: &'a AccountId,
    metadata: &'a Metadata,
    reason: UnlinkReason,
}

/// One device of an `UnlinkDevices` call, once checked.
#[derive(Debug)]
enum Planned {
    /// Its current link, to end.
    End(DeviceId, LinkAttemptId, Loaded<Device>),
    /// This account's link with it has ended already.
    AlreadyEnded(DeviceId, Written),
}

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
        let link_id = device.link_id();
        let executed = self
            .on_device(device, |link_id, at| DeviceCommand::SetBiometrics {
                link_id,
                enabled,
                at,
            })
            .await?;
        // A use of the device (for the inactivity rule).
        self.credentials
            .record_use(link_id.0, self.lifetimes.use_record_every)
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
        let matches = self
            .code_matches(device.device_id().0, &code, device.code_verifier())
            .await?;
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
        } else if matches {
            // The device was used: the least recently used one is named at the device cap.
            self.credentials
                .record_use(link_id.0, self.lifetimes.use_record_every)
                .await?;
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

    /// R8: the holder unlinks devices from the browser: the ones named, all or none (every
    /// device is checked first, so that one not linked to the account unlinks nothing; one this
    /// account already unlinked counts as done, so a retry after a partial failure finishes the
    /// job), or every device linked now or since an instant (containment). The report says
    /// exactly what this call ended.
    pub(crate) async fn unlink_devices(
        &self,
        holder: &Citizen,
        selection: Selection,
    ) -> Result<UnlinkReport, CommandError> {
        let unlinker = Unlinker {
            account_id: holder.account_id(),
            metadata: holder.metadata(),
            reason: UnlinkReason::FromPortal,
        };
        self.unlink(&unlinker, selection).await
    }

    /// The help desk revokes every device of `account_id` (reason `HelpDesk`).
    pub(crate) async fn revoke_all_devices(
        &self,
        system: &System,
        account_id: &AccountId,
    ) -> Result<UnlinkReport, CommandError> {
        let account = self.store.load::<Account>(&account_id.0).await?;
        if !account.state().is_registered() {
            return Err(AccountError::NotRegistered.into());
        }
        let metadata = system.metadata().for_account(&account_id.0);
        let unlinker = Unlinker {
            account_id,
            metadata: &metadata,
            reason: UnlinkReason::HelpDesk,
        };
        self.unlink(&unlinker, Selection::All).await
    }

    /// Plans, carries out, and records a call that ended several links together (one notice).
    async fn unlink(
        &self,
        unlinker: &Unlinker<'_>,
        selection: Selection,
    ) -> Result<UnlinkReport, CommandError> {
        let (device_ids, strict) = match selection {
            Selection::Named(device_ids) => (device_ids, true),
            Selection::All => (self.linked_devices(unlinker.account_id, None).await?, false),
            Selection::LinkedSince(since) => (
                self.linked_devices(unlinker.account_id, Some(since))
                    .await?,
                false,
            ),
        };
        let plan = self
            .plan_portal_unlink(unlinker.account_id, &device_ids, strict)
            .await?;
        let in_bulk = plan
            .iter()
            .filter(|p| matches!(p, Planned::End(..)))
            .count()
            > 1;
        let mut report = self
            .carry_out_portal_unlink(unlinker, plan, in_bulk)
            .await?;
        if in_bulk && !report.unlinked.is_empty() {
            // After the unlinks: a notice never announces an unlink that did not happen.
            let account = self.store.load::<Account>(&unlinker.account_id.0).await?;
            let command = AccountCommand::RecordUnlinkedTogether {
                device_ids: report.unlinked.clone(),
                reason: unlinker.reason,
                at: Utc::now(),
            };
            let recorded = self
                .store
                .execute(account, command, unlinker.metadata)
                .await?;
            report.positions.push(recorded.position);
        }
        report.written = ConsistencyToken::of(&report.positions);
        Ok(report)
    }

    /// The devices linked to `account_id` now (their links made at or after `since`, if given).
    async fn linked_devices(
        &self,
        account_id: &AccountId,
        since: Option<DateTime<Utc>>,
    ) -> Result<Vec<DeviceId>, CommandError> {
        Ok(self
            .credentials
            .links_of(&account_id.0, since)
            .await?
            .into_iter()
            .map(DeviceId)
            .collect())
    }

    /// The check: for each device, the link to end, or nothing left to do. `strict` (devices
    /// the caller named): a device not linked to the account unlinks nothing and is NOT_FOUND;
    /// otherwise (devices found linked a moment ago) it is passed over.
    async fn plan_portal_unlink(
        &self,
        account_id: &AccountId,
        device_ids: &[DeviceId],
        strict: bool,
    ) -> Result<Vec<Planned>, CommandError> {
        let mut plan = Vec::with_capacity(device_ids.len());
        for device_id in device_ids {
            let device = self.store.load::<Device>(&device_id.to_string()).await?;
            match device.state().portal_unlink_target(account_id) {
                Ok(Some(link_id)) => plan.push(Planned::End(*device_id, link_id, device)),
                Ok(None) => plan.push(Planned::AlreadyEnded(*device_id, device.position())),
                Err(_) if !strict => {}
                Err(_) => {
                    return Err(CommandError::NotFound(format!(
                        "no device {device_id} is linked to your account; no device was unlinked"
                    )));
                }
            }
        }
        Ok(plan)
    }

    /// Ends each planned link; a link that ended meanwhile is reported as already ended, or,
    /// if the device was linked again by a new link, as relinked (this call did not end that).
    /// The report's positions are filled in; its `written` token is the caller's to make.
    async fn carry_out_portal_unlink(
        &self,
        unlinker: &Unlinker<'_>,
        plan: Vec<Planned>,
        in_bulk: bool,
    ) -> Result<UnlinkReport, CommandError> {
        let now = Utc::now();
        let mut report = UnlinkReport::default();
        for planned in plan {
            let (device_id, link_id, device) = match planned {
                Planned::End(device_id, link_id, device) => (device_id, link_id, device),
                Planned::AlreadyEnded(device_id, position) => {
                    report.already_unlinked.push(device_id);
                    report.positions.push(position);
                    continue;
                }
            };
            let command = DeviceCommand::UnlinkFromPortal {
                account_id: unlinker.account_id.clone(),
                link_id,
                reason: unlinker.reason,
                in_bulk,
                at: now,
            };
            match self.store.execute(device, command, unlinker.metadata).await {
                Ok(executed) => {
                    report.unlinked.push(device_id);
                    report.positions.push(executed.position);
                }
                // The link ended meanwhile (the device unlinked itself, say).
                Err(CommandError::Device(DeviceError::NotLinkedToAccount)) => {
                    let now_stands = self.store.load::<Device>(&device_id.to_string()).await?;
                    if now_stands.state().link_id().is_some() {
                        report.relinked.push(device_id);
                    } else {
                        report.already_unlinked.push(device_id);
                    }
                    report.positions.push(now_stands.position());
                }
                Err(other) => return Err(other),
            }
            self.credentials.delete_link(link_id.0).await?;
        }
        Ok(report)
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

#[cfg(test)]
mod tests {
    use uuid::Uuid;

    use super::*;
    use crate::app::testing::{self, link, on_device};

    fn new_link() -> LinkAttemptId {
        LinkAttemptId(Uuid::new_v4())
    }

    #[tokio::test]
    async fn the_report_says_exactly_what_the_call_ended() {
        // Arrange: three of anna's devices, each planned for unlinking.
        let (app, _database) = testing::app().await;
        let anna = Citizen::for_tests("anna");
        let [stays, ends_itself, relinked] = [(); 3].map(|()| DeviceId(Uuid::new_v4()));
        let links = [new_link(), new_link(), new_link()];
        for (device, link_id) in [stays, ends_itself, relinked].into_iter().zip(links) {
            on_device(&app, device, link(link_id, "anna")).await;
        }
        let plan = app
            .plan_portal_unlink(anna.account_id(), &[stays, ends_itself, relinked], true)
            .await
            .unwrap_or_else(|e| panic!("{e:?}"));

        // Act: while the call runs, one device unlinks itself, another does and is linked
        // again by a new link; then the call ends what it planned.
        let from_device = |link_id| DeviceCommand::UnlinkFromDevice {
            link_id,
            at: Utc::now(),
        };
        on_device(&app, ends_itself, from_device(links[1])).await;
        on_device(&app, relinked, from_device(links[2])).await;
        let again = new_link();
        on_device(&app, relinked, link(again, "anna")).await;
        let unlinker = Unlinker {
            account_id: anna.account_id(),
            metadata: anna.metadata(),
            reason: UnlinkReason::FromPortal,
        };
        let report = app
            .carry_out_portal_unlink(&unlinker, plan, false)
            .await
            .unwrap_or_else(|e| panic!("{e:?}"));

        // Assert
        assert_eq!(report.unlinked, [stays]);
        assert_eq!(report.already_unlinked, [ends_itself]);
        assert_eq!(report.relinked, [relinked]);
        let relinked_now = app
            .store
            .load::<Device>(&relinked.to_string())
            .await
            .unwrap_or_else(|e| panic!("{e:?}"));
        assert_eq!(
            relinked_now.state().link_id(),
            Some(again),
            "the new link stands"
        );
    }
}
