//! The state-changing calls a holder makes from the page, each needing a recent sign-in.

use axum::response::Response;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use proto::v1::{
    ConfirmLinkRequest, DeclineLinkRequest, GetDeviceRequest, IssueLinkQrRequest,
    UnlinkDevicesRequest,
};
use tonic::{Code, Status};

use super::flash;
use crate::backend::bearer;
use crate::i18n::{Texts, fill};
use crate::session::{Action, Flash, SignedIn, UnlinkTarget};
use crate::web::{Visit, redirect};

impl Action {
    /// What the action will do, for the re-authentication page.
    pub(crate) fn describe(&self, t: &Texts) -> String {
        match self {
            Self::IssueQr { .. } => t.pending_issue.to_owned(),
            Self::Confirm { .. } => t.pending_confirm.to_owned(),
            Self::Decline { .. } => t.pending_decline.to_owned(),
            Self::Unlink(UnlinkTarget::All) => t.pending_unlink_all.to_owned(),
            Self::Unlink(UnlinkTarget::Devices(ids)) => {
                fill(t.pending_unlink, &[&ids.len().to_string()])
            }
        }
    }

    /// The page to come back to after the action (or after re-authenticating for it).
    pub(crate) fn return_to(&self) -> String {
        match self {
            Self::IssueQr { .. } => "/link".to_owned(),
            Self::Confirm { qr_id, .. } | Self::Decline { qr_id } => format!("/link/{qr_id}"),
            Self::Unlink(_) => "/devices".to_owned(),
        }
    }

    /// Makes the call; the answer is where the browser goes next.
    pub(crate) async fn run(&self, visit: &Visit, user: &SignedIn) -> Result<Response, Status> {
        let mut portal = visit.app.backend.portal.clone();
        match self {
            Self::IssueQr { browser_address } => {
                let request = IssueLinkQrRequest {
                    browser_address: browser_address.clone(),
                    request_id: String::new(),
                };
                let qr = portal
                    .issue_link_qr(bearer(request, &user.token)?)
                    .await?
                    .into_inner();
                let image = format!(
                    "data:image/svg+xml;base64,{}",
                    STANDARD.encode(qr.qr_svg.as_bytes())
                );
                let qr_id = qr.qr_id;
                visit
                    .app
                    .sessions
                    .update(&visit.id, |s| s.keep_qr_image(qr_id.clone(), image));
                Ok(redirect(&format!("/link/{qr_id}")))
            }
            Self::Confirm {
                qr_id,
                matching_code,
            } => {
                let request = ConfirmLinkRequest {
                    qr_id: qr_id.clone(),
                    matching_code: matching_code.clone(),
                    request_id: String::new(),
                };
                match portal.confirm_link(bearer(request, &user.token)?).await {
                    Ok(_) => {}
                    Err(status) => {
                        if let Some(device) = linkctl::errors::least_recently_used(&status) {
                            device_limit(visit, user, &device).await;
                        } else if status.code() != Code::FailedPrecondition {
                            return Err(status);
                        }
                        // Otherwise the QR code's page says what happened (a wrong code
                        // declined it, the deadline passed …).
                    }
                }
                Ok(redirect(&self.return_to()))
            }
            Self::Decline { qr_id } => {
                let request = DeclineLinkRequest {
                    qr_id: qr_id.clone(),
                    request_id: String::new(),
                };
                match portal.decline_link(bearer(request, &user.token)?).await {
                    Ok(_) => {}
                    // Confirmed already: too late to decline; the device is unlinked instead.
                    Err(status) if status.code() == Code::FailedPrecondition => flash(
                        visit,
                        Flash {
                            detail: Some(status.message().to_owned()),
                            ..Flash::error(visit.texts().decline_too_late)
                        },
                    ),
                    Err(status) => return Err(status),
                }
                Ok(redirect(&self.return_to()))
            }
            Self::Unlink(target) => {
                let request = match target {
                    UnlinkTarget::Devices(ids) => UnlinkDevicesRequest {
                        device_ids: ids.clone(),
                        ..UnlinkDevicesRequest::default()
                    },
                    UnlinkTarget::All => UnlinkDevicesRequest {
                        all_devices: true,
                        ..UnlinkDevicesRequest::default()
                    },
                };
                let answer = portal
                    .unlink_devices(bearer(request, &user.token)?)
                    .await?
                    .into_inner();
                let t = visit.texts();
                let count = answer.unlinked_device_ids.len();
                let text = if count == 0 {
                    t.nothing_unlinked.to_owned()
                } else {
                    fill(t.unlinked_count, &[&count.to_string()])
                };
                flash(
                    visit,
                    Flash {
                        consistency_token: Some(answer.consistency_token),
                        ..Flash::info(text)
                    },
                );
                Ok(redirect(&self.return_to()))
            }
        }
    }
}

/// Tells the holder that the account links as many devices as it may, naming the least
/// recently used one (by name when the read side knows it).
async fn device_limit(visit: &Visit, user: &SignedIn, device_id: &str) {
    let request = GetDeviceRequest {
        device_id: device_id.to_owned(),
        consistency_token: String::new(),
    };
    let mut queries = visit.app.backend.queries.clone();
    let name = match bearer(request, &user.token) {
        Ok(request) => queries
            .get_device(request)
            .await
            .map(|device| device.into_inner().name)
            .unwrap_or_else(|_| device_id.to_owned()),
        Err(_) => device_id.to_owned(),
    };
    flash(
        visit,
        Flash::error(fill(visit.texts().err_device_limit, &[&name])),
    );
}
