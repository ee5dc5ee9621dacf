-- The audit log is served from the event store (docs/adr/0029): the read side no longer keeps a
-- copy of every event. What it keeps is what the event store cannot say about itself, one row
-- per account and aggregate:
-- - the last event of the aggregate the read side applied for the account (its sequence and
--   position): `VerifyHistory` checks that the event store still holds it, so a history cut
--   short at its end is detected, and an aggregate whose events were all deleted is still named;
-- - the device it concerns (a device: itself; a link attempt: the device of its first event; a
--   QR code: the device that consumed it), so an erasure finds every device of the account, those
--   unlinked and those that only tried, and forgets their names in the notifier's tables.
-- A link attempt that has not named its account yet has a row with `account_id = ''`, which
-- gives its device to the account's row once it names one; retention removes such rows once no
-- event can name an account any more.
CREATE TABLE audit_heads
(
    account_id     text        NOT NULL,
    aggregate_type text        NOT NULL,
    aggregate_id   text        NOT NULL,
    device_id      text        NOT NULL DEFAULT '',
    last_sequence  bigint      NOT NULL,
    last_position  bigint      NOT NULL,
    first_at       timestamptz NOT NULL,
    PRIMARY KEY (account_id, aggregate_type, aggregate_id)
);
CREATE INDEX audit_heads_unclaimed ON audit_heads (first_at) WHERE account_id = '';

INSERT INTO audit_heads (account_id, aggregate_type, aggregate_id, device_id, last_sequence,
                         last_position, first_at)
SELECT account_id, aggregate_type, aggregate_id,
       coalesce((array_agg(device_id ORDER BY sequence) FILTER (WHERE device_id <> ''))[1], ''),
       max(sequence), max(global_position), min(occurred_at)
FROM audit_log
WHERE account_id <> '' OR aggregate_type = 'link_attempt'
GROUP BY account_id, aggregate_type, aggregate_id;

DROP TABLE audit_log;
