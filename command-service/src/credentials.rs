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

/// A link's credential, to be claimed.
pub(crate) struct Claim<'a> {
    pub(crate) link_id: Uuid,
    pub(crate) device_id: Uuid,
    pub(crate) account_id: &'a str,
    pub(crate) credential_hash: &'a [u8],
    pub(crate) code_verifier: &'a str,
}

/// How a claim went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Claimed {
    /// The row is this call's.
    Ours,
    /// Another call for the same link claimed it first.
    Taken,
    /// The account has as many links as it may; its least recently used device is named.
    AccountFull {
        least_recently_used: Uuid,
        used_at: DateTime<Utc>,
    },
}

impl Claimed {
    /// The device-cap refusal this outcome stands for, if it is one (`cap`: the cap applied).
    pub(crate) fn or_device_limit(self, cap: u32) -> Result<Self, CommandError> {
        match self {
            Self::AccountFull {
                least_recently_used,
                used_at,
            } => Err(CommandError::DeviceLimit {
                cap,
                least_recently_used,
                used_at,
            }),
            other @ (Self::Ours | Self::Taken) => Ok(other),
        }
    }
}

/// Takes, until `conn`'s transaction ends, the advisory lock that serialises `account_id`'s
/// device slots: claims and erasure.
pub(crate) async fn lock_device_slots(
    conn: &mut sqlx::PgConnection,
    account_id: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))")
        .bind(format!("linkd/device-slots/{account_id}"))
        .execute(conn)
        .await?;
    Ok(())
}

/// How many links `account_id` holds: live ones, and claims in flight.
pub(crate) async fn links_held(
    conn: &mut sqlx::PgConnection,
    account_id: &str,
) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar("SELECT count(*) FROM device_credentials WHERE account_id = $1")
        .bind(account_id)
        .fetch_one(conn)
        .await
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

    /// Stores the credential and verifier of link `link_id`, for `account_id`, if it has none yet
    /// and the account has fewer than `cap` links (live ones, and claims in flight). One
    /// transaction, serialised per account by an advisory lock, so that two links racing for the
    /// last place get exactly one. Exactly one call sets a link's code, and nothing replaces it.
    pub(crate) async fn claim_device_credential(
        &self,
        claim: &Claim<'_>,
        cap: u32,
    ) -> Result<Claimed, CommandError> {
        let mut tx = self.pool.begin().await?;
        lock_device_slots(&mut tx, claim.account_id).await?;
        // Erasure takes the same lock and refuses while a claim exists: under it, an account is
        // either not erased and gets no erasure before this claim commits, or erased and links
        // nothing more (docs/adr/0025).
        let erased: bool = sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM data_keys WHERE subject = $1 AND wrapped IS NULL)",
        )
        .bind(crate::sealing::account_subject(claim.account_id))
        .fetch_one(&mut *tx)
        .await?;
        if erased {
            return Err(domain::AccountError::Erased.into());
        }
        let taken: bool = sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM device_credentials WHERE link_id = $1)",
        )
        .bind(claim.link_id)
        .fetch_one(&mut *tx)
        .await?;
        if taken {
            return Ok(Claimed::Taken);
        }
        if let Some(full) = Self::full(&mut tx, claim.account_id, cap).await? {
            return Ok(full);
        }
        sqlx::query(
            "INSERT INTO device_credentials \
               (link_id, device_id, account_id, credential_hash, code_verifier) \
             VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(claim.link_id)
        .bind(claim.device_id)
        .bind(claim.account_id)
        .bind(claim.credential_hash)
        .bind(claim.code_verifier)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(Claimed::Ours)
    }

    /// `Some(AccountFull)` if `account_id` has `cap` links or more (an early, advisory check:
    /// the claim decides).
    pub(crate) async fn account_full(
        &self,
        account_id: &str,
        cap: u32,
    ) -> Result<Option<Claimed>, CommandError> {
        let mut conn = self.pool.acquire().await?;
        Self::full(&mut conn, account_id, cap).await
    }

    async fn full(
        conn: &mut sqlx::PgConnection,
        account_id: &str,
        cap: u32,
    ) -> Result<Option<Claimed>, CommandError> {
        let links = links_held(&mut *conn, account_id).await?;
        if links < i64::from(cap) {
            return Ok(None);
        }
        let (device_id, used_at): (Uuid, DateTime<Utc>) = sqlx::query_as(
            "SELECT device_id, used_at FROM device_credentials WHERE account_id = $1 \
             ORDER BY used_at, link_id LIMIT 1",
        )
        .bind(account_id)
        .fetch_one(&mut *conn)
        .await?;
        Ok(Some(Claimed::AccountFull {
            least_recently_used: device_id,
            used_at,
        }))
    }

    /// The devices linked to `account_id` now, whose links were made at or after `since` if
    /// given, oldest first.
    pub(crate) async fn links_of(
        &self,
        account_id: &str,
        since: Option<DateTime<Utc>>,
    ) -> Result<Vec<Uuid>, CommandError> {
        Ok(sqlx::query_scalar(
            "SELECT device_id FROM device_credentials \
             WHERE account_id = $1 AND ($2::timestamptz IS NULL OR created_at >= $2) \
             ORDER BY created_at, link_id",
        )
        .bind(account_id)
        .bind(since)
        .fetch_all(&self.pool)
        .await?)
    }

    /// Records that link `link_id`'s device was used (at most once per `every`, to spare
    /// writes).
    pub(crate) async fn record_use(
        &self,
        link_id: Uuid,
        every: chrono::Duration,
    ) -> Result<(), CommandError> {
        sqlx::query(
            "UPDATE device_credentials SET used_at = now() \
             WHERE link_id = $1 AND used_at < now() - make_interval(secs => $2)",
        )
        .bind(link_id)
        .bind(every.as_seconds_f64())
        .execute(&self.pool)
        .await?;
        Ok(())
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
