//! A portal account: registered by the portal (R1), remembering which LuxTrust products its holder
//! has used to log in (R2), until its personal data is erased (docs/adr/0025).

use std::collections::BTreeSet;

use chrono::{DateTime, Utc};
use cqrs_es::event_sink::EventSink;
use cqrs_es::{Aggregate, DomainEvent};
use serde::{Deserialize, Serialize};

use crate::{DeviceId, LinkAttemptId, LuxTrustProduct, UnlinkReason};

/// What the portal back end can ask of an account.
#[derive(Debug, Clone, PartialEq)]
pub enum AccountCommand {
    /// Record that the portal registered this account (browser registration).
    Register {
        /// Where confirmation emails go.
        email: String,
        /// Preferred language for emails (`en`, `fr`, `de`).
        language: String,
        /// When the portal registered it.
        at: DateTime<Utc>,
    },
    /// Change the address confirmation emails go to (the portal's account settings).
    ChangeEmail {
        /// The new address.
        email: String,
        /// When.
        at: DateTime<Utc>,
    },
    /// Record that one call unlinked several of the account's devices together (one summary
    /// email instead of one per device).
    RecordUnlinkedTogether {
        /// The devices the call unlinked.
        device_ids: Vec<DeviceId>,
        /// Why.
        reason: UnlinkReason,
        /// When.
        at: DateTime<Utc>,
    },
    /// Record that the holder logged in to the portal, and with which LuxTrust product.
    RecordPortalLogin {
        /// The product used, as the identity provider reported it.
        product: LuxTrustProduct,
        /// When the holder logged in.
        at: DateTime<Utc>,
    },
    /// Erase the account's personal data (its data keys are destroyed with the event). Refused
    /// while a device is linked; nothing on an account already erased.
    Erase {
        /// Devices linked, or being linked, as counted under the account's device-slot lock.
        linked_devices: u32,
        /// The link attempts whose first events are sealed under keys of their own.
        link_attempt_ids: Vec<LinkAttemptId>,
        /// When.
        at: DateTime<Utc>,
    },
}

/// Facts about an account.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum AccountEvent {
    /// The portal registered the account.
    AccountRegistered {
        /// Address for confirmation emails.
        email: String,
        /// Preferred language for emails.
        language: String,
        /// When.
        at: DateTime<Utc>,
    },
    /// The account's email address changed; notices go to both addresses.
    AccountEmailChanged {
        /// The address until now.
        old_email: String,
        /// The address from now on.
        new_email: String,
        /// When.
        at: DateTime<Utc>,
    },
    /// One call unlinked several devices of the account (each has its `DeviceUnlinked`, marked
    /// `in_bulk`); one summary notice goes out for all of them.
    DevicesUnlinkedTogether {
        /// The devices.
        device_ids: Vec<DeviceId>,
        /// Why.
        reason: UnlinkReason,
        /// When.
        at: DateTime<Utc>,
    },
    /// The holder logged in to the portal with a LuxTrust product.
    PortalLoginRecorded {
        /// The product used.
        product: LuxTrustProduct,
        /// When.
        at: DateTime<Utc>,
    },
    /// The account's personal data was erased: its data key, and those of the link attempts
    /// named, were destroyed with this event, so every sealed copy of its email addresses,
    /// device names and models, serials and network addresses is unreadable.
    AccountErased {
        /// The link attempts whose keys were destroyed with the account's.
        link_attempt_ids: Vec<LinkAttemptId>,
        /// When.
        at: DateTime<Utc>,
    },
}

/// Why an account command was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AccountError {
    /// The account is already registered.
    #[error("the account is already registered")]
    AlreadyRegistered,
    /// The account was never registered by the portal.
    #[error("the account is not registered; accounts are created by registering on the portal")]
    NotRegistered,
    /// The account's personal data was erased: nothing more is recorded for it, and its id
    /// cannot be registered again.
    #[error(
        "this account's personal data was erased: nothing more can be recorded for it, and its id \
         cannot be registered again"
    )]
    Erased,
    /// An account with linked devices cannot be erased.
    #[error(
        "{devices} device(s) are still linked to this account, or being linked: unlink them first \
         (PortalService.RevokeAllDevices or UnlinkDevices), then erase"
    )]
    DevicesStillLinked {
        /// How many.
        devices: u32,
    },
}

