//! `linkctl audit …`: AuditService for people (a table) and scripts (`--json`: one JSON object
//! per line), written to the writer the caller passes (standard output, from `main`).

use std::io::Write;

use anyhow::Context as _;
use proto::convert::TextForm as _;
use proto::v1::audit_service_client::AuditServiceClient;
use proto::v1::{self, AuditEvent};
use serde_json::json;
use tonic::transport::Channel;

use crate::client::{bearer, format_time};

/// An audit subcommand (also the `linkctl audit` command line).
#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// AuditService.ListEvents.
    List {
        /// The account (auditors); empty for your own.
        #[arg(long, default_value = "")]
        account_id: String,
        /// Only events about this device.
        #[arg(long, default_value = "")]
        device_id: String,
        /// Event types, e.g. --event-type DeviceLinked (repeatable).
        #[arg(long = "event-type")]
        event_types: Vec<String>,
        /// RFC 3339 start (inclusive).
        #[arg(long)]
        from: Option<String>,
        /// RFC 3339 end (exclusive).
        #[arg(long)]
        to: Option<String>,
        /// Events per page (0: the service's default).
        #[arg(long, default_value_t = 0)]
        page_size: i32,
        /// From a previous page.
        #[arg(long, default_value = "")]
        page_token: String,
        /// One JSON object per line instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// AuditService.ExportHistory.
    Export {
        /// The account (auditors); empty for your own.
        #[arg(long, default_value = "")]
        account_id: String,
        /// One JSON object per line instead of a table.
        #[arg(long)]
        json: bool,
        /// The answer to an access request (docs/privacy.md): after the events, the devices
        /// linked now and who read the history (`ListAccessRecords`); with --json each line
        /// says what it is (`"record": "event" | "device" | "access"`).
        #[arg(long)]
        access_request: bool,
    },
    /// AuditService.ListAccessRecords: who read the history (every page).
    Access {
        /// The account (auditors); empty for your own.
        #[arg(long, default_value = "")]
        account_id: String,
        /// One JSON object per line instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// AuditService.DevicesAt.
    DevicesAt {
        /// The account (auditors); empty for your own.
        #[arg(long, default_value = "")]
        account_id: String,
        /// RFC 3339 instant.
        #[arg(long)]
        at: String,
        /// One JSON object per line instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// AuditService.VerifyHistory.
    Verify {
        /// The account (auditors); empty for your own.
        #[arg(long, default_value = "")]
        account_id: String,
        /// One JSON object per line instead of a table.
        #[arg(long)]
        json: bool,
    },
}

fn timestamp(field: &str, raw: &str) -> anyhow::Result<prost_types::Timestamp> {
    let at = chrono::DateTime::parse_from_rfc3339(raw).with_context(|| {
        format!("--{field} must be an RFC 3339 time, e.g. 2026-03-03T18:00:00+01:00")
    })?;
    Ok(proto::convert::timestamp(at.with_timezone(&chrono::Utc)))
}

fn write_event(out: &mut impl Write, event: &AuditEvent, as_json: bool) -> std::io::Result<()> {
    if as_json {
        let details: serde_json::Value =
            serde_json::from_str(&event.details_json).unwrap_or(serde_json::Value::Null);
        let line = json!({
            "global_position": event.global_position,
            "event_id": event.event_id,
            "event_type": event.event_type,
            "occurred_at": format_time(event.occurred_at.as_ref()),
            "actor": event.actor,
            "request_id": event.request_id,
            "account_id": event.account_id,
            "device_id": event.device_id,
            "details": details,
        });
        writeln!(out, "{line}")
    } else {
        writeln!(
            out,
            "{:>8}  {}  {:<22} {:<40} {}",
            event.global_position,
            format_time(event.occurred_at.as_ref()),
            event.event_type,
            event.actor,
            event.details_json
        )
    }
}

fn write_device(
    out: &mut impl Write,
    device: &v1::DeviceAt,
    as_json: bool,
    tagged: bool,
) -> std::io::Result<()> {
    let method = v1::LinkMethod::text_of(device.method).unwrap_or("?");
    if as_json {
        let mut line = json!({
            "device_id": device.device_id, "name": device.name, "method": method,
            "linked_at": format_time(device.linked_at.as_ref()),
            "linked_by_event_id": device.linked_by_event_id,
        });
        if tagged {
            line["record"] = json!("device");
        }
        writeln!(out, "{line}")
    } else {
        writeln!(
            out,
            "{}  {:<24} via {method:<8} linked {}",
            device.device_id,
            device.name,
            format_time(device.linked_at.as_ref())
        )
    }
}

/// Every access record of `account_id`, page by page.
async fn write_access_records(
    client: &mut AuditServiceClient<Channel>,
    out: &mut impl Write,
    token: &str,
    account_id: String,
    as_json: bool,
    tagged: bool,
) -> anyhow::Result<()> {
    let mut page_token = String::new();
    loop {
        let request = v1::ListAccessRecordsRequest {
            account_id: account_id.clone(),
            page_size: 500,
            page_token,
        };
        let reply = client
            .list_access_records(bearer(request, token)?)
            .await?
            .into_inner();
        for record in &reply.records {
            let at = format_time(record.at.as_ref());
            if as_json {
                let filters: serde_json::Value =
                    serde_json::from_str(&record.filters_json).unwrap_or(serde_json::Value::Null);
                let mut line = json!({
                    "account_id": record.account_id, "reader": record.reader,
                    "rpc": record.rpc, "filters": filters, "at": at,
                });
                if tagged {
                    line["record"] = json!("access");
                }
                writeln!(out, "{line}")?;
            } else {
                writeln!(
                    out,
                    "{at}  {:<28} {:<18} {}",
                    record.reader, record.rpc, record.filters_json
                )?;
            }
        }
        if reply.next_page_token.is_empty() {
            return Ok(());
        }
        page_token = reply.next_page_token;
    }
}

/// Runs `command` against the AuditService on `channel` with `token`, writing what it answers
/// to `out`.
pub async fn run(
    channel: Channel,
    command: Command,
    token: &str,
    out: &mut impl Write,
) -> anyhow::Result<()> {
    let mut client = AuditServiceClient::new(channel);
    match command {
        Command::List {
            account_id,
            device_id,
            event_types,
            from,
            to,
            page_size,
            page_token,
            json,
        } => {
            let request = v1::ListEventsRequest {
                account_id,
                device_id,
                event_types,
                from: from.as_deref().map(|t| timestamp("from", t)).transpose()?,
                to: to.as_deref().map(|t| timestamp("to", t)).transpose()?,
                page_size,
                page_token,
            };
            let reply = client
                .list_events(bearer(request, token)?)
                .await?
                .into_inner();
            for event in &reply.events {
                write_event(out, event, json)?;
            }
            if !reply.next_page_token.is_empty() {
                if json {
                    writeln!(
                        out,
                        "{}",
                        json!({ "next_page_token": reply.next_page_token })
                    )?;
                } else {
                    writeln!(out, "next_page_token: {}", reply.next_page_token)?;
                }
            }
        }
        Command::Export {
            account_id,
            json,
            access_request,
        } => {
            let request = v1::ExportHistoryRequest {
                account_id: account_id.clone(),
            };
            let mut stream = client
                .export_history(bearer(request, token)?)
                .await?
                .into_inner();
            while let Some(event) = stream.message().await? {
                if access_request && json {
                    let mut line = Vec::new();
                    write_event(&mut line, &event, true)?;
                    let mut value: serde_json::Value = serde_json::from_slice(&line)?;
                    value["record"] = json!("event");
                    writeln!(out, "{value}")?;
                } else {
                    write_event(out, &event, json)?;
                }
            }
            if access_request {
                let now = chrono::Utc::now().to_rfc3339();
                let devices = v1::DevicesAtRequest {
                    account_id: account_id.clone(),
                    at: Some(timestamp("at", &now)?),
                };
                let reply = client
                    .devices_at(bearer(devices, token)?)
                    .await?
                    .into_inner();
                for device in &reply.devices {
                    write_device(out, device, json, true)?;
                }
                write_access_records(&mut client, out, token, account_id, json, true).await?;
            }
        }
        Command::Access { account_id, json } => {
            write_access_records(&mut client, out, token, account_id, json, false).await?;
        }
        Command::DevicesAt {
            account_id,
            at,
            json,
        } => {
            let request = v1::DevicesAtRequest {
                account_id,
                at: Some(timestamp("at", &at)?),
            };
            let reply = client
                .devices_at(bearer(request, token)?)
                .await?
                .into_inner();
            for device in &reply.devices {
                write_device(out, device, json, false)?;
            }
        }
        Command::Verify { account_id, json } => {
            let request = v1::VerifyHistoryRequest { account_id };
            let reply = client
                .verify_history(bearer(request, token)?)
                .await?
                .into_inner();
            if json {
                let line = json!({
                    "intact": reply.intact, "events_checked": reply.events_checked,
                    "intact_up_to_position": reply.intact_up_to_position,
                    "broken_at_position": reply.broken_at_position,
                    "broken_event_id": reply.broken_event_id, "reason": reply.reason,
                });
                writeln!(out, "{line}")?;
            } else if reply.intact {
                writeln!(
                    out,
                    "intact up to position {} ({} events checked)",
                    reply.intact_up_to_position, reply.events_checked
                )?;
            } else {
                writeln!(
                    out,
                    "BROKEN at position {} ({}): {}",
                    reply.broken_at_position, reply.broken_event_id, reply.reason
                )?;
            }
        }
    }
    Ok(())
}
