//! One app installation (R5, R8): linked to at most one account at a time; unlinked from the
//! portal, from itself, or after too many consecutive wrong secret codes.
//!
//! The secret code itself never reaches the domain: the service checks it against the stored
//! verifier and reports only whether it matched.

use chrono::{DateTime, Utc};
use cqrs_es::event_sink::EventSink;
use cqrs_es::{Aggregate, DomainEvent};
use serde::{Deserialize, Serialize};

use crate::{
    AccountId, DeviceName, LinkAttemptId, LinkMethod, LuxTrustProduct, Platform, UnlinkReason,
};

/// Consecutive wrong secret codes after which the device is unlinked (reason: locked out).
pub const MAX_SECRET_CODE_FAILURES: u32 = 5;

/// What can be asked of a device.
#[derive(Debug, Clone, PartialEq)]
pub enum DeviceCommand {
    /// Link the device to `account_id`; the link is identified by the attempt that made it.
    Link {
        /// The link attempt that completed (identifies this link).
        link_id: LinkAttemptId,
        /// The account.
        account_id: AccountId,
        /// The device's name.
        device_name: DeviceName,
        /// How the account was proven.
        method: LinkMethod,
        /// The LuxTrust product, for the LuxTrust method.
        product: Option<LuxTrustProduct>,
        /// Operating system.
        platform: Platform,
        /// App version.
        app_version: String,
        /// When the secret code was set (the device counts as linked from then on).
        at: DateTime<Utc>,
    },
    /// Turn biometric unlocking on or off (skipping is choosing off the first time).
    SetBiometrics {
        /// The link the caller's credential belongs to.
        link_id: LinkAttemptId,
        /// On or off.
        enabled: bool,
        /// When.
        at: DateTime<Utc>,
    },
    /// The result of checking a secret code the app submitted.
    RecordSecretCodeCheck {
        /// The link the caller's credential belongs to.
        link_id: LinkAttemptId,
        /// Whether the code matched the stored verifier.
        matches: bool,
        /// When.
        at: DateTime<Utc>,
    },
    /// Warn that the device, unused since `last_used_at`, will be unlinked at `unlink_at`.
    WarnInactive {
        /// The link the warning is about.
        link_id: LinkAttemptId,
        /// The device's last use, as recorded.
        last_used_at: DateTime<Utc>,
        /// When it will be unlinked unless used.
        unlink_at: DateTime<Utc>,
        /// When.
        at: DateTime<Utc>,
    },
    /// Unlink the device, warned and still unused since `last_used_at`.
    UnlinkInactive {
        /// The link to end.
        link_id: LinkAttemptId,
        /// The device's last use, as recorded (the one the warning was about).
        last_used_at: DateTime<Utc>,
        /// When.
        at: DateTime<Utc>,
    },
    /// The app on the device unlinks itself.
    UnlinkFromDevice {
        /// The link the caller's credential belongs to.
        link_id: LinkAttemptId,
        /// When.
        at: DateTime<Utc>,
    },
    /// The account holder unlinks the device from the portal (or the help desk, for them).
    UnlinkFromPortal {
        /// The (re-authenticated) account asking.
        account_id: AccountId,
        /// The link the holder saw and chose to end (a newer link is not ended by mistake).
        link_id: LinkAttemptId,
        /// `FromPortal`, or `HelpDesk`.
        reason: UnlinkReason,
        /// Whether the same call unlinks other devices too (one summary notice for all).
        in_bulk: bool,
        /// When.
        at: DateTime<Utc>,
    },
}

