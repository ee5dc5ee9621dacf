//! An account's history for `AuditService`, read from the event store itself (docs/adr/0029):
//! its events ([`history::ACCOUNT_EVENTS`]) turned into bus envelopes as the relay turns them,
//! their sealed fields opened (placeholders once erased) and their facts shown as the audit log
//! shows them ([`crate::projections::audit::details`]). And `VerifyHistory`, which checks the
//! event store against the witness the read side keeps (`audit_heads`).

use std::collections::HashMap;
use std::sync::LazyLock;

use chrono::{DateTime, Utc};
use history::stored::{self, StoredEvent};
use proto::convert::{aggregate, datetime};
use proto::v1::EventEnvelope;
use sqlx::PgPool;

use crate::projections::audit::{details, device_of};
use crate::sealed::{OpenError, Opener};
use crate::status::QueryError;

/// An event as `AuditService` shows it.
#[derive(Debug)]
pub(crate) struct AuditRow {
    /// Position in the event store.
    pub(crate) global_position: i64,
    /// `<aggregate_type>/<aggregate_id>/<sequence>`.
    pub(crate) event_id: String,
    /// The aggregate's type.
    pub(crate) aggregate_type: String,
    /// The aggregate's id.
    pub(crate) aggregate_id: String,
    /// Sequence within the aggregate.
    pub(crate) sequence: i64,
    /// E.g. `DeviceLinked`.
    pub(crate) event_type: String,
    /// When it was recorded.
    pub(crate) occurred_at: DateTime<Utc>,
    /// Who caused it.
    pub(crate) actor: String,
    /// The call that caused it.
    pub(crate) request_id: String,
    /// The account whose history it is part of.
    pub(crate) account_id: String,
    /// The device concerned, or empty.
    pub(crate) device_id: String,
    /// Event-specific facts (text forms of `proto::convert` for enums).
    pub(crate) details: serde_json::Value,
}

/// Which events of an account a page holds.
#[derive(Debug, Clone)]
pub(crate) struct Filter {
    /// The account.
    pub(crate) account: String,
    /// Only this device's events, unless empty.
    pub(crate) device: String,
    /// Only these event types, unless empty.
    pub(crate) types: Vec<String>,
    /// Only events recorded at or after this instant.
    pub(crate) from: Option<DateTime<Utc>>,
    /// Only events recorded before this instant.
    pub(crate) to: Option<DateTime<Utc>>,
}

/// The event store, as `AuditService` reads it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Store<'a> {
    /// Read access to `events` (`LINKD_EVENT_STORE_URL`).
    pub(crate) pool: &'a PgPool,
    /// What opens sealed fields (`LINKD_KEK_FILE` too).
    pub(crate) opener: Option<&'a Opener>,
}

/// The first events of the link attempts `$1` (ids), for the device they name.
static FIRST_OF_ATTEMPTS: LazyLock<String> = LazyLock::new(|| {
    format!(
        "SELECT {} FROM events \
         WHERE aggregate_type = 'link_attempt' AND aggregate_id = ANY($1) AND sequence = 1",
        stored::COLUMNS
    )
});

/// Events read per statement when a filter may leave some out.
const CHUNK: usize = 500;

/// The positions of `account`'s events after `after`, in order: where its pages are read from.
pub(crate) async fn positions(
    store: Store<'_>,
    account: &str,
    after: i64,
) -> Result<Vec<i64>, QueryError> {
    sqlx::query_scalar(history::ACCOUNT_POSITIONS.as_str())
        .bind(account)
        .bind(after)
        .fetch_all(store.pool)
        .await
        .map_err(QueryError::event_store)
}

/// The events at `positions` (in order, of `filter`'s account) that match `filter`, as shown.
pub(crate) async fn at(
    store: Store<'_>,
    filter: &Filter,
    positions: &[i64],
) -> Result<Vec<AuditRow>, QueryError> {
    let stored: Vec<StoredEvent> = sqlx::query_as(history::EVENTS_AT.as_str())
        .bind(positions)
        .bind(&filter.types)
        .bind(filter.from)
        .bind(filter.to)
        .fetch_all(store.pool)
        .await
        .map_err(QueryError::event_store)?;
    let mut shown = shown(store, &filter.account, stored).await?;
    if !filter.device.is_empty() {
        shown.retain(|row| row.device_id == filter.device);
    }
    Ok(shown)
}

