//! Development sign-in, re-authentication and sign-out.
//!
//! With `LINKD_WEB_DEV_KEYS_DIR` set, the sign-in form plays the portal's login: it registers
//! the account the first time, records the LuxTrust product chosen (as the portal's login
//! does), and mints a portal JWT with the development identity provider's key. Without it, the
//! page has no sign-in of its own (README: a real portal puts its login in front).

use axum::extract::Query;
use axum::extract::rejection::QueryRejection;
use axum::response::Response;
use maud::html;
use proto::v1::{LuxTrustProduct, ProductKind, RecordPortalLoginRequest, RegisterAccountRequest};
use serde::Deserialize;
use tonic::Code;

use super::{encode, perform, render};
use crate::backend::{bearer, explain};
use crate::session::SignedIn;
use crate::web::{Posted, Visit, local_path, redirect, set_session_cookie};

#[derive(Debug, Default, Deserialize)]
pub(crate) struct Then {
    #[serde(default)]
    then: String,
    /// The nonce of an action waiting for re-authentication.
    #[serde(default)]
    pending: String,
}

/// The query, or nothing from a malformed one (never axum's plain-text refusal).
fn then_of(query: Result<Query<Then>, QueryRejection>) -> Then {
    query.map(|Query(then)| then).unwrap_or_default()
}

/// `GET /sign-in`.
pub(crate) async fn form(visit: Visit, query: Result<Query<Then>, QueryRejection>) -> Response {
    sign_in_page(&visit, &then_of(query).then, None, &SignInValues::default())
}

#[derive(Debug, Default)]
struct SignInValues {
    account_id: String,
    email: String,
    login: String,
    serial: String,
}

fn sign_in_page(
    visit: &Visit,
    then: &str,
    problem: Option<crate::backend::Explained>,
    values: &SignInValues,
) -> Response {
    let t = visit.texts();
    let dev = visit.app.settings.dev_signers.is_some();
    let login = if values.login.is_empty() {
        "mobile"
    } else {
        values.login.as_str()
    };
    render(
        visit,
        t.sign_in_title,
        &html! {
            h1 { (t.sign_in_title) }
            @if let Some(problem) = problem {
                div #flash .flash.error role="alert" {
                    p { (problem.text) }
                    @if let Some(detail) = problem.detail {
                        details { summary { (t.err_details) } p { (detail) } }
                    }
                }
            }
            @if dev {
                p { (t.sign_in_intro) }
                form.stack #sign-in-form method="post" action="/sign-in" {
                    input type="hidden" name="csrf" value=(visit.session.csrf);
                    input type="hidden" name="then" value=(local_path(then));
                    label for="account-id" { (t.account_id_label) }
                    input #account-id name="account_id" required autocomplete="username"
                        maxlength="64" value=(values.account_id);
                    label for="email" { (t.email_label) }
                    input #email name="email" type="email" autocomplete="email"
                        maxlength="254" value=(values.email);
                    fieldset {
                        legend { (t.login_method_legend) }
                        @for (value, label) in [("mobile", t.method_luxtrust_mobile),
                                                ("scan", t.method_luxtrust_scan),
                                                ("other", t.method_other)] {
                            div.choice {
                                input type="radio" name="login" id={ "login-" (value) }
                                    value=(value) checked[login == value];
                                label for={ "login-" (value) } { (label) }
                            }
                        }
                    }
                    label for="serial" { (t.serial_label) }
                    input #serial name="serial" maxlength="64" value=(values.serial);
                    button #sign-in type="submit" { (t.sign_in_button) }
                }
            } @else {
                p { (t.sign_in_unavailable) }
            }
        },
    )
}