/// Facts about a device.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum DeviceEvent {
    /// The device was linked to an account (its secret code is set).
    DeviceLinked {
        /// The link's identity (the attempt that made it).
        link_id: LinkAttemptId,
        /// The account.
        account_id: AccountId,
        /// The device's name.
        device_name: DeviceName,
        /// How the account was proven.
        method: LinkMethod,
        /// The LuxTrust product, for the LuxTrust method.
        product: Option<LuxTrustProduct>,
        /// Operating system.
        platform: Platform,
        /// App version.
        app_version: String,
        /// When.
        at: DateTime<Utc>,
    },
    /// Biometric unlocking was turned on.
    BiometricsEnabled {
        /// When.
        at: DateTime<Utc>,
    },
    /// The holder skipped biometrics while linking.
    BiometricsSkipped {
        /// When.
        at: DateTime<Utc>,
    },
    /// Biometric unlocking was turned off after having been on.
    BiometricsDisabled {
        /// When.
        at: DateTime<Utc>,
    },
    /// A correct secret code was entered; the failure count starts again from zero.
    SecretCodeVerified {
        /// When.
        at: DateTime<Utc>,
    },
    /// A wrong secret code was entered.
    SecretCodeFailed {
        /// Wrong codes in a row, this one included.
        consecutive_failures: u32,
        /// Wrong codes the device still takes before it is unlinked (0: this one unlinks it).
        /// Added in version 2; version 1 is upcast (`crate::upcast`).
        attempts_left: u32,
        /// When.
        at: DateTime<Utc>,
    },
    /// The holder was warned that the unused device will be unlinked at `unlink_at`.
    InactivityWarned {
        /// The link concerned.
        link_id: LinkAttemptId,
        /// The last use the warning counts from.
        last_used_at: DateTime<Utc>,
        /// When it will be unlinked unless used.
        unlink_at: DateTime<Utc>,
        /// When.
        at: DateTime<Utc>,
    },
    /// The device is no longer linked; its credential is revoked.
    DeviceUnlinked {
        /// The link that ended.
        link_id: LinkAttemptId,
        /// The account it was linked to.
        account_id: AccountId,
        /// Why.
        reason: UnlinkReason,
        /// When.
        at: DateTime<Utc>,
        /// One of several devices one call unlinked together (`DevicesUnlinkedTogether` on the
        /// account carries the one notice for all).
        #[serde(default)]
        in_bulk: bool,
    },
}

/// Why a device command was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DeviceError {
    /// R5: the device is linked to an account already (which one is not disclosed).
    #[error("this device is already linked to an account; unlink it first")]
    DeviceAlreadyLinked,
    /// The caller's credential belongs to a link that has ended.
    #[error("the device credential is no longer valid: the device was unlinked")]
    CredentialRevoked,
    /// The device is not linked to the account asking (or not linked at all).
    #[error("no device with this id is linked to your account")]
    NotLinkedToAccount,
    /// The device was used since its warning, or was never warned, or its time is not up.
    #[error("this device is not due to be unlinked for inactivity")]
    NotDueForInactivity,
}

/// State of one device.
#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
pub struct Device {
    link: Option<CurrentLink>,
    /// The account of the link that ended last, if any.
    unlinked_from: Option<AccountId>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct CurrentLink {
    link_id: LinkAttemptId,
    account_id: AccountId,
    linked_at: DateTime<Utc>,
    biometrics: Option<bool>,
    consecutive_failures: u32,
    /// The last warning of inactivity: the last use it counted from, and when it unlinks.
    #[serde(default)]
    warned: Option<(DateTime<Utc>, DateTime<Utc>)>,
}

impl Device {
    /// The account the device is linked to, if any.
    pub fn linked_account(&self) -> Option<&AccountId> {
        self.link.as_ref().map(|link| &link.account_id)
    }

    /// The account of the current link, or else of the link that ended last: whose data the
    /// device's events are.
    pub fn owner(&self) -> Option<&AccountId> {
        self.linked_account().or(self.unlinked_from.as_ref())
    }

    /// The current link's identity, if linked.
    pub fn link_id(&self) -> Option<LinkAttemptId> {
        self.link.as_ref().map(|link| link.link_id)
    }

    /// Whether the device is not linked and its last link, now ended, was to `account_id`
    /// (so a repeated unlink from that account has nothing left to do).
    pub fn was_unlinked_from(&self, account_id: &AccountId) -> bool {
        self.link.is_none() && self.unlinked_from.as_ref() == Some(account_id)
    }

    /// When the current link was made, if linked.
    pub fn linked_at(&self) -> Option<DateTime<Utc>> {
        self.link.as_ref().map(|link| link.linked_at)
    }

