-- Rate limits on the queries, shared by every projection-service instance (see
-- service_kit::ratelimit): SHA-256 of rule and key, and the GCRA theoretical arrival time.
CREATE TABLE rate_limits (
    key bytea PRIMARY KEY,
    tat timestamptz NOT NULL
);
CREATE INDEX rate_limits_tat ON rate_limits (tat);
