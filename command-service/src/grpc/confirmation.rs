//! `PortalService` for the holder's side of a QR link: GetLinkQr, WatchLinkQr, ConfirmLink and
//! DeclineLink (translators, and the watch's polling loop).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use domain::{AccountId, QrProgress, ScannedBy};
use proto::convert::timestamp;
use proto::v1::{
    ConfirmLinkRequest, ConfirmLinkResponse, DeclineLinkRequest, DeclineLinkResponse,
    GetLinkQrRequest, LinkQrStage, LinkQrState, ScannedDevice, WatchLinkQrRequest,
};
use tokio::sync::{OwnedSemaphorePermit, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tonic::Status;

use super::Api;
use crate::app::auth::AccountHolder;
use crate::app::confirmation::QrView;
use crate::app::{App, Call};
use crate::error::CommandError;
use crate::status::{exhausted, to_status};
use crate::validate;

/// How often an open watch reads the QR code's state again.
const WATCH_POLL: Duration = Duration::from_millis(500);
/// The most watches one account may have open on one instance (a portal tab follows one QR
/// code; a few tabs or a reload are normal, two hundred are not).
const WATCHES_PER_ACCOUNT: usize = 3;

/// The open watches of one instance: at most `LINKD_MAX_QR_WATCHES` in all, and
/// [`WATCHES_PER_ACCOUNT`] per account, so that no one account takes every place.
#[derive(Debug, Clone)]
pub(crate) struct Watches {
    all: Arc<tokio::sync::Semaphore>,
    per_account: Arc<Mutex<HashMap<AccountId, usize>>>,
}

impl Watches {
    /// Room for `max` watches.
    pub(crate) fn new(max: usize) -> Self {
        Self {
            all: Arc::new(tokio::sync::Semaphore::new(max)),
            per_account: Arc::new(Mutex::new(HashMap::new())),
        }
    }

    /// A place for one more watch of `account`, or `RESOURCE_EXHAUSTED`.
    fn take(&self, account: &AccountId) -> Result<WatchPlace, Status> {
        let mut counts = self
            .per_account
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let count = counts.entry(account.clone()).or_insert(0);
        if *count >= WATCHES_PER_ACCOUNT {
            return Err(exhausted(
                format!(
                    "this account already follows {WATCHES_PER_ACCOUNT} QR codes on this \
                     service; close one, or poll GetLinkQr"
                ),
                Duration::from_secs(5),
            ));
        }
        let permit = Arc::clone(&self.all).try_acquire_owned().map_err(|_| {
            exhausted(
                "this service already follows as many QR codes as it may \
                 (LINKD_MAX_QR_WATCHES); poll GetLinkQr instead, or retry in a few seconds",
                Duration::from_secs(5),
            )
        })?;
        *count += 1;
        Ok(WatchPlace {
            account: account.clone(),
            per_account: Arc::clone(&self.per_account),
            _permit: permit,
        })
    }
}

/// One open watch's place; given back when the watch ends.
struct WatchPlace {
    account: AccountId,
    per_account: Arc<Mutex<HashMap<AccountId, usize>>>,
    _permit: OwnedSemaphorePermit,
}

impl Drop for WatchPlace {
    fn drop(&mut self) {
        let mut counts = self
            .per_account
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(count) = counts.get_mut(&self.account) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                counts.remove(&self.account);
            }
        }
    }
}

/// The stream WatchLinkQr answers with.
pub(crate) type WatchStream = ReceiverStream<Result<LinkQrState, Status>>;

#[tracing::instrument(skip_all, fields(account_id, qr_id), err(level = "info"))]
pub(super) async fn get_link_qr(
    app: &App,
    call: &Call,
    body: &GetLinkQrRequest,
) -> Result<LinkQrState, CommandError> {
    let qr_id = validate::qr_id(&body.qr_id)?;
    let holder = app.account_holder(call)?;
    Ok(state(&app.link_qr(&holder, qr_id).await?))
}

#[tracing::instrument(skip_all, fields(account_id, qr_id), err(level = "info"))]
pub(super) async fn confirm_link(
    app: &App,
    call: &Call,
    body: &ConfirmLinkRequest,
) -> Result<ConfirmLinkResponse, CommandError> {
    let qr_id = validate::qr_id(&body.qr_id)?;
    let typed = validate::matching_code(&body.matching_code)?;
    let holder = app.reauthenticated_citizen(call)?;
    let answered = app.confirm_link(&holder, qr_id, typed).await?;
    Ok(ConfirmLinkResponse {
        state: Some(state(&answered.view)),
        consistency_token: answered.written.to_string(),
    })
}

#[tracing::instrument(skip_all, fields(account_id, qr_id), err(level = "info"))]
pub(super) async fn decline_link(
    app: &App,
    call: &Call,
    body: &DeclineLinkRequest,
) -> Result<DeclineLinkResponse, CommandError> {
    let qr_id = validate::qr_id(&body.qr_id)?;
    let holder = app.reauthenticated_citizen(call)?;
    let answered = app.decline_link(&holder, qr_id).await?;
    Ok(DeclineLinkResponse {
        state: Some(state(&answered.view)),
        consistency_token: answered.written.to_string(),
    })
}

