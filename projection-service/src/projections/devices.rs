//! The device read model: every device with its current (or last) link, for the holder's list
//! and for "is this device linked, and to which account".
//!
//! What an event does to its row is decided once, by `change`; the live path turns that into
//! one statement per event ([`Projector::apply`]); the rebuild, and the live consumer for a
//! batch with several device events ([`Projector::apply_many`]), fold many events into rows in
//! memory and write them back in bulk (`BatchProjector`). The row type and its columns are
//! `read::devices`'s, which the queries read; an event naming a value this build does
//! not know is poison (`proto::convert`'s rule).

use std::collections::HashMap;
use std::sync::LazyLock;

use chrono::{DateTime, Utc};
use proto::convert::{TextForm as _, aggregate, text};
use proto::v1::event_envelope::Event;
use proto::v1::{self, EventEnvelope};
use sqlx::{PgConnection, Postgres, Transaction};
use uuid::Uuid;

use super::{BatchProjector, ProjectionError, Projector, event_time};
use crate::read::devices::{COLUMNS, DeviceRow};

/// Projects `device` events into `devices`.
#[derive(Debug, Clone, Copy, Default)]
pub struct Devices;

/// The projector's name (guard key, consumer suffix).
pub(crate) const NAME: &str = "devices";

fn uuid(field: &str, raw: &str) -> Result<Uuid, ProjectionError> {
    Uuid::try_parse(raw).map_err(|_| ProjectionError::Poison(format!("{field} is not a UUID")))
}

#[cfg(test)]
mod tests;

/// What one event does to its device's row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Change {
    /// (Re)linked: the row becomes this one, whatever it was.
    Linked(Box<DeviceRow>),
    /// Biometrics turned on (`true`) or off; no row, no change.
    Biometrics(bool),
    /// A correct secret code; no row, no change.
    Used(DateTime<Utc>),
    /// Unlinked; no row, no change.
    Unlinked {
        /// When.
        at: DateTime<Utc>,
        /// Why (`from_device`, `from_portal`, `locked_out`).
        reason: &'static str,
    },
    /// An event this read model does not show.
    Nothing,
}

/// The device `event` is about and what it does to the device's row (`None`: an event of another
/// aggregate type), or poison if it can never apply.
pub(crate) fn change(event: &EventEnvelope) -> Result<Option<(Uuid, Change)>, ProjectionError> {
    if event.aggregate_type != aggregate::DEVICE {
        return Ok(None);
    }
    let device_id = uuid("aggregate_id", &event.aggregate_id)?;
    let Some(payload) = &event.event else {
        return Err(ProjectionError::Poison("no event".into()));
    };
    let change = match payload {
        Event::DeviceLinked(linked) => {
            let product_kind = match &linked.product {
                Some(product) => Some(v1::ProductKind::text_of(product.kind)?),
                None => None,
            };
            Change::Linked(Box::new(DeviceRow {
                device_id,
                account_id: event.account_id.clone(),
                link_id: uuid("link_id", &linked.link_id)?,
                name: linked.device_name.clone(),
                method: v1::LinkMethod::text_of(linked.method)?.into(),
                product_kind: product_kind.map(Into::into),
                product_serial: linked.product.as_ref().map(|p| p.serial.clone()),
                platform: v1::Platform::text_of(linked.platform)?.into(),
                app_version: linked.app_version.clone(),
                linked_at: event_time(linked.at.as_ref())?,
                last_used_at: None,
                biometrics_enabled: false,
                status: text::LINKED.into(),
                unlinked_at: None,
                unlink_reason: None,
            }))
        }
        Event::BiometricsEnabled(_) => Change::Biometrics(true),
        Event::BiometricsSkipped(_) | Event::BiometricsDisabled(_) => Change::Biometrics(false),
        Event::SecretCodeVerified(verified) => Change::Used(event_time(verified.at.as_ref())?),
        Event::DeviceUnlinked(unlinked) => Change::Unlinked {
            reason: v1::UnlinkReason::text_of(unlinked.reason)?,
            at: event_time(unlinked.at.as_ref())?,
        },
        Event::SecretCodeFailed(_)
        | Event::AccountRegistered(_)
        | Event::AccountEmailChanged(_)
        | Event::AccountErased(_)
        | Event::DevicesUnlinkedTogether(_)
        | Event::InactivityWarned(_)
        | Event::PortalLoginRecorded(_)
        | Event::QrIssued(_)
        | Event::QrConsumed(_)
        | Event::LinkRequested(_)
        | Event::QrAccepted(_)
        | Event::LinkConfirmed(_)
        | Event::LinkDeclined(_)
        | Event::LuxtrustAuthenticated(_)
        | Event::LinkCompleted(_) => Change::Nothing,
    };
    Ok(Some((device_id, change)))
}

