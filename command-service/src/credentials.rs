//! The tables that hold hashes of secrets, beside the events (never in them).

use chrono::{DateTime, Utc};
use sqlx::PgPool;
use uuid::Uuid;

use crate::error::CommandError;
use crate::secrets::TokenKind;

/// A device credential's stored hashes.
pub(crate) struct StoredCredential {
    /// The device it belongs to.
    pub(crate) device_id: Uuid,
    /// SHA-256 of the credential's random part.
    pub(crate) credential_hash: Vec<u8>,
    /// Argon2id verifier of the secret code.
    pub(crate) code_verifier: String,
}

impl std::fmt::Debug for StoredCredential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "StoredCredential({}, ***)", self.device_id)
    }
}

/// Access to the secret tables.
#[derive(Debug, Clone)]
pub(crate) struct Credentials {
    pool: PgPool,
}

impl Credentials {
    /// Over `pool`.
    pub(crate) fn new(pool: PgPool) -> Self {
        Self { pool }
    }

    /// Stores the hash of a bearer token (link attempt or QR).
    pub(crate) async fn insert_bearer(
        &self,
        kind: TokenKind,
        id: Uuid,
        hash: &[u8],
        expires_at: DateTime<Utc>,
    ) -> Result<(), CommandError> {
        sqlx::query(
            "INSERT INTO bearer_tokens (kind, id, token_hash, expires_at) VALUES ($1, $2, $3, $4)",
        )
        .bind(kind.table_kind())
        .bind(id)
        .bind(hash)
        .bind(expires_at)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// The stored hash of the link token of attempt `id`, if it is still alive: a link token
    /// dies when its attempt expires or links its device (DESIGN §4 rule 7).
    pub(crate) async fn live_link_token(&self, id: Uuid) -> Result<Option<Vec<u8>>, CommandError> {
        Ok(sqlx::query_scalar(
            "SELECT token_hash FROM bearer_tokens \
             WHERE kind = $1 AND id = $2 AND expires_at > now()",
        )
        .bind(TokenKind::LinkAttempt.table_kind())
        .bind(id)
        .fetch_optional(&self.pool)
        .await?)
    }

    /// Ends bearer token `id` of `kind` (its purpose is done).
    pub(crate) async fn delete_bearer(
        &self,
        kind: TokenKind,
        id: Uuid,
    ) -> Result<(), CommandError> {
        sqlx::query("DELETE FROM bearer_tokens WHERE kind = $1 AND id = $2")
            .bind(kind.table_kind())
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// The stored hash of bearer token `id`, if any.
    pub(crate) async fn bearer_hash(
        &self,
        kind: TokenKind,
        id: Uuid,
    ) -> Result<Option<Vec<u8>>, CommandError> {
        Ok(
            sqlx::query_scalar("SELECT token_hash FROM bearer_tokens WHERE kind = $1 AND id = $2")
                .bind(kind.table_kind())
                .bind(id)
                .fetch_optional(&self.pool)
                .await?,
        )
    }

    /// Stores the credential and verifier of link `link_id` if it has none yet; `false` if it
    /// has (another call set them: exactly one call sets a link's code, and nothing replaces it).
    pub(crate) async fn claim_device_credential(
        &self,
        link_id: Uuid,
        device_id: Uuid,
        credential_hash: &[u8],
        code_verifier: &str,
    ) -> Result<bool, CommandError> {
        let inserted = sqlx::query(
            "INSERT INTO device_credentials (link_id, device_id, credential_hash, code_verifier) \
             VALUES ($1, $2, $3, $4) ON CONFLICT (link_id) DO NOTHING",
        )
        .bind(link_id)
        .bind(device_id)
        .bind(credential_hash)
        .bind(code_verifier)
        .execute(&self.pool)
        .await?;
        Ok(inserted.rows_affected() == 1)
    }

    /// Deletes the credential of link `link_id` if it is the one with `credential_hash` (the
    /// credential a call itself stored, for a link that did not happen).
    pub(crate) async fn release_device_credential(
        &self,
        link_id: Uuid,
        credential_hash: &[u8],
    ) -> Result<(), CommandError> {
        sqlx::query("DELETE FROM device_credentials WHERE link_id = $1 AND credential_hash = $2")
            .bind(link_id)
            .bind(credential_hash)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// The credential of link `link_id`, if any.
    pub(crate) async fn device_credential(
        &self,
        link_id: Uuid,
    ) -> Result<Option<StoredCredential>, CommandError> {
        let row: Option<(Uuid, Vec<u8>, String)> = sqlx::query_as(
            "SELECT device_id, credential_hash, code_verifier FROM device_credentials \
             WHERE link_id = $1",
        )
        .bind(link_id)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.map(
            |(device_id, credential_hash, code_verifier)| StoredCredential {
                device_id,
                credential_hash,
                code_verifier,
            },
        ))
    }

    /// Deletes the credential of one link (a link that ended, or that did not happen).
    pub(crate) async fn delete_link(&self, link_id: Uuid) -> Result<(), CommandError> {
        sqlx::query("DELETE FROM device_credentials WHERE link_id = $1")
            .bind(link_id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }
}
