-- Crypto-shredding (docs/adr/0025): every data subject (an account, or a link attempt that has
-- not named its account yet) has one data key, stored wrapped by a key-encryption key from
-- configuration. Erasing a subject sets `wrapped` to NULL: its personal fields, stored sealed
-- in `events.payload` and `aggregate_snapshots.payload`, can no longer be read, and not one
-- chained byte changes. Rows are never deleted.
CREATE TABLE data_keys
(
    subject    text PRIMARY KEY,
    -- The KEK that wraps it (kept after erasure, for the record).
    kek_id     text        NOT NULL,
    wrapped    bytea,
    created_at timestamptz NOT NULL DEFAULT now(),
    erased_at  timestamptz,
    CHECK ((wrapped IS NULL) = (erased_at IS NOT NULL))
);

-- Rotation finds the keys still wrapped under an old KEK.
CREATE INDEX data_keys_kek ON data_keys (kek_id) WHERE wrapped IS NOT NULL;

-- Whose data key seals the event's personal fields: `account:<id>`, or `link_attempt:<id>`
-- before the attempt knows its account. Set on every event written since this migration, sealed
-- fields or not, so that erasure finds all of a subject's events; NULL on older events, whose
-- fields are in clear. Not part of the chained bytes: it only says where to look for the key,
-- and a wrong value makes the event fail to open (the ciphertext names its event).
ALTER TABLE events ADD COLUMN data_subject text;
CREATE INDEX events_data_subject ON events (data_subject) WHERE data_subject IS NOT NULL;

-- A snapshot of a state with personal data is sealed whole under its aggregate's data subject.
ALTER TABLE aggregate_snapshots ADD COLUMN data_subject text;
