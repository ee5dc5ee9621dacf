//! *Link a device*: the QR code, followed live until the holder confirms or declines the phone
//! that scanned it.
//!
//! The page renders the QR code's current state (`GetLinkQr`); the script then opens
//! `/link/<id>/events`, a Server-Sent Events stream fed by `WatchLinkQr`, and swaps in each
//! state as the server rendered it. Without the script the page still works: reload it.

use std::convert::Infallible;
use std::time::Duration;

use axum::extract::Path;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use maud::{Markup, html};
use proto::v1::{
    DeclineReason, GetLinkQrRequest, LinkQrStage, LinkQrState, Platform, WatchLinkQrRequest,
};
use tokio_stream::StreamExt as _;
use tonic::Status;

use super::{perform, refused, render, to_sign_in, when};
use crate::backend::{bearer, explain};
use crate::i18n::Texts;
use crate::session::{Action, Session};
use crate::web::{Posted, Visit};

/// `GET /link`: what linking is, and the button that shows a QR code.
pub(crate) async fn landing(visit: Visit) -> Response {
    let t = visit.texts();
    if visit.user().is_none() {
        return to_sign_in(&visit, "/link");
    }
    render(
        &visit,
        t.link_title,
        &html! {
            h1 { (t.link_title) }
            p { (t.link_intro) }
            form method="post" action="/link" {
                input type="hidden" name="csrf" value=(visit.session.csrf);
                button #show-qr type="submit" { (t.show_qr) }
            }
        },
    )
}

/// `POST /link`: issues a QR code and shows it.
pub(crate) async fn issue(posted: Posted) -> Response {
    let browser_address = posted.visit.client_address.clone();
    perform(&posted.visit, Action::IssueQr { browser_address }).await
}

/// A QR id from the path, if it is a UUID (anything else is no QR code of ours).
fn qr_id(raw: &str) -> Option<String> {
    uuid::Uuid::parse_str(raw)
        .ok()
        .map(|id| id.hyphenated().to_string())
}

/// `GET /link/<id>`: the QR code's state now, followed live by the script.
pub(crate) async fn page(visit: Visit, Path(raw): Path<String>) -> Response {
    let Some(qr_id) = qr_id(&raw) else {
        return super::not_found(visit).await;
    };
    let t = visit.texts();
    let here = format!("/link/{qr_id}");
    let Some(user) = visit.user().cloned() else {
        return to_sign_in(&visit, &here);
    };
    let request = GetLinkQrRequest {
        qr_id: qr_id.clone(),
    };
    let mut portal = visit.app.backend.portal.clone();
    let state = match bearer(request, &user.token) {
        Ok(request) => portal
            .get_link_qr(request)
            .await
            .map(tonic::Response::into_inner),
        Err(status) => Err(status),
    };
    let state = match state {
        Ok(state) => state,
        Err(status) => return refused(&visit, &here, t.link_title, &status),
    };
    render(
        &visit,
        t.link_title,
        &html! {
            h1 { (t.link_title) }
            p #qr-announce .visually-hidden role="status" aria-live="polite" {}
            div #qr-state data-events={ "/link/" (qr_id) "/events" } {
                (fragment(&state, &visit.session, t))
            }
        },
    )
}

/// `GET /link/<id>/events`: the QR code's states as Server-Sent Events (`state`: the HTML to
/// show; `problem`: why following stopped).
pub(crate) async fn events(visit: Visit, Path(raw): Path<String>) -> Response {
    let Some(qr_id) = qr_id(&raw) else {
        return super::not_found(visit).await;
    };
    let Some(user) = visit.user().cloned() else {
        return axum::http::StatusCode::UNAUTHORIZED.into_response();
    };
    let t = visit.texts();
    let (sessions, id, mut session) = (
        visit.app.sessions().clone(),
        visit.id.clone(),
        visit.session.clone(),
    );
    let mut portal = visit.app.backend.portal.clone();
    let request = WatchLinkQrRequest {
        qr_id: qr_id.clone(),
    };
    let watched = match bearer(request, &user.token) {
        Ok(request) => portal.watch_link_qr(request).await,
        Err(status) => Err(status),
    };
    let stream: std::pin::Pin<
        Box<dyn tokio_stream::Stream<Item = Result<Event, Infallible>> + Send>,
    > = match watched {
        Ok(states) => Box::pin(states.into_inner().map(move |item| {
            Ok(match item {
                Ok(state) => {
                    // The session as it is now: a re-authentication elsewhere renews its CSRF
                    // token, which the fragment's forms carry.
                    if let Some(now) = sessions.get(&id) {
                        session = now;
                    }
                    Event::default()
                        .event("state")
                        .data(fragment(&state, &session, t).into_string())
                }
                Err(status) => problem(&qr_id, &status, t),
            })
        })),
        Err(status) => Box::pin(tokio_stream::once(Ok(problem(&qr_id, &status, t)))),
    };
    Sse::new(stream)
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response()
}

