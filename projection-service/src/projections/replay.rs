//! Many events in one transaction, for the rebuild, with the guard rules of [`super::apply`]:
//! an event at or below the aggregate's guard was applied already and is skipped; the next one
//! is applied; one beyond a gap is held back until the missing event comes (where the live
//! consumer NAKs and is sent it again); one that cannot apply is parked in `dead_letters` and
//! the guard moves past it.
//!
//! The rebuild writes fresh tables that are empty when it starts, that nobody else writes, and
//! that nobody reads before the switch. So [`Replayed`] keeps every guard in memory, where each
//! batch reads and moves it, and [`Replayed::store_guards`] writes the guards the batches moved
//! in bulk, once per replay phase, before the switch reads or publishes them (ADR 0007).

use std::collections::{BTreeMap, HashMap};

use proto::convert;
use proto::v1::EventEnvelope;
use sqlx::PgConnection;
use uuid::Uuid;

use super::{BatchProjector, ProjectionError};

type Aggregate = (String, String);

/// What a replay has applied so far: every aggregate's guard, and the events it holds back.
#[derive(Debug, Default)]
pub(crate) struct Replayed {
    /// Guards of devices whose id is a UUID in canonical form (about 40 bytes each).
    devices: HashMap<Uuid, Position>,
    /// Any other aggregate's guard.
    others: HashMap<Aggregate, Position>,
    /// Events beyond a gap.
    pub(crate) held: HeldBack,
}

/// An aggregate's guard: the last sequence applied, and the last one written to the table.
#[derive(Debug, Default, Clone, Copy)]
struct Position {
    applied: i64,
    stored: i64,
}

/// Where an aggregate's guard is kept in [`Replayed`].
#[derive(Debug, Clone, Copy)]
enum Key {
    /// In `devices`, by the UUID its id spells.
    Device(Uuid),
    /// In `others`, by type and id.
    Other,
}

impl Replayed {
    fn key(aggregate: &Aggregate) -> Key {
        if aggregate.0 == convert::aggregate::DEVICE
            && let Ok(id) = Uuid::try_parse(&aggregate.1)
            && *id.hyphenated().encode_lower(&mut Uuid::encode_buffer()) == *aggregate.1
        {
            return Key::Device(id);
        }
        Key::Other
    }

    fn last(&self, key: &Key, aggregate: &Aggregate) -> i64 {
        match key {
            Key::Device(id) => self.devices.get(id),
            Key::Other => self.others.get(aggregate),
        }
        .map_or(0, |position| position.applied)
    }

    fn set(&mut self, guard: &Guard) {
        let position = match guard.key {
            Key::Device(id) => self.devices.entry(id).or_default(),
            Key::Other => self.others.entry(guard.aggregate.clone()).or_default(),
        };
        position.applied = guard.last;
    }

    /// Aggregates with a guard.
    pub(crate) fn aggregates(&self) -> usize {
        self.devices.len() + self.others.len()
    }

    /// Writes the guards moved since the last call into `projector`'s guard table (each must move
    /// forward there), in statements of `chunk` guards.
    pub(crate) async fn store_guards(
        &mut self,
        connection: &mut PgConnection,
        projector: &str,
        chunk: usize,
    ) -> Result<u64, ProjectionError> {
        let chunk = chunk.max(1);
        let mut pending: Vec<(String, String, i64)> = Vec::with_capacity(chunk);
        let mut written = 0;
        for (id, position) in &mut self.devices {
            if position.applied > position.stored {
                let id = id.hyphenated().to_string();
                pending.push((convert::aggregate::DEVICE.to_owned(), id, position.applied));
                position.stored = position.applied;
            }
            if pending.len() == chunk {
                written += move_guards(&mut *connection, projector, &mut pending).await?;
            }
        }
        for (aggregate, position) in &mut self.others {
            if position.applied > position.stored {
                let (aggregate_type, aggregate_id) = aggregate.clone();
                pending.push((aggregate_type, aggregate_id, position.applied));
                position.stored = position.applied;
            }
            if pending.len() == chunk {
                written += move_guards(&mut *connection, projector, &mut pending).await?;
            }
        }
        written += move_guards(&mut *connection, projector, &mut pending).await?;
        Ok(written)
    }
}

/// Events that came before their predecessor, per aggregate, kept across batches until it
/// comes.
#[derive(Debug, Default)]
pub(crate) struct HeldBack {
    by_aggregate: HashMap<Aggregate, BTreeMap<i64, EventEnvelope>>,
}

