//! Snapshots: a cache of aggregate states, taken every [`SNAPSHOT_EVERY`] events from the state a
//! command left, so a load replays at most that many events whatever the length of the history.
//!
//! A snapshot decides commands (a device's failure count, say) without leaving a trace in the
//! hash-chained history, so one is used only if it fits the aggregate's current shape
//! ([`schema`]), is bound to the chain hash of the event it was taken at, and carries a valid
//! HMAC under a key derived from the server's pepper ([`key`], [`mac`]). Anything else is
//! ignored and the history replayed. See docs/adr/0008.

use sha2::{Digest as _, Sha256};
use sqlx::PgPool;

use super::Stored;
use crate::secrets::hmac_parts;

/// A snapshot is written once an aggregate has this many events after its last snapshot.
pub const SNAPSHOT_EVERY: i64 = 16;

/// The shape a snapshot of `A` must have to be used: the version and a fingerprint of the
/// default state's serialised form (its top-level field names).
pub(crate) fn schema<A: Stored>() -> String {
    let shape = serde_json::to_string(&A::default()).unwrap_or_default();
    let digest = Sha256::digest(shape.as_bytes());
    let fingerprint: String = digest[..8].iter().map(|b| format!("{b:02x}")).collect();
    format!("v{}:{fingerprint}", A::SNAPSHOT_VERSION)
}

/// The key that authenticates snapshots, derived from the server's secret-code pepper.
pub fn key(pepper: &[u8]) -> Vec<u8> {
    hmac_parts(pepper, &[b"linkd/snapshot-key/v1"])
}

/// What a snapshot row says about itself; its MAC covers all of it.
#[derive(Debug, Clone, Copy)]
pub struct Header<'a> {
    /// The aggregate type.
    pub aggregate_type: &'a str,
    /// The aggregate id.
    pub aggregate_id: &'a str,
    /// The state's shape ([`schema`]).
    pub schema: &'a str,
    /// The sequence of the event the snapshot was taken at.
    pub last_sequence: i64,
    /// That event's chain hash.
    pub chain_hash: &'a [u8],
}

/// The MAC a snapshot row with `header` and `payload` must carry (public for tests and tools
/// that check snapshots).
pub fn mac(key: &[u8], header: Header<'_>, payload: &str) -> Vec<u8> {
    hmac_parts(
        key,
        &[
            header.aggregate_type.as_bytes(),
            header.aggregate_id.as_bytes(),
            header.schema.as_bytes(),
            &header.last_sequence.to_be_bytes(),
            header.chain_hash,
            payload.as_bytes(),
        ],
    )
}

/// A snapshot to write: the state after a command and where it stands.
#[derive(Debug)]
pub(super) struct Taken {
    pub(super) aggregate_id: String,
    pub(super) last_sequence: i64,
    pub(super) last_global_position: i64,
    pub(super) chain_hash: Vec<u8>,
    /// The state, sealed ([`aad`]) and as a JSON string.
    pub(super) payload: String,
    /// Whose data key sealed it.
    pub(super) data_subject: String,
}

/// What a sealed snapshot's ciphertext is bound to: the aggregate and the event it was taken at.
pub(super) fn aad(aggregate_type: &str, aggregate_id: &str, last_sequence: i64) -> String {
    format!("snapshot/{aggregate_type}/{aggregate_id}/{last_sequence}")
}

/// Writes a snapshot of `A` in the background: it is a cache, so a failure only costs later
/// loads a longer replay, and the command does not wait for it. An older snapshot never
/// replaces a newer one of the same shape.
pub(super) fn save<A: Stored>(pool: &PgPool, key: &[u8], taken: Taken) {
    let schema = schema::<A>();
    let mac = mac(
        key,
        Header {
            aggregate_type: A::TYPE,
            aggregate_id: &taken.aggregate_id,
            schema: &schema,
            last_sequence: taken.last_sequence,
            chain_hash: &taken.chain_hash,
        },
        &taken.payload,
    );
    let pool = pool.clone();
    tokio::spawn(async move {
        let saved = sqlx::query(
            "INSERT INTO aggregate_snapshots \
                 (aggregate_type, aggregate_id, schema, last_sequence, last_global_position, \
                  payload, chain_hash, mac, data_subject) \
             VALUES ($1, $2, $3, $4, $5, $6::json, $7, $8, $9) \
             ON CONFLICT (aggregate_type, aggregate_id) DO UPDATE \
             SET schema = EXCLUDED.schema, last_sequence = EXCLUDED.last_sequence, \
                 last_global_position = EXCLUDED.last_global_position, \
                 payload = EXCLUDED.payload, chain_hash = EXCLUDED.chain_hash, \
                 mac = EXCLUDED.mac, data_subject = EXCLUDED.data_subject \
             WHERE aggregate_snapshots.last_sequence < EXCLUDED.last_sequence \
                OR aggregate_snapshots.schema <> EXCLUDED.schema",
        )
        .bind(A::TYPE)
        .bind(&taken.aggregate_id)
        .bind(schema)
        .bind(taken.last_sequence)
        .bind(taken.last_global_position)
        .bind(taken.payload)
        .bind(taken.chain_hash)
        .bind(mac)
        .bind(taken.data_subject)
        .execute(&pool)
        .await;
        if let Err(error) = saved {
            tracing::warn!(
                aggregate_type = A::TYPE,
                aggregate_id = taken.aggregate_id,
                %error,
                "snapshot not saved"
            );
        }
    });
}
