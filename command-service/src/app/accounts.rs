//! Accounts, as the portal back end reports them (R1, R2): registration, a new email address,
//! and the LuxTrust products used to log in.

use chrono::Utc;
use domain::{Account, AccountCommand, AccountId, LuxTrustProduct};
use proto::consistency::ConsistencyToken;

use super::App;
use super::auth::System;
use crate::error::CommandError;

/// A new account, as the portal registered it.
#[derive(Debug)]
pub(crate) struct Registration {
    pub(crate) account_id: AccountId,
    pub(crate) email: String,
    /// `en`, `fr` or `de`.
    pub(crate) language: String,
}

impl App {
    /// R1: the portal registered an account (the app never can).
    pub(crate) async fn register_account(
        &self,
        by: &System,
        registration: Registration,
    ) -> Result<ConsistencyToken, CommandError> {
        let command = AccountCommand::Register {
            email: registration.email,
            language: registration.language,
            at: Utc::now(),
        };
        self.account_command(by, &registration.account_id, command)
            .await
    }

    /// The holder's email address changed on the portal.
    pub(crate) async fn change_account_email(
        &self,
        by: &System,
        account_id: &AccountId,
        email: String,
    ) -> Result<ConsistencyToken, CommandError> {
        let command = AccountCommand::ChangeEmail {
            email,
            at: Utc::now(),
        };
        self.account_command(by, account_id, command).await
    }

    /// R2: the holder logged in to the portal with a LuxTrust product, which can now link a
    /// device.
    pub(crate) async fn record_portal_login(
        &self,
        by: &System,
        account_id: &AccountId,
        product: LuxTrustProduct,
    ) -> Result<ConsistencyToken, CommandError> {
        let command = AccountCommand::RecordPortalLogin {
            product,
            at: Utc::now(),
        };
        self.account_command(by, account_id, command).await
    }

    /// Erases the account's personal data (docs/adr/0025); `true` if it had been erased before.
    pub(crate) async fn erase_account(
        &self,
        by: &System,
        account_id: &AccountId,
    ) -> Result<(bool, ConsistencyToken), CommandError> {
        let metadata = by.metadata().for_account(&account_id.0);
        let erasure = self.store.erase_account(&account_id.0, &metadata).await?;
        Ok((
            erasure.already_erased,
            ConsistencyToken::of([&erasure.position]),
        ))
    }

    async fn account_command(
        &self,
        by: &System,
        account_id: &AccountId,
        command: AccountCommand,
    ) -> Result<ConsistencyToken, CommandError> {
        let account = self.store.load::<Account>(&account_id.0).await?;
        let metadata = by.metadata().for_account(&account_id.0);
        let executed = self.store.execute(account, command, &metadata).await?;
        Ok(ConsistencyToken::of([&executed.position]))
    }
}
