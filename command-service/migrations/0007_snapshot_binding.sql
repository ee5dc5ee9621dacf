-- A snapshot is only used if it is bound to the history (docs/adr/0008): the chain hash of the
-- event it was taken at must still be that event's, and its MAC (HMAC-SHA-256 under a key
-- derived from the server's pepper) must verify, so neither a rewritten history nor an edited
-- snapshot can change what a command is decided on. Snapshots are a cache: the old ones go.
DELETE FROM aggregate_snapshots;
ALTER TABLE aggregate_snapshots
    ADD COLUMN chain_hash bytea NOT NULL,
    ADD COLUMN mac        bytea NOT NULL;
