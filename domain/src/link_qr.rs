//! One QR code shown in a logged-in browser session (R3): it links exactly one device, once, and
//! expires. The token the QR carries never enters the domain; the service keeps only its hash.

use std::net::IpAddr;

use chrono::{DateTime, Utc};
use cqrs_es::event_sink::EventSink;
use cqrs_es::{Aggregate, DomainEvent};
use serde::{Deserialize, Serialize};

use crate::{AccountId, DeviceId, LinkAttemptId};

/// What can be asked of a QR code.
#[derive(Debug, Clone, PartialEq)]
pub enum LinkQrCommand {
    /// Issue the QR to the logged-in (and recently re-authenticated) holder of `account_id`.
    Issue {
        /// The account the QR links to.
        account_id: AccountId,
        /// Whether the portal registered that account (R1): only a registered account gets a QR.
        account_registered: bool,
        /// When it was issued.
        at: DateTime<Utc>,
        /// From this instant on, it is refused.
        expires_at: DateTime<Utc>,
        /// The browser's network address, as the portal reported it.
        browser_address: Option<IpAddr>,
    },
    /// A device scanned the QR during its link attempt `attempt_id`.
    Consume {
        /// The link attempt that scanned it.
        attempt_id: LinkAttemptId,
        /// The device running that attempt.
        device_id: DeviceId,
        /// When it was scanned.
        at: DateTime<Utc>,
    },
}

/// Facts about a QR code.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum LinkQrEvent {
    /// A QR was issued to a browser session of `account_id`.
    QrIssued {
        /// The account it links to.
        account_id: AccountId,
        /// When.
        at: DateTime<Utc>,
        /// When it stops being accepted.
        expires_at: DateTime<Utc>,
        /// The browser's network address, as the portal reported it.
        #[serde(default)]
        browser_address: Option<IpAddr>,
    },
    /// The QR was used by a link attempt; it can never be used again.
    QrConsumed {
        /// The link attempt that used it.
        attempt_id: LinkAttemptId,
        /// The device running that attempt.
        device_id: DeviceId,
        /// When.
        at: DateTime<Utc>,
    },
}

/// Why a QR command was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LinkQrError {
    /// R1: the account asking for a QR was never registered by the portal.
    #[error("the account is not registered; accounts are created by registering on the portal")]
    AccountNotRegistered,
    /// The QR id is already taken (ids must be fresh).
    #[error("this QR code was already issued")]
    AlreadyIssued,
    /// No QR with this id was ever issued.
    #[error("unknown QR code")]
    NotIssued,
    /// Another device already used this QR (R3).
    #[error(
        "this QR code has already been used to link a device; generate a new QR code in the portal"
    )]
    QrAlreadyConsumed,
    /// Nothing scanned the QR code yet, so there is nothing to confirm or decline.
    #[error("no device has scanned this QR code yet: there is nothing to confirm or decline")]
    NotScanned,
    /// The QR is past its expiry (R3).
    #[error("this QR code expired at {expired_at}; generate a new QR code in the portal")]
    QrExpired {
        /// When it expired.
        expired_at: DateTime<Utc>,
    },
}

/// State of one QR code.
#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
pub struct LinkQr {
    account_id: Option<AccountId>,
    issued_at: Option<DateTime<Utc>>,
    expires_at: Option<DateTime<Utc>>,
    browser_address: Option<IpAddr>,
    consumed_by: Option<LinkAttemptId>,
}

impl LinkQr {
    /// The account the QR links to, once issued.
    pub fn account_id(&self) -> Option<&AccountId> {
        self.account_id.as_ref()
    }

    /// When it was issued.
    pub fn issued_at(&self) -> Option<DateTime<Utc>> {
        self.issued_at
    }

    /// When it stops being accepted, once issued.
    pub fn expires_at(&self) -> Option<DateTime<Utc>> {
        self.expires_at
    }

    /// The browser's network address, as the portal reported it at issue.
    pub fn browser_address(&self) -> Option<IpAddr> {
        self.browser_address
    }

    /// The link attempt that scanned it, if any.
    pub fn consumed_by(&self) -> Option<LinkAttemptId> {
        self.consumed_by
    }

    /// Pure decision: current state + command -> events, or a reason to refuse.
    pub fn decide(&self, command: LinkQrCommand) -> Result<Vec<LinkQrEvent>, LinkQrError> {
        match command {
            LinkQrCommand::Issue {
                account_id,
                account_registered,
                at,
                expires_at,
                browser_address,
            } => {
                if !account_registered {
                    return Err(LinkQrError::AccountNotRegistered);
                }
                if self.account_id.is_some() {
                    return Err(LinkQrError::AlreadyIssued);
                }
                Ok(vec![LinkQrEvent::QrIssued {
                    account_id,
                    at,
                    expires_at,
                    browser_address,
                }])
            }
            LinkQrCommand::Consume {
                attempt_id,
                device_id,
                at,
            } => {
                let Some(expires_at) = self.expires_at else {
                    return Err(LinkQrError::NotIssued);
                };
                match self.consumed_by {
                    // The same attempt asking again (a retried call) changes nothing.
                    Some(by) if by == attempt_id => return Ok(vec![]),
                    Some(_) => return Err(LinkQrError::QrAlreadyConsumed),
                    None => {}
                }
                if at >= expires_at {
                    return Err(LinkQrError::QrExpired {
                        expired_at: expires_at,
                    });
                }
                Ok(vec![LinkQrEvent::QrConsumed {
                    attempt_id,
                    device_id,
                    at,
                }])
            }
        }
    }
}

impl DomainEvent for LinkQrEvent {
    fn event_type(&self) -> String {
        match self {
            Self::QrIssued { .. } => "QrIssued",
            Self::QrConsumed { .. } => "QrConsumed",
        }
        .to_owned()
    }

    fn event_version(&self) -> String {
        crate::upcast::current_version(<LinkQr as Aggregate>::TYPE, &self.event_type()).to_string()
    }
}

impl Aggregate for LinkQr {
    const TYPE: &'static str = "link_qr";
    type Command = LinkQrCommand;
    type Event = LinkQrEvent;
    type Error = LinkQrError;
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
            LinkQrEvent::QrIssued {
                account_id,
                at,
                expires_at,
                browser_address,
            } => {
                self.account_id = Some(account_id);
                self.issued_at = Some(at);
                self.expires_at = Some(expires_at);
                self.browser_address = browser_address;
            }
            LinkQrEvent::QrConsumed { attempt_id, .. } => self.consumed_by = Some(attempt_id),
        }
    }
}

mod progress;
#[cfg(test)]
mod tests;

pub use progress::QrProgress;
