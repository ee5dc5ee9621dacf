-- Snapshots: the state of an aggregate after one of its events, so that loading it reads the
-- snapshot and the events after it instead of its whole history (docs/adr/0008). A cache: the
-- events stay the truth, a missing, stale or unreadable snapshot only means a longer replay.
-- `schema` names the shape of the state; a snapshot of another shape is ignored.
CREATE TABLE aggregate_snapshots
(
    aggregate_type       text   NOT NULL,
    aggregate_id         text   NOT NULL,
    schema               text   NOT NULL,
    last_sequence        bigint NOT NULL CHECK (last_sequence > 0),
    last_global_position bigint NOT NULL,
    payload              json   NOT NULL,
    PRIMARY KEY (aggregate_type, aggregate_id)
);

-- The relay is woken by the command service itself (docs/adr/0008): a NOTIFY inside every
-- event-writing transaction takes a database-wide lock at commit and serialises those commits.
DROP TRIGGER events_written ON events;
DROP FUNCTION notify_events_written();
