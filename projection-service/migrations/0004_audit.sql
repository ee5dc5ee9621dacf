-- The audit log: every event, with who, when, for which account and device, indexed for the
-- audit queries. Secrets never appear (they never enter events); email addresses are left out.
CREATE TABLE audit_log
(
    event_id        text PRIMARY KEY,
    global_position bigint      NOT NULL,
    aggregate_type  text        NOT NULL,
    aggregate_id    text        NOT NULL,
    sequence        bigint      NOT NULL,
    event_type      text        NOT NULL,
    occurred_at     timestamptz NOT NULL,
    actor           text        NOT NULL,
    request_id      text        NOT NULL,
    account_id      text        NOT NULL,
    device_id       text        NOT NULL,
    details         jsonb       NOT NULL
);
CREATE INDEX audit_log_by_account ON audit_log (account_id, global_position);
CREATE INDEX audit_log_by_device ON audit_log (device_id, global_position) WHERE device_id <> '';
CREATE INDEX audit_log_by_aggregate ON audit_log (aggregate_type, aggregate_id, sequence);
