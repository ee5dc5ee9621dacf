//! Loading an aggregate: its snapshot, if one verifies, and the events after it, in one round
//! trip; or its whole history when the snapshot does not fit.

use cqrs_es::Aggregate;

use super::{EventStore, Loaded, StoreError, Stored, snapshot};
use crate::sealing::{self, KeysSeen};

/// (is the snapshot, sequence, global position, payload, chain hash, MAC, event type, data
/// subject, its KEK id, its wrapped key, event version): chain hash and MAC for the snapshot row
/// only; the subject and key columns are NULL for rows written before sealing, and the wrapped
/// key alone NULL once the subject is erased.
type Row = (
    bool,
    i64,
    i64,
    String,
    Option<Vec<u8>>,
    Option<Vec<u8>>,
    String,
    Option<String>,
    Option<String>,
    Option<Vec<u8>>,
    String,
);

/// The events of an aggregate (`$1`, `$2`) with their data keys, after the sequence given (an
/// SQL expression).
macro_rules! events_after {
    ($after:literal) => {
        concat!(
            "SELECT false, e.sequence, e.global_position, e.payload::text, NULL::bytea, \
                    NULL::bytea, e.event_type, e.data_subject, k.kek_id, k.wrapped, \
                    e.event_version \
             FROM events e LEFT JOIN data_keys k ON k.subject = e.data_subject \
             WHERE e.aggregate_type = $1 AND e.aggregate_id = $2 AND e.sequence > ",
            $after
        )
    };
}

