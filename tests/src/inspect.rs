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
