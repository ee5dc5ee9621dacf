-- Reads on record (issue 19, docs/privacy.md): every AuditService call that reads an account
-- other than the caller's own (an auditor's) leaves a row here before it is answered; the holder
-- lists them with AuditService.ListAccessRecords. Append-only: the service only inserts, and a
-- trigger refuses any change or deletion of a row.
CREATE TABLE access_records
(
    id         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    -- The account whose history was read.
    account_id text        NOT NULL,
    -- Who read it: `auditor:<subject of the JWT>`.
    reader     text        NOT NULL,
    -- The AuditService method, e.g. `ListEvents`.
    rpc        text        NOT NULL,
    -- The request's filters (device, event types, time range, instant), as given.
    filters    jsonb       NOT NULL,
    at         timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX access_records_account ON access_records (account_id, id);

CREATE FUNCTION access_records_append_only() RETURNS trigger
    LANGUAGE plpgsql AS
$$
BEGIN
    RAISE EXCEPTION 'access_records is append-only';
END;
$$;

CREATE TRIGGER access_records_append_only
    BEFORE UPDATE OR DELETE ON access_records
    FOR EACH ROW EXECUTE FUNCTION access_records_append_only();