/// Up to `limit` events matching `filter` after global position `after`, in position order:
/// the account's positions once, then its events a chunk at a time until the page is full.
pub(crate) async fn page(
    store: Store<'_>,
    filter: &Filter,
    after: i64,
    limit: usize,
) -> Result<Vec<AuditRow>, QueryError> {
    let positions = positions(store, &filter.account, after).await?;
    let filtered = !filter.device.is_empty()
        || !filter.types.is_empty()
        || filter.from.is_some()
        || filter.to.is_some();
    let chunk = if filtered { limit.max(CHUNK) } else { limit };
    let mut rows = Vec::new();
    for positions in positions.chunks(chunk.max(1)) {
        rows.extend(at(store, filter, positions).await?);
        if rows.len() >= limit {
            break;
        }
    }
    rows.truncate(limit);
    Ok(rows)
}

/// The envelopes of `stored`, sealed fields opened: an event this build cannot read (a newer
/// linkd's, or one whose fields do not open) is left out, as the live read models pass over it.
async fn opened(
    store: Store<'_>,
    stored: Vec<StoredEvent>,
) -> Result<Vec<EventEnvelope>, QueryError> {
    let mut envelopes: Vec<EventEnvelope> = stored
        .iter()
        .filter_map(|event| match event.envelope() {
            Ok(envelope) => Some(envelope),
            Err(unreadable) => {
                tracing::warn!(%unreadable, "an event left out of the audit log");
                None
            }
        })
        .collect();
    let verdicts =
        Opener::open(store.opener, &mut envelopes)
            .await
            .map_err(|error| match error {
                OpenError::Database(error) => QueryError::event_store(error),
                OpenError::NotConfigured(_) => QueryError::FailedPrecondition(format!(
                    "{error}; the audit log cannot be shown"
                )),
            })?;
    Ok(envelopes
        .into_iter()
        .zip(verdicts)
        .filter_map(|(envelope, opened)| match opened {
            Ok(()) => Some(envelope),
            Err(reason) => {
                tracing::warn!(%reason, "an event whose sealed fields do not open left out");
                None
            }
        })
        .collect())
}

/// `stored` (events of `account`) as the audit log shows them. A link attempt's event that
/// names no device concerns the device of the attempt's first event.
async fn shown(
    store: Store<'_>,
    account: &str,
    stored: Vec<StoredEvent>,
) -> Result<Vec<AuditRow>, QueryError> {
    let envelopes = opened(store, stored).await?;
    let mut rows = Vec::with_capacity(envelopes.len());
    let mut first_devices: HashMap<String, String> = HashMap::new();
    let mut unresolved: Vec<String> = Vec::new();
    for envelope in envelopes {
        let Some(payload) = &envelope.event else {
            continue;
        };
        let facts = match details(payload) {
            Ok(facts) => facts,
            Err(error) => {
                tracing::warn!(event_id = %envelope.event_id, %error,
                    "an event this build cannot show left out of the audit log");
                continue;
            }
        };
        let device = device_of(&envelope, payload);
        if envelope.aggregate_type == aggregate::LINK_ATTEMPT {
            if envelope.sequence == 1 {
                first_devices.insert(
                    envelope.aggregate_id.clone(),
                    device.clone().unwrap_or_default(),
                );
            } else if device.is_none() {
                unresolved.push(envelope.aggregate_id.clone());
            }
        }
        let occurred_at = envelope
            .occurred_at
            .as_ref()
            .and_then(datetime)
            .unwrap_or_default();
        rows.push((
            device,
            AuditRow {
                global_position: envelope.global_position,
                event_id: envelope.event_id,
                aggregate_type: envelope.aggregate_type,
                aggregate_id: envelope.aggregate_id,
                sequence: envelope.sequence,
                event_type: envelope.event_type,
                occurred_at,
                actor: envelope.actor,
                request_id: envelope.request_id,
                account_id: account.to_owned(),
                device_id: String::new(),
                details: facts,
            },
        ));
    }
    unresolved.sort_unstable();
    unresolved.dedup();
    unresolved.retain(|id| !first_devices.contains_key(id));
    if !unresolved.is_empty() {
        let firsts: Vec<StoredEvent> = sqlx::query_as(FIRST_OF_ATTEMPTS.as_str())
            .bind(&unresolved)
            .fetch_all(store.pool)
            .await
            .map_err(QueryError::event_store)?;
        // Only the device is needed: ids are never sealed.
        for first in firsts {
            if let Ok(envelope) = first.envelope() {
                let device = envelope
                    .event
                    .as_ref()
                    .and_then(|payload| device_of(&envelope, payload));
                first_devices.insert(envelope.aggregate_id, device.unwrap_or_default());
            }
        }
    }
    Ok(rows
        .into_iter()
        .map(|(device, mut row)| {
            row.device_id = match device {
                Some(device) => device,
                None if row.aggregate_type == aggregate::LINK_ATTEMPT => first_devices
                    .get(&row.aggregate_id)
                    .cloned()
                    .unwrap_or_default(),
                None => String::new(),
            };
            row
        })
        .collect())
}

