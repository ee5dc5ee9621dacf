-- `devices.unlink_reason` accepted only the first three reasons: a device unlinked by the help
-- desk (RevokeAllDevices) or for inactivity failed the CHECK, and the devices read model retried
-- that event for ever, showing the device as linked. Every reason the bus carries is allowed.
ALTER TABLE devices DROP CONSTRAINT IF EXISTS devices_unlink_reason_check;
ALTER TABLE devices ADD CONSTRAINT devices_unlink_reason_check
    CHECK (unlink_reason IN ('from_device', 'from_portal', 'locked_out', 'help_desk', 'inactive'));
