//! `AuditService`: an account's full history and its devices at an instant, read from the event
//! store, and the tamper-evidence check of the event store against the read side's witness. A
//! translator: request → [`read::audit`] (and `history`, for the event store) → answer.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, Utc};
use proto::convert::{TextForm as _, datetime, timestamp};
use proto::v1::audit_service_server::AuditService;
use proto::v1::{
    self, AccessRecord, AuditEvent, DeviceAt, DevicesAtRequest, DevicesAtResponse,
    ExportHistoryRequest, ListAccessRecordsRequest, ListAccessRecordsResponse, ListEventsRequest,
    ListEventsResponse, VerifyHistoryRequest, VerifyHistoryResponse,
};
use serde_json::json;
use sqlx::PgPool;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use super::{Queries, next_page_token, page_size};
use crate::read::access;
use crate::read::audit::{self, AuditRow, Filter, LinkedAt, Store};
use crate::sealed::Opener;
use crate::status::{QueryError, to_status};

#[cfg(test)]
mod tests;

/// The role that may read any account's history.
const AUDITOR_ROLE: &str = "auditor";

/// Events per page of `ExportHistory`.
const EXPORT_PAGE: usize = 1000;

/// The audit API's state.
#[derive(Debug, Clone)]
pub(crate) struct Audits {
    /// Authentication and the read-model pool.
    pub(crate) queries: Queries,
    /// Read access to the event store, where the history is read (`LINKD_EVENT_STORE_URL`).
    pub(crate) event_store: Option<PgPool>,
    /// What opens the history's sealed personal fields (`LINKD_KEK_FILE` too).
    pub(crate) opener: Option<Opener>,
}

