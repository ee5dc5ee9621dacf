-- The lifecycle scheduler reads the live links unused since an instant (issue 13, inactivity).
CREATE INDEX device_credentials_used_at ON device_credentials (used_at);
