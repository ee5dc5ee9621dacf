-- Tamper evidence (docs/audit.md): every event is chained to the previous event of the same
-- aggregate: chain_hash = SHA-256(previous chain_hash || canonical bytes of this event), with
-- 32 zero bytes before an aggregate's first event. Computed by the database on insert, so no
-- writer can forget it; per aggregate, so unrelated writes are not serialised (the previous
-- event of the aggregate is committed: optimistic concurrency on the primary key guarantees it).

CREATE FUNCTION event_canonical_bytes(e events) RETURNS bytea
    LANGUAGE sql IMMUTABLE AS
$$
SELECT convert_to(
               e.aggregate_type || chr(31) || e.aggregate_id || chr(31) || e.sequence::text ||
               chr(31) || e.event_type || chr(31) || e.event_version || chr(31) ||
               e.payload::text || chr(31) || e.metadata::text || chr(31) ||
               e.global_position::text || chr(31) ||
               to_char(e.occurred_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US'),
               'UTF8')
$$;

ALTER TABLE events ADD COLUMN chain_hash bytea;

CREATE FUNCTION chain_event() RETURNS trigger
    LANGUAGE plpgsql AS
$$
DECLARE
    previous bytea;
BEGIN
    IF NEW.sequence = 1 THEN
        previous := '\x0000000000000000000000000000000000000000000000000000000000000000'::bytea;
    ELSE
        SELECT chain_hash INTO previous FROM events
        WHERE aggregate_type = NEW.aggregate_type AND aggregate_id = NEW.aggregate_id
          AND sequence = NEW.sequence - 1;
        IF previous IS NULL THEN
            RAISE EXCEPTION 'event % of %/% has no chained predecessor',
                NEW.sequence, NEW.aggregate_type, NEW.aggregate_id;
        END IF;
    END IF;
    NEW.chain_hash := sha256(previous || event_canonical_bytes(NEW));
    RETURN NEW;
END;
$$;

-- Events written before this migration are chained now, in order.
DO
$$
    DECLARE
        e events;
        previous bytea;
    BEGIN
        FOR e IN SELECT * FROM events ORDER BY aggregate_type, aggregate_id, sequence
            LOOP
                IF e.sequence = 1 THEN
                    previous := '\x0000000000000000000000000000000000000000000000000000000000000000'::bytea;
                END IF;
                previous := sha256(previous || event_canonical_bytes(e));
                UPDATE events SET chain_hash = previous
                WHERE aggregate_type = e.aggregate_type AND aggregate_id = e.aggregate_id
                  AND sequence = e.sequence;
            END LOOP;
    END
$$;

ALTER TABLE events ALTER COLUMN chain_hash SET NOT NULL;

CREATE TRIGGER events_chain
    BEFORE INSERT ON events
    FOR EACH ROW EXECUTE FUNCTION chain_event();
