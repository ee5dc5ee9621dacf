-- The PostgreSQL cluster the relay's checkpoint belongs to (pg_control_system()'s system
-- identifier), recorded at the relay's first lead and by `republish`: a checkpoint read on
-- another cluster stops the relay instead of letting it publish from a cursor whose
-- transaction ids mean nothing there (docs/adr/0021).
ALTER TABLE relay_checkpoint ADD COLUMN system_identifier bigint;
