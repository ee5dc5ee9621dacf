//! One run of the app's linking flow (R4): device name and method, then authentication by QR scan
//! or LuxTrust, then the secret code. The attempt ends when the device is linked.

use chrono::{DateTime, Utc};
use cqrs_es::event_sink::EventSink;
use cqrs_es::{Aggregate, DomainEvent};
use serde::{Deserialize, Serialize};

use crate::{AccountId, DeviceId, DeviceName, LinkMethod, LuxTrustProduct, Platform, QrId};

/// What the app can ask of its link attempt.
#[derive(Debug, Clone, PartialEq)]
pub enum LinkAttemptCommand {
    /// Start linking `device_id` under `device_name` with `method`.
    Start {
        /// The app installation being linked.
        device_id: DeviceId,
        /// The name the holder gave the device.
        device_name: DeviceName,
        /// QR or LuxTrust.
        method: LinkMethod,
        /// The device's operating system.
        platform: Platform,
        /// The app's version string.
        app_version: String,
        /// Whether the device is linked to an account already (R5: it must be unlinked first).
        device_already_linked: bool,
        /// The value a LuxTrust assertion must carry to count for this attempt.
        nonce: String,
        /// When the attempt started.
        at: DateTime<Utc>,
        /// When the attempt stops being usable.
        expires_at: DateTime<Utc>,
    },
    /// The device scanned QR `qr_id`, which was consumed for this attempt and links to `account_id`.
    AcceptQr {
        /// The QR consumed.
        qr_id: QrId,
        /// The account the QR was issued to.
        account_id: AccountId,
        /// When.
        at: DateTime<Utc>,
    },
    /// The holder authenticated with a LuxTrust product (already verified signature).
    AcceptLuxTrust {
        /// The account named by the assertion.
        account_id: AccountId,
        /// Whether the portal registered that account (R1).
        account_registered: bool,
        /// The product named by the assertion.
        product: LuxTrustProduct,
        /// Whether the account has ever logged in to the portal with that product (R2).
        product_used_for_login: bool,
        /// The nonce the assertion carries.
        nonce: String,
        /// When.
        at: DateTime<Utc>,
    },
    /// The device was linked with this attempt; nothing more can be done with it.
    Complete {
        /// When.
        at: DateTime<Utc>,
    },
}

/// Facts about a link attempt.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum LinkAttemptEvent {
    /// The app started linking a device.
    LinkRequested {
        /// The app installation.
        device_id: DeviceId,
        /// Its name.
        device_name: DeviceName,
        /// QR or LuxTrust.
        method: LinkMethod,
        /// Operating system.
        platform: Platform,
        /// App version.
        app_version: String,
        /// What a LuxTrust assertion must carry.
        nonce: String,
        /// When.
        at: DateTime<Utc>,
        /// When it expires.
        expires_at: DateTime<Utc>,
    },
    /// The attempt scanned a valid QR and now links to `account_id`.
    QrAccepted {
        /// The QR.
        qr_id: QrId,
        /// The account.
        account_id: AccountId,
        /// When.
        at: DateTime<Utc>,
    },
    /// The holder authenticated with a LuxTrust product the account had used to log in.
    LuxTrustAuthenticated {
        /// The account.
        account_id: AccountId,
        /// The product.
        product: LuxTrustProduct,
        /// When.
        at: DateTime<Utc>,
    },
    /// The device was linked; the attempt is over.
    LinkCompleted {
        /// When.
        at: DateTime<Utc>,
    },
}

