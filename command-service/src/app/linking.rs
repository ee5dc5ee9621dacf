//! Proving which account a device links to (R2, R3, R4): the portal issues a single-use QR code
//! to a re-authenticated holder; the app starts a link attempt, then scans the QR code or
//! authenticates with a LuxTrust product the account already used to log in.

use std::net::IpAddr;

use chrono::{DateTime, Utc};
use domain::{
    Account, AccountId, Confirmation, Device, DeviceId, DeviceName, LinkAttempt,
    LinkAttemptCommand, LinkAttemptError, LinkMethod, LinkQr, LinkQrCommand, LuxTrustProduct,
    Platform, QrId,
};
use proto::consistency::ConsistencyToken;
use uuid::Uuid;

use super::auth::{AttemptHolder, Citizen};
use super::{App, Call};
use crate::error::CommandError;
use crate::matching::{MatchingCode, account_hint};
use crate::secrets::{self, PresentedToken, TokenKind};
use crate::store::{BearerRow, Metadata, retry_on_conflict};

/// A QR code issued to a browser session (no `Debug`: the payload is a secret).
pub(crate) struct IssuedQr {
    pub(crate) qr_id: QrId,
    /// What the QR code encodes: the token the app sends to `ScanQr`.
    pub(crate) payload: String,
    /// The QR code, as SVG.
    pub(crate) svg: String,
    pub(crate) expires_at: DateTime<Utc>,
    pub(crate) written: ConsistencyToken,
}

/// What the app asks for when it starts linking.
#[derive(Debug)]
pub(crate) struct LinkRequest {
    pub(crate) device_id: DeviceId,
    pub(crate) device_name: DeviceName,
    pub(crate) method: LinkMethod,
    pub(crate) platform: Platform,
    pub(crate) device_model: Option<String>,
    pub(crate) app_version: String,
}

/// A link attempt, started (no `Debug`: the link token is a secret).
pub(crate) struct StartedLink {
    /// The bearer token of the attempt's next steps.
    pub(crate) link_token: String,
    /// What a LuxTrust assertion must carry to count for this attempt.
    pub(crate) luxtrust_nonce: String,
    pub(crate) expires_at: DateTime<Utc>,
    pub(crate) written: ConsistencyToken,
}

/// A QR code, scanned: what the app shows before anything else.
#[derive(Debug)]
pub(crate) struct ScannedQr {
    /// The account the device is about to be linked to, masked.
    pub(crate) account_hint: String,
    /// The code to show, when the holder must confirm.
    pub(crate) matching_code: Option<MatchingCode>,
    /// The confirmation deadline, when the holder must confirm.
    pub(crate) confirm_by: Option<DateTime<Utc>>,
    pub(crate) written: ConsistencyToken,
}

/// An attempt authenticated with LuxTrust.
#[derive(Debug)]
pub(crate) struct LuxTrustAuthenticated {
    /// The account the device is about to be linked to, masked.
    pub(crate) account_hint: String,
    pub(crate) written: ConsistencyToken,
}

/// What a verified LuxTrust assertion says.
#[derive(Debug)]
pub(crate) struct LuxTrustAssertion {
    pub(crate) account_id: AccountId,
    pub(crate) product: LuxTrustProduct,
    pub(crate) nonce: String,
}