    /// Wrong secret codes in a row so far.
    pub fn consecutive_failures(&self) -> u32 {
        self.link
            .as_ref()
            .map_or(0, |link| link.consecutive_failures)
    }

    /// The account of link `link_id`, if that is the device's current link: a credential issued
    /// for a link that has ended is refused.
    pub fn account_of_link(&self, link_id: LinkAttemptId) -> Result<&AccountId, DeviceError> {
        self.current(link_id).map(|link| &link.account_id)
    }

    /// The link the holder of `account_id` would end by unlinking the device from the portal:
    /// `Some(link)` while it is linked to that account, `None` if that account's link has
    /// already ended (a repeated unlink has nothing left to do), refused otherwise.
    pub fn portal_unlink_target(
        &self,
        account_id: &AccountId,
    ) -> Result<Option<LinkAttemptId>, DeviceError> {
        match &self.link {
            Some(link) if link.account_id == *account_id => Ok(Some(link.link_id)),
            Some(_) | None if self.was_unlinked_from(account_id) => Ok(None),
            Some(_) | None => Err(DeviceError::NotLinkedToAccount),
        }
    }

    /// Wrong secret codes the current link may still take before it is locked out (0 when the
    /// device is not linked).
    pub fn secret_code_attempts_left(&self) -> u32 {
        self.link.as_ref().map_or(0, |link| {
            MAX_SECRET_CODE_FAILURES.saturating_sub(link.consecutive_failures)
        })
    }

    fn current(&self, link_id: LinkAttemptId) -> Result<&CurrentLink, DeviceError> {
        match &self.link {
            Some(link) if link.link_id == link_id => Ok(link),
            Some(_) | None => Err(DeviceError::CredentialRevoked),
        }
    }

    /// Pure decision: current state + command -> events, or a reason to refuse.
    pub fn decide(&self, command: DeviceCommand) -> Result<Vec<DeviceEvent>, DeviceError> {
        match command {
            DeviceCommand::Link {
                link_id,
                account_id,
                device_name,
                method,
                product,
                platform,
                app_version,
                at,
            } => match &self.link {
                // A retried completion of the same link changes nothing.
                Some(link) if link.link_id == link_id => Ok(vec![]),
                Some(_) => Err(DeviceError::DeviceAlreadyLinked),
                None => Ok(vec![DeviceEvent::DeviceLinked {
                    link_id,
                    account_id,
                    device_name,
                    method,
                    product,
                    platform,
                    app_version,
                    at,
                }]),
            },
            DeviceCommand::SetBiometrics {
                link_id,
                enabled,
                at,
            } => {
                let link = self.current(link_id)?;
                Ok(match (link.biometrics, enabled) {
                    (Some(current), wanted) if current == wanted => vec![],
                    (_, true) => vec![DeviceEvent::BiometricsEnabled { at }],
                    (None, false) => vec![DeviceEvent::BiometricsSkipped { at }],
                    (Some(_), false) => vec![DeviceEvent::BiometricsDisabled { at }],
                })
            }
            DeviceCommand::RecordSecretCodeCheck {
                link_id,
                matches,
                at,
            } => {
                let link = self.current(link_id)?;
                if matches {
                    return Ok(vec![DeviceEvent::SecretCodeVerified { at }]);
                }
                let consecutive_failures = link.consecutive_failures + 1;
                let mut events = vec![DeviceEvent::SecretCodeFailed {
                    consecutive_failures,
                    attempts_left: MAX_SECRET_CODE_FAILURES.saturating_sub(consecutive_failures),
                    at,
                }];
                if consecutive_failures >= MAX_SECRET_CODE_FAILURES {
                    events.push(DeviceEvent::DeviceUnlinked {
                        link_id,
                        account_id: link.account_id.clone(),
                        reason: UnlinkReason::LockedOut,
                        at,
                        in_bulk: false,
                    });
                }
                Ok(events)
            }
            DeviceCommand::WarnInactive {
                link_id,
                last_used_at,
                unlink_at,
                at,
            } => self.warn_inactive(link_id, last_used_at, unlink_at, at),
            DeviceCommand::UnlinkInactive {
                link_id,
                last_used_at,
                at,
            } => self.unlink_inactive(link_id, last_used_at, at),
            DeviceCommand::UnlinkFromDevice { link_id, at } => {
                let link = self.current(link_id)?;
                Ok(vec![DeviceEvent::DeviceUnlinked {
                    link_id,
                    account_id: link.account_id.clone(),
                    reason: UnlinkReason::FromDevice,
                    at,
                    in_bulk: false,
                }])
            }
            DeviceCommand::UnlinkFromPortal {
                account_id,
                link_id,
                reason,
                in_bulk,
                at,
            } => match &self.link {
                Some(link) if link.account_id == account_id && link.link_id == link_id => {
                    Ok(vec![DeviceEvent::DeviceUnlinked {
                        link_id: link.link_id,
                        account_id,
                        reason,
                        at,
                        in_bulk,
                    }])
                }
                Some(_) | None => Err(DeviceError::NotLinkedToAccount),
            },
        }
    }
}

impl DomainEvent for DeviceEvent {
    fn event_type(&self) -> String {
        match self {
            Self::DeviceLinked { .. } => "DeviceLinked",
            Self::InactivityWarned { .. } => "InactivityWarned",
            Self::BiometricsEnabled { .. } => "BiometricsEnabled",
            Self::BiometricsSkipped { .. } => "BiometricsSkipped",
            Self::BiometricsDisabled { .. } => "BiometricsDisabled",
            Self::SecretCodeVerified { .. } => "SecretCodeVerified",
            Self::SecretCodeFailed { .. } => "SecretCodeFailed",
            Self::DeviceUnlinked { .. } => "DeviceUnlinked",
        }
        .to_owned()
    }

