-- Signing keys. The private half is sealed under the key-encryption key (AUTH_KEY_ENCRYPTION_KEY),
-- bound to the key id. A key signs until retire_time and is published in the JWKS until
-- expire_time, when the last token it signed has expired.
CREATE TABLE signing_keys (
    kid           TEXT PRIMARY KEY,
    public_key    BYTEA NOT NULL,
    sealed_secret BYTEA NOT NULL,
    create_time   BIGINT NOT NULL,
    retire_time   BIGINT,
    expire_time   BIGINT
);

-- A session is one refresh-token family, started by a login.
CREATE TABLE sessions (
    id             TEXT PRIMARY KEY,
    user_id        TEXT NOT NULL,
    token_version  BIGINT NOT NULL,
    client_address TEXT NOT NULL,
    user_agent     TEXT NOT NULL,
    create_time    BIGINT NOT NULL,
    refresh_time   BIGINT NOT NULL,
    expire_time    BIGINT NOT NULL,
    end_time       BIGINT,
    end_reason     BIGINT
);
CREATE INDEX sessions_user ON sessions (user_id, id);

-- Refresh tokens, stored as SHA-256 hashes. Each is accepted once: used_time is set when it is
-- exchanged, and presenting it again ends its session.
CREATE TABLE refresh_tokens (
    token_hash  TEXT PRIMARY KEY,
    session_id  TEXT NOT NULL REFERENCES sessions (id),
    create_time BIGINT NOT NULL,
    used_time   BIGINT
);
CREATE INDEX refresh_tokens_session ON refresh_tokens (session_id);

-- A user's token version: RevokeAllTokens raises it, refusing every token issued below it.
CREATE TABLE token_versions (
    user_id TEXT PRIMARY KEY,
    version BIGINT NOT NULL
);

-- Service identities and the SHA-256 of their secrets (secrets are random, 256 bits).
CREATE TABLE service_identities (
    service_id  TEXT PRIMARY KEY,
    secret_hash TEXT NOT NULL,
    update_time BIGINT NOT NULL
);

-- Every revocation, broadcast as TokenRevoked and listed by ListRevocations while it matters.
CREATE TABLE revocations (
    id               TEXT PRIMARY KEY,
    user_id          TEXT NOT NULL,
    token_version    BIGINT NOT NULL,
    session_id       TEXT NOT NULL,
    kid              TEXT NOT NULL,
    reason           BIGINT NOT NULL,
    revoke_time      BIGINT NOT NULL,
    actor_user_id    TEXT NOT NULL,
    actor_service_id TEXT NOT NULL
);
CREATE INDEX revocations_time ON revocations (revoke_time);
