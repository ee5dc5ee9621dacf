-- Rate limits that must hold across command-service instances (per account, device, link
-- attempt, LuxTrust serial): one row per limited key with its GCRA "theoretical arrival time".
-- The key is SHA-256 of the rule and the key's text (no personal data in clear). A row whose
-- tat has passed is spent and swept.
CREATE TABLE rate_limits (
    key bytea PRIMARY KEY,
    tat timestamptz NOT NULL
);
CREATE INDEX rate_limits_tat ON rate_limits (tat);
