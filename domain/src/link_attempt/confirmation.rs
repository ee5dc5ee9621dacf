//! The holder's confirmation of a QR link (anti-phishing): after a device scans the QR code, the
//! citizen who showed it confirms in the browser, typing the matching code the app shows, or
//! declines. Without a confirmation before the deadline the attempt dies (decline by default).

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::QrId;

/// Where the holder's confirmation of a link attempt stands.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Confirmation {
    /// None is asked for: the LuxTrust method, a QR link with confirmation turned off, or an
    /// attempt recorded before confirmations existed.
    #[default]
    NotRequired,
    /// The holder must confirm before `by`; at `by` the attempt dies.
    Pending {
        /// The deadline.
        by: DateTime<Utc>,
    },
    /// The holder confirmed with the right matching code.
    Confirmed {
        /// When.
        at: DateTime<Utc>,
    },
    /// The holder declined, or typed a wrong matching code; the attempt is dead.
    Declined {
        /// Why.
        reason: DeclineReason,
        /// When.
        at: DateTime<Utc>,
    },
}

/// Why a link was declined.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum DeclineReason {
    /// The holder said it was not their device.
    ByHolder,
    /// The matching code typed in the browser was not the one the device showed (one try).
    WrongMatchingCode,
}

impl std::fmt::Display for DeclineReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::ByHolder => "the account holder declined this link in the browser",
            Self::WrongMatchingCode => {
                "a wrong matching code was entered in the browser, which declines the link"
            }
        })
    }
}

impl Confirmation {
    /// Whether the holder's confirmation lets the link go ahead at `at`.
    pub(super) fn allows_link_at(self, at: DateTime<Utc>) -> Result<(), super::LinkAttemptError> {
        use super::LinkAttemptError as E;
        match self {
            Self::NotRequired | Self::Confirmed { .. } => Ok(()),
            Self::Pending { by } if at >= by => Err(E::ConfirmationExpired { expired_at: by }),
            Self::Pending { .. } => Err(E::AwaitingConfirmation),
            Self::Declined { reason, .. } => Err(E::Declined { reason }),
        }
    }
}

impl super::LinkAttempt {
    /// The holder confirms with a matching code: the right one confirms; a wrong one declines
    /// the link (one try). Confirming again with the right code changes nothing.
    pub(super) fn confirm(
        &self,
        qr_id: QrId,
        matching_code_matches: bool,
        at: DateTime<Utc>,
    ) -> Result<Vec<super::LinkAttemptEvent>, super::LinkAttemptError> {
        use super::{LinkAttemptError as E, LinkAttemptEvent as Event};
        let request = self.request.as_ref().ok_or(E::NotStarted)?;
        self.accepted(qr_id)?;
        match self.confirmation {
            Confirmation::NotRequired => Err(E::NothingToConfirm),
            Confirmation::Declined { reason, .. } => Err(E::Declined { reason }),
            Confirmation::Confirmed { .. } if matching_code_matches => Ok(vec![]),
            Confirmation::Confirmed { .. } => Err(E::AlreadyConfirmed),
            Confirmation::Pending { by } => {
                let deadline = by.min(request.expires_at);
                if at >= deadline {
                    return Err(E::ConfirmationExpired {
                        expired_at: deadline,
                    });
                }
                Ok(vec![if matching_code_matches {
                    Event::LinkConfirmed { at }
                } else {
                    Event::LinkDeclined {
                        reason: DeclineReason::WrongMatchingCode,
                        at,
                    }
                }])
            }
        }
    }

    /// The holder declines: possible while the confirmation is pending. Once confirmed, the
    /// device is on its way to being linked and is unlinked like any other (declining then
    /// would race the link). Declining a link that is declined already, or dead of old age,
    /// changes nothing.
    pub(super) fn decline(
        &self,
        qr_id: QrId,
        at: DateTime<Utc>,
    ) -> Result<Vec<super::LinkAttemptEvent>, super::LinkAttemptError> {
        use super::{LinkAttemptError as E, LinkAttemptEvent as Event};
        let request = self.request.as_ref().ok_or(E::NotStarted)?;
        self.accepted(qr_id)?;
        if self.completed_at.is_some() {
            return Err(E::AlreadyCompleted);
        }
        if at >= request.expires_at {
            return Ok(vec![]);
        }
        match self.confirmation {
            Confirmation::NotRequired => Err(E::NothingToConfirm),
            Confirmation::Confirmed { .. } => Err(E::AlreadyConfirmed),
            Confirmation::Declined { .. } => Ok(vec![]),
            Confirmation::Pending { by } if at >= by => Ok(vec![]),
            Confirmation::Pending { .. } => Ok(vec![Event::LinkDeclined {
                reason: DeclineReason::ByHolder,
                at,
            }]),
        }
    }

    /// Checks that `qr_id` is the QR code this attempt accepted: the holder answers only for
    /// the scan of their own code.
    fn accepted(&self, qr_id: QrId) -> Result<(), super::LinkAttemptError> {
        match self.qr_id {
            Some(accepted) if accepted == qr_id => Ok(()),
            Some(_) => Err(super::LinkAttemptError::ScannedAnotherQr),
            None => Err(super::LinkAttemptError::ScanNotRecorded),
        }
    }
}
