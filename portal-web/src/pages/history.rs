//! *History*: the account's own timeline from `AuditService.ListEvents`, a page at a time, and
//! *Verify history* (`VerifyHistory`, the tamper check).

use axum::extract::Query;
use axum::extract::rejection::QueryRejection;
use axum::response::Response;
use maud::{Markup, html};
use proto::v1::{AuditEvent, ListEventsRequest, VerifyHistoryRequest, VerifyHistoryResponse};
use serde::Deserialize;

use super::{encode, refused, render, to_reauth, to_sign_in, when};
use crate::backend::bearer;
use crate::i18n::{Texts, fill};
use crate::web::Visit;

/// Events per page.
const PAGE_SIZE: i32 = 25;

#[derive(Debug, Default, Deserialize)]
pub(crate) struct HistoryQuery {
    #[serde(default)]
    page_token: String,
    #[serde(default)]
    verify: String,
}

/// `GET /history[?page_token=…][&verify=1]`.
pub(crate) async fn list(
    visit: Visit,
    query: Result<Query<HistoryQuery>, QueryRejection>,
) -> Response {
    let query = query.map(|Query(q)| q).unwrap_or_default();
    let t = visit.texts();
    let here = visit.path.clone();
    let Some(user) = visit.user().cloned() else {
        return to_sign_in(&visit, &here);
    };
    if !visit.fresh(&user) {
        return to_reauth(&visit, &here);
    }
    let mut audit = visit.app.backend.audit.clone();
    let verified = if query.verify.is_empty() {
        None
    } else {
        let answer = match bearer(VerifyHistoryRequest::default(), &user.token) {
            Ok(request) => audit.verify_history(request).await,
            Err(status) => Err(status),
        };
        match answer {
            Ok(answer) => Some(answer.into_inner()),
            Err(status) => return refused(&visit, &here, t.history_title, &status),
        }
    };
    let request = ListEventsRequest {
        page_size: PAGE_SIZE,
        page_token: query.page_token.clone(),
        ..ListEventsRequest::default()
    };
    let page = match bearer(request, &user.token) {
        Ok(request) => audit.list_events(request).await,
        Err(status) => Err(status),
    };
    let page = match page {
        Ok(page) => page.into_inner(),
        Err(status) => return refused(&visit, &here, t.history_title, &status),
    };
    render(
        &visit,
        t.history_title,
        &html! {
            h1 { (t.history_title) }
            p { (t.history_intro) }
            form #verify-form method="get" action="/history" {
                @if !query.page_token.is_empty() {
                    input type="hidden" name="page_token" value=(query.page_token);
                }
                input type="hidden" name="verify" value="1";
                button #verify-history type="submit" { (t.verify_button) }
            }
            @if let Some(verified) = &verified {
                (verdict(verified, t))
            }
            @if page.events.is_empty() {
                p #no-events { (t.no_events) }
            } @else {
                table #history {
                    caption { (t.history_caption) }
                    thead {
                        tr {
                            th scope="col" { (t.col_when) }
                            th scope="col" { (t.col_event) }
                            th scope="col" { (t.col_device) }
                            th scope="col" { (t.col_actor) }
                            th scope="col" { (t.col_details) }
                        }
                    }
                    tbody {
                        @for event in &page.events {
                            (row(event, t))
                        }
                    }
                }
            }
            nav.pages aria-label=(t.history_title) {
                @if !query.page_token.is_empty() {
                    a #first-page href="/history" { (t.first_page) }
                }
                @if !page.next_page_token.is_empty() {
                    a #next-page href={ "/history?page_token=" (encode(&page.next_page_token)) } {
                        (t.next_page)
                    }
                }
            }
        },
    )
}

fn verdict(verified: &VerifyHistoryResponse, t: &Texts) -> Markup {
    html! {
        @if verified.intact {
            div #verdict .flash.info role="status" {
                p { (fill(t.verify_intact, &[&verified.events_checked.to_string()])) }
            }
        } @else {
            div #verdict .flash.error role="alert" {
                p { (fill(t.verify_broken, &[&verified.broken_event_id, &verified.reason])) }
            }
        }
    }
}

fn row(event: &AuditEvent, t: &Texts) -> Markup {
    html! {
        tr data-event-type=(event.event_type) {
            td.when { (when(event.occurred_at.as_ref(), t)) }
            td { (t.event_name(&event.event_type)) }
            td.mono { (event.device_id) }
            td { (actor(&event.actor, t)) }
            td { (details(&event.details_json)) }
        }
    }
}

/// Who acted, for people: the holder, a device, the app while linking, or the portal.
fn actor(actor: &str, t: &Texts) -> String {
    match actor.split_once(':').map_or(actor, |(kind, _)| kind) {
        "citizen" => t.actor_holder.to_owned(),
        "device" => t.actor_device.to_owned(),
        "app" => t.actor_app.to_owned(),
        "system" => t.actor_system.to_owned(),
        _ => actor.to_owned(),
    }
}

/// An event's facts as `key: value` pairs (the JSON as text if it is not an object).
fn details(json: &str) -> String {
    match serde_json::from_str::<serde_json::Value>(json) {
        Ok(serde_json::Value::Object(fields)) => fields
            .iter()
            .map(|(key, value)| match value.as_str() {
                Some(text) => format!("{key}: {text}"),
                None => format!("{key}: {value}"),
            })
            .collect::<Vec<_>>()
            .join("; "),
        Ok(_) | Err(_) => json.to_owned(),
    }
}
