-- The metrics count the emails given up on at each scrape (linkd_email_outbox_messages{status="failed"});
-- without an index that would read the whole outbox, whose sent rows accumulate.
CREATE INDEX email_outbox_failed ON email_outbox (id) WHERE status = 'failed';