    fn event_version(&self) -> String {
        crate::upcast::current_version(<Device as Aggregate>::TYPE, &self.event_type()).to_string()
    }
}

impl Aggregate for Device {
    const TYPE: &'static str = "device";
    type Command = DeviceCommand;
    type Event = DeviceEvent;
    type Error = DeviceError;
    type Services = ();

    async fn handle(
        &mut self,
        command: Self::Command,
        _services: &Self::Services,
        sink: &EventSink<Self>,
    ) -> Result<(), Self::Error> {
        for event in self.decide(command)? {
            sink.write(event, self).await;
        }
        Ok(())
    }

    fn apply(&mut self, event: Self::Event) {
        match event {
            DeviceEvent::DeviceLinked {
                link_id,
                account_id,
                at,
                ..
            } => {
                self.link = Some(CurrentLink {
                    link_id,
                    account_id,
                    linked_at: at,
                    biometrics: None,
                    consecutive_failures: 0,
                    warned: None,
                });
            }
            DeviceEvent::InactivityWarned {
                last_used_at,
                unlink_at,
                ..
            } => {
                if let Some(link) = &mut self.link {
                    link.warned = Some((last_used_at, unlink_at));
                }
            }
            DeviceEvent::BiometricsEnabled { .. } => self.set_biometrics(true),
            DeviceEvent::BiometricsSkipped { .. } | DeviceEvent::BiometricsDisabled { .. } => {
                self.set_biometrics(false);
            }
            DeviceEvent::SecretCodeVerified { .. } => {
                if let Some(link) = &mut self.link {
                    link.consecutive_failures = 0;
                }
            }
            DeviceEvent::SecretCodeFailed {
                consecutive_failures,
                ..
            } => {
                if let Some(link) = &mut self.link {
                    link.consecutive_failures = consecutive_failures;
                }
            }
            DeviceEvent::DeviceUnlinked { account_id, .. } => {
                self.link = None;
                self.unlinked_from = Some(account_id);
            }
        }
    }
}

impl Device {
    fn set_biometrics(&mut self, enabled: bool) {
        if let Some(link) = &mut self.link {
            link.biometrics = Some(enabled);
        }
    }
}

mod inactivity;
#[cfg(test)]
mod tests;