/// State of one account.
#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
pub struct Account {
    registered: bool,
    email: String,
    language: String,
    products_used: BTreeSet<LuxTrustProduct>,
    #[serde(default)]
    erased: bool,
}

impl Account {
    /// Whether the portal registered this account (R1), and it is not erased.
    pub fn is_registered(&self) -> bool {
        self.registered
    }

    /// Whether the account's personal data was erased.
    pub fn is_erased(&self) -> bool {
        self.erased
    }

    /// The address confirmation emails go to.
    pub fn email(&self) -> &str {
        &self.email
    }

    /// Whether the holder has logged in to the portal with this product at least once (R2).
    pub fn has_logged_in_with(&self, product: &LuxTrustProduct) -> bool {
        self.products_used.contains(product)
    }

    /// Pure decision: current state + command -> events, or a reason to refuse.
    pub fn decide(&self, command: AccountCommand) -> Result<Vec<AccountEvent>, AccountError> {
        if self.erased {
            return match command {
                AccountCommand::Erase { .. } => Ok(vec![]),
                AccountCommand::Register { .. }
                | AccountCommand::ChangeEmail { .. }
                | AccountCommand::RecordUnlinkedTogether { .. }
                | AccountCommand::RecordPortalLogin { .. } => Err(AccountError::Erased),
            };
        }
        match command {
            AccountCommand::Erase {
                linked_devices,
                link_attempt_ids,
                at,
            } => {
                if !self.registered {
                    return Err(AccountError::NotRegistered);
                }
                if linked_devices > 0 {
                    return Err(AccountError::DevicesStillLinked {
                        devices: linked_devices,
                    });
                }
                Ok(vec![AccountEvent::AccountErased {
                    link_attempt_ids,
                    at,
                }])
            }
            AccountCommand::Register {
                email,
                language,
                at,
            } => {
                if self.registered {
                    return Err(AccountError::AlreadyRegistered);
                }
                Ok(vec![AccountEvent::AccountRegistered {
                    email,
                    language,
                    at,
                }])
            }
            AccountCommand::ChangeEmail { email, at } => {
                if !self.registered {
                    return Err(AccountError::NotRegistered);
                }
                if email == self.email {
                    return Ok(vec![]);
                }
                Ok(vec![AccountEvent::AccountEmailChanged {
                    old_email: self.email.clone(),
                    new_email: email,
                    at,
                }])
            }
            AccountCommand::RecordUnlinkedTogether {
                device_ids,
                reason,
                at,
            } => {
                if !self.registered {
                    return Err(AccountError::NotRegistered);
                }
                if device_ids.is_empty() {
                    return Ok(vec![]);
                }
                Ok(vec![AccountEvent::DevicesUnlinkedTogether {
                    device_ids,
                    reason,
                    at,
                }])
            }
            AccountCommand::RecordPortalLogin { product, at } => {
                if !self.registered {
                    return Err(AccountError::NotRegistered);
                }
                Ok(vec![AccountEvent::PortalLoginRecorded { product, at }])
            }
        }
    }
}

impl DomainEvent for AccountEvent {
    fn event_type(&self) -> String {
        match self {
            Self::AccountRegistered { .. } => "AccountRegistered",
            Self::AccountEmailChanged { .. } => "AccountEmailChanged",
            Self::PortalLoginRecorded { .. } => "PortalLoginRecorded",
            Self::DevicesUnlinkedTogether { .. } => "DevicesUnlinkedTogether",
            Self::AccountErased { .. } => "AccountErased",
        }
        .to_owned()
    }

    fn event_version(&self) -> String {
        crate::upcast::current_version(<Account as Aggregate>::TYPE, &self.event_type()).to_string()
    }
}

impl Aggregate for Account {
    const TYPE: &'static str = "account";
    type Command = AccountCommand;
    type Event = AccountEvent;
    type Error = AccountError;
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
            AccountEvent::AccountRegistered {
                email, language, ..
            } => {
                self.registered = true;
                self.email = email;
                self.language = language;
            }
            AccountEvent::AccountEmailChanged { new_email, .. } => self.email = new_email,
            AccountEvent::PortalLoginRecorded { product, .. } => {
                self.products_used.insert(product);
            }
            AccountEvent::DevicesUnlinkedTogether { .. } => {}
            AccountEvent::AccountErased { .. } => {
                self.erased = true;
                self.registered = false;
                self.email.clear();
                self.language.clear();
                self.products_used.clear();
            }
        }
    }
}

#[cfg(test)]
mod tests;