impl Change {
    /// Applies the change to a row in memory, as the statements of [`Devices::apply`] do to the
    /// table (an `UPDATE` of a missing row changes nothing). Returns whether the row changed.
    pub(crate) fn apply_to(self, row: &mut Option<DeviceRow>) -> bool {
        match (self, row.as_mut()) {
            (Self::Linked(linked), _) => {
                *row = Some(*linked);
                true
            }
            (Self::Biometrics(enabled), Some(row)) => {
                row.biometrics_enabled = enabled;
                true
            }
            (Self::Used(at), Some(row)) => {
                row.last_used_at = Some(at);
                true
            }
            (Self::Unlinked { at, reason }, Some(row)) => {
                row.status = text::UNLINKED.into();
                row.unlinked_at = Some(at);
                row.unlink_reason = Some(reason.into());
                true
            }
            (Self::Biometrics(_) | Self::Used(_) | Self::Unlinked { .. }, None)
            | (Self::Nothing, _) => false,
        }
    }
}

impl Projector for Devices {
    fn name(&self) -> &'static str {
        NAME
    }

    fn aggregate_types(&self) -> Option<&'static [&'static str]> {
        Some(&[aggregate::DEVICE])
    }

    async fn apply<'a>(
        &'a self,
        tx: &'a mut Transaction<'static, Postgres>,
        event: &'a EventEnvelope,
    ) -> Result<(), ProjectionError> {
        let Some((device_id, change)) = change(event)? else {
            return Ok(());
        };
        let update = |sql: &'static str| sqlx::query(sql).bind(device_id);
        match change {
            Change::Linked(row) => {
                sqlx::query(
                    "INSERT INTO devices (device_id, account_id, link_id, name, method, \
                     product_kind, product_serial, platform, app_version, linked_at, status) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, 'linked') \
                     ON CONFLICT (device_id) DO UPDATE SET account_id = EXCLUDED.account_id, \
                     link_id = EXCLUDED.link_id, name = EXCLUDED.name, method = EXCLUDED.method, \
                     product_kind = EXCLUDED.product_kind, \
                     product_serial = EXCLUDED.product_serial, platform = EXCLUDED.platform, \
                     app_version = EXCLUDED.app_version, linked_at = EXCLUDED.linked_at, \
                     last_used_at = NULL, biometrics_enabled = false, status = 'linked', \
                     unlinked_at = NULL, unlink_reason = NULL",
                )
                .bind(device_id)
                .bind(&row.account_id)
                .bind(row.link_id)
                .bind(&row.name)
                .bind(&row.method)
                .bind(&row.product_kind)
                .bind(&row.product_serial)
                .bind(&row.platform)
                .bind(&row.app_version)
                .bind(row.linked_at)
                .execute(&mut **tx)
                .await?;
            }
            Change::Biometrics(true) => {
                update("UPDATE devices SET biometrics_enabled = true WHERE device_id = $1")
                    .execute(&mut **tx)
                    .await?;
            }
            Change::Biometrics(false) => {
                update("UPDATE devices SET biometrics_enabled = false WHERE device_id = $1")
                    .execute(&mut **tx)
                    .await?;
            }
            Change::Used(at) => {
                update("UPDATE devices SET last_used_at = $2 WHERE device_id = $1")
                    .bind(at)
                    .execute(&mut **tx)
                    .await?;
            }
            Change::Unlinked { at, reason } => {
                update(
                    "UPDATE devices SET status = 'unlinked', unlinked_at = $2, unlink_reason = $3 \
                     WHERE device_id = $1",
                )
                .bind(at)
                .bind(reason)
                .execute(&mut **tx)
                .await?;
            }
            Change::Nothing => {}
        }
        Ok(())
    }

    /// Two statements for a share of three events or more (the rebuild's load, fold and store);
    /// one statement per event below that.
    async fn apply_many<'a>(
        &'a self,
        tx: &'a mut Transaction<'static, Postgres>,
        events: &'a [&'a EventEnvelope],
    ) -> Result<(), ProjectionError> {
        if events.len() < 3 {
            for event in events {
                self.apply(tx, event).await?;
            }
            return Ok(());
        }
        let aggregates: Vec<(&str, &str)> = events
            .iter()
            .map(|event| (event.aggregate_type.as_str(), event.aggregate_id.as_str()))
            .collect();
        let mut state = self.load(tx, &aggregates).await?;
        for event in events {
            self.fold(&mut state, event)?;
        }
        self.store(tx, state).await
    }
}

