-- The stream sequence JetStream acknowledged for the checkpoint's last event: on taking the
-- lead, the relay takes the stream for one that lost its tail only if the stream now ends
-- before it (a copy of an old message published again ends the stream with an old event, but
-- after it). 0: not known (before this column, or after a republish).
ALTER TABLE relay_checkpoint ADD COLUMN stream_sequence bigint NOT NULL DEFAULT 0;
