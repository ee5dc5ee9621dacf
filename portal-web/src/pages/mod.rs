//! The pages: a common layout, and the rules every page follows (signed in, recent sign-in,
//! a refusal shown as a sentence).

mod actions;
pub(crate) mod devices;
pub(crate) mod history;
pub(crate) mod link;
pub(crate) mod sign_in;

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use maud::{DOCTYPE, Markup, html};
use tonic::Status;

use crate::backend::{explain, needs_reauthentication, session_over};
use crate::i18n::Language;
use crate::session::{Action, Flash, Pending};
use crate::web::{Posted, Visit, redirect};

/// A whole page: header (links, *Link a device*, language), the flash message, `content`.
pub(crate) fn layout(visit: &Visit, title: &str, content: &Markup) -> Markup {
    let t = visit.texts();
    let user = visit.user();
    let csrf = &visit.session.csrf;
    html! {
        (DOCTYPE)
        html lang=(visit.session.language.code()) {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " — " (t.app_name) }
                link rel="stylesheet" href="/static/app.css";
                script src="/static/app.js" defer {}
            }
            body {
                a.skip href="#main" { (t.skip_to_content) }
                header {
                    div.top {
                        span.brand { (t.app_name) }
                        @if let Some(user) = user {
                            nav aria-label=(t.nav_label) {
                                ul {
                                    li { a href="/devices" { (t.nav_devices) } }
                                    li { a href="/history" { (t.nav_history) } }
                                }
                            }
                            form.inline method="post" action="/link" {
                                input type="hidden" name="csrf" value=(csrf);
                                button #link-device type="submit" { (t.link_device) }
                            }
                            span.who { (crate::i18n::fill(t.signed_in_as, &[&user.account_id])) }
                            form.inline method="post" action="/sign-out" {
                                input type="hidden" name="csrf" value=(csrf);
                                button.secondary #sign-out type="submit" { (t.sign_out) }
                            }
                        }
                        form.inline.language method="post" action="/language" {
                            input type="hidden" name="csrf" value=(csrf);
                            input type="hidden" name="then" value=(visit.path);
                            label for="language" { (t.language_label) }
                            select #language name="language" {
                                @for language in Language::ALL {
                                    option value=(language.code()) lang=(language.code())
                                        selected[language == visit.session.language] {
                                        (language.texts().lang_name)
                                    }
                                }
                            }
                            button.secondary #change-language type="submit" { (t.language_change) }
                        }
                    }
                    @if visit.app.settings.dev_signers.is_some() {
                        p.dev-banner role="note" { (t.dev_banner) }
                    }
                }
                main #main tabindex="-1" {
                    @if let Some(flash) = &visit.session.flash {
                        (flash_box(visit, flash))
                    }
                    (content)
                }
            }
        }
    }
}

/// A flash message: a sentence, and the service's words folded below it.
fn flash_box(visit: &Visit, flash: &Flash) -> Markup {
    let t = visit.texts();
    html! {
        div #flash .flash.(if flash.error { "error" } else { "info" })
            role=(if flash.error { "alert" } else { "status" }) {
            p { (flash.text) }
            @if let Some(detail) = &flash.detail {
                details { summary { (t.err_details) } p { (detail) } }
            }
        }
    }
}

/// `layout` as a response, taking the flash message (shown once).
pub(crate) fn render(visit: &Visit, title: &str, content: &Markup) -> Response {
    let page = layout(visit, title, content);
    if visit.session.flash.is_some() {
        visit.app.sessions.update(&visit.id, |s| s.flash = None);
    }
    page.into_response()
}

/// Leaves a message for the next page.
pub(crate) fn flash(visit: &Visit, flash: Flash) {
    visit
        .app
        .sessions
        .update(&visit.id, |s| s.flash = Some(flash));
}

/// Leaves `status`, explained, for the next page.
pub(crate) fn flash_error(visit: &Visit, status: &Status) {
    let explained = explain(status, visit.texts());
    flash(
        visit,
        Flash {
            detail: explained.detail,
            ..Flash::error(explained.text)
        },
    );
}

/// Where a visitor who is not signed in goes: the sign-in page, which comes back to `then`.
pub(crate) fn to_sign_in(visit: &Visit, then: &str) -> Response {
    if visit.session.user.is_some() {
        // Signed in once, and the token expired.
        visit.app.sessions.update(&visit.id, |s| s.user = None);
        flash(visit, Flash::info(visit.texts().session_ended));
    }
    redirect(&format!("/sign-in?then={}", encode(then)))
}