/// A device linked at an instant: the `DeviceLinked` event that linked it.
#[derive(Debug)]
pub(crate) struct LinkedAt {
    /// The device.
    pub(crate) device_id: String,
    /// When it was linked.
    pub(crate) occurred_at: DateTime<Utc>,
    /// The `DeviceLinked` event.
    pub(crate) event_id: String,
    /// Its details (`device_name`, `method` …).
    pub(crate) details: serde_json::Value,
}

/// The devices linked to `account` at `at`: those whose last link event by then is a
/// `DeviceLinked`, oldest link first.
pub(crate) async fn linked_at(
    store: Store<'_>,
    account: &str,
    at: DateTime<Utc>,
) -> Result<Vec<LinkedAt>, QueryError> {
    let events: Vec<StoredEvent> = sqlx::query_as(history::ACCOUNT_LINKS.as_str())
        .bind(account)
        .bind(at)
        .fetch_all(store.pool)
        .await
        .map_err(QueryError::event_store)?;
    // The last of each device's events by then (they come in position order, which within one
    // device is its sequence order).
    let mut last: HashMap<String, StoredEvent> = HashMap::new();
    for event in events {
        last.insert(event.aggregate_id.clone(), event);
    }
    let linked: Vec<StoredEvent> = last
        .into_values()
        .filter(|event| event.event_type == "DeviceLinked")
        .collect();
    let mut devices: Vec<LinkedAt> = shown(store, account, linked)
        .await?
        .into_iter()
        .map(|row| LinkedAt {
            device_id: row.aggregate_id,
            occurred_at: row.occurred_at,
            event_id: row.event_id,
            details: row.details,
        })
        .collect();
    devices.sort_by(|a, b| (a.occurred_at, &a.device_id).cmp(&(b.occurred_at, &b.device_id)));
    Ok(devices)
}

/// Checks the tamper-evidence chain in the event store of every aggregate of `account`: those
/// the read side's witness (`audit_heads`, in `pool`) knows, each with the last event it applied
/// (so a history cut short is detected too), and any other the event store attributes to it.
pub(crate) async fn verify(
    pool: &PgPool,
    store: &PgPool,
    account: &str,
) -> Result<history::Verdict, QueryError> {
    let witnessed: Vec<(String, String, i64, i64)> = sqlx::query_as(
        "SELECT aggregate_type, aggregate_id, last_sequence, last_position \
         FROM audit_heads WHERE account_id = $1 ORDER BY aggregate_type, aggregate_id",
    )
    .bind(account)
    .fetch_all(pool)
    .await
    .map_err(QueryError::audit_log)?;
    let mut aggregates: Vec<history::Known> = witnessed
        .into_iter()
        .map(
            |(aggregate_type, aggregate_id, sequence, position)| history::Known {
                aggregate_type,
                aggregate_id,
                last: Some((sequence, position)),
            },
        )
        .collect();
    let stored = history::aggregates_of(store, account)
        .await
        .map_err(QueryError::event_store)?;
    for extra in stored {
        let known = aggregates.iter().any(|k| {
            k.aggregate_type == extra.aggregate_type && k.aggregate_id == extra.aggregate_id
        });
        if !known {
            aggregates.push(extra);
        }
    }
    history::verify_all(store, &aggregates)
        .await
        .map_err(QueryError::event_store)
}