impl From<AuditRow> for AuditEvent {
    fn from(row: AuditRow) -> Self {
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

/// A linked device as the audit log recorded its link. A method this build does not know
/// answers `LINK_METHOD_UNSPECIFIED`.
impl From<LinkedAt> for DeviceAt {
    fn from(linked: LinkedAt) -> Self {
        let detail = |key: &str| linked.details.get(key).and_then(serde_json::Value::as_str);
        Self {
            name: detail("device_name").unwrap_or_default().to_owned(),
            method: detail("method")
                .map_or(v1::LinkMethod::Unspecified.into(), v1::LinkMethod::answer),
            device_id: linked.device_id,
            linked_at: Some(timestamp(linked.occurred_at)),
            linked_by_event_id: linked.event_id,
        }
    }
}

/// A time of the request, if set.
fn time(
    field: &str,
    at: Option<&prost_types::Timestamp>,
) -> Result<Option<DateTime<Utc>>, QueryError> {
    at.map(|t| {
        datetime(t)
            .ok_or_else(|| QueryError::InvalidArgument(format!("{field} is not a valid time")))
    })
    .transpose()
}

/// A `ListEvents` call's filters, as its access record keeps them.
fn filters(filter: &Filter, after: i64) -> serde_json::Value {
    json!({
        "device_id": filter.device,
        "event_types": filter.types,
        "from": filter.from,
        "to": filter.to,
        "after_position": after,
    })
}

/// The filter as text, bound into page tokens so a token is only used with its filter.
fn filter_key(filter: &Filter) -> String {
    format!(
        "{}|{}|{}|{:?}|{:?}",
        filter.account,
        filter.device,
        filter.types.join(","),
        filter.from.map(|t| t.timestamp_micros()),
        filter.to.map(|t| t.timestamp_micros())
    )
}

/// A page token: the last position given, bound to `key` (a filter, or an account's records).
fn token(key: &str, after: i64) -> String {
    URL_SAFE_NO_PAD.encode(format!("{after}\n{key}"))
}

/// The position a page token bound to `key` carries; `INVALID_ARGUMENT` naming `what` if it
/// belongs to something else.
fn parse_token(key: &str, token: &str, what: &str) -> Result<i64, QueryError> {
    let invalid = || {
        QueryError::InvalidArgument(format!(
            "page_token does not belong to {what}; start without one"
        ))
    };
    let raw = URL_SAFE_NO_PAD.decode(token).map_err(|_| invalid())?;
    let raw = String::from_utf8(raw).map_err(|_| invalid())?;
    let (after, bound) = raw.split_once('\n').ok_or_else(invalid)?;
    if bound != key {
        return Err(invalid());
    }
    after.parse().map_err(|_| invalid())
}

fn page_token(filter: &Filter, after: i64) -> String {
    token(&filter_key(filter), after)
}

fn parse_page_token(filter: &Filter, page: &str) -> Result<i64, QueryError> {
    parse_token(&filter_key(filter), page, "this filter")
}

/// Access records' pages are bound to their account.
fn access_key(account: &str) -> String {
    format!("access|{account}")
}

fn event_types(requested: &[String]) -> Result<Vec<String>, QueryError> {
    let not_a_type =
        |t: &&String| t.is_empty() || t.len() > 64 || !t.chars().all(|c| c.is_ascii_alphanumeric());
    if let Some(bad) = requested.iter().find(not_a_type) {
        return Err(QueryError::InvalidArgument(format!(
            "{bad:?} is not an event type"
        )));
    }
    let mut types = requested.to_vec();
    types.sort();
    types.dedup();
    Ok(types)
}

/// Whose history a call reads, and who reads it.
struct Reading {
    /// The account read.
    account: String,
    /// `auditor:<subject>` when the caller is not the holder (the read is recorded).
    auditor: Option<String>,
}

impl Reading {
    /// Records the read if an auditor makes it, before anything is read: a read that cannot be
    /// recorded is not answered.
    async fn record(
        &self,
        pool: &PgPool,
        rpc: &str,
        filters: &serde_json::Value,
    ) -> Result<(), QueryError> {
        match &self.auditor {
            Some(reader) => access::record(pool, &self.account, reader, rpc, filters).await,
            None => Ok(()),
        }
    }
}

impl From<access::AccessRecord> for AccessRecord {
    fn from(row: access::AccessRecord) -> Self {
        Self {
            reader: row.reader,
            rpc: row.rpc,
            filters_json: row.filters.to_string(),
            at: Some(timestamp(row.at)),
            account_id: row.account_id,
        }
    }
}

impl Audits {
    /// The event store, where every answer but the access records is read;
    /// `FAILED_PRECONDITION` if this instance has no access to it.
    fn store(&self) -> Result<Store<'_>, QueryError> {
        let pool = self.event_store.as_ref().ok_or_else(|| {
            QueryError::FailedPrecondition(
                "this projection service has no access to the event store (LINKD_EVENT_STORE_URL), \
                 where the history is read"
                    .into(),
            )
        })?;
        Ok(Store {
            pool,
            opener: self.opener.as_ref(),
        })
    }

    /// The account the caller may read: an auditor names any; a re-authenticated holder only
    /// their own (empty means their own).
    /// The account whose history the caller may read (an auditor names it; a holder reads
    /// their own), once the caller's audit query is counted (RESOURCE_EXHAUSTED past its
    /// limit; an auditor is counted as themself, a holder as their account).
    async fn reading<T>(
        &self,
        request: &Request<T>,
        requested: &str,
    ) -> Result<Reading, QueryError> {
        let claims = self.queries.claims(request)?;
        let requested = match requested {
            "" => None,
            raw => Some(super::account_id("account_id", raw)?),
        };
        let auditor = claims.roles.iter().any(|role| role == AUDITOR_ROLE);
        let (account, caller) = if auditor {
            let account = requested.ok_or_else(|| {
                QueryError::InvalidArgument("account_id is required for auditors".into())
            })?;
            // An auditor reads other people's histories: as recently signed in as a holder
            // reading their own (issue 19, fifth point).
            self.queries.recently_authenticated(&claims)?;
            (account, format!("auditor:{}", claims.sub))
        } else {
            let own = self.queries.reauthenticated(&claims)?;
            if requested.is_some_and(|requested| requested != own) {
                return Err(QueryError::PermissionDenied(
                    "an account holder may only read their own history".into(),
                ));
            }
            (own.clone(), own)
        };
        self.queries
            .admit(crate::limits::QueryRule::Audit, &caller)
            .await?;
        // A holder's own reads are not recorded; an auditor's are (docs/privacy.md).
        Ok(Reading {
            account,
            auditor: auditor.then_some(caller),
        })
    }

    async fn access_records(
        &self,
        request: Request<ListAccessRecordsRequest>,
    ) -> Result<ListAccessRecordsResponse, QueryError> {
        let reading = self
            .reading(&request, &request.get_ref().account_id)
            .await?;
        let body = request.into_inner();
        let page_size = page_size(body.page_size, 100, 500)?;
        let after = match body.page_token.as_str() {
            "" => 0,
            page => parse_token(
                &access_key(&reading.account),
                page,
                "this account's records",
            )?,
        };
        reading
            .record(&self.queries.pool, "ListAccessRecords", &json!({}))
            .await?;
        let mut rows =
            access::page(&self.queries.pool, &reading.account, after, page_size + 1).await?;
        let next_page_token = next_page_token(&mut rows, page_size, |row| {
            token(&access_key(&reading.account), row.id)
        });
        Ok(ListAccessRecordsResponse {
            records: rows.into_iter().map(AccessRecord::from).collect(),
            next_page_token,
        })
    }

    async fn list(
        &self,
        request: Request<ListEventsRequest>,
    ) -> Result<ListEventsResponse, QueryError> {
        let reading = self
            .reading(&request, &request.get_ref().account_id)
            .await?;
        let account = reading.account.clone();
        let body = request.into_inner();
        if !body.device_id.is_empty() && uuid::Uuid::try_parse(&body.device_id).is_err() {
            return Err(QueryError::InvalidArgument(
                "device_id must be a UUID".into(),
            ));
        }
        let types = event_types(&body.event_types)?;
        let page_size = page_size(body.page_size, 100, 500)?;
        let filter = Filter {
            account,
            device: body.device_id,
            types,
            from: time("from", body.from.as_ref())?,
            to: time("to", body.to.as_ref())?,
        };
        let after = match body.page_token.as_str() {
            "" => 0,
            token => parse_page_token(&filter, token)?,
        };
        let store = self.store()?;
        reading
            .record(&self.queries.pool, "ListEvents", &filters(&filter, after))
            .await?;
        let mut rows = audit::page(
            store,
            &filter,
            after,
            usize::try_from(page_size + 1).unwrap_or(1),
        )
        .await?;
        let next_page_token = next_page_token(&mut rows, page_size, |row| {
            page_token(&filter, row.global_position)
        });
        Ok(ListEventsResponse {
            events: rows.into_iter().map(AuditEvent::from).collect(),
            next_page_token,
        })
    }

    /// Sends every event of `filter`'s account on `sender`, a chunk at a time (its positions
    /// read once), until the end or until the client goes away.
    async fn export(
        self,
        filter: Filter,
        sender: tokio::sync::mpsc::Sender<Result<AuditEvent, Status>>,
    ) {
        let rows = async {
            let store = self.store()?;
            let positions = audit::positions(store, &filter.account, 0).await?;
            for positions in positions.chunks(EXPORT_PAGE) {
                let rows = audit::at(store, &filter, positions).await?;
                for row in rows {
                    if sender.send(Ok(row.into())).await.is_err() {
                        return Ok(()); // the client went away
                    }
                }
            }
            Ok::<(), QueryError>(())
        };
        if let Err(error) = rows.await {
            let _ = sender.send(Err(to_status(error))).await;
        }
    }

    async fn linked_at(
        &self,
        request: Request<DevicesAtRequest>,
    ) -> Result<DevicesAtResponse, QueryError> {
        let reading = self
            .reading(&request, &request.get_ref().account_id)
            .await?;
        let at = time("at", request.get_ref().at.as_ref())?
            .ok_or_else(|| QueryError::InvalidArgument("at is required".into()))?;
        let store = self.store()?;
        reading
            .record(&self.queries.pool, "DevicesAt", &json!({ "at": at }))
            .await?;
        let linked = audit::linked_at(store, &reading.account, at).await?;
        Ok(DevicesAtResponse {
            devices: linked.into_iter().map(DeviceAt::from).collect(),
        })
    }

    async fn verify(
        &self,
        request: Request<VerifyHistoryRequest>,
    ) -> Result<VerifyHistoryResponse, QueryError> {
        let reading = self
            .reading(&request, &request.get_ref().account_id)
            .await?;
        let store = self.store()?.pool;
        reading
            .record(&self.queries.pool, "VerifyHistory", &json!({}))
            .await?;
        let account = reading.account;
        let verdict = audit::verify(&self.queries.pool, store, &account).await?;
        Ok(match verdict {
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
        })
    }
}

#[tonic::async_trait]
impl AuditService for Audits {
    type ExportHistoryStream = ReceiverStream<Result<AuditEvent, Status>>;

