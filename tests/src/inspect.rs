//! What the databases behind a [`TestApp`] hold: event counts, and whether the device read
//! model has caught up with the event store exactly.

use std::time::Duration;

use testkit::eventually;

use crate::TestApp;

impl TestApp {
    /// How many events the store holds.
    pub async fn event_count(&self) -> i64 {
        sqlx::query_scalar("SELECT count(*) FROM events")
            .fetch_one(&self.pool)
            .await
            .expect("counting events")
    }

    /// Every `DeviceUnlinked` event's reason and actor, in store order.
    pub async fn unlinks(&self) -> Vec<(String, String)> {
        sqlx::query_as(
            "SELECT payload::jsonb -> 'DeviceUnlinked' ->> 'reason', metadata::jsonb ->> 'actor' \
             FROM events WHERE event_type = 'DeviceUnlinked' ORDER BY global_position",
        )
        .fetch_all(&self.pool)
        .await
        .expect("reading the unlinks")
    }

    /// Account `account`'s history as `AuditService.ListEvents` shows it to an auditor (up to
    /// 500 events).
    pub async fn audited(&self, account: &str) -> Vec<proto::v1::AuditEvent> {
        let auditor = self.keys.auditor_token().expect("an auditor's token");
        let channel = self
            .read
            .as_ref()
            .expect("the projection service")
            .channel
            .clone();
        let request = crate::keys::bearer(
            proto::v1::ListEventsRequest {
                account_id: account.into(),
                page_size: 500,
                ..Default::default()
            },
            &auditor,
        );
        proto::v1::audit_service_client::AuditServiceClient::new(channel)
            .list_events(request)
            .await
            .expect("ListEvents")
            .into_inner()
            .events
    }

    /// How many events of `event_type` the store holds.
    pub async fn events_of_type(&self, event_type: &str) -> i64 {
        sqlx::query_scalar("SELECT count(*) FROM events WHERE event_type = $1")
            .bind(event_type)
            .fetch_one(&self.pool)
            .await
            .expect("counting events")
    }
}

impl TestApp {
    /// Waits until the device read model matches the event store exactly: every device's
    /// last event applied once (guard = last sequence) and its linked/unlinked status right.
    pub async fn wait_until_read_model_is_exact(&self, within: Duration) {
        let read = self.read_pool();
        eventually(
            within,
            "the read model to match the event store",
            || async {
                let expected: Vec<(String, i64, String)> = sqlx::query_as(
                    "SELECT aggregate_id, max(sequence), \
                 (array_agg(event_type ORDER BY sequence) FILTER \
                   (WHERE event_type IN ('DeviceLinked', 'DeviceUnlinked')))[count(*) FILTER \
                   (WHERE event_type IN ('DeviceLinked', 'DeviceUnlinked'))] \
                 FROM events WHERE aggregate_type = 'device' GROUP BY aggregate_id \
                 ORDER BY aggregate_id",
                )
                .fetch_all(&self.pool)
                .await
                .ok()?;
                let actual: Vec<(String, i64, String)> = sqlx::query_as(
                    "SELECT p.aggregate_id, p.last_sequence, \
                 CASE d.status WHEN 'linked' THEN 'DeviceLinked' ELSE 'DeviceUnlinked' END \
                 FROM projector_positions p JOIN devices d ON d.device_id::text = p.aggregate_id \
                 WHERE p.projector = 'devices' AND p.aggregate_type = 'device' \
                 ORDER BY p.aggregate_id",
                )
                .fetch_all(&read)
                .await
                .ok()?;
                (expected == actual && !expected.is_empty()).then_some(())
            },
        )
        .await;
    }
}

impl TestApp {
    /// Waits until every read model matches the event store exactly: the devices as
    /// [`Self::wait_until_read_model_is_exact`] checks them; the audit witness at the last
    /// event of each aggregate that names an account; each read model's guard at the last sequence of each aggregate it
    /// reads; one queued email per `DeviceLinked`.
    pub async fn wait_until_every_read_model_is_exact(&self, within: Duration) {
        self.wait_until_read_model_is_exact(within).await;
        let read = self.read_pool();
        eventually(
            within,
            "the audit witness, the guards and the outbox to match the event store",
            || async {
                let last: Vec<(String, String, i64)> = sqlx::query_as(
                    "SELECT aggregate_type, aggregate_id, max(sequence) FROM events \
                     GROUP BY aggregate_type, aggregate_id ORDER BY aggregate_type, aggregate_id",
                )
                .fetch_all(&self.pool)
                .await
                .ok()?;
                // The audit witness: per aggregate, the last event that names an account (or,
                // for a link attempt, any), as the event store says.
                let witnessed_in_store: Vec<(String, String, i64)> = sqlx::query_as(
                    "SELECT aggregate_type, aggregate_id, max(sequence) FROM events \
                     WHERE aggregate_type IN ('account', 'link_attempt') \
                        OR coalesce(metadata::jsonb ->> 'account_id', '') <> '' \
                        OR data_subject LIKE 'account:%' \
                     GROUP BY aggregate_type, aggregate_id \
                     ORDER BY aggregate_type, aggregate_id",
                )
                .fetch_all(&self.pool)
                .await
                .ok()?;
                let witnessed: Vec<(String, String, i64)> = sqlx::query_as(
                    "SELECT aggregate_type, aggregate_id, max(last_sequence) FROM audit_heads \
                     GROUP BY aggregate_type, aggregate_id \
                     ORDER BY aggregate_type, aggregate_id",
                )
                .fetch_all(&read)
                .await
                .ok()?;
                if witnessed != witnessed_in_store {
                    return None;
                }
                // The audit witness reads every aggregate; the notifier accounts and devices.
                for (projector, types) in
                    [("audit", None), ("notifier", Some(["account", "device"]))]
                {
                    let guards: Vec<(String, String, i64)> = sqlx::query_as(
                        "SELECT aggregate_type, aggregate_id, last_sequence \
                         FROM projector_positions WHERE projector = $1 \
                         ORDER BY aggregate_type, aggregate_id",
                    )
                    .bind(projector)
                    .fetch_all(&read)
                    .await
                    .ok()?;
                    let mut guards = guards;
                    guards.sort();
                    let expected: Vec<&(String, String, i64)> = last
                        .iter()
                        .filter(|(kind, ..)| types.is_none_or(|t| t.contains(&kind.as_str())))
                        .collect();
                    if guards.iter().collect::<Vec<_>>() != expected {
                        return None;
                    }
                }
                let linked = self.events_of_type("DeviceLinked").await;
                let queued: i64 = sqlx::query_scalar(
                    "SELECT count(*) FROM email_outbox WHERE kind = 'device_linked'",
                )
                .fetch_one(&read)
                .await
                .ok()?;
                (queued == linked).then_some(())
            },
        )
        .await;
    }
}
