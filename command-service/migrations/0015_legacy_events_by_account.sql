-- An account's aggregates for `VerifyHistory` and `command-service verify` (history crate,
-- `AGGREGATES_OF`) are found through indexes: `events_data_subject` for every event written
-- since migration 0013, and this one for the events written before it (no data subject), by the
-- account their metadata names. New events never enter it (their data subject is set), so it
-- costs an insert nothing; before it, each verification read every event of the store.
CREATE INDEX events_legacy_account ON events ((metadata::jsonb ->> 'account_id'))
    WHERE data_subject IS NULL;