/// `POST /sign-in` (development only).
pub(crate) async fn submit(posted: Posted) -> Response {
    let visit = &posted.visit;
    let Some(signers) = visit.app.settings.dev_signers.clone() else {
        return super::not_found(visit.clone()).await;
    };
    let values = SignInValues {
        account_id: posted.get("account_id").trim().to_owned(),
        email: posted.get("email").trim().to_owned(),
        login: posted.get("login").to_owned(),
        serial: posted.get("serial").trim().to_owned(),
    };
    let then = posted.get("then");
    let problem = |status: &tonic::Status| {
        sign_in_page(visit, then, Some(explain(status, visit.texts())), &values)
    };
    let system = match signers.system_token() {
        Ok(token) => token,
        Err(e) => return problem(&tonic::Status::internal(e.to_string())),
    };
    let mut portal = visit.app.backend.portal.clone();
    let email = if values.email.is_empty() {
        format!("{}@example.lu", values.account_id.replace('@', "."))
    } else {
        values.email.clone()
    };
    let register = RegisterAccountRequest {
        account_id: values.account_id.clone(),
        email,
        language: visit.session.language.code().to_owned(),
        request_id: String::new(),
    };
    let registered = match bearer(register, &system) {
        Ok(request) => portal.register_account(request).await.map(|_| ()),
        Err(status) => Err(status),
    };
    match registered {
        Ok(()) => {}
        Err(status) if status.code() == Code::AlreadyExists => {}
        Err(status) => return problem(&status),
    }
    let kind = match values.login.as_str() {
        "mobile" => Some(ProductKind::LuxtrustMobile),
        "scan" => Some(ProductKind::LuxtrustScan),
        _ => None,
    };
    if let Some(kind) = kind {
        let login = RecordPortalLoginRequest {
            account_id: values.account_id.clone(),
            product: Some(LuxTrustProduct {
                kind: kind.into(),
                serial: values.serial.clone(),
            }),
            request_id: String::new(),
        };
        let recorded = match bearer(login, &system) {
            Ok(request) => portal.record_portal_login(request).await.map(|_| ()),
            Err(status) => Err(status),
        };
        if let Err(status) = recorded {
            return problem(&status);
        }
    }
    let Some(user) = signers
        .citizen_token(&values.account_id, 0)
        .ok()
        .as_deref()
        .and_then(SignedIn::from_token)
    else {
        return problem(&tonic::Status::internal("could not sign a portal token"));
    };
    let id = visit.app.sessions.renew(&visit.id, |s| {
        s.user = Some(user);
        s.pending = None;
    });
    let mut response = redirect(match local_path(then) {
        "/" => "/devices",
        path => path,
    });
    set_session_cookie(&visit.app, &mut response, &id);
    response
}

/// `POST /sign-out`.
pub(crate) async fn sign_out(posted: Posted) -> Response {
    let visit = &posted.visit;
    let language = visit.session.language;
    visit.app.sessions.end(&visit.id);
    let id = visit.app.sessions.create(language);
    let mut response = redirect("/sign-in");
    set_session_cookie(&visit.app, &mut response, &id);
    response
}

/// `GET /reauth`: asks for a fresh sign-in before going on to `then`.
pub(crate) async fn reauth_form(
    visit: Visit,
    query: Result<Query<Then>, QueryRejection>,
) -> Response {
    let then = then_of(query);
    let t = visit.texts();
    let Some(user) = visit.user() else {
        return super::to_sign_in(&visit, &then.then);
    };
    let dev = visit.app.settings.dev_signers.is_some();
    // The action this re-authentication is for, if the page was asked for it.
    let waiting = visit
        .session
        .pending
        .as_ref()
        .filter(|pending| pending.nonce == then.pending)
        .map(|pending| pending.action.describe(t));
    let back = local_path(&then.then);
    render(
        &visit,
        t.reauth_title,
        &html! {
            h1 { (t.reauth_title) }
            p #reauth-intro { (t.reauth_intro) }
            @if let Some(waiting) = &waiting {
                p #reauth-then .warning { (waiting) }
            }
            @if dev {
                form #reauth-form method="post" action="/reauth" {
                    input type="hidden" name="csrf" value=(visit.session.csrf);
                    input type="hidden" name="then" value=(back);
                    @if waiting.is_some() {
                        input type="hidden" name="pending" value=(then.pending);
                    }
                    p { (crate::i18n::fill(t.signed_in_as, &[&user.account_id])) }
                    button #reauthenticate type="submit" autofocus { (t.reauth_button) }
                    " "
                    @if waiting.is_some() {
                        a #cancel href="/" { (t.cancel) }
                    }
                }
            } @else {
                p { (t.sign_in_unavailable) }
            }
        },
    )
}

/// `POST /reauth` (development only): a fresh token for the same account, then the action
/// that waited for it, if any.
pub(crate) async fn reauth(posted: Posted) -> Response {
    let visit = &posted.visit;
    let then = local_path(posted.get("then")).to_owned();
    let (Some(signers), Some(user)) = (visit.app.settings.dev_signers.clone(), visit.user()) else {
        return super::to_sign_in(visit, &then);
    };
    let Some(fresh) = signers
        .citizen_token(&user.account_id, 0)
        .ok()
        .as_deref()
        .and_then(SignedIn::from_token)
    else {
        return redirect(&format!("/reauth?then={}", encode(&then)));
    };
    let mut pending = None;
    let id = visit.app.sessions.renew(&visit.id, |s| {
        s.user = Some(fresh);
        pending = s.pending.take();
    });
    let Some(renewed) = visit.app.sessions.get(&id) else {
        return redirect("/sign-in");
    };
    let visit = Visit {
        id: id.clone(),
        session: renewed,
        ..visit.clone()
    };
    // Only the action this form was shown for, and only while it is recent.
    let mut response = match pending.and_then(|pending| pending.claim(posted.get("pending"))) {
        Some(action) => perform(&visit, action).await,
        None => redirect(&then),
    };
    set_session_cookie(&visit.app, &mut response, &id);
    response
}
