//! Loading an aggregate: its snapshot, if one verifies, and the events after it, in one round
//! trip; or its whole history when the snapshot does not fit.

use cqrs_es::Aggregate;

use super::{EventStore, Loaded, StoreError, Stored, snapshot};

/// (is the snapshot, sequence, global position, payload, chain hash, MAC): the last two for the
/// snapshot row only.
type Row = (bool, i64, i64, String, Option<Vec<u8>>, Option<Vec<u8>>);

impl EventStore {
    pub(super) async fn load_context<A: Stored>(&self, id: &str) -> Result<Loaded<A>, StoreError> {
        let schema = snapshot::schema::<A>();
        let rows: Vec<Row> = sqlx::query_as(
            "WITH snapshot AS ( \
                 SELECT s.last_sequence, s.last_global_position, s.payload, s.chain_hash, s.mac \
                 FROM aggregate_snapshots s \
                 WHERE s.aggregate_type = $1 AND s.aggregate_id = $2 AND s.schema = $3 \
                   AND s.chain_hash = ( \
                       SELECT e.chain_hash FROM events e WHERE e.aggregate_type = $1 \
                          AND e.aggregate_id = $2 AND e.sequence = s.last_sequence)) \
             SELECT true, last_sequence, last_global_position, payload::text, chain_hash, mac \
             FROM snapshot \
             UNION ALL \
             SELECT false, sequence, global_position, payload::text, NULL::bytea, NULL::bytea \
             FROM events \
             WHERE aggregate_type = $1 AND aggregate_id = $2 \
               AND sequence > coalesce((SELECT last_sequence FROM snapshot), 0) \
             ORDER BY 1 DESC, 2",
        )
        .bind(A::TYPE)
        .bind(id)
        .bind(&schema)
        .fetch_all(&self.pool)
        .await?;
        let mut rows = rows.into_iter().peekable();
        let mut loaded = self.fresh::<A>(id);
        if let Some((_, sequence, global_position, payload, chain_hash, mac)) =
            rows.next_if(|(is_snapshot, ..)| *is_snapshot)
        {
            let header = snapshot::Header {
                aggregate_type: A::TYPE,
                aggregate_id: id,
                schema: &schema,
                last_sequence: sequence,
                chain_hash: chain_hash.as_deref().unwrap_or_default(),
            };
            let expected = snapshot::mac(&self.snapshot_key, header, &payload);
            if mac.as_deref() != Some(expected.as_slice()) {
                tracing::warn!(
                    aggregate_type = A::TYPE,
                    aggregate_id = id,
                    "a snapshot whose MAC does not verify; replaying the whole history"
                );
                return self.replay_all::<A>(id).await;
            }
            match serde_json::from_str::<A>(&payload) {
                Ok(state) => {
                    loaded.aggregate = state;
                    loaded.sequence = sequence;
                    loaded.global_position = global_position;
                    loaded.snapshot_sequence = sequence;
                }
                Err(error) => {
                    tracing::warn!(
                        aggregate_type = A::TYPE,
                        aggregate_id = id,
                        %error,
                        "unreadable snapshot; replaying the whole history"
                    );
                    return self.replay_all::<A>(id).await;
                }
            }
        }
        apply_rows(&mut loaded, rows)?;
        Ok(loaded)
    }

    /// The aggregate replayed from its first event, ignoring snapshots.
    pub(super) async fn replay_all<A: Stored>(&self, id: &str) -> Result<Loaded<A>, StoreError> {
        let rows: Vec<Row> = sqlx::query_as(
            "SELECT false, sequence, global_position, payload::text, NULL::bytea, NULL::bytea \
             FROM events \
             WHERE aggregate_type = $1 AND aggregate_id = $2 ORDER BY sequence",
        )
        .bind(A::TYPE)
        .bind(id)
        .fetch_all(&self.pool)
        .await?;
        let mut loaded = self.fresh::<A>(id);
        apply_rows(&mut loaded, rows.into_iter())?;
        Ok(loaded)
    }
}

fn apply_rows<A: Aggregate>(
    loaded: &mut Loaded<A>,
    rows: impl Iterator<Item = Row>,
) -> Result<(), StoreError> {
    for (_, sequence, global_position, payload, ..) in rows {
        let event: A::Event = serde_json::from_str(&payload).map_err(|error| {
            StoreError::Corrupt(format!(
                "event {sequence} of {} {} does not deserialise: {error}",
                A::TYPE,
                loaded.aggregate_id
            ))
        })?;
        if sequence != loaded.sequence + 1 {
            return Err(StoreError::Corrupt(format!(
                "{} {} jumps from event {} to {sequence}",
                A::TYPE,
                loaded.aggregate_id,
                loaded.sequence
            )));
        }
        loaded.aggregate.apply(event);
        loaded.sequence = sequence;
        loaded.global_position = global_position;
    }
    Ok(())
}