/// Loads the rows of the devices `$1` (ids), one primary-key probe each (`OFFSET 0` keeps the
/// planner from turning the probes into a join or, with `= ANY` and no statistics, a scan).
/// Built once.
pub(crate) static LOAD: LazyLock<String> = LazyLock::new(|| {
    let columns = COLUMNS
        .split(',')
        .map(|column| format!("d.{}", column.trim()))
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        "SELECT {columns} FROM unnest($1::uuid[]) AS k (id) \
         CROSS JOIN LATERAL (SELECT * FROM devices WHERE device_id = k.id OFFSET 0) AS d"
    )
});

/// The rows of one batch's devices, as loaded (`None`: no row yet) and folded.
#[derive(Debug, Default)]
pub(crate) struct DeviceRows {
    rows: HashMap<Uuid, (Option<DeviceRow>, bool)>,
}

impl BatchProjector for Devices {
    type State = DeviceRows;

    async fn load<'a>(
        &'a self,
        connection: &'a mut PgConnection,
        aggregates: &'a [(&'a str, &'a str)],
    ) -> Result<DeviceRows, ProjectionError> {
        let mut ids: Vec<Uuid> = aggregates
            .iter()
            .filter(|(aggregate_type, _)| *aggregate_type == aggregate::DEVICE)
            .filter_map(|(_, id)| Uuid::try_parse(id).ok())
            .collect();
        ids.sort_unstable();
        ids.dedup();
        let rows: Vec<DeviceRow> = sqlx::query_as(LOAD.as_str())
            .bind(&ids)
            .fetch_all(connection)
            .await?;
        let mut state = DeviceRows {
            rows: HashMap::with_capacity(ids.len()),
        };
        for row in rows {
            state.rows.insert(row.device_id, (Some(row), false));
        }
        Ok(state)
    }

    fn fold(&self, state: &mut DeviceRows, event: &EventEnvelope) -> Result<(), ProjectionError> {
        if let Some((device_id, change)) = change(event)? {
            let (row, changed) = state.rows.entry(device_id).or_default();
            *changed |= change.apply_to(row);
        }
        Ok(())
    }

    async fn store<'a>(
        &'a self,
        connection: &'a mut PgConnection,
        state: DeviceRows,
    ) -> Result<(), ProjectionError> {
        let rows: Vec<DeviceRow> = state
            .rows
            .into_values()
            .filter_map(|(row, changed)| row.filter(|_| changed))
            .collect();
        if rows.is_empty() {
            return Ok(());
        }
        let column = |f: fn(&DeviceRow) -> &str| rows.iter().map(f).collect::<Vec<_>>();
        let optional = |f: fn(&DeviceRow) -> Option<&str>| rows.iter().map(f).collect::<Vec<_>>();
        // The arrays bind in COLUMNS' order.
        sqlx::query(&format!(
            "INSERT INTO devices ({COLUMNS}) \
             SELECT * FROM UNNEST($1::uuid[], $2::text[], $3::uuid[], $4::text[], $5::text[], \
             $6::text[], $7::text[], $8::text[], $9::text[], $10::timestamptz[], \
             $11::timestamptz[], $12::bool[], $13::text[], $14::timestamptz[], $15::text[]) \
             ON CONFLICT (device_id) DO UPDATE SET account_id = EXCLUDED.account_id, \
             link_id = EXCLUDED.link_id, name = EXCLUDED.name, method = EXCLUDED.method, \
             product_kind = EXCLUDED.product_kind, product_serial = EXCLUDED.product_serial, \
             platform = EXCLUDED.platform, app_version = EXCLUDED.app_version, \
             linked_at = EXCLUDED.linked_at, last_used_at = EXCLUDED.last_used_at, \
             biometrics_enabled = EXCLUDED.biometrics_enabled, status = EXCLUDED.status, \
             unlinked_at = EXCLUDED.unlinked_at, unlink_reason = EXCLUDED.unlink_reason"
        ))
        .bind(rows.iter().map(|r| r.device_id).collect::<Vec<_>>())
        .bind(column(|r| &r.account_id))
        .bind(rows.iter().map(|r| r.link_id).collect::<Vec<_>>())
        .bind(column(|r| &r.name))
        .bind(column(|r| &r.method))
        .bind(optional(|r| r.product_kind.as_deref()))
        .bind(optional(|r| r.product_serial.as_deref()))
        .bind(column(|r| &r.platform))
        .bind(column(|r| &r.app_version))
        .bind(rows.iter().map(|r| r.linked_at).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| r.last_used_at).collect::<Vec<_>>())
        .bind(
            rows.iter()
                .map(|r| r.biometrics_enabled)
                .collect::<Vec<_>>(),
        )
        .bind(column(|r| &r.status))
        .bind(rows.iter().map(|r| r.unlinked_at).collect::<Vec<_>>())
        .bind(optional(|r| r.unlink_reason.as_deref()))
        .execute(connection)
        .await?;
        Ok(())
    }
}
