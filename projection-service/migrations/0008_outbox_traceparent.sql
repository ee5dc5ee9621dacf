-- The W3C trace context of the call whose event queued the email (ADR 0024): the email worker
-- continues that trace when it sends. NULL when traces were not exported.
ALTER TABLE email_outbox ADD COLUMN traceparent text;
