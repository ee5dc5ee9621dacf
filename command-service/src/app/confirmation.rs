//! The holder's side of a QR link (anti-phishing): the browser that showed the QR code follows
//! it (issued → scanned → confirmed / declined / expired → linked), and the holder confirms the
//! scanning device with the matching code it shows, or declines it. A QR code is only ever
//! shown to, followed and confirmed by the account it was issued to.

use std::net::IpAddr;

use chrono::Utc;
use domain::{
    AccountId, Confirmation, DeclineReason, LinkAttempt, LinkAttemptCommand, LinkAttemptError,
    LinkAttemptId, LinkQr, LinkQrError, QrId, QrProgress,
};
use proto::consistency::ConsistencyToken;

use super::App;
use super::auth::{AccountHolder, Citizen};
use crate::error::CommandError;
use crate::matching::MatchingCode;
use crate::secrets::TokenKind;
use crate::store::{Executed, Loaded};

/// A QR code as the browser that showed it sees it.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct QrView {
    pub(crate) qr_id: QrId,
    pub(crate) progress: QrProgress,
    /// While the holder must confirm: three codes, the device's among them.
    pub(crate) matching_code_choices: Vec<String>,
    /// The browser's address, as the portal reported it.
    pub(crate) browser_address: Option<IpAddr>,
}

impl QrView {
    /// Whether nothing can change any more.
    pub(crate) fn is_final(&self) -> bool {
        self.progress.is_final()
    }
}

/// A confirmation or a decline, done.
#[derive(Debug)]
pub(crate) struct Answered {
    pub(crate) view: QrView,
    pub(crate) written: ConsistencyToken,
}

impl App {
    /// Where one of the holder's QR codes stands now.
    pub(crate) async fn link_qr(
        &self,
        holder: &AccountHolder,
        qr_id: QrId,
    ) -> Result<QrView, CommandError> {
        let qr = self.holders_qr(holder.account_id(), qr_id).await?;
        let attempt = match qr.state().consumed_by() {
            Some(attempt_id) => Some(
                self.store
                    .load::<LinkAttempt>(&attempt_id.to_string())
                    .await?
                    .into_state(),
            ),
            None => None,
        };
        self.view(qr_id, qr.state(), attempt.as_ref())
    }

    /// The holder confirms the scanning device with the matching code it shows. A wrong code
    /// declines the link (one try) and is answered as a refusal, after it is recorded.
    pub(crate) async fn confirm_link(
        &self,
        holder: &Citizen,
        qr_id: QrId,
        typed_code: &str,
    ) -> Result<Answered, CommandError> {
        let (qr, attempt_id, attempt) = self.scanned_qr(holder, qr_id).await?;
        self.ensure_room(holder.account_id()).await?;
        let code = MatchingCode::of(&self.matching_key, attempt_id, qr_id);
        let command = LinkAttemptCommand::Confirm {
            qr_id,
            matching_code_matches: code.is(typed_code),
            at: Utc::now(),
        };
        let executed = self
            .store
            .execute(attempt, command, holder.metadata())
            .await?;
        if let Confirmation::Declined { reason, .. } = executed.state.confirmation() {
            self.end_link_token(attempt_id).await?;
            tracing::warn!(%attempt_id, "wrong matching code: link declined");
            return Err(LinkAttemptError::Declined { reason }.into());
        }
        tracing::info!(%attempt_id, "link confirmed by the holder");
        self.answered(qr_id, &qr, &executed)
    }

    /// The holder declines the scanning device: the attempt dies with its link token.
    pub(crate) async fn decline_link(
        &self,
        holder: &Citizen,
        qr_id: QrId,
    ) -> Result<Answered, CommandError> {
        let (qr, attempt_id, attempt) = self.scanned_qr(holder, qr_id).await?;
        let command = LinkAttemptCommand::Decline {
            qr_id,
            at: Utc::now(),
        };
        let executed = self
            .store
            .execute(attempt, command, holder.metadata())
            .await?;
        if let Confirmation::Declined {
            reason: DeclineReason::ByHolder,
            ..
        } = executed.state.confirmation()
        {
            tracing::warn!(%attempt_id, "link declined by the holder");
        }
        self.end_link_token(attempt_id).await?;
        self.answered(qr_id, &qr, &executed)
    }

    /// The holder's QR code: NOT_FOUND if there is none with this id, PERMISSION_DENIED if it
    /// was issued to another account.
    async fn holders_qr(
        &self,
        account_id: &AccountId,
        qr_id: QrId,
    ) -> Result<Loaded<LinkQr>, CommandError> {
        let span = tracing::Span::current();
        span.record("account_id", tracing::field::display(account_id));
        span.record("qr_id", tracing::field::display(qr_id));
        let qr = self.store.load::<LinkQr>(&qr_id.to_string()).await?;
        match qr.state().account_id() {
            None => Err(CommandError::NotFound(format!(
                "no QR code has the id {qr_id}"
            ))),
            Some(owner) if owner != account_id => Err(CommandError::PermissionDenied(
                "this QR code was issued to another account".into(),
            )),
            Some(_) => Ok(qr),
        }
    }

    /// The holder's QR code and the attempt that scanned it.
    async fn scanned_qr(
        &self,
        holder: &Citizen,
        qr_id: QrId,
    ) -> Result<(LinkQr, LinkAttemptId, Loaded<LinkAttempt>), CommandError> {
        let qr = self
            .holders_qr(holder.account_id(), qr_id)
            .await?
            .into_state();
        let attempt_id = qr.consumed_by().ok_or(LinkQrError::NotScanned)?;
        let attempt = self
            .store
            .load::<LinkAttempt>(&attempt_id.to_string())
            .await?;
        Ok((qr, attempt_id, attempt))
    }

    /// A dead attempt's link token goes at once (the sweeper would take it at expiry).
    async fn end_link_token(&self, attempt_id: LinkAttemptId) -> Result<(), CommandError> {
        self.credentials
            .delete_bearer(TokenKind::LinkAttempt, attempt_id.0)
            .await
    }

    fn answered(
        &self,
        qr_id: QrId,
        qr: &LinkQr,
        executed: &Executed<LinkAttempt>,
    ) -> Result<Answered, CommandError> {
        Ok(Answered {
            view: self.view(qr_id, qr, Some(&executed.state))?,
            written: ConsistencyToken::of([&executed.position]),
        })
    }

    fn view(
        &self,
        qr_id: QrId,
        qr: &LinkQr,
        attempt: Option<&LinkAttempt>,
    ) -> Result<QrView, CommandError> {
        let progress = QrProgress::of(qr, qr_id, attempt, Utc::now())
            .ok_or_else(|| CommandError::NotFound(format!("no QR code has the id {qr_id}")))?;
        let awaiting = matches!(
            progress,
            QrProgress::Scanned {
                confirm_by: Some(_),
                ..
            }
        );
        let matching_code_choices = match (awaiting, qr.consumed_by()) {
            (true, Some(attempt_id)) => {
                MatchingCode::of(&self.matching_key, attempt_id, qr_id).choices()
            }
            _ => Vec::new(),
        };
        Ok(QrView {
            qr_id,
            progress,
            matching_code_choices,
            browser_address: qr.browser_address(),
        })
    }
}
