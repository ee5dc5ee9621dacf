-- Secrets live here, never in events (DESIGN §4 rule 2). Only hashes are stored.

-- High-entropy bearer tokens: a link attempt's token and a QR code's token (SHA-256).
CREATE TABLE bearer_tokens
(
    kind       text        NOT NULL CHECK (kind IN ('link_attempt', 'qr')),
    id         uuid        NOT NULL,
    token_hash bytea       NOT NULL,
    expires_at timestamptz NOT NULL,
    PRIMARY KEY (kind, id)
);
CREATE INDEX bearer_tokens_expiry ON bearer_tokens (expires_at);

-- One row per link: the device credential's hash (SHA-256) and the secret code's verifier
-- (Argon2id PHC string, computed with a server-side pepper). Unlinking deletes the rows.
CREATE TABLE device_credentials
(
    link_id         uuid PRIMARY KEY,
    device_id       uuid        NOT NULL,
    credential_hash bytea       NOT NULL,
    code_verifier   text        NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX device_credentials_device ON device_credentials (device_id);
