-- The record of who read an account's history stays append-only against TRUNCATE too, which
-- row triggers do not see (migration 0010 refused only UPDATE and DELETE).
CREATE TRIGGER access_records_no_truncate
    BEFORE TRUNCATE ON access_records
    FOR EACH STATEMENT EXECUTE FUNCTION access_records_append_only();
