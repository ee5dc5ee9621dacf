//! Where a QR code stands, as the browser that showed it follows it: issued → scanned →
//! confirmed / declined / expired → linked. Computed from the QR code, the link attempt that
//! scanned it and the time: deadlines pass without an event.

use chrono::{DateTime, Utc};

use super::LinkQr;
use crate::{Confirmation, DeclineReason, LinkAttempt, QrId, ScannedBy};

/// The stage a QR code is at.
#[derive(Debug, Clone, PartialEq)]
pub enum QrProgress {
    /// Shown, not scanned yet.
    Issued {
        /// When it was issued.
        issued_at: DateTime<Utc>,
        /// When it stops being accepted.
        expires_at: DateTime<Utc>,
    },
    /// A device scanned it and the scan is being recorded on its link attempt (a moment, or
    /// until the app retries a scan that a crash cut short). Nothing to confirm yet.
    Scanning {
        /// The device.
        by: ScannedBy,
    },
    /// A device scanned it. With `confirm_by`, the holder must confirm (or decline) before that
    /// instant; without, no confirmation is asked and the device may set its secret code.
    Scanned {
        /// The device.
        by: ScannedBy,
        /// The confirmation deadline, if one is asked for.
        confirm_by: Option<DateTime<Utc>>,
    },
    /// The holder confirmed; the device may set its secret code until `link_by`.
    Confirmed {
        /// The device.
        by: ScannedBy,
        /// When the holder confirmed.
        at: DateTime<Utc>,
        /// When the link attempt expires.
        link_by: DateTime<Utc>,
    },
    /// The holder declined, or typed a wrong matching code. Final.
    Declined {
        /// The device.
        by: ScannedBy,
        /// Why.
        reason: DeclineReason,
        /// When.
        at: DateTime<Utc>,
    },
    /// Nobody scanned it in time, the holder did not confirm in time, or the device did not
    /// set its secret code in time. Final.
    Expired {
        /// The device, if one scanned it.
        by: Option<ScannedBy>,
        /// The deadline that passed.
        at: DateTime<Utc>,
    },
    /// The device that consumed it went on with another QR code it scanned at the same moment;
    /// this one is used up. Final.
    Void {
        /// The device.
        by: ScannedBy,
    },
    /// The device is linked. Final.
    Linked {
        /// The device.
        by: ScannedBy,
        /// When.
        at: DateTime<Utc>,
    },
}

impl QrProgress {
    /// Whether nothing can change any more.
    pub fn is_final(&self) -> bool {
        matches!(
            self,
            Self::Declined { .. } | Self::Expired { .. } | Self::Void { .. } | Self::Linked { .. }
        )
    }

    /// Where `qr` (whose id is `qr_id`) stands at `now`, given the attempt that consumed it
    /// (`None` if that attempt is not known yet). `None` if no QR code was issued.
    pub fn of(
        qr: &LinkQr,
        qr_id: QrId,
        attempt: Option<&LinkAttempt>,
        now: DateTime<Utc>,
    ) -> Option<Self> {
        let expires_at = qr.expires_at()?;
        let issued_at = qr.issued_at()?;
        let scanned = qr.consumed_by().zip(attempt);
        let Some((_, attempt)) = scanned else {
            return Some(if now >= expires_at {
                Self::Expired {
                    by: None,
                    at: expires_at,
                }
            } else {
                Self::Issued {
                    issued_at,
                    expires_at,
                }
            });
        };
        let by = attempt.scanned_by()?;
        let link_by = attempt.expires_at()?;
        match attempt.qr_id() {
            Some(accepted) if accepted != qr_id => return Some(Self::Void { by }),
            Some(_) => {}
            None if now >= link_by => {
                return Some(Self::Expired {
                    by: Some(by),
                    at: link_by,
                });
            }
            None => return Some(Self::Scanning { by }),
        }
        if let Some(at) = attempt.completed_at() {
            return Some(Self::Linked { by, at });
        }
        Some(match attempt.confirmation() {
            Confirmation::Declined { reason, at } => Self::Declined { by, reason, at },
            _ if now >= link_by => Self::Expired {
                by: Some(by),
                at: link_by,
            },
            Confirmation::Pending { by: deadline } if now >= deadline => Self::Expired {
                by: Some(by),
                at: deadline,
            },
            Confirmation::Pending { by: deadline } => Self::Scanned {
                by,
                confirm_by: Some(deadline.min(link_by)),
            },
            Confirmation::Confirmed { at } => Self::Confirmed { by, at, link_by },
            Confirmation::NotRequired => Self::Scanned {
                by,
                confirm_by: None,
            },
        })
    }
}
