//! Devices unused for too long (issue 13): warned, then unlinked with reason `Inactive`. "Used"
//! is a right secret code or a biometrics change (`device_credentials.used_at`, moved at most once
//! per [`super::Lifetimes::use_record_every`]: a table update, not an event). The scheduler
//! ([`crate::lifecycle`]) calls [`App::expire_if_unused`] for every link unused long enough to be
//! warned; the device's stream decides, so a second scheduler, or a second round, changes
//! nothing more.

use chrono::{DateTime, Utc};
use domain::{Device, DeviceCommand, DeviceId, LinkAttemptId};
use uuid::Uuid;

use super::App;
use crate::error::CommandError;
use crate::store::Metadata;

/// A live link whose device has not been used since `used_at`.
#[derive(Debug, Clone, sqlx::FromRow)]
pub(crate) struct UnusedLink {
    pub(crate) link_id: Uuid,
    pub(crate) device_id: Uuid,
    pub(crate) account_id: String,
    pub(crate) used_at: DateTime<Utc>,
}

/// What one look at an unused link did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Expiry {
    /// Nothing (warned already, or the link changed).
    Nothing,
    /// The holder was warned.
    Warned,
    /// The device was unlinked.
    Unlinked,
}

/// The inactivity policy.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Inactivity {
    /// Unused this long, a device is unlinked.
    pub(crate) after: chrono::Duration,
    /// The warning comes this long before (at least).
    pub(crate) warning: chrono::Duration,
}

impl App {
    /// Warns about `unused`, or unlinks it if it was warned about this very period of non-use
    /// and its time has come.
    pub(crate) async fn expire_if_unused(
        &self,
        unused: &UnusedLink,
        policy: Inactivity,
    ) -> Result<Expiry, CommandError> {
        let now = Utc::now();
        let link_id = LinkAttemptId(unused.link_id);
        let device = self
            .store
            .load::<Device>(&DeviceId(unused.device_id).to_string())
            .await?;
        if device.state().link_id() != Some(link_id) {
            return Ok(Expiry::Nothing);
        }
        let metadata = Metadata {
            actor: "system:inactivity".into(),
            request_id: format!("inactivity-{}", Uuid::new_v4()),
            account_id: Some(unused.account_id.clone()),
        };
        let (command, outcome) = match device.state().inactivity_warning() {
            Some((warned_for, unlink_at)) if warned_for == unused.used_at && now >= unlink_at => (
                DeviceCommand::UnlinkInactive {
                    link_id,
                    last_used_at: unused.used_at,
                    at: now,
                },
                Expiry::Unlinked,
            ),
            Some((warned_for, _)) if warned_for >= unused.used_at => return Ok(Expiry::Nothing),
            Some(_) | None => (
                DeviceCommand::WarnInactive {
                    link_id,
                    last_used_at: unused.used_at,
                    // Never sooner than the warning promises, even after a scheduler outage.
                    unlink_at: (unused.used_at + policy.after).max(now + policy.warning),
                    at: now,
                },
                Expiry::Warned,
            ),
        };
        self.store.execute(device, command, &metadata).await?;
        if outcome == Expiry::Unlinked {
            self.credentials.delete_link(unused.link_id).await?;
            tracing::info!(device_id = %unused.device_id, "unused device unlinked");
        }
        Ok(outcome)
    }
}