impl EventStore {
    pub(super) async fn load_context<A: Stored>(&self, id: &str) -> Result<Loaded<A>, StoreError> {
        let schema = snapshot::schema::<A>();
        let rows: Vec<Row> = sqlx::query_as(concat!(
            "WITH snapshot AS ( \
                     SELECT s.last_sequence, s.last_global_position, s.payload, s.chain_hash, \
                            s.mac, s.data_subject \
                     FROM aggregate_snapshots s \
                     WHERE s.aggregate_type = $1 AND s.aggregate_id = $2 AND s.schema = $3 \
                       AND s.chain_hash = ( \
                           SELECT e.chain_hash FROM events e WHERE e.aggregate_type = $1 \
                              AND e.aggregate_id = $2 AND e.sequence = s.last_sequence)) \
                 SELECT true, s.last_sequence, s.last_global_position, s.payload::text, \
                        s.chain_hash, s.mac, '', s.data_subject, k.kek_id, k.wrapped, '' \
                 FROM snapshot s LEFT JOIN data_keys k ON k.subject = s.data_subject \
                 UNION ALL ",
            events_after!("coalesce((SELECT last_sequence FROM snapshot), 0)"),
            " ORDER BY 1 DESC, 2"
        ))
        .bind(A::TYPE)
        .bind(id)
        .bind(&schema)
        .fetch_all(&self.pool)
        .await?;
        let mut rows = rows.into_iter().peekable();
        let mut loaded = self.fresh::<A>(id);
        let mut keys = KeysSeen::default();
        if let Some((
            _,
            sequence,
            global_position,
            payload,
            chain_hash,
            mac,
            _,
            subject,
            kek,
            key,
            _,
        )) = rows.next_if(|(is_snapshot, ..)| *is_snapshot)
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
            let state = match subject {
                None => Ok(payload.into_bytes()),
                Some(subject) => self.open_snapshot::<A>(
                    id,
                    sequence,
                    &payload,
                    keys.key(&self.keys.keks, &subject, kek.as_deref(), key.as_deref()),
                ),
            };
            let state = state.and_then(|state| {
                serde_json::from_slice::<A>(&state).map_err(|error| {
                    sealing::SealError::Malformed(format!("the snapshot of {id} ({error})"))
                })
            });
            match state {
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
                        "unusable snapshot; replaying the whole history"
                    );
                    return self.replay_all::<A>(id).await;
                }
            }
        }
        self.apply_rows(&mut loaded, rows, &mut keys)?;
        Ok(loaded)
    }

    /// The state a sealed snapshot holds, as JSON; an error (so the history is replayed) if it
    /// does not open, or if its key is erased (the events then load with placeholders).
    fn open_snapshot<A: Stored>(
        &self,
        id: &str,
        sequence: i64,
        payload: &str,
        key: Result<Option<&sealing::DataKey>, sealing::SealError>,
    ) -> Result<Vec<u8>, sealing::SealError> {
        let what = || format!("the snapshot of {} {id}", A::TYPE);
        let key =
            key?.ok_or_else(|| sealing::SealError::Malformed(format!("{} (erased)", what())))?;
        let sealed: String =
            serde_json::from_str(payload).map_err(|_| sealing::SealError::Malformed(what()))?;
        key.open_text(&snapshot::aad(A::TYPE, id, sequence), &sealed)
    }

    /// The aggregate replayed from its first event, ignoring snapshots.
    pub(super) async fn replay_all<A: Stored>(&self, id: &str) -> Result<Loaded<A>, StoreError> {
        let rows: Vec<Row> = sqlx::query_as(concat!(events_after!("0"), " ORDER BY 2"))
            .bind(A::TYPE)
            .bind(id)
            .fetch_all(&self.pool)
            .await?;
        let mut loaded = self.fresh::<A>(id);
        self.apply_rows(&mut loaded, rows.into_iter(), &mut KeysSeen::default())?;
        Ok(loaded)
    }

    /// Applies event rows to `loaded`, each opened with its data key (placeholders where the
    /// key is erased).
    fn apply_rows<A: Aggregate>(
        &self,
        loaded: &mut Loaded<A>,
        rows: impl Iterator<Item = Row>,
        keys: &mut KeysSeen,
    ) -> Result<(), StoreError> {
        for (_, sequence, global_position, payload, _, _, event_type, subject, kek, key, version) in
            rows
        {
            let corrupt = |error: serde_json::Error| {
                StoreError::Corrupt(format!(
                    "event {sequence} of {} {} does not deserialise: {error}",
                    A::TYPE,
                    loaded.aggregate_id
                ))
            };
            // Sealed fields are opened where the stored version has them, then the payload is
            // brought to the current shape (docs/events.md, "How to change an event").
            let at = || format!("event {sequence} of {} {}", A::TYPE, loaded.aggregate_id);
            // A newer linkd's event (a type or version this build does not know): UNAVAILABLE,
            // an upgraded instance can answer. A row this build should read and cannot: corrupt.
            if !proto::events::is_known(&event_type) {
                return Err(StoreError::Version(format!(
                    "{}: event type {event_type} was written by a newer linkd",
                    at()
                )));
            }
            let upcast = |value: &mut serde_json::Value| {
                domain::upcast::upcast(A::TYPE, &event_type, &version, value).map_err(|error| {
                    match error {
                        domain::upcast::UpcastError::Newer { .. } => {
                            StoreError::Version(format!("{}: {error}", at()))
                        }
                        domain::upcast::UpcastError::Unreadable { .. } => {
                            StoreError::Corrupt(format!("{}: {error}", at()))
                        }
                    }
                })
            };
            let event: A::Event = match subject {
                Some(subject) if sealing::has_personal(A::TYPE, &event_type) => {
                    let key =
                        keys.key(&self.keys.keks, &subject, kek.as_deref(), key.as_deref())?;
                    if let Some(key) = key {
                        self.keys.remember(&subject, key);
                    }
                    let mut value: serde_json::Value =
                        serde_json::from_str(&payload).map_err(corrupt)?;
                    let event_id = format!("{}/{}/{sequence}", A::TYPE, loaded.aggregate_id);
                    sealing::open_event(A::TYPE, &event_type, &event_id, &mut value, key)?;
                    upcast(&mut value)?;
                    serde_json::from_value(value).map_err(corrupt)?
                }
                _ if domain::upcast::needed(A::TYPE, &event_type, &version) => {
                    let mut value: serde_json::Value =
                        serde_json::from_str(&payload).map_err(corrupt)?;
                    upcast(&mut value)?;
                    serde_json::from_value(value).map_err(corrupt)?
                }
                _ => serde_json::from_str(&payload).map_err(corrupt)?,
            };
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
}
