-- The relay's checkpoint: the commit-order cursor (tx_id, global_position) of the last event
-- JetStream acknowledged. One row; an operator's republish moves it back (compare-and-set, so a
-- running relay notices).
CREATE TABLE relay_checkpoint
(
    id              int PRIMARY KEY CHECK (id = 1),
    tx_id           bigint      NOT NULL,
    global_position bigint      NOT NULL,
    updated_at      timestamptz NOT NULL DEFAULT now()
);
INSERT INTO relay_checkpoint (id, tx_id, global_position) VALUES (1, 0, 0);

-- Wakes the relay as soon as events are written (it also polls, so a lost notification only
-- delays publishing).
CREATE FUNCTION notify_events_written() RETURNS trigger LANGUAGE plpgsql AS
$$
BEGIN
    PERFORM pg_notify('linkd_events', '');
    RETURN NULL;
END;
$$;
CREATE TRIGGER events_written
    AFTER INSERT ON events
    FOR EACH STATEMENT EXECUTE FUNCTION notify_events_written();
