//! `AuditService`: an account's full history from the audit log, devices at an instant, and
//! the tamper-evidence check against the event store.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, Utc};
use proto::convert::{TextForm as _, datetime, timestamp};
use proto::v1::audit_service_server::AuditService;
use proto::v1::{
    self, AuditEvent, DeviceAt, DevicesAtRequest, DevicesAtResponse, ExportHistoryRequest,
    ListEventsRequest, ListEventsResponse, VerifyHistoryRequest, VerifyHistoryResponse,
};
use sqlx::PgPool;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use crate::grpc::{Queries, portal_claims};

/// The role that may read any account's history.
pub const AUDITOR_ROLE: &str = "auditor";

/// The audit API's state.
#[derive(Debug, Clone)]
pub struct Audits {
    /// Authentication and the read-model pool.
    pub queries: Queries,
    /// Read access to the event store, for `VerifyHistory` (`LINKD_EVENT_STORE_URL`).
    pub event_store: Option<PgPool>,
}

#[derive(sqlx::FromRow)]
struct Row {
    global_position: i64,
    event_id: String,
    aggregate_type: String,
    aggregate_id: String,
    sequence: i64,
    event_type: String,
    occurred_at: DateTime<Utc>,
    actor: String,
    request_id: String,
    account_id: String,
    device_id: String,
    details: serde_json::Value,
}

fn from_ts(
    field: &str,
    at: Option<&prost_types::Timestamp>,
) -> Result<Option<DateTime<Utc>>, Status> {
    at.map(|t| {
        datetime(t).ok_or_else(|| Status::invalid_argument(format!("{field} is not a valid time")))
    })
    .transpose()
}

impl From<Row> for AuditEvent {
    fn from(row: Row) -> Self {
        Self {
            global_position: row.global_position,
            event_id: row.event_id,
            aggregate_type: row.aggregate_type,
            aggregate_id: row.aggregate_id,
            sequence: row.sequence,
            event_type: row.event_type,
            occurred_at: Some(timestamp(row.occurred_at)),
            actor: row.actor,
            request_id: row.request_id,
            account_id: row.account_id,
            device_id: row.device_id,
            details_json: row.details.to_string(),
        }
    }
}

const COLUMNS: &str = "global_position, event_id, aggregate_type, aggregate_id, sequence, \
    event_type, occurred_at, actor, request_id, account_id, device_id, details";

fn unavailable(error: &sqlx::Error) -> Status {
    tracing::error!(%error, "audit query failed");
    Status::unavailable("the audit log is unavailable; retry later")
}

impl Audits {
    /// The account the caller may read: an auditor names any; a re-authenticated holder only
    /// their own (empty means their own).
    fn account<T>(&self, request: &Request<T>, requested: &str) -> Result<String, Status> {
        let claims = portal_claims(&self.queries.idp, request)?;
        if claims.roles.iter().any(|role| role == AUDITOR_ROLE) {
            if requested.is_empty() {
                return Err(Status::invalid_argument(
                    "account_id is required for auditors",
                ));
            }
            return Ok(requested.to_owned());
        }
        let max_age = i64::try_from(self.queries.reauth_max_age.as_secs()).unwrap_or(i64::MAX);
        let own = claims
            .reauthenticated_citizen(Utc::now().timestamp(), max_age)
            .map_err(|refusal| Status::permission_denied(refusal.to_string()))?;
        if !requested.is_empty() && requested != own {
            return Err(Status::permission_denied(
                "an account holder may only read their own history",
            ));
        }
        Ok(own.to_owned())
    }
}

struct Filter {
    account: String,
    device: String,
    types: Vec<String>,
    from: Option<DateTime<Utc>>,
    to: Option<DateTime<Utc>>,
}

impl Filter {
    /// The filter as text, bound into page tokens so a token is only used with its filter.
    fn key(&self) -> String {
        format!(
            "{}|{}|{}|{:?}|{:?}",
            self.account,
            self.device,
            self.types.join(","),
            self.from.map(|t| t.timestamp_micros()),
            self.to.map(|t| t.timestamp_micros())
        )
    }
}

fn page_token(filter: &Filter, after: i64) -> String {
    URL_SAFE_NO_PAD.encode(format!("{after}\n{}", filter.key()))
}

