//! *My devices*: the linked devices, and unlinking one, several or all of them.
//!
//! After an unlink the list is read with the command's consistency token, so it never shows a
//! device the holder just unlinked.

use std::time::Duration;

use axum::extract::Query;
use axum::extract::rejection::QueryRejection;
use axum::response::Response;
use maud::html;
use proto::v1::{DeviceView, LinkMethod, ListDevicesRequest, ProductKind};
use serde::Deserialize;
use tonic::Status;

use super::{flash, perform, refused, render, to_reauth, to_sign_in, when};
use crate::backend::bearer;
use crate::i18n::{Texts, fill};
use crate::session::{Action, Flash, UnlinkTarget};
use crate::web::{Posted, Visit, redirect};

/// Pages read at most (100 devices each; an account links a handful).
const MAX_PAGES: usize = 10;

#[derive(Debug, Default, Deserialize)]
pub(crate) struct DevicesQuery {
    /// A device that was just linked (the link page's *See my devices*): the list waits a
    /// moment for the read side to show it (the link was made on the phone, whose consistency
    /// token the page never sees).
    #[serde(default)]
    expect: String,
}

/// How long the list waits for an `expect`ed device, and how often it looks.
const EXPECT_WITHIN: Duration = Duration::from_secs(3);
const EXPECT_EVERY: Duration = Duration::from_millis(250);

/// Every linked device of the holder, read with `consistency_token` (may be empty).
async fn all_devices(
    visit: &Visit,
    token: &str,
    consistency_token: &str,
) -> Result<Vec<DeviceView>, Status> {
    let mut queries = visit.app.backend.queries.clone();
    let mut devices: Vec<DeviceView> = Vec::new();
    let mut page_token = String::new();
    for _ in 0..MAX_PAGES {
        let request = ListDevicesRequest {
            page_size: 100,
            page_token: page_token.clone(),
            consistency_token: consistency_token.to_owned(),
        };
        let page = queries
            .list_devices(bearer(request, token)?)
            .await?
            .into_inner();
        devices.extend(page.devices);
        page_token = page.next_page_token;
        if page_token.is_empty() {
            break;
        }
    }
    Ok(devices)
}

/// `GET /devices[?expect=<device id>]`.
pub(crate) async fn list(
    visit: Visit,
    query: Result<Query<DevicesQuery>, QueryRejection>,
) -> Response {
    let expect = query.map(|Query(q)| q.expect).unwrap_or_default();
    let t = visit.texts();
    let Some(user) = visit.user().cloned() else {
        return to_sign_in(&visit, "/devices");
    };
    if !visit.fresh(&user) {
        return to_reauth(&visit, "/devices");
    }
    let consistency_token = visit
        .session
        .flash
        .as_ref()
        .and_then(|flash| flash.consistency_token.clone())
        .unwrap_or_default();
    let deadline = tokio::time::Instant::now() + EXPECT_WITHIN;
    let devices = loop {
        let devices = match all_devices(&visit, &user.token, &consistency_token).await {
            Ok(devices) => devices,
            Err(status) => return refused(&visit, "/devices", t.devices_title, &status),
        };
        let waiting = !expect.is_empty()
            && !devices.iter().any(|device| device.device_id == expect)
            && tokio::time::Instant::now() < deadline;
        if !waiting {
            break devices;
        }
        tokio::time::sleep(EXPECT_EVERY).await;
    };
    render(
        &visit,
        t.devices_title,
        &html! {
            h1 { (t.devices_title) }
            p { (t.devices_intro) }
            @if devices.is_empty() {
                p #no-devices { (t.no_devices) }
            } @else {
                form #unlink-form method="post" action="/devices/unlink" {
                    input type="hidden" name="csrf" value=(visit.session.csrf);
                    table #devices {
                        caption { (t.devices_caption) }
                        thead {
                            tr {
                                th scope="col" {
                                    // Shown by the script, which makes it work.
                                    input #select-all type="checkbox" hidden
                                        aria-label=(t.select_all);
                                    span.visually-hidden { (t.col_select) }
                                }
                                th scope="col" { (t.col_name) }
                                th scope="col" { (t.col_method) }
                                th scope="col" { (t.col_linked) }
                                th scope="col" { (t.col_last_used) }
                                th scope="col" { (t.col_biometrics) }
                            }
                        }
                        tbody {
                            @for (n, device) in devices.iter().enumerate() {
                                tr data-device-id=(device.device_id) {
                                    td {
                                        input type="checkbox" name="device" id={ "device-" (n) }
                                            value=(device.device_id)
                                            aria-label=(fill(t.select_device, &[&device.name]));
                                    }
                                    th scope="row" {
                                        label.device-name for={ "device-" (n) } { (device.name) }
                                    }
                                    td { (method(device, t)) }
                                    td { (when(device.linked_at.as_ref(), t)) }
                                    td {
                                        (device.last_used_at.as_ref()
                                            .and_then(proto::convert::datetime)
                                            .map_or_else(|| t.never.to_owned(),
                                                |at| at.format("%Y-%m-%d").to_string()))
                                    }
                                    td { (if device.biometrics_enabled { t.on } else { t.off }) }
                                }
                            }
                        }
                    }
                    div.actions {
                        button #unlink-selected type="submit" name="scope" value="selected" {
                            (t.unlink_selected)
                        }
                        button.danger #unlink-all type="submit" name="scope" value="all" {
                            (t.unlink_all)
                        }
                    }
                }
            }
        },
    )
}

fn method(device: &DeviceView, t: &Texts) -> &'static str {
    match LinkMethod::try_from(device.method) {
        Ok(LinkMethod::Qr) => t.method_qr,
        Ok(LinkMethod::Luxtrust) => match device
            .product
            .as_ref()
            .map(|product| ProductKind::try_from(product.kind))
        {
            Some(Ok(ProductKind::LuxtrustScan)) => t.method_luxtrust_scan,
            _ => t.method_luxtrust_mobile,
        },
        Ok(LinkMethod::Unspecified) | Err(_) => t.unknown,
    }
}

/// `POST /devices/unlink`: the selected devices (`scope=selected`) or all (`scope=all`).
pub(crate) async fn unlink(posted: Posted) -> Response {
    let visit = &posted.visit;
    let target = if posted.get("scope") == "all" {
        UnlinkTarget::All
    } else {
        let mut ids = posted.all("device");
        ids.sort();
        ids.dedup();
        if ids.is_empty() {
            flash(visit, Flash::error(visit.texts().select_first));
            return redirect("/devices");
        }
        UnlinkTarget::Devices(ids)
    };
    perform(visit, Action::Unlink(target)).await
}