fn problem(qr_id: &str, status: &Status, t: &'static Texts) -> Event {
    let explained = explain(status, t);
    Event::default().event("problem").data(
        html! {
            div.flash.error role="alert" {
                p { (t.watch_lost) " " (explained.text) }
                p { a href={ "/link/" (qr_id) } { (t.reload) } }
            }
        }
        .into_string(),
    )
}

/// `POST /link/<id>/confirm`.
pub(crate) async fn confirm(Path(raw): Path<String>, posted: Posted) -> Response {
    let Some(qr_id) = qr_id(&raw) else {
        return super::not_found(posted.visit).await;
    };
    let matching_code = posted.get("matching_code").trim().to_owned();
    perform(
        &posted.visit,
        Action::Confirm {
            qr_id,
            matching_code,
        },
    )
    .await
}

/// `POST /link/<id>/decline`.
pub(crate) async fn decline(Path(raw): Path<String>, posted: Posted) -> Response {
    let Some(qr_id) = qr_id(&raw) else {
        return super::not_found(posted.visit).await;
    };
    perform(&posted.visit, Action::Decline { qr_id }).await
}

/// The "show a new code" button, after a code can no longer be used.
fn new_code_form(session: &Session, t: &Texts) -> Markup {
    html! {
        form method="post" action="/link" {
            input type="hidden" name="csrf" value=(session.csrf);
            button #new-code type="submit" { (t.new_code) }
        }
    }
}

fn platform(value: i32, t: &Texts) -> &'static str {
    match Platform::try_from(value) {
        Ok(Platform::Ios) => "iOS",
        Ok(Platform::Android) => "Android",
        Ok(Platform::Unspecified) | Err(_) => t.unknown,
    }
}

/// A countdown to `at` (the script updates it every second).
fn countdown(at: Option<&prost_types::Timestamp>) -> Markup {
    let deadline = at.and_then(proto::convert::datetime);
    let left = deadline.map_or(0, |at| (at - chrono::Utc::now()).num_seconds().max(0));
    // Seconds left, not the instant: the browser's clock may be off.
    html! {
        span.countdown role="timer" data-countdown=(left) {
            (left / 60) ":" (format!("{:02}", left % 60))
        }
    }
}

/// Whether the QR code can change no more.
fn is_final(stage: LinkQrStage) -> bool {
    matches!(
        stage,
        LinkQrStage::Declined | LinkQrStage::Expired | LinkQrStage::Void | LinkQrStage::Linked
    )
}

/// One short sentence per stage, for screen readers (the script puts it in the page's live
/// region when the stage changes; the fragment itself is not announced whole).
fn announcement(stage: LinkQrStage, state: &LinkQrState, t: &Texts) -> String {
    let name = state
        .scanned_by
        .as_ref()
        .map_or("", |device| device.device_name.as_str());
    match stage {
        LinkQrStage::Issued => t.qr_instructions.to_owned(),
        LinkQrStage::Scanning => t.scanning.to_owned(),
        LinkQrStage::Scanned if state.confirm_by.is_some() => {
            format!("{} “{name}”. {}", t.scanned_by, t.confirm_intro)
        }
        LinkQrStage::Scanned => format!("{} “{name}”. {}", t.scanned_by, t.scanned_no_confirm),
        LinkQrStage::Confirmed => t.confirmed.to_owned(),
        LinkQrStage::Linked => format!("“{name}” {}", t.linked),
        LinkQrStage::Declined => t.declined.to_owned(),
        LinkQrStage::Expired => t.expired.to_owned(),
        LinkQrStage::Void => t.void.to_owned(),
        LinkQrStage::Unspecified => t.reload_stage.to_owned(),
    }
}

