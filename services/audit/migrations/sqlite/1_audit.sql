-- The audit log: one row per event, appended in sequence order, never updated. Every column the
-- API returns is part of the event's canonical encoding, so editing any of them breaks its hash.
CREATE TABLE audit_events (
    sequence         BIGINT PRIMARY KEY,
    id               TEXT NOT NULL UNIQUE,
    actor_user_id    TEXT NOT NULL,
    actor_service_id TEXT NOT NULL,
    action           TEXT NOT NULL,
    resource_type    TEXT NOT NULL,
    resource_id      TEXT NOT NULL,
    occur_time       BIGINT NOT NULL,
    outcome          BIGINT NOT NULL,
    details          TEXT NOT NULL,
    request_id       TEXT NOT NULL,
    prev_hash        BLOB NOT NULL,
    hash             BLOB NOT NULL,
    source           TEXT NOT NULL,
    record_time      BIGINT NOT NULL,
    publisher        TEXT NOT NULL
);
CREATE INDEX audit_events_action ON audit_events (action, sequence);
CREATE INDEX audit_events_actor_user ON audit_events (actor_user_id, sequence);
CREATE INDEX audit_events_actor_service ON audit_events (actor_service_id, sequence);
CREATE INDEX audit_events_resource ON audit_events (resource_type, resource_id, sequence);
CREATE INDEX audit_events_request ON audit_events (request_id);
CREATE INDEX audit_events_occur ON audit_events (occur_time);

-- The head of the chain: appends lock this row, so one chain grows across replicas. pruned_*
-- is the signed checkpoint events up to which were pruned (0 when none were).
CREATE TABLE audit_head (
    name             TEXT PRIMARY KEY,
    sequence         BIGINT NOT NULL,
    hash             BLOB NOT NULL,
    pruned_sequence  BIGINT NOT NULL,
    pruned_hash      BLOB NOT NULL
);

-- Signed statements that the event at sequence has hash.
CREATE TABLE audit_checkpoints (
    sequence  BIGINT PRIMARY KEY,
    hash      BLOB NOT NULL,
    kid       TEXT NOT NULL,
    signature TEXT NOT NULL,
    sign_time BIGINT NOT NULL
);