impl App {
    /// R3: a single-use QR code for the holder's browser session, which expires.
    pub(crate) async fn issue_link_qr(
        &self,
        holder: &Citizen,
        browser_address: Option<IpAddr>,
    ) -> Result<IssuedQr, CommandError> {
        let span = tracing::Span::current();
        span.record("account_id", tracing::field::display(holder.account_id()));
        let account = self.store.load::<Account>(&holder.account_id().0).await?;
        let now = Utc::now();
        let expires_at = now + self.lifetimes.qr;
        let qr_id = QrId(Uuid::new_v4());
        let command = LinkQrCommand::Issue {
            account_id: holder.account_id().clone(),
            account_registered: account.state().is_registered(),
            at: now,
            expires_at,
            browser_address,
        };
        let qr = self.store.fresh::<LinkQr>(&qr_id.to_string());
        // Refused before a token is stored for it.
        qr.state().decide(command.clone())?;
        span.record("qr_id", tracing::field::display(&qr_id));
        let token = secrets::mint(TokenKind::Qr, qr_id.0);
        let svg = crate::qr::svg(&token.text)
            .map_err(|e| CommandError::Internal(format!("rendering the QR code: {e}")))?;
        let bearer = BearerRow {
            kind: TokenKind::Qr.table_kind(),
            id: qr_id.0,
            hash: token.hash,
            expires_at,
        };
        let executed = self
            .store
            .execute_with_bearer(qr, command, holder.metadata(), &bearer)
            .await?;
        Ok(IssuedQr {
            qr_id,
            payload: token.text,
            svg,
            expires_at,
            written: ConsistencyToken::of([&executed.position]),
        })
    }

    /// R4: the app starts linking a device (R5: one that is not linked).
    pub(crate) async fn start_link(
        &self,
        call: &Call,
        request: LinkRequest,
    ) -> Result<StartedLink, CommandError> {
        let device = self
            .store
            .load::<Device>(&request.device_id.to_string())
            .await?;
        let now = Utc::now();
        let expires_at = now + self.lifetimes.link_attempt;
        let attempt_id = domain::LinkAttemptId(Uuid::new_v4());
        let nonce = secrets::random_nonce();
        let command = LinkAttemptCommand::Start {
            device_id: request.device_id,
            device_name: request.device_name,
            method: request.method,
            platform: request.platform,
            device_model: request.device_model,
            app_version: request.app_version,
            device_already_linked: device.state().linked_account().is_some(),
            nonce: nonce.clone(),
            at: now,
            expires_at,
        };
        let attempt = self.store.fresh::<LinkAttempt>(&attempt_id.to_string());
        // Refused before a token is stored for it.
        attempt.state().decide(command.clone())?;
        tracing::Span::current().record("link_attempt_id", tracing::field::display(attempt_id));
        let token = secrets::mint(TokenKind::LinkAttempt, attempt_id.0);
        let bearer = BearerRow {
            kind: TokenKind::LinkAttempt.table_kind(),
            id: attempt_id.0,
            hash: token.hash,
            expires_at,
        };
        let metadata = Metadata {
            actor: format!("app:{}", request.device_id),
            request_id: call.call_id.clone(),
            account_id: None,
        };
        let executed = self
            .store
            .execute_with_bearer(attempt, command, &metadata, &bearer)
            .await?;
        Ok(StartedLink {
            link_token: token.text,
            luxtrust_nonce: nonce,
            expires_at,
            written: ConsistencyToken::of([&executed.position]),
        })
    }

