-- Tables of opsconductor-messaging, created in the database of each service that uses it.
-- Versions from 1000001 up: services number their own migrations from 1.

-- Messages written in the same transaction as the state change that caused them. The relay
-- publishes them in seq order and deletes each once the broker has confirmed it.
CREATE TABLE messaging_outbox (
    seq               BIGSERIAL PRIMARY KEY,
    message_id        TEXT NOT NULL UNIQUE,
    exchange          TEXT NOT NULL,
    routing_key       TEXT NOT NULL,
    message_type      TEXT NOT NULL,
    correlation_id    TEXT,
    traceparent       TEXT,
    tracestate        TEXT,
    headers           TEXT NOT NULL,
    body              BYTEA NOT NULL,
    create_time       BIGINT NOT NULL,
    attempts          BIGINT NOT NULL DEFAULT 0,
    next_attempt_time BIGINT NOT NULL DEFAULT 0,
    last_error        TEXT,
    mandatory         BIGINT NOT NULL DEFAULT 1
);
CREATE INDEX messaging_outbox_due ON messaging_outbox (next_attempt_time, seq);

-- Which relay publishes: one holder at a time across replicas, by an expiring lease.
CREATE TABLE messaging_outbox_lease (
    name        TEXT PRIMARY KEY,
    holder      TEXT NOT NULL,
    expire_time BIGINT NOT NULL
);

-- Messages a consumer has processed, recorded in the transaction of their effect.
CREATE TABLE messaging_inbox (
    consumer     TEXT NOT NULL,
    message_id   TEXT NOT NULL,
    process_time BIGINT NOT NULL,
    PRIMARY KEY (consumer, message_id)
);
CREATE INDEX messaging_inbox_age ON messaging_inbox (process_time);

-- Dead letters drained from this service's dead-letter queues, for operators to inspect,
-- replay or purge.
CREATE TABLE messaging_dead_letters (
    id               TEXT PRIMARY KEY,
    queue            TEXT NOT NULL,
    original_queue   TEXT NOT NULL,
    exchange         TEXT NOT NULL,
    routing_key      TEXT NOT NULL,
    message_type     TEXT NOT NULL,
    message_id       TEXT NOT NULL,
    correlation_id   TEXT NOT NULL,
    attempts         BIGINT NOT NULL,
    last_error       TEXT NOT NULL,
    first_death_time BIGINT NOT NULL,
    last_death_time  BIGINT NOT NULL,
    headers          TEXT NOT NULL,
    body             BYTEA NOT NULL
);
CREATE INDEX messaging_dead_letters_queue ON messaging_dead_letters (queue, id);

-- Results of ReplayDeadLetters by idempotency key, scoped to the caller.
CREATE TABLE messaging_replays (
    caller          TEXT NOT NULL,
    idempotency_key TEXT NOT NULL,
    request_hash    TEXT NOT NULL,
    response        BYTEA NOT NULL,
    create_time     BIGINT NOT NULL,
    PRIMARY KEY (caller, idempotency_key)
);
CREATE UNIQUE INDEX messaging_dead_letters_message ON messaging_dead_letters (queue, message_id);
