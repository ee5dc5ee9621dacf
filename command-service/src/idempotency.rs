//! Idempotent retries (AIP-155): a call repeated with the same `request_id` returns the first
//! answer and changes nothing.
//!
//! Keys are scoped by caller: the row is found by a hash of (method, scope, request_id), where
//! the scope is the credential the call carries (see `grpc::Scoped`), so one client's
//! `request_id`, learnt by another, cannot be claimed by that other.
//!
//! Neither the `request_id` nor the answer is stored in clear, because some answers carry
//! secrets (a QR payload, a link token, a device credential). The answer is encrypted (ChaCha20-Poly1305) with a key derived from the
//! `request_id`, the caller's credentials and the request — which only the client holds.

use chacha20poly1305::aead::{Aead as _, KeyInit as _};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};
use sqlx::PgPool;
use uuid::Uuid;

use crate::error::CommandError;
use crate::secrets::sha256;

/// A call still marked in progress after this long is presumed dead and may be taken over
/// (well above the longest a call can run: pool waits, bounded retries and Argon2id).
const STALE_AFTER_SECONDS: f64 = 120.0;

/// The request log.
#[derive(Debug, Clone)]
pub(crate) struct RequestLog {
    pool: PgPool,
    /// How long answers are replayed (`LINKD_RETENTION_REPLAY_HOURS`).
    keep: std::time::Duration,
}

#[derive(sqlx::FromRow)]
struct LoggedCall {
    fingerprint: Vec<u8>,
    state: String,
    response: Option<Vec<u8>>,
    stale: bool,
}

struct Keys {
    key_hash: Vec<u8>,
    fingerprint: Vec<u8>,
    cipher_key: Vec<u8>,
}

fn derive(label: &str, parts: &[&[u8]]) -> Vec<u8> {
    let mut input = format!("linkd/idempotency/{label}/v1").into_bytes();
    for part in parts {
        input.push(0);
        input.extend_from_slice(&(part.len() as u64).to_be_bytes());
        input.extend_from_slice(part);
    }
    sha256(&input)
}

impl RequestLog {
    /// A request log over `pool` that replays answers for `keep`.
    pub(crate) fn new(pool: PgPool, keep: std::time::Duration) -> Self {
        Self { pool, keep }
    }

    /// Runs `call` once per (`method`, `scope`, `request_id`): a repeat returns the first
    /// answer. An empty `request_id` runs `call` without any of this. `scope` is whose request
    /// ids these are; `credentials` is the caller's authorization (or empty); a repeat must
    /// present the same credentials and the same request.
    pub(crate) async fn run<Req, Resp, F, Fut>(
        &self,
        method: &str,
        request_id: &str,
        scope: &str,
        credentials: &str,
        request: &Req,
        call: F,
    ) -> Result<Resp, CommandError>
    where
        Req: prost::Message,
        Resp: prost::Message + Default,
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<Resp, CommandError>>,
    {
        if request_id.is_empty() {
            return call().await;
        }
        let parsed = Uuid::try_parse(request_id).map_err(|_| {
            CommandError::InvalidArgument("request_id must be a UUID (or empty)".into())
        })?;
        let request_id = parsed.to_string();
        let body = request.encode_to_vec();
        let keys = Keys {
            key_hash: derive(
                "key",
                &[method.as_bytes(), scope.as_bytes(), request_id.as_bytes()],
            ),
            fingerprint: derive(
                "fingerprint",
                &[method.as_bytes(), credentials.as_bytes(), &body],
            ),
            cipher_key: derive(
                "cipher",
                &[
                    method.as_bytes(),
                    request_id.as_bytes(),
                    credentials.as_bytes(),
                    &body,
                ],
            ),
        };
        if let Some(answer) = self.claim(&keys).await? {
            return Ok(answer);
        }
        match call().await {
            Ok(response) => {
                if let Err(error) = self.finish(&keys, &response).await {
                    // The call did its work: answer it. A retry will find the call pending and,
                    // once stale, run it again (most commands are then no-ops or refusals).
                    tracing::warn!(%error, method, "could not record the answer for replays");
                }
                Ok(response)
            }
            Err(error) => {
                // The call failed, so a retry may run it again.
                sqlx::query("DELETE FROM request_log WHERE key_hash = $1")
                    .bind(&keys.key_hash)
                    .execute(&self.pool)
                    .await?;
                Err(error)
            }
        }
    }