/// The part of the page that follows the QR code's stage. `data-key` changes with the stage
/// (the script ignores a state it shows already); final stages carry `data-final`, so the
/// script stops following, and their result takes the focus (`data-result`).
fn fragment(state: &LinkQrState, session: &Session, t: &Texts) -> Markup {
    let stage = LinkQrStage::try_from(state.stage).unwrap_or(LinkQrStage::Unspecified);
    let qr_id = &state.qr_id;
    let device = state.scanned_by.as_ref();
    let device_name = device.map_or("", |d| d.device_name.as_str());
    let since = state.stage_since.as_ref().map_or(0, |at| at.seconds);
    html! {
        div.stage data-stage=(stage.as_str_name()) data-key={ (stage.as_str_name()) "@" (since) }
            data-announce=(announcement(stage, state, t)) data-final[is_final(stage)] {
            @match stage {
                LinkQrStage::Issued => {
                    @if let Some(image) = session.qr_image(qr_id) {
                        p { (t.qr_instructions) }
                        img #qr-image src=(image) alt=(t.qr_alt) width="264" height="264";
                        p.warning #never-share { strong { (t.qr_never_share) } }
                        p { (t.expires_in) " " (countdown(state.expires_at.as_ref())) }
                    } @else {
                        // Issued in another session (or pushed out): this page cannot show it.
                        p #reload-stage { (t.reload_stage) }
                        (new_code_form(session, t))
                    }
                }
                LinkQrStage::Scanning => {
                    p { (t.scanning) }
                }
                LinkQrStage::Scanned if state.confirm_by.is_some() => {
                    h2 #scanned-by { (t.scanned_by) " " q.device-name { (device_name) } }
                    (device_facts(state, t))
                    p.warning { strong { (t.confirm_intro) } }
                    p { (t.confirm_within) " " (countdown(state.confirm_by.as_ref())) }
                    form.inline #decline-form method="post" action={ "/link/" (qr_id) "/decline" } {
                        input type="hidden" name="csrf" value=(session.csrf);
                        button.secondary #decline-link type="submit" data-default-focus {
                            (t.decline_button)
                        }
                    }
                    form.stack #confirm-form method="post" action={ "/link/" (qr_id) "/confirm" } {
                        input type="hidden" name="csrf" value=(session.csrf);
                        label for="matching-code" { (t.matching_code_label) }
                        input #matching-code name="matching_code" inputmode="numeric"
                            pattern="[0-9]{2}" maxlength="2" size="3" autocomplete="off" required;
                        button #confirm-link type="submit" { (t.confirm_button) }
                    }
                }
                LinkQrStage::Scanned => {
                    h2 #scanned-by { (t.scanned_by) " " q.device-name { (device_name) } }
                    (device_facts(state, t))
                    p { (t.scanned_no_confirm) }
                }
                LinkQrStage::Confirmed => {
                    h2 #scanned-by { (t.scanned_by) " " q.device-name { (device_name) } }
                    p #confirmed { (t.confirmed) " " (countdown(state.link_by.as_ref())) }
                }
                LinkQrStage::Linked => {
                    p.success #linked tabindex="-1" data-result {
                        q.device-name { (device_name) } " " (t.linked)
                    }
                    p {
                        a #see-devices href={ "/devices?expect=" (device.map_or("", |d| d.device_id.as_str())) } {
                            (t.see_devices)
                        }
                    }
                }
                LinkQrStage::Declined => {
                    p #declined tabindex="-1" data-result {
                        @if state.decline_reason == i32::from(DeclineReason::WrongMatchingCode) {
                            (t.declined_wrong_code)
                        } @else {
                            (t.declined)
                        }
                    }
                    (new_code_form(session, t))
                }
                LinkQrStage::Expired => {
                    p #expired tabindex="-1" data-result { (t.expired) }
                    (new_code_form(session, t))
                }
                LinkQrStage::Void => {
                    p #void tabindex="-1" data-result { (t.void) }
                    (new_code_form(session, t))
                }
                LinkQrStage::Unspecified => {
                    p #reload-stage { (t.reload_stage) " " a href={ "/link/" (qr_id) } { (t.reload) } }
                }
            }
        }
    }
}

/// What the holder compares before confirming: the phone, and where it scanned from next to
/// where this browser is.
fn device_facts(state: &LinkQrState, t: &Texts) -> Markup {
    let Some(device) = state.scanned_by.as_ref() else {
        return html! {};
    };
    let or_unknown = |text: &str| {
        if text.is_empty() {
            t.unknown.to_owned()
        } else {
            text.to_owned()
        }
    };
    let phone = if device.device_model.is_empty() {
        platform(device.platform, t).to_owned()
    } else {
        format!("{}, {}", platform(device.platform, t), device.device_model)
    };
    html! {
        dl.facts #device-facts {
            dt { (t.device_label) } dd { (device.device_name) }
            dt { (t.phone_label) } dd { (phone) }
            dt { (t.app_label) } dd { (or_unknown(&device.app_version)) }
            dt { (t.from_label) } dd #scanned-from { (or_unknown(&device.client_address)) }
            dt { (t.browser_label) } dd { (or_unknown(&state.browser_address)) }
            dt { (t.col_when) } dd { (when(device.scanned_at.as_ref(), t)) }
        }
    }
}