    /// R3: the app scanned a QR code; it is consumed for this attempt, which now links to the
    /// QR's account once the holder confirms it in the browser (when confirmation is required).
    pub(crate) async fn scan_qr(
        &self,
        holder: AttemptHolder,
        qr_token: PresentedToken,
        client_address: Option<IpAddr>,
    ) -> Result<ScannedQr, CommandError> {
        let attempt_id = holder.attempt_id();
        let qr_id = QrId(qr_token.id);
        let span = tracing::Span::current();
        span.record("link_attempt_id", tracing::field::display(attempt_id));
        span.record("qr_id", tracing::field::display(qr_id));
        let unknown_qr = || CommandError::NotFound("unknown QR code".into());
        let stored = self.credentials.bearer_hash(TokenKind::Qr, qr_id.0).await?;
        if !stored.is_some_and(|hash| qr_token.matches(&hash)) {
            return Err(unknown_qr());
        }
        let qr = self.store.load::<LinkQr>(&qr_id.to_string()).await?;
        let account_id = qr.state().account_id().cloned().ok_or_else(unknown_qr)?;
        let attempt = self
            .store
            .load::<LinkAttempt>(&attempt_id.to_string())
            .await?;
        let device_id = attempt
            .state()
            .device_id()
            .ok_or(LinkAttemptError::NotStarted)?;
        let now = Utc::now();
        // The holder's deadline never outlives the attempt.
        let attempt_ends = attempt.state().expires_at().unwrap_or(now);
        let accept = LinkAttemptCommand::AcceptQr {
            qr_id,
            account_id: account_id.clone(),
            at: now,
            confirm_by: self
                .lifetimes
                .confirmation
                .map(|window| (now + window).min(attempt_ends)),
            client_address,
        };
        // Refuse before consuming the QR code if the attempt cannot use it.
        attempt.state().decide(accept.clone())?;
        // The scanning phone is not yet known to be the holder's: the devices go unnamed.
        match self.ensure_room(&account_id).await {
            Err(CommandError::DeviceLimit { cap, .. }) => {
                return Err(CommandError::DeviceLimitUnnamed { cap });
            }
            other => other?,
        }
        let metadata = holder.metadata().for_account(&account_id.0);
        let consume = LinkQrCommand::Consume {
            attempt_id,
            device_id,
            at: now,
        };
        // Both or neither: a QR code consumed for an attempt that did not accept it would be lost.
        let (consumed, accepted) = self
            .store
            .execute_pair((qr, consume), (attempt, accept), &metadata)
            .await?;
        // Read from the state, so that a retried scan answers as the first one did.
        let confirm_by = match accepted.state.confirmation() {
            Confirmation::NotRequired => None,
            Confirmation::Pending { by } => Some(Some(by)),
            Confirmation::Confirmed { .. } | Confirmation::Declined { .. } => Some(None),
        };
        Ok(ScannedQr {
            account_hint: self.account_hint(&account_id).await?,
            matching_code: confirm_by
                .map(|_| MatchingCode::of(&self.matching_key, attempt_id, qr_id)),
            confirm_by: confirm_by.flatten(),
            written: ConsistencyToken::of([&consumed.position, &accepted.position]),
        })
    }

    /// Refuses early when `account_id` already links as many devices as it may (advisory: the
    /// secret code's claim decides, under a per-account lock).
    pub(crate) async fn ensure_room(&self, account_id: &AccountId) -> Result<(), CommandError> {
        if let Some(full) = self
            .credentials
            .account_full(&account_id.0, self.device_cap)
            .await?
        {
            full.or_device_limit(self.device_cap)?;
        }
        Ok(())
    }

    /// The account as the app may show it ([`account_hint`]).
    async fn account_hint(&self, account_id: &AccountId) -> Result<String, CommandError> {
        let account = self.store.load::<Account>(&account_id.0).await?;
        Ok(account_hint(account.state().email()))
    }

    /// R2: the holder authenticated with a LuxTrust product; it counts if the portal registered
    /// the account and the account has logged in with that product.
    pub(crate) async fn authenticate_with_luxtrust(
        &self,
        holder: AttemptHolder,
        assertion: LuxTrustAssertion,
    ) -> Result<LuxTrustAuthenticated, CommandError> {
        let attempt_id = holder.attempt_id().to_string();
        let metadata = holder.metadata().for_account(&assertion.account_id.0);
        let now = Utc::now();
        self.ensure_room(&assertion.account_id).await?;
        // The decision depends on the account's state as well: decided again on both when the
        // attempt changed meanwhile.
        let executed = retry_on_conflict(|| async {
            let account = self
                .store
                .load::<Account>(&assertion.account_id.0)
                .await?
                .into_state();
            let attempt = self.store.load::<LinkAttempt>(&attempt_id).await?;
            let command = LinkAttemptCommand::AcceptLuxTrust {
                account_id: assertion.account_id.clone(),
                account_registered: account.is_registered(),
                product: assertion.product.clone(),
                product_used_for_login: account.has_logged_in_with(&assertion.product),
                nonce: assertion.nonce.clone(),
                at: now,
            };
            self.store
                .execute_once(attempt, command, &metadata, None)
                .await
        })
        .await?;
        Ok(LuxTrustAuthenticated {
            account_hint: self.account_hint(&assertion.account_id).await?,
            written: ConsistencyToken::of([&executed.position]),
        })
    }
}