impl HeldBack {
    /// How many events wait.
    pub(crate) fn len(&self) -> usize {
        self.by_aggregate.values().map(BTreeMap::len).sum()
    }

    /// Whether none waits.
    pub(crate) fn is_empty(&self) -> bool {
        self.by_aggregate.is_empty()
    }

    /// The aggregates (type, id) and the first sequence each holds back, for the log.
    pub(crate) fn waiting(&self) -> impl Iterator<Item = (&Aggregate, i64)> {
        self.by_aggregate
            .iter()
            .filter_map(|(aggregate, events)| Some((aggregate, *events.keys().next()?)))
    }

    fn hold(&mut self, aggregate: &Aggregate, event: EventEnvelope) {
        self.by_aggregate
            .entry(aggregate.clone())
            .or_default()
            .insert(event.sequence, event);
    }

    /// The held event that follows `last`, if any; drops the held ones at or below it.
    fn take_next(&mut self, aggregate: &Aggregate, last: i64) -> Option<EventEnvelope> {
        if self.by_aggregate.is_empty() {
            return None;
        }
        let events = self.by_aggregate.get_mut(aggregate)?;
        let mut next = None;
        while let Some(entry) = events.first_entry() {
            if *entry.key() > last + 1 {
                break;
            }
            let event = entry.remove();
            if event.sequence == last + 1 {
                next = Some(event);
                break;
            }
        }
        if events.is_empty() {
            self.by_aggregate.remove(aggregate);
        }
        next
    }
}

/// What a batch did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct BatchOutcome {
    /// Events applied.
    pub(crate) applied: u64,
    /// Duplicates skipped.
    pub(crate) already_applied: u64,
    /// Events parked in `dead_letters`.
    pub(crate) parked: u64,
    /// Events held back behind a gap (applied later, when the gap fills).
    pub(crate) held_back: u64,
    /// Events of a type this build does not know, passed over.
    pub(crate) unknown: u64,
}

impl std::ops::AddAssign for BatchOutcome {
    fn add_assign(&mut self, other: Self) {
        self.applied += other.applied;
        self.already_applied += other.already_applied;
        self.parked += other.parked;
        self.held_back += other.held_back;
        self.unknown += other.unknown;
    }
}

/// One aggregate of the batch: its guard before the batch, and as the batch moves it.
struct Guard {
    aggregate: Aggregate,
    key: Key,
    before: i64,
    last: i64,
}

struct Parked {
    subject: String,
    event_id: String,
    reason: String,
    payload: Vec<u8>,
}

struct Fold<'p, P: BatchProjector> {
    projector: &'p P,
    state: P::State,
    parked: Vec<Parked>,
    outcome: BatchOutcome,
}

impl<P: BatchProjector> Fold<'_, P> {
    /// Applies `event`, then whatever was held back behind it.
    fn settle(
        &mut self,
        guard: &mut Guard,
        event: EventEnvelope,
        held: &mut HeldBack,
    ) -> Result<(), ProjectionError> {
        if event.sequence <= guard.last {
            self.outcome.already_applied += 1;
            return Ok(());
        }
        if event.sequence != guard.last + 1 {
            self.outcome.held_back += 1;
            held.hold(&guard.aggregate, event);
            return Ok(());
        }
        self.apply(guard, &event)?;
        while let Some(next) = held.take_next(&guard.aggregate, guard.last) {
            self.apply(guard, &next)?;
        }
        Ok(())
    }

    fn apply(&mut self, guard: &mut Guard, event: &EventEnvelope) -> Result<(), ProjectionError> {
        if proto::events::is_unknown(event) {
            // As the live path: nothing to apply, the guard moves past it.
            self.outcome.unknown += 1;
            guard.last = event.sequence;
            return Ok(());
        }
        match self.projector.fold(&mut self.state, event) {
            Ok(()) => self.outcome.applied += 1,
            // As the live path: park it, and let the aggregate's later events through.
            Err(ProjectionError::Poison(reason)) => {
                tracing::error!(event_id = %event.event_id, %reason, "parking an event that cannot apply");
                self.parked.push(Parked {
                    subject: format!("{}.{}", event.aggregate_type, event.event_type),
                    event_id: event.event_id.clone(),
                    reason,
                    payload: super::dead_letter_payload(event),
                });
                self.outcome.parked += 1;
            }
            Err(other) => return Err(other),
        }
        guard.last = event.sequence;
        Ok(())
    }
}

