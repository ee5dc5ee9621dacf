-- The device cap (issue 13): each live link's credential row names its account, so that the
-- links of one account can be counted when a new one claims its row, and records when the
-- device was last used (the least recently used device is named when the cap is reached).
ALTER TABLE device_credentials ADD COLUMN account_id text;
ALTER TABLE device_credentials ADD COLUMN used_at timestamptz;

-- Rows written before: their account is the one their DeviceLinked event names.
UPDATE device_credentials c
SET account_id = (
    SELECT e.metadata ->> 'account_id' FROM events e
    WHERE e.aggregate_type = 'device' AND e.aggregate_id = c.device_id::text
      AND e.event_type = 'DeviceLinked'
      AND e.payload -> 'DeviceLinked' ->> 'link_id' = c.link_id::text
    LIMIT 1
);
UPDATE device_credentials SET used_at = created_at WHERE used_at IS NULL;
ALTER TABLE device_credentials ALTER COLUMN used_at SET DEFAULT now();
ALTER TABLE device_credentials ALTER COLUMN used_at SET NOT NULL;

CREATE INDEX device_credentials_account ON device_credentials (account_id, used_at);