/// Where a holder whose sign-in is too old goes, to come back to `then` (a page to read: any
/// action that was waiting is dropped).
pub(crate) fn to_reauth(visit: &Visit, then: &str) -> Response {
    if visit.session.pending.is_some() {
        visit.app.sessions.update(&visit.id, |s| s.pending = None);
    }
    redirect(&format!("/reauth?then={}", encode(then)))
}

/// Keeps `action` waiting while the holder re-authenticates; the re-authentication page names
/// it (and runs it, once, if the holder goes on).
fn wait_for_reauth(visit: &Visit, action: Action, then: &str) -> Response {
    let pending = Pending::new(action);
    let location = format!(
        "/reauth?then={}&pending={}",
        encode(then),
        encode(&pending.nonce)
    );
    visit
        .app
        .sessions
        .update(&visit.id, |s| s.pending = Some(pending));
    redirect(&location)
}

/// A refusal of a page's own read: to sign-in or re-authentication when that is the cause,
/// else the page with the message.
pub(crate) fn refused(visit: &Visit, then: &str, title: &str, status: &Status) -> Response {
    if needs_reauthentication(status) {
        return to_reauth(visit, then);
    }
    if session_over(status) {
        return to_sign_in(visit, then);
    }
    let explained = explain(status, visit.texts());
    render(
        visit,
        title,
        &html! {
            h1 { (title) }
            div.flash.error role="alert" {
                p { (explained.text) }
                @if let Some(detail) = explained.detail {
                    details { summary { (visit.texts().err_details) } p { (detail) } }
                }
            }
        },
    )
}

/// Carries out a state-changing `action` for the signed-in holder: first re-authentication if
/// the sign-in is old (the action waits in the session and runs right after), then the call.
pub(crate) async fn perform(visit: &Visit, action: Action) -> Response {
    let return_to = action.return_to();
    let Some(user) = visit.user().cloned() else {
        return to_sign_in(visit, &return_to);
    };
    if !visit.fresh(&user) {
        return wait_for_reauth(visit, action, &return_to);
    }
    match action.run(visit, &user).await {
        Ok(response) => response,
        Err(status) if needs_reauthentication(&status) => {
            wait_for_reauth(visit, action, &return_to)
        }
        Err(status) if session_over(&status) => to_sign_in(visit, &return_to),
        Err(status) => {
            flash_error(visit, &status);
            redirect(&return_to)
        }
    }
}

/// `text` percent-encoded for a query string.
pub(crate) fn encode(text: &str) -> String {
    form_urlencoded::byte_serialize(text.as_bytes()).collect()
}

/// `/`: the devices when signed in, else the sign-in.
pub(crate) async fn home(visit: Visit) -> Response {
    if visit.user().is_some() {
        redirect("/devices")
    } else {
        redirect("/sign-in")
    }
}

/// `POST /language`: switches the page's language.
pub(crate) async fn change_language(posted: Posted) -> Response {
    if let Some(language) = Language::from_code(posted.get("language")) {
        let visit = &posted.visit;
        visit
            .app
            .sessions
            .update(&visit.id, |s| s.language = language);
    }
    redirect(crate::web::local_path(posted.get("then")))
}

/// Any other address.
pub(crate) async fn not_found(visit: Visit) -> Response {
    let t = visit.texts();
    let mut response = render(
        &visit,
        t.err_page_not_found,
        &html! { h1 { (t.err_page_not_found) } p { a href="/" { (t.back) } } },
    );
    *response.status_mut() = StatusCode::NOT_FOUND;
    response
}

/// A form without the session's CSRF token (or sent from another site).
pub(crate) fn forbidden(visit: &Visit) -> Response {
    let t = visit.texts();
    let mut response = layout(
        visit,
        t.err_title,
        &html! {
            h1 { (t.err_title) }
            div.flash.error role="alert" { p { (t.err_csrf) } }
            p { a href="/" { (t.back) } }
        },
    )
    .into_response();
    *response.status_mut() = StatusCode::FORBIDDEN;
    response
}

/// A timestamp as `2026-11-30 14:05 UTC`, or `unknown`.
pub(crate) fn when(at: Option<&prost_types::Timestamp>, t: &crate::i18n::Texts) -> String {
    at.and_then(proto::convert::datetime).map_or_else(
        || t.unknown.to_owned(),
        |at| at.format("%Y-%m-%d %H:%M UTC").to_string(),
    )
}