fn parse_page_token(filter: &Filter, token: &str) -> Result<i64, Status> {
    let invalid =
        || Status::invalid_argument("page_token does not belong to this filter; start without one");
    let raw = URL_SAFE_NO_PAD.decode(token).map_err(|_| invalid())?;
    let raw = String::from_utf8(raw).map_err(|_| invalid())?;
    let (after, key) = raw.split_once('\n').ok_or_else(invalid)?;
    if key != filter.key() {
        return Err(invalid());
    }
    after.parse().map_err(|_| invalid())
}

async fn page(pool: &PgPool, filter: &Filter, after: i64, limit: i64) -> Result<Vec<Row>, Status> {
    sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM audit_log WHERE account_id = $1 \
         AND ($2 = '' OR device_id = $2) \
         AND (cardinality($3::text[]) = 0 OR event_type = ANY($3)) \
         AND ($4::timestamptz IS NULL OR occurred_at >= $4) \
         AND ($5::timestamptz IS NULL OR occurred_at < $5) \
         AND global_position > $6 ORDER BY global_position LIMIT $7"
    ))
    .bind(&filter.account)
    .bind(&filter.device)
    .bind(&filter.types)
    .bind(filter.from)
    .bind(filter.to)
    .bind(after)
    .bind(limit)
    .fetch_all(pool)
    .await
    .map_err(|e| unavailable(&e))
}

#[tonic::async_trait]
impl AuditService for Audits {
    type ExportHistoryStream = ReceiverStream<Result<AuditEvent, Status>>;

    #[tracing::instrument(skip_all, err(level = "info"))]
    async fn list_events(
        &self,
        request: Request<ListEventsRequest>,
    ) -> Result<Response<ListEventsResponse>, Status> {
        let account = self.account(&request, &request.get_ref().account_id)?;
        let body = request.into_inner();
        if !body.device_id.is_empty() && uuid::Uuid::try_parse(&body.device_id).is_err() {
            return Err(Status::invalid_argument("device_id must be a UUID"));
        }
        if let Some(bad) = body
            .event_types
            .iter()
            .find(|t| t.is_empty() || t.len() > 64 || !t.chars().all(|c| c.is_ascii_alphanumeric()))
        {
            return Err(Status::invalid_argument(format!(
                "{bad:?} is not an event type"
            )));
        }
        let page_size: i64 = match body.page_size {
            0 => 100,
            n if n < 0 => return Err(Status::invalid_argument("page_size must not be negative")),
            n => i64::from(n.min(500)),
        };
        let mut types = body.event_types.clone();
        types.sort();
        types.dedup();
        let filter = Filter {
            account,
            device: body.device_id.clone(),
            types,
            from: from_ts("from", body.from.as_ref())?,
            to: from_ts("to", body.to.as_ref())?,
        };
        let after = match body.page_token.as_str() {
            "" => 0,
            token => parse_page_token(&filter, token)?,
        };
        let mut rows = page(&self.queries.pool, &filter, after, page_size + 1).await?;
        let next_page_token = if rows.len() > usize::try_from(page_size).unwrap_or(usize::MAX) {
            rows.pop();
            rows.last()
                .map(|row| page_token(&filter, row.global_position))
                .unwrap_or_default()
        } else {
            String::new()
        };
        Ok(Response::new(ListEventsResponse {
            events: rows.into_iter().map(AuditEvent::from).collect(),
            next_page_token,
        }))
    }

    #[tracing::instrument(skip_all, err(level = "info"))]
    async fn export_history(
        &self,
        request: Request<ExportHistoryRequest>,
    ) -> Result<Response<Self::ExportHistoryStream>, Status> {
        let account = self.account(&request, &request.get_ref().account_id)?;
        let filter = Filter {
            account,
            device: String::new(),
            types: vec![],
            from: None,
            to: None,
        };
        let pool = self.queries.pool.clone();
        let (sender, receiver) = tokio::sync::mpsc::channel(256);
        tokio::spawn(async move {
            let mut after = 0;
            loop {
                let rows = match page(&pool, &filter, after, 1000).await {
                    Ok(rows) => rows,
                    Err(status) => {
                        let _ = sender.send(Err(status)).await;
                        return;
                    }
                };
                let Some(last) = rows.last().map(|row| row.global_position) else {
                    return;
                };
                for row in rows {
                    if sender.send(Ok(row.into())).await.is_err() {
                        return; // the client went away
                    }
                }
                after = last;
            }
        });
        Ok(Response::new(ReceiverStream::new(receiver)))
    }

