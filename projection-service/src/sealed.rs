//! Opening the personal fields that travel sealed on the bus (ADR 0025), before any read model
//! sees an event: with the data keys read, batch by batch, from the event store's `data_keys`
//! (`LINKD_EVENT_STORE_URL`) and unwrapped with the KEKs (`LINKD_KEK_FILE`). A field whose key is
//! erased becomes its placeholder (`[erased]`, or empty for an optional one), so a read model
//! built after an erasure, by the live consumer or by a rebuild, holds none of it.

use proto::v1::EventEnvelope;
use service_kit::sealing::{BatchKeys, ERASED, Keks, is_sealed};
use sqlx::PgPool;

/// What opens sealed fields: the event store's pool and the KEKs.
#[derive(Debug, Clone)]
pub struct Opener {
    event_store: PgPool,
    keks: Keks,
}

/// Why a batch could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// The event store could not be read: the batch is retried.
    #[error("reading data keys from the event store: {0}")]
    Database(#[from] sqlx::Error),
    /// Sealed fields arrived, but the service has no way to open them: retried until the
    /// service is configured (nothing is applied half-read).
    #[error(
        "{0} carries sealed personal fields, but LINKD_EVENT_STORE_URL and LINKD_KEK_FILE are \
         not both set: the projection service cannot read them"
    )]
    NotConfigured(String),
}

/// Whether any personal field of `envelope` is sealed.
fn has_sealed(envelope: &mut EventEnvelope) -> bool {
    envelope.event.as_mut().is_some_and(|event| {
        proto::personal::fields(event)
            .iter()
            .any(|field| is_sealed(field.value))
    })
}

impl Opener {
    /// An opener over the event store `event_store`, with `keks`.
    pub fn new(event_store: PgPool, keks: Keks) -> Self {
        Self { event_store, keks }
    }

    /// Opens every sealed field of `events` in place. The outer error means nothing was
    /// opened (retry the batch); an inner one names an event whose fields do not open
    /// (altered or misattributed: poison).
    pub async fn open(
        opener: Option<&Self>,
        events: &mut [EventEnvelope],
    ) -> Result<Vec<Result<(), String>>, OpenError> {
        let mut subjects: Vec<String> = Vec::new();
        let mut first_sealed = None;
        for event in events.iter_mut() {
            if has_sealed(event) {
                first_sealed.get_or_insert_with(|| event.event_id.clone());
                if !subjects.contains(&event.data_subject) {
                    subjects.push(event.data_subject.clone());
                }
            }
        }
        let Some(first_sealed) = first_sealed else {
            return Ok(events.iter().map(|_| Ok(())).collect());
        };
        let opener = opener.ok_or(OpenError::NotConfigured(first_sealed))?;
        let mut keys = BatchKeys::fetch(&opener.event_store, &subjects).await?;
        Ok(events
            .iter_mut()
            .map(|envelope| opener.open_one(&mut keys, envelope))
            .collect())
    }

    fn open_one(&self, keys: &mut BatchKeys, envelope: &mut EventEnvelope) -> Result<(), String> {
        let event_id = envelope.event_id.clone();
        let subject = envelope.data_subject.clone();
        let Some(event) = envelope.event.as_mut() else {
            return Ok(());
        };
        for field in proto::personal::fields(event) {
            if !is_sealed(field.value) {
                continue;
            }
            if subject.is_empty() {
                return Err(format!("{event_id}: a sealed field without a data subject"));
            }
            let key = keys
                .key(&self.keks, &subject)
                .map_err(|e| format!("{event_id}: {e}"))?;
            *field.value = match key {
                Some(key) => {
                    let aad = format!("{event_id}#{}", field.path);
                    let plaintext = key
                        .open_text(&aad, field.value)
                        .map_err(|e| format!("{event_id}: {e}"))?;
                    serde_json::from_slice::<String>(&plaintext)
                        .map_err(|e| format!("{event_id}: {} is not a text ({e})", field.path))?
                }
                None if field.optional => String::new(),
                None => ERASED.to_owned(),
            };
        }
        Ok(())
    }
}