    #[tracing::instrument(skip_all, err(level = "info"))]
    async fn list_events(
        &self,
        request: Request<ListEventsRequest>,
    ) -> Result<Response<ListEventsResponse>, Status> {
        self.list(request)
            .await
            .map(Response::new)
            .map_err(to_status)
    }

    #[tracing::instrument(skip_all, err(level = "info"))]
    async fn export_history(
        &self,
        request: Request<ExportHistoryRequest>,
    ) -> Result<Response<Self::ExportHistoryStream>, Status> {
        let reading = self
            .reading(&request, &request.get_ref().account_id)
            .await
            .map_err(to_status)?;
        self.store().map_err(to_status)?;
        reading
            .record(&self.queries.pool, "ExportHistory", &json!({}))
            .await
            .map_err(to_status)?;
        let filter = Filter {
            account: reading.account,
            device: String::new(),
            types: vec![],
            from: None,
            to: None,
        };
        let (sender, receiver) = tokio::sync::mpsc::channel(256);
        tokio::spawn(self.clone().export(filter, sender));
        Ok(Response::new(ReceiverStream::new(receiver)))
    }

    #[tracing::instrument(skip_all, err(level = "info"))]
    async fn devices_at(
        &self,
        request: Request<DevicesAtRequest>,
    ) -> Result<Response<DevicesAtResponse>, Status> {
        self.linked_at(request)
            .await
            .map(Response::new)
            .map_err(to_status)
    }

    #[tracing::instrument(skip_all, err(level = "info"))]
    async fn list_access_records(
        &self,
        request: Request<ListAccessRecordsRequest>,
    ) -> Result<Response<ListAccessRecordsResponse>, Status> {
        self.access_records(request)
            .await
            .map(Response::new)
            .map_err(to_status)
    }

    #[tracing::instrument(skip_all, err(level = "info"))]
    async fn verify_history(
        &self,
        request: Request<VerifyHistoryRequest>,
    ) -> Result<Response<VerifyHistoryResponse>, Status> {
        self.verify(request)
            .await
            .map(Response::new)
            .map_err(to_status)
    }
}
