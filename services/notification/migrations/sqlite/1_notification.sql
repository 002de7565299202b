-- Templates: at most one per (channel, event type); the built-in text applies otherwise.
CREATE TABLE templates (
    id TEXT PRIMARY KEY,
    channel INTEGER NOT NULL,
    event_type TEXT NOT NULL,
    subject TEXT NOT NULL,
    body TEXT NOT NULL,
    html_body TEXT NOT NULL,
    description TEXT NOT NULL,
    create_time BIGINT NOT NULL,
    update_time BIGINT NOT NULL,
    UNIQUE (channel, event_type)
);

-- One notification to one destination. The rendered content and the destination live here
-- only: the channel queue carries the id. `claim_id` names the worker holding it SENDING
-- until `lease_until`; every write after the send is conditional on it.
CREATE TABLE deliveries (
    id TEXT PRIMARY KEY,
    channel INTEGER NOT NULL,
    destination TEXT NOT NULL,
    signing_credential_id TEXT NOT NULL,
    user_id TEXT NOT NULL,
    subscription_id TEXT NOT NULL,
    event_type TEXT NOT NULL,
    subject TEXT NOT NULL,
    body TEXT NOT NULL,
    html_body TEXT NOT NULL,
    state INTEGER NOT NULL,
    urgent INTEGER NOT NULL,
    attempts INTEGER NOT NULL,
    last_error TEXT NOT NULL,
    next_attempt_time BIGINT,
    deliver_time BIGINT,
    claim_id TEXT,
    lease_until BIGINT,
    requested_user_id TEXT NOT NULL,
    requested_service_id TEXT NOT NULL,
    caller TEXT NOT NULL,
    idempotency_key TEXT NOT NULL,
    request_hash TEXT NOT NULL,
    dedupe_key TEXT NOT NULL,
    create_time BIGINT NOT NULL,
    update_time BIGINT NOT NULL
);
-- Idempotency: a retried SendNotification, or a redelivered event, finds its delivery.
CREATE UNIQUE INDEX deliveries_key ON deliveries (caller, idempotency_key);
CREATE INDEX deliveries_due ON deliveries (state, next_attempt_time);
CREATE INDEX deliveries_dedupe ON deliveries (dedupe_key, create_time);
CREATE INDEX deliveries_user ON deliveries (user_id, id);

CREATE TABLE delivery_attempts (
    delivery_id TEXT NOT NULL,
    number INTEGER NOT NULL,
    start_time BIGINT NOT NULL,
    outcome INTEGER NOT NULL,
    status INTEGER NOT NULL,
    error TEXT NOT NULL,
    latency_us BIGINT NOT NULL,
    retry_after_ms BIGINT,
    PRIMARY KEY (delivery_id, number)
);

-- A destination that hears about runs of a job, a schedule, or jobs with a label.
CREATE TABLE subscriptions (
    id TEXT PRIMARY KEY,
    selector_kind TEXT NOT NULL,
    selector TEXT NOT NULL,
    channel INTEGER NOT NULL,
    destination TEXT NOT NULL,
    signing_credential_id TEXT NOT NULL,
    on_started INTEGER NOT NULL,
    on_succeeded INTEGER NOT NULL,
    on_failed INTEGER NOT NULL,
    on_cancelled INTEGER NOT NULL,
    description TEXT NOT NULL,
    created_user_id TEXT NOT NULL,
    created_service_id TEXT NOT NULL,
    create_time BIGINT NOT NULL
);
CREATE INDEX subscriptions_selector ON subscriptions (selector_kind, selector);
