-- One row the live consumer updates with a synchronous commit when its acknowledgements have
-- waited too long for the WAL flush (consumer::durable_acks): a commit flushes the WAL only if
-- its transaction wrote some, so the flush needs a write.
CREATE TABLE wal_flushes
(
    id         int PRIMARY KEY CHECK (id = 1),
    flushed_at timestamptz NOT NULL
);
INSERT INTO wal_flushes VALUES (1, now());