    #[tracing::instrument(skip_all, err(level = "info"))]
    async fn devices_at(
        &self,
        request: Request<DevicesAtRequest>,
    ) -> Result<Response<DevicesAtResponse>, Status> {
        let account = self.account(&request, &request.get_ref().account_id)?;
        let at = from_ts("at", request.get_ref().at.as_ref())?
            .ok_or_else(|| Status::invalid_argument("at is required"))?;
        let rows: Vec<(String, String, DateTime<Utc>, String, serde_json::Value)> = sqlx::query_as(
            "SELECT device_id, event_type, occurred_at, event_id, details FROM ( \
                   SELECT DISTINCT ON (device_id) device_id, event_type, occurred_at, event_id, \
                   details FROM audit_log WHERE aggregate_type = 'device' AND account_id = $1 \
                   AND event_type IN ('DeviceLinked', 'DeviceUnlinked') AND occurred_at <= $2 \
                   ORDER BY device_id, sequence DESC) last \
                 WHERE event_type = 'DeviceLinked' ORDER BY occurred_at, device_id",
        )
        .bind(&account)
        .bind(at)
        .fetch_all(&self.queries.pool)
        .await
        .map_err(|e| unavailable(&e))?;
        let devices = rows
            .into_iter()
            .map(|(device_id, _, linked_at, event_id, details)| {
                let method = details.get("method").and_then(serde_json::Value::as_str);
                DeviceAt {
                    device_id,
                    name: details
                        .get("device_name")
                        .and_then(serde_json::Value::as_str)
                        .unwrap_or_default()
                        .to_owned(),
                    method: method
                        .map_or(v1::LinkMethod::Unspecified.into(), v1::LinkMethod::answer),
                    linked_at: Some(timestamp(linked_at)),
                    linked_by_event_id: event_id,
                }
            })
            .collect();
        Ok(Response::new(DevicesAtResponse { devices }))
    }

    #[tracing::instrument(skip_all, err(level = "info"))]
    async fn verify_history(
        &self,
        request: Request<VerifyHistoryRequest>,
    ) -> Result<Response<VerifyHistoryResponse>, Status> {
        let account = self.account(&request, &request.get_ref().account_id)?;
        let store = self.event_store.as_ref().ok_or_else(|| {
            Status::failed_precondition(
                "this projection service has no access to the event store (LINKD_EVENT_STORE_URL)",
            )
        })?;
        // The aggregates the audit log knows for the account (with their last event: a history
        // cut short is detected too), and any the event store attributes to it.
        let logged: Vec<(String, String, i64, i64)> = sqlx::query_as(
            "SELECT aggregate_type, aggregate_id, max(sequence), max(global_position) \
             FROM audit_log WHERE account_id = $1 GROUP BY aggregate_type, aggregate_id",
        )
        .bind(&account)
        .fetch_all(&self.queries.pool)
        .await
        .map_err(|e| unavailable(&e))?;
        let mut aggregates: Vec<history::Known> = logged
            .into_iter()
            .map(
                |(aggregate_type, aggregate_id, sequence, position)| history::Known {
                    aggregate_type,
                    aggregate_id,
                    last: Some((sequence, position)),
                },
            )
            .collect();
        let stored = history::aggregates_of(store, &account)
            .await
            .map_err(|e| unavailable(&e))?;
        for extra in stored {
            let known = aggregates.iter().any(|k| {
                k.aggregate_type == extra.aggregate_type && k.aggregate_id == extra.aggregate_id
            });
            if !known {
                aggregates.push(extra);
            }
        }
        let verdict = history::verify_all(store, &aggregates)
            .await
            .map_err(|e| unavailable(&e))?;
        Ok(Response::new(match verdict {
            history::Verdict::Intact {
                events,
                up_to_position,
            } => VerifyHistoryResponse {
                intact: true,
                events_checked: i64::try_from(events).unwrap_or(i64::MAX),
                intact_up_to_position: up_to_position,
                ..Default::default()
            },
            history::Verdict::Broken {
                global_position,
                event_id,
                reason,
            } => VerifyHistoryResponse {
                intact: false,
                broken_at_position: global_position,
                broken_event_id: event_id,
                reason,
                ..Default::default()
            },
        }))
    }
}