/// Why a link-attempt command was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LinkAttemptError {
    /// The attempt id is already taken.
    #[error("this link attempt was already started")]
    AlreadyStarted,
    /// R5: the device is linked to an account already (which one is not disclosed).
    #[error("this device is already linked to an account; unlink it first")]
    DeviceAlreadyLinked,
    /// R1: the LuxTrust assertion names an account the portal never registered.
    #[error(
        "the LuxTrust assertion names an account that is not registered on the portal; register in the browser first"
    )]
    AccountNotRegistered,
    /// No attempt with this id.
    #[error("unknown link attempt; start again with StartLink")]
    NotStarted,
    /// The attempt ran out of time.
    #[error("this link attempt expired at {expired_at}; start again with StartLink")]
    Expired {
        /// When it expired.
        expired_at: DateTime<Utc>,
    },
    /// The step does not belong to the method chosen at the start.
    #[error("this link attempt uses the {chosen:?} method")]
    WrongMethod {
        /// The method chosen at the start.
        chosen: LinkMethod,
    },
    /// The attempt is already authenticated.
    #[error("this link attempt is already authenticated")]
    AlreadyAuthenticated,
    /// The LuxTrust assertion was made for another attempt.
    #[error("the LuxTrust assertion does not carry this link attempt's nonce")]
    NonceMismatch,
    /// R2: the product was never used to log in to the portal.
    #[error(
        "this LuxTrust product has never been used to log in to the portal; log in once with it in the browser, or link with a QR code"
    )]
    ProductNeverUsedForLogin,
    /// The secret code comes after authentication (R4).
    #[error("authenticate first (scan the QR code or use LuxTrust), then set the secret code")]
    NotAuthenticated,
    /// The attempt already linked its device.
    #[error("this link attempt has already linked its device")]
    AlreadyCompleted,
}

/// State of one link attempt.
#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
pub struct LinkAttempt {
    request: Option<Requested>,
    account_id: Option<AccountId>,
    qr_id: Option<QrId>,
    product: Option<LuxTrustProduct>,
    completed: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Requested {
    device_id: DeviceId,
    device_name: DeviceName,
    method: LinkMethod,
    platform: Platform,
    app_version: String,
    nonce: String,
    expires_at: DateTime<Utc>,
}

/// Everything the device's link needs, once the attempt is authenticated.
#[derive(Debug, Clone, PartialEq)]
pub struct ReadyToLink {
    /// The device.
    pub device_id: DeviceId,
    /// The account it links to.
    pub account_id: AccountId,
    /// Its name.
    pub device_name: DeviceName,
    /// How it was authenticated.
    pub method: LinkMethod,
    /// The LuxTrust product used, for the LuxTrust method.
    pub product: Option<LuxTrustProduct>,
    /// Operating system.
    pub platform: Platform,
    /// App version.
    pub app_version: String,
}

impl LinkAttempt {
    /// The device this attempt links, once started.
    pub fn device_id(&self) -> Option<DeviceId> {
        self.request.as_ref().map(|r| r.device_id)
    }

    /// Checks that the attempt can link its device at `at` (authenticated, not expired, not
    /// completed) and returns what the link needs.
    pub fn ready_to_link(&self, at: DateTime<Utc>) -> Result<ReadyToLink, LinkAttemptError> {
        let request = self.open_at(at)?;
        let Some(account_id) = self.account_id.clone() else {
            return Err(LinkAttemptError::NotAuthenticated);
        };
        Ok(ReadyToLink {
            device_id: request.device_id,
            account_id,
            device_name: request.device_name.clone(),
            method: request.method,
            product: self.product.clone(),
            platform: request.platform,
            app_version: request.app_version.clone(),
        })
    }

    /// Checks the method chosen at the start (for steps that only make sense with one method).
    pub fn expect_method(&self, method: LinkMethod) -> Result<(), LinkAttemptError> {
        let request = self.request.as_ref().ok_or(LinkAttemptError::NotStarted)?;
        if request.method != method {
            return Err(LinkAttemptError::WrongMethod {
                chosen: request.method,
            });
        }
        Ok(())
    }

    fn open_at(&self, at: DateTime<Utc>) -> Result<&Requested, LinkAttemptError> {
        let request = self.request.as_ref().ok_or(LinkAttemptError::NotStarted)?;
        if self.completed {
            return Err(LinkAttemptError::AlreadyCompleted);
        }
        if at >= request.expires_at {
            return Err(LinkAttemptError::Expired {
                expired_at: request.expires_at,
            });
        }
        Ok(request)
    }

