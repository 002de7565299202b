-- Services other than the executor may reveal a credential only when it names them (the
-- notification service for an SMTP password or a webhook signing secret). Comma-separated.
ALTER TABLE credentials ADD COLUMN revealable_by TEXT NOT NULL DEFAULT '';
