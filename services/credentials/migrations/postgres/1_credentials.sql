-- Credentials' metadata. The secrets are in credential_secrets, sealed.
CREATE TABLE credentials (
    id               TEXT PRIMARY KEY,
    name             TEXT NOT NULL UNIQUE,
    description      TEXT NOT NULL,
    kind             BIGINT NOT NULL,
    username         TEXT NOT NULL,
    secret_version   BIGINT NOT NULL,
    algorithm        TEXT NOT NULL,
    fingerprint      TEXT NOT NULL,
    subject          TEXT NOT NULL,
    issuer           TEXT NOT NULL,
    expire_time      BIGINT,
    rotate_time      BIGINT NOT NULL,
    last_reveal_time BIGINT,
    create_time      BIGINT NOT NULL,
    update_time      BIGINT NOT NULL
);
CREATE INDEX credentials_expire ON credentials (expire_time);

-- One row per secret version: the secret sealed with its own random data key (associated data:
-- credential id and version), and that data key wrapped by a key-encryption key version
-- (associated data: credential id, version and key version). A previous version stays until
-- revealable_until, for runs that started with it.
CREATE TABLE credential_secrets (
    credential_id    TEXT NOT NULL REFERENCES credentials (id) ON DELETE CASCADE,
    version          BIGINT NOT NULL,
    sealed_secret    BYTEA NOT NULL,
    wrapped_key      BYTEA NOT NULL,
    key_version      BIGINT NOT NULL,
    create_time      BIGINT NOT NULL,
    revealable_until BIGINT,
    PRIMARY KEY (credential_id, version)
);
CREATE INDEX credential_secrets_by_key ON credential_secrets (key_version);

-- Key-encryption key versions, each sealed under CREDENTIALS_MASTER_KEY. A retired version's
-- key is erased (nothing is wrapped under it any more).
CREATE TABLE encryption_keys (
    version     BIGINT PRIMARY KEY,
    sealed_key  BYTEA,
    create_time BIGINT NOT NULL,
    retire_time BIGINT
);

-- The key version new data keys are wrapped under.
CREATE TABLE encryption_state (
    name           TEXT PRIMARY KEY,
    active_version BIGINT NOT NULL
);

-- Idempotency keys of RevealCredential, per caller.
CREATE TABLE reveals (
    caller          TEXT NOT NULL,
    idempotency_key TEXT NOT NULL,
    request_hash    TEXT NOT NULL,
    credential_id   TEXT NOT NULL,
    secret_version  BIGINT NOT NULL,
    audit_event_id  TEXT NOT NULL,
    create_time     BIGINT NOT NULL,
    PRIMARY KEY (caller, idempotency_key)
);

-- credential.expiring events published, once per credential and expiry.
CREATE TABLE expiry_notices (
    credential_id TEXT NOT NULL,
    expire_time   BIGINT NOT NULL,
    notify_time   BIGINT NOT NULL,
    PRIMARY KEY (credential_id, expire_time)
);
