-- Idempotent retries (AIP-155). Neither the client's request_id nor the response is stored in
-- clear: the row is found by a hash of (method, request_id) and the response is encrypted with
-- a key derived from the request_id and the request, which only the client holds.
CREATE TABLE request_log
(
    key_hash    bytea PRIMARY KEY,
    fingerprint bytea       NOT NULL,
    state       text        NOT NULL CHECK (state IN ('pending', 'done')),
    response    bytea,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX request_log_created ON request_log (created_at);