    fn open_for_authentication(
        &self,
        method: LinkMethod,
        at: DateTime<Utc>,
    ) -> Result<&Requested, LinkAttemptError> {
        let request = self.open_at(at)?;
        self.expect_method(method)?;
        if self.account_id.is_some() {
            return Err(LinkAttemptError::AlreadyAuthenticated);
        }
        Ok(request)
    }

    /// Pure decision: current state + command -> events, or a reason to refuse.
    pub fn decide(
        &self,
        command: LinkAttemptCommand,
    ) -> Result<Vec<LinkAttemptEvent>, LinkAttemptError> {
        match command {
            LinkAttemptCommand::Start {
                device_id,
                device_name,
                method,
                platform,
                app_version,
                device_already_linked,
                nonce,
                at,
                expires_at,
            } => {
                if self.request.is_some() {
                    return Err(LinkAttemptError::AlreadyStarted);
                }
                if device_already_linked {
                    return Err(LinkAttemptError::DeviceAlreadyLinked);
                }
                Ok(vec![LinkAttemptEvent::LinkRequested {
                    device_id,
                    device_name,
                    method,
                    platform,
                    app_version,
                    nonce,
                    at,
                    expires_at,
                }])
            }
            LinkAttemptCommand::AcceptQr {
                qr_id,
                account_id,
                at,
            } => {
                // The same QR accepted again (a retried call) changes nothing.
                if self.qr_id == Some(qr_id) && !self.completed {
                    return Ok(vec![]);
                }
                self.open_for_authentication(LinkMethod::Qr, at)?;
                Ok(vec![LinkAttemptEvent::QrAccepted {
                    qr_id,
                    account_id,
                    at,
                }])
            }
            LinkAttemptCommand::AcceptLuxTrust {
                account_id,
                account_registered,
                product,
                product_used_for_login,
                nonce,
                at,
            } => {
                if !account_registered {
                    return Err(LinkAttemptError::AccountNotRegistered);
                }
                let request = self.open_for_authentication(LinkMethod::LuxTrust, at)?;
                if request.nonce != nonce {
                    return Err(LinkAttemptError::NonceMismatch);
                }
                if !product_used_for_login {
                    return Err(LinkAttemptError::ProductNeverUsedForLogin);
                }
                Ok(vec![LinkAttemptEvent::LuxTrustAuthenticated {
                    account_id,
                    product,
                    at,
                }])
            }
            LinkAttemptCommand::Complete { at } => {
                self.ready_to_link(at)?;
                Ok(vec![LinkAttemptEvent::LinkCompleted { at }])
            }
        }
    }
}

impl DomainEvent for LinkAttemptEvent {
    fn event_type(&self) -> String {
        match self {
            Self::LinkRequested { .. } => "LinkRequested",
            Self::QrAccepted { .. } => "QrAccepted",
            Self::LuxTrustAuthenticated { .. } => "LuxTrustAuthenticated",
            Self::LinkCompleted { .. } => "LinkCompleted",
        }
        .to_owned()
    }

    fn event_version(&self) -> String {
        "1".to_owned()
    }
}

impl Aggregate for LinkAttempt {
    const TYPE: &'static str = "link_attempt";
    type Command = LinkAttemptCommand;
    type Event = LinkAttemptEvent;
    type Error = LinkAttemptError;
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
            LinkAttemptEvent::LinkRequested {
                device_id,
                device_name,
                method,
                platform,
                app_version,
                nonce,
                expires_at,
                ..
            } => {
                self.request = Some(Requested {
                    device_id,
                    device_name,
                    method,
                    platform,
                    app_version,
                    nonce,
                    expires_at,
                });
            }
            LinkAttemptEvent::QrAccepted {
                qr_id, account_id, ..
            } => {
                self.qr_id = Some(qr_id);
                self.account_id = Some(account_id);
            }
            LinkAttemptEvent::LuxTrustAuthenticated {
                account_id,
                product,
                ..
            } => {
                self.account_id = Some(account_id);
                self.product = Some(product);
            }
            LinkAttemptEvent::LinkCompleted { .. } => self.completed = true,
        }
    }
}

#[cfg(test)]
mod tests;