impl Api {
    /// WatchLinkQr: the checks and the first state before the stream is answered (so that a
    /// refusal is a status, not a stream error), then a task that follows the QR code until a
    /// final state or until the client goes, holding one of the service's watch permits.
    pub(super) async fn open_qr_watch(
        &self,
        call: &Call,
        body: &WatchLinkQrRequest,
    ) -> Result<WatchStream, Status> {
        let qr_id = validate::qr_id(&body.qr_id).map_err(to_status)?;
        let holder = self.app.account_holder(call).map_err(to_status)?;
        let place = self.qr_watches.take(holder.account_id())?;
        let first = self.app.link_qr(&holder, qr_id).await.map_err(to_status)?;
        let (sender, receiver) = mpsc::channel(4);
        let watch = Watch {
            app: Arc::clone(&self.app),
            holder,
            sender,
            stopping: self.stopping.clone(),
            _place: place,
        };
        tokio::spawn(watch.follow(first));
        Ok(ReceiverStream::new(receiver))
    }
}

/// One open watch.
struct Watch {
    app: Arc<App>,
    holder: AccountHolder,
    sender: mpsc::Sender<Result<LinkQrState, Status>>,
    stopping: tokio::sync::watch::Receiver<bool>,
    _place: WatchPlace,
}

impl Watch {
    /// Sends `first`, then every change, until a final state was sent, the client is gone, or
    /// the service shuts down.
    async fn follow(mut self, first: QrView) {
        let qr_id = first.qr_id;
        let mut last = first;
        if self.sender.send(Ok(state(&last))).await.is_err() {
            return;
        }
        while !last.is_final() {
            tokio::select! {
                () = tokio::time::sleep(WATCH_POLL) => {}
                () = self.sender.closed() => return,
                () = stopped(&mut self.stopping) => {
                    // Never waits: a client that does not read must not hold up the drain.
                    let _ = self.sender.try_send(Err(Status::unavailable(
                        "the service is shutting down; open the watch again",
                    )));
                    return;
                }
            }
            match self.app.link_qr(&self.holder, qr_id).await {
                Ok(view) if view == last => {}
                Ok(view) => {
                    if self.sender.send(Ok(state(&view))).await.is_err() {
                        return;
                    }
                    last = view;
                }
                Err(error) => {
                    // The client may open a new watch; the stream says why this one ended.
                    let _ = self.sender.send(Err(to_status(error))).await;
                    return;
                }
            }
        }
    }
}

/// Returns once the service shuts down (or never, if the sender is gone without saying so).
async fn stopped(stopping: &mut tokio::sync::watch::Receiver<bool>) {
    if stopping.wait_for(|stopping| *stopping).await.is_err() {
        std::future::pending::<()>().await;
    }
}

/// A QR code's state, as the API describes it.
fn state(view: &QrView) -> LinkQrState {
    let mut state = LinkQrState {
        qr_id: view.qr_id.to_string(),
        browser_address: view
            .browser_address
            .map(|a| a.to_string())
            .unwrap_or_default(),
        ..LinkQrState::default()
    };
    let (stage, since, by) = match &view.progress {
        QrProgress::Issued {
            issued_at,
            expires_at,
        } => {
            state.expires_at = Some(timestamp(*expires_at));
            (LinkQrStage::Issued, Some(*issued_at), None)
        }
        QrProgress::Scanned { by, confirm_by } => {
            state.confirm_by = confirm_by.map(timestamp);
            state
                .matching_code_choices
                .clone_from(&view.matching_code_choices);
            (LinkQrStage::Scanned, by.scanned_at, Some(by))
        }
        QrProgress::Scanning { by } => (LinkQrStage::Scanning, by.scanned_at, Some(by)),
        QrProgress::Confirmed { by, at, link_by } => {
            state.link_by = Some(timestamp(*link_by));
            (LinkQrStage::Confirmed, Some(*at), Some(by))
        }
        QrProgress::Void { by } => (LinkQrStage::Void, by.scanned_at, Some(by)),
        QrProgress::Declined { by, reason, at } => {
            state.decline_reason = proto::v1::DeclineReason::from(*reason).into();
            (LinkQrStage::Declined, Some(*at), Some(by))
        }
        QrProgress::Expired { by, at } => (LinkQrStage::Expired, Some(*at), by.as_ref()),
        QrProgress::Linked { by, at } => (LinkQrStage::Linked, Some(*at), Some(by)),
    };
    state.stage = stage.into();
    state.stage_since = since.map(timestamp);
    state.scanned_by = by.map(device);
    state
}

fn device(by: &ScannedBy) -> ScannedDevice {
    ScannedDevice {
        device_id: by.device_id.to_string(),
        device_name: by.device_name.as_str().to_owned(),
        platform: proto::v1::Platform::from(by.platform).into(),
        device_model: by.device_model.clone().unwrap_or_default(),
        app_version: by.app_version.clone(),
        scanned_at: by.scanned_at.map(timestamp),
        client_address: by.client_address.map(|a| a.to_string()).unwrap_or_default(),
    }
}