    /// Claims the key for this call (`None`), or returns the answer of the first call.
    async fn claim<Resp: prost::Message + Default>(
        &self,
        keys: &Keys,
    ) -> Result<Option<Resp>, CommandError> {
        // The key is claimed if it is free (one statement, the usual case), or if its answer
        // is past its retention (the key can be used again). A live row is neither locked nor
        // written: a replay costs reads only.
        let inserted = sqlx::query(
            "INSERT INTO request_log (key_hash, fingerprint, state) VALUES ($1, $2, 'pending') \
             ON CONFLICT (key_hash) DO NOTHING",
        )
        .bind(&keys.key_hash)
        .bind(&keys.fingerprint)
        .execute(&self.pool)
        .await?;
        let claimed = if inserted.rows_affected() == 1 {
            inserted
        } else {
            // Concurrent claims of an expired key serialise on its row; the second finds it
            // fresh and goes on to the answer (in progress).
            sqlx::query(
                "UPDATE request_log SET fingerprint = $2, state = 'pending', response = NULL, \
                 created_at = now(), updated_at = now() \
                 WHERE key_hash = $1 AND created_at < now() - make_interval(secs => $3)",
            )
            .bind(&keys.key_hash)
            .bind(&keys.fingerprint)
            .bind(self.keep.as_secs_f64())
            .execute(&self.pool)
            .await?
        };
        if claimed.rows_affected() == 1 {
            return Ok(None);
        }
        let row: Option<LoggedCall> = sqlx::query_as(
            "SELECT fingerprint, state, response, \
             updated_at < now() - make_interval(secs => $2) AS stale \
             FROM request_log WHERE key_hash = $1",
        )
        .bind(&keys.key_hash)
        .bind(STALE_AFTER_SECONDS)
        .fetch_optional(&self.pool)
        .await?;
        let Some(LoggedCall {
            fingerprint,
            state,
            response,
            stale,
        }) = row
        else {
            return Err(CommandError::InProgress(
                "a call with this request_id has just finished failing; retry it".into(),
            ));
        };
        if fingerprint != keys.fingerprint {
            return Err(CommandError::InvalidArgument(
                "request_id was already used for a different request (or other credentials); \
                 use a new request_id for a new request"
                    .into(),
            ));
        }
        match (state.as_str(), response) {
            ("done", Some(sealed)) => Ok(Some(open(&keys.cipher_key, &sealed)?)),
            _ if stale => {
                let taken = sqlx::query(
                    "UPDATE request_log SET updated_at = now() WHERE key_hash = $1 \
                     AND state = 'pending' AND updated_at < now() - make_interval(secs => $2)",
                )
                .bind(&keys.key_hash)
                .bind(STALE_AFTER_SECONDS)
                .execute(&self.pool)
                .await?;
                if taken.rows_affected() == 1 {
                    Ok(None)
                } else {
                    Err(in_progress())
                }
            }
            _ => Err(in_progress()),
        }
    }

    async fn finish<Resp: prost::Message>(
        &self,
        keys: &Keys,
        response: &Resp,
    ) -> Result<(), CommandError> {
        let sealed = seal(&keys.cipher_key, &response.encode_to_vec())?;
        sqlx::query(
            "UPDATE request_log SET state = 'done', response = $2, updated_at = now() \
             WHERE key_hash = $1",
        )
        .bind(&keys.key_hash)
        .bind(sealed)
        .execute(&self.pool)
        .await?;
        Ok(())
    }
}

fn in_progress() -> CommandError {
    CommandError::InProgress(
        "a call with this request_id is still in progress; retry in a moment".into(),
    )
}

fn seal(key: &[u8], plaintext: &[u8]) -> Result<Vec<u8>, CommandError> {
    let mut nonce = [0u8; 12];
    getrandom::fill(&mut nonce).map_err(|e| CommandError::Internal(e.to_string()))?;
    let cipher = ChaCha20Poly1305::new(Key::from_slice(key));
    let mut sealed = nonce.to_vec();
    sealed.extend(
        cipher
            .encrypt(Nonce::from_slice(&nonce), plaintext)
            .map_err(|_| CommandError::Internal("encrypting a stored answer failed".into()))?,
    );
    Ok(sealed)
}

fn open<Resp: prost::Message + Default>(key: &[u8], sealed: &[u8]) -> Result<Resp, CommandError> {
    let corrupt = || CommandError::Internal("a stored answer cannot be decrypted".into());
    if sealed.len() < 12 {
        return Err(corrupt());
    }
    let (nonce, ciphertext) = sealed.split_at(12);
    let cipher = ChaCha20Poly1305::new(Key::from_slice(key));
    let plaintext = cipher
        .decrypt(Nonce::from_slice(nonce), ciphertext)
        .map_err(|_| corrupt())?;
    Resp::decode(plaintext.as_slice()).map_err(|_| corrupt())
}
