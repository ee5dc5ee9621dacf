//! One run of the app's linking flow (R4): device name and method, then authentication by QR scan
//! or LuxTrust, then the secret code. The attempt ends when the device is linked.

use chrono::{DateTime, Utc};
use cqrs_es::event_sink::EventSink;
use cqrs_es::{Aggregate, DomainEvent};
use serde::{Deserialize, Serialize};

use std::net::IpAddr;

use crate::{AccountId, DeviceId, DeviceName, LinkMethod, LuxTrustProduct, Platform, QrId};

mod confirmation;

pub use confirmation::{Confirmation, DeclineReason};

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
        /// The device's model, if the app sent it (shown to the holder; attacker-chosen text).
        device_model: Option<String>,
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
        /// The deadline for the holder's confirmation; `None` when none is required.
        confirm_by: Option<DateTime<Utc>>,
        /// The network address the scan came from, as linkd saw it.
        client_address: Option<IpAddr>,
    },
    /// The holder, in the browser, confirmed the scanned device with the matching code it shows.
    Confirm {
        /// The QR code the holder answers for (it must be the one the attempt accepted).
        qr_id: QrId,
        /// Whether the matching code typed matches the one the device shows (one try).
        matching_code_matches: bool,
        /// When.
        at: DateTime<Utc>,
    },
    /// The holder, in the browser, declined the scanned device.
    Decline {
        /// The QR code the holder answers for (it must be the one the attempt accepted).
        qr_id: QrId,
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
        /// Whether the service requires the holder's confirmation of QR links now.
        qr_confirmation_required: bool,
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
        /// The device's model, if the app sent it.
        #[serde(default)]
        device_model: Option<String>,
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
        /// The holder must confirm before this instant (`None`: no confirmation required, as for
        /// every attempt recorded before confirmations existed).
        #[serde(default)]
        confirm_by: Option<DateTime<Utc>>,
        /// The network address the scan came from, as linkd saw it.
        #[serde(default)]
        client_address: Option<IpAddr>,
    },
    /// The holder confirmed the scanned device in the browser, with the right matching code.
    LinkConfirmed {
        /// When.
        at: DateTime<Utc>,
    },
    /// The holder declined the scanned device, or typed a wrong matching code: the attempt is
    /// dead and its QR code used up.
    LinkDeclined {
        /// Why.
        reason: DeclineReason,
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
    /// The QR link waits for the holder's confirmation in the browser.
    #[error(
        "the account holder has not confirmed this link yet: they must confirm it in the browser, \
         with the matching code this app shows; then set the secret code"
    )]
    AwaitingConfirmation,
    /// The holder did not confirm in time.
    #[error(
        "the account holder did not confirm this link in the browser before {expired_at}; scan a new QR code"
    )]
    ConfirmationExpired {
        /// The deadline that passed.
        expired_at: DateTime<Utc>,
    },
    /// The holder declined (or typed a wrong matching code).
    #[error("{reason}; linking this device needs a new QR code")]
    Declined {
        /// Why.
        reason: DeclineReason,
    },
    /// The attempt has no confirmation to give or take (LuxTrust, or confirmation off).
    #[error("this link attempt does not wait for a confirmation")]
    NothingToConfirm,
    /// The holder answers for a QR code that this attempt consumed but did not accept: the
    /// device linked through another QR code scanned at the same moment.
    #[error(
        "the device that scanned this QR code is linking through another QR code; this one is \
         used up: issue a new QR code"
    )]
    ScannedAnotherQr,
    /// The attempt's acceptance of the QR code is not recorded yet (the scan is in flight).
    #[error("the device's scan of this QR code is still being recorded; retry in a moment")]
    ScanNotRecorded,
    /// A QR link accepted without asking the holder (before confirmations were required, or by
    /// an instance with confirmation off), while the service requires it now.
    #[error(
        "this QR link was scanned without asking the account holder to confirm it, which is now \
         required; scan a new QR code"
    )]
    UnconfirmedScan,
    /// Confirmed already: it can no longer be declined, nor confirmed with another code.
    #[error(
        "this link is already confirmed: it can no longer be declined or confirmed with another \
         code; once the device is linked, unlink it from the list of devices"
    )]
    AlreadyConfirmed,
}

