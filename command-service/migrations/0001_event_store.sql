-- The event store: postgres-es's `events` table, extended for the relay and for audit.
-- postgres-es names the columns it inserts, so the added columns take their defaults.
CREATE TABLE events
(
    aggregate_type  text                         NOT NULL,
    aggregate_id    text                         NOT NULL,
    sequence        bigint CHECK (sequence >= 0) NOT NULL,
    event_type      text                         NOT NULL,
    event_version   text                         NOT NULL,
    payload         json                         NOT NULL,
    metadata        json                         NOT NULL,
    -- Insertion order across all aggregates; NOT commit order (see docs/adr/0002).
    global_position bigint GENERATED ALWAYS AS IDENTITY,
    -- The writing transaction: readers tail below pg_snapshot_xmin(pg_current_snapshot()).
    tx_id           xid8                         NOT NULL DEFAULT pg_current_xact_id(),
    -- When the event was written (the domain time is in the payload as `at`).
    occurred_at     timestamptz                  NOT NULL DEFAULT now(),
    PRIMARY KEY (aggregate_type, aggregate_id, sequence)
);

CREATE UNIQUE INDEX events_global_position ON events (global_position);
CREATE INDEX events_commit_order ON events (tx_id, global_position);
