-- Retention of the data keys of link attempts that never named their account (issue 19,
-- docs/privacy.md "Retention"). Such an attempt's first events hold a stranger's phone details
-- sealed under the attempt's own key, and no account's erasure ever reaches it: the sweeper
-- destroys the key once the attempt is older than `LINKD_RETENTION_UNCLAIMED_ATTEMPT_DAYS`.
-- A key whose attempt did name its account is kept until that account is erased; `kept` records
-- that the sweeper has looked, so that each key is examined once, not at every sweep.
ALTER TABLE data_keys ADD COLUMN kept boolean NOT NULL DEFAULT false;

-- The sweeper's candidates: attempt keys not yet examined, oldest first.
CREATE INDEX data_keys_unexamined_attempts ON data_keys (created_at)
    WHERE wrapped IS NOT NULL AND NOT kept AND subject LIKE 'link_attempt:%';
