-- Where and in which language an account's emails go (from AccountRegistered and
-- AccountEmailChanged).
CREATE TABLE email_accounts
(
    account_id text PRIMARY KEY,
    email      text NOT NULL,
    language   text NOT NULL
);

-- Emails to send, written by the notifier in the same transaction as its guard; a worker sends
-- them (at least once, with a Message-ID derived from the event id and the recipient).
CREATE TABLE email_outbox
(
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    event_id        text        NOT NULL,
    kind            text        NOT NULL,
    recipient       text        NOT NULL,
    language        text        NOT NULL,
    message_id      text        NOT NULL UNIQUE,
    subject         text        NOT NULL,
    text_body       text        NOT NULL,
    html_body       text        NOT NULL,
    status          text        NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'sent', 'failed')),
    attempts        int         NOT NULL DEFAULT 0,
    next_attempt_at timestamptz NOT NULL DEFAULT now(),
    last_error      text,
    created_at      timestamptz NOT NULL DEFAULT now(),
    sent_at         timestamptz
);
CREATE INDEX email_outbox_due ON email_outbox (next_attempt_at) WHERE status = 'pending';

-- Device names, for the unlink notice (DeviceUnlinked does not repeat the name).
CREATE TABLE email_devices
(
    device_id text PRIMARY KEY,
    name      text NOT NULL
);
