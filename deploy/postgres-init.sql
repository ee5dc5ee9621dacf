-- Creates the two databases and their owners (each service migrates its own database).
CREATE ROLE linkd_command LOGIN;
CREATE ROLE linkd_projection LOGIN;
CREATE DATABASE linkd_command OWNER linkd_command;
CREATE DATABASE linkd_projection OWNER linkd_projection;
-- The projection service reads the event store (VerifyHistory, and the data keys that open
-- sealed personal fields, ADR 0025): run in linkd_command once the command service has
-- migrated it:
--   GRANT USAGE ON SCHEMA public TO linkd_projection;
--   GRANT SELECT ON events, data_keys TO linkd_projection;
