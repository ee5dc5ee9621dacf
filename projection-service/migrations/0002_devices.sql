-- Devices per account, and the status of every device (linked or not, to which account).
-- One row per device: its current link, or its last one once unlinked.
CREATE TABLE devices
(
    device_id          uuid PRIMARY KEY,
    account_id         text        NOT NULL,
    link_id            uuid        NOT NULL,
    name               text        NOT NULL,
    method             text        NOT NULL CHECK (method IN ('qr', 'luxtrust')),
    product_kind       text CHECK (product_kind IN ('mobile', 'scan')),
    product_serial     text,
    platform           text        NOT NULL CHECK (platform IN ('ios', 'android')),
    app_version        text        NOT NULL,
    linked_at          timestamptz NOT NULL,
    last_used_at       timestamptz,
    biometrics_enabled boolean     NOT NULL DEFAULT false,
    status             text        NOT NULL CHECK (status IN ('linked', 'unlinked')),
    unlinked_at        timestamptz,
    unlink_reason      text CHECK (unlink_reason IN ('from_device', 'from_portal', 'locked_out'))
);
CREATE INDEX devices_linked_by_account ON devices (account_id, linked_at, device_id)
    WHERE status = 'linked';

-- Messages a projector could never apply (undecodable, or a bug), kept for operators.
CREATE TABLE dead_letters
(
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    projector   text        NOT NULL,
    subject     text        NOT NULL,
    event_id    text,
    reason      text        NOT NULL,
    payload     bytea       NOT NULL,
    received_at timestamptz NOT NULL DEFAULT now()
);