/// State of one link attempt.
#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
pub struct LinkAttempt {
    request: Option<Requested>,
    account_id: Option<AccountId>,
    qr_id: Option<QrId>,
    product: Option<LuxTrustProduct>,
    scan: Option<Scan>,
    confirmation: Confirmation,
    completed_at: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Requested {
    device_id: DeviceId,
    device_name: DeviceName,
    method: LinkMethod,
    platform: Platform,
    device_model: Option<String>,
    app_version: String,
    nonce: String,
    expires_at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Scan {
    at: DateTime<Utc>,
    client_address: Option<IpAddr>,
}

/// The device that scanned a QR code, as the holder sees it before confirming.
#[derive(Debug, Clone, PartialEq)]
pub struct ScannedBy {
    /// The device.
    pub device_id: DeviceId,
    /// The name given to it in the app (attacker-chosen text when the scan is a phish).
    pub device_name: DeviceName,
    /// Operating system.
    pub platform: Platform,
    /// Model, if the app sent it.
    pub device_model: Option<String>,
    /// App version.
    pub app_version: String,
    /// When it scanned (`None` while the scan is not recorded on the attempt yet).
    pub scanned_at: Option<DateTime<Utc>>,
    /// The network address the scan came from, as linkd saw it.
    pub client_address: Option<IpAddr>,
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
    /// The account this attempt links to, once it knows it (a scanned QR code, or LuxTrust).
    pub fn account_id(&self) -> Option<&AccountId> {
        self.account_id.as_ref()
    }

    /// The device this attempt links, once started.
    pub fn device_id(&self) -> Option<DeviceId> {
        self.request.as_ref().map(|r| r.device_id)
    }

    /// Checks that the attempt can link its device at `at` (authenticated — a QR link confirmed
    /// by the holder, required if `qr_confirmation_required` even of an attempt whose scan asked
    /// for none —, not expired, not completed) and returns what the link needs.
    pub fn ready_to_link(
        &self,
        at: DateTime<Utc>,
        qr_confirmation_required: bool,
    ) -> Result<ReadyToLink, LinkAttemptError> {
        let request = self.open_at(at)?;
        let Some(account_id) = self.account_id.clone() else {
            return Err(LinkAttemptError::NotAuthenticated);
        };
        self.confirmation.allows_link_at(at)?;
        let unconfirmed_qr =
            request.method == LinkMethod::Qr && self.confirmation == Confirmation::NotRequired;
        if qr_confirmation_required && unconfirmed_qr {
            return Err(LinkAttemptError::UnconfirmedScan);
        }
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

    /// Where the holder's confirmation stands.
    pub fn confirmation(&self) -> Confirmation {
        self.confirmation
    }

    /// The QR code this attempt scanned, if any.
    pub fn qr_id(&self) -> Option<QrId> {
        self.qr_id
    }

    /// When the attempt linked its device, if it did.
    pub fn completed_at(&self) -> Option<DateTime<Utc>> {
        self.completed_at
    }

    /// When the attempt stops being usable, once started.
    pub fn expires_at(&self) -> Option<DateTime<Utc>> {
        self.request.as_ref().map(|r| r.expires_at)
    }

    /// The device running the attempt, as the holder sees it.
    pub fn scanned_by(&self) -> Option<ScannedBy> {
        let request = self.request.as_ref()?;
        Some(ScannedBy {
            device_id: request.device_id,
            device_name: request.device_name.clone(),
            platform: request.platform,
            device_model: request.device_model.clone(),
            app_version: request.app_version.clone(),
            scanned_at: self.scan.as_ref().map(|scan| scan.at),
            client_address: self.scan.as_ref().and_then(|scan| scan.client_address),
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
        if self.completed_at.is_some() {
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
                device_model,
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
                    device_model,
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
                confirm_by,
                client_address,
            } => {
                // The same QR accepted again (a retried call) changes nothing.
                if self.qr_id == Some(qr_id) && self.completed_at.is_none() {
                    return Ok(vec![]);
                }
                self.open_for_authentication(LinkMethod::Qr, at)?;
                Ok(vec![LinkAttemptEvent::QrAccepted {
                    qr_id,
                    account_id,
                    at,
                    confirm_by,
                    client_address,
                }])
            }
            LinkAttemptCommand::Confirm {
                qr_id,
                matching_code_matches,
                at,
            } => self.confirm(qr_id, matching_code_matches, at),
            LinkAttemptCommand::Decline { qr_id, at } => self.decline(qr_id, at),
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
            LinkAttemptCommand::Complete {
                at,
                qr_confirmation_required,
            } => {
                self.ready_to_link(at, qr_confirmation_required)?;
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
            Self::LinkConfirmed { .. } => "LinkConfirmed",
            Self::LinkDeclined { .. } => "LinkDeclined",
            Self::LinkCompleted { .. } => "LinkCompleted",
        }
        .to_owned()
    }

    fn event_version(&self) -> String {
        crate::upcast::current_version(<LinkAttempt as Aggregate>::TYPE, &self.event_type())
            .to_string()
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
                device_model,
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
                    device_model,
                    app_version,
                    nonce,
                    expires_at,
                });
            }
            LinkAttemptEvent::QrAccepted {
                qr_id,
                account_id,
                at,
                confirm_by,
                client_address,
            } => {
                self.qr_id = Some(qr_id);
                self.account_id = Some(account_id);
                self.scan = Some(Scan { at, client_address });
                self.confirmation =
                    confirm_by.map_or(Confirmation::NotRequired, |by| Confirmation::Pending { by });
            }
            LinkAttemptEvent::LinkConfirmed { at } => {
                self.confirmation = Confirmation::Confirmed { at };
            }
            LinkAttemptEvent::LinkDeclined { reason, at } => {
                self.confirmation = Confirmation::Declined { reason, at };
            }
            LinkAttemptEvent::LuxTrustAuthenticated {
                account_id,
                product,
                ..
            } => {
                self.account_id = Some(account_id);
                self.product = Some(product);
            }
            LinkAttemptEvent::LinkCompleted { at } => self.completed_at = Some(at),
        }
    }
}

#[cfg(test)]
mod tests;