/// Applies `events` (in delivery order) with `projector` inside the caller's transaction on
/// `connection`, against the guards in `replayed` (written later by
/// [`Replayed::store_guards`]); events beyond a gap wait in `replayed` for a later batch. If
/// this or the caller's commit fails, `replayed` no longer matches the tables: the replay must
/// stop.
pub(crate) async fn apply_batch<P: BatchProjector>(
    connection: &mut PgConnection,
    projector: &P,
    events: Vec<EventEnvelope>,
    replayed: &mut Replayed,
) -> Result<BatchOutcome, ProjectionError> {
    // The batch's aggregates, in order of first appearance, and each event's aggregate.
    let mut slots: HashMap<(&str, &str), usize> = HashMap::new();
    let mut guards: Vec<Guard> = Vec::new();
    let mut slot_of = Vec::with_capacity(events.len());
    for event in &events {
        let aggregate = (event.aggregate_type.as_str(), event.aggregate_id.as_str());
        let slot = *slots.entry(aggregate).or_insert_with(|| {
            let aggregate = (aggregate.0.to_owned(), aggregate.1.to_owned());
            let key = Replayed::key(&aggregate);
            let last = replayed.last(&key, &aggregate);
            guards.push(Guard {
                aggregate,
                key,
                before: last,
                last,
            });
            guards.len() - 1
        });
        slot_of.push(slot);
    }
    let aggregates: Vec<(&str, &str)> = guards
        .iter()
        .map(|g| (g.aggregate.0.as_str(), g.aggregate.1.as_str()))
        .collect();
    let state = projector.load(&mut *connection, &aggregates).await?;
    let mut fold = Fold {
        projector,
        state,
        parked: Vec::new(),
        outcome: BatchOutcome::default(),
    };
    for (event, slot) in events.into_iter().zip(slot_of) {
        if let Some(guard) = guards.get_mut(slot) {
            fold.settle(guard, event, &mut replayed.held)?;
        }
    }
    projector.store(&mut *connection, fold.state).await?;
    park(connection, projector.name(), &fold.parked).await?;
    for guard in guards.iter().filter(|g| g.last > g.before) {
        replayed.set(guard);
    }
    Ok(fold.outcome)
}

/// Records parked events, once each: a rebuild replays events the live consumer parked already.
async fn park(
    connection: &mut PgConnection,
    projector: &str,
    parked: &[Parked],
) -> Result<(), ProjectionError> {
    for letter in parked {
        sqlx::query(
            "INSERT INTO dead_letters (projector, subject, event_id, reason, payload) \
             SELECT $1, $2, $3, $4, $5 WHERE NOT EXISTS \
             (SELECT 1 FROM dead_letters WHERE projector = $1 AND event_id = $3)",
        )
        .bind(projector)
        .bind(&letter.subject)
        .bind(&letter.event_id)
        .bind(&letter.reason)
        .bind(&letter.payload)
        .execute(&mut *connection)
        .await?;
    }
    Ok(())
}

/// Writes guards (type, id, last sequence), each of which must move forward, and empties
/// `moved`.
async fn move_guards(
    connection: &mut PgConnection,
    projector: &str,
    moved: &mut Vec<(String, String, i64)>,
) -> Result<u64, ProjectionError> {
    if moved.is_empty() {
        return Ok(0);
    }
    let types: Vec<&str> = moved.iter().map(|g| g.0.as_str()).collect();
    let ids: Vec<&str> = moved.iter().map(|g| g.1.as_str()).collect();
    let lasts: Vec<i64> = moved.iter().map(|g| g.2).collect();
    let written = sqlx::query(
        "INSERT INTO projector_positions AS g (projector, aggregate_type, aggregate_id, \
         last_sequence) SELECT $1, u.aggregate_type, u.aggregate_id, u.last \
         FROM UNNEST($2::text[], $3::text[], $4::bigint[]) AS u (aggregate_type, aggregate_id, last) \
         ON CONFLICT (projector, aggregate_type, aggregate_id) \
         DO UPDATE SET last_sequence = EXCLUDED.last_sequence \
         WHERE g.last_sequence < EXCLUDED.last_sequence",
    )
    .bind(projector)
    .bind(&types)
    .bind(&ids)
    .bind(&lasts)
    .execute(&mut *connection)
    .await?
    .rows_affected();
    if written != moved.len() as u64 {
        return Err(ProjectionError::Transient(sqlx::Error::Protocol(
            "a guard the rebuild wrote was moved by someone else".into(),
        )));
    }
    moved.clear();
    Ok(written)
}
