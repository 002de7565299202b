-- Jobs and runs. Messages and protobuf-shaped details are kept encoded in `spec`; the columns
-- beside them exist to filter, order, enforce uniqueness and make claims conditional updates.
CREATE TABLE jobs (
    id          TEXT PRIMARY KEY,
    name        TEXT NOT NULL UNIQUE,
    revision    BIGINT NOT NULL,
    spec        BYTEA NOT NULL,
    create_time BIGINT NOT NULL,
    update_time BIGINT NOT NULL
);

-- Every revision a run may execute, kept after the job moves on (and after it is deleted).
CREATE TABLE job_revisions (
    job_id   TEXT NOT NULL,
    revision BIGINT NOT NULL,
    spec     BYTEA NOT NULL,
    PRIMARY KEY (job_id, revision)
);

CREATE TABLE runs (
    id                TEXT PRIMARY KEY,
    job_id            TEXT NOT NULL,
    job_revision      BIGINT NOT NULL,
    state             BIGINT NOT NULL,
    attempt           BIGINT NOT NULL,
    executor_id       TEXT NOT NULL DEFAULT '',
    -- SHA-256 of the lease token, hex: the token itself is only ever in the executor's hands.
    lease_hash        TEXT NOT NULL DEFAULT '',
    lease_expire_time BIGINT NOT NULL DEFAULT 0,
    -- Whether the current attempt started a step (decides requeue or EXECUTOR_LOST).
    step_started      BIGINT NOT NULL DEFAULT 0,
    cancel_requested  BIGINT NOT NULL DEFAULT 0,
    schedule_id       TEXT NOT NULL DEFAULT '',
    caller            TEXT NOT NULL,
    idempotency_key   TEXT NOT NULL,
    request_hash      TEXT NOT NULL,
    next_log_seq      BIGINT NOT NULL DEFAULT 1,
    requested_time    BIGINT NOT NULL,
    queue_deadline    BIGINT NOT NULL,
    spec              BYTEA NOT NULL,
    create_time       BIGINT NOT NULL,
    update_time       BIGINT NOT NULL,
    UNIQUE (caller, idempotency_key)
);

CREATE INDEX runs_by_job ON runs (job_id, id);
CREATE INDEX runs_by_state ON runs (state, lease_expire_time);
CREATE INDEX runs_by_schedule ON runs (schedule_id, id);

-- The latest attempt of each step on each target ('' when the step has no target).
CREATE TABLE run_steps (
    run_id      TEXT NOT NULL,
    step_index  BIGINT NOT NULL,
    target_id   TEXT NOT NULL,
    run_attempt BIGINT NOT NULL,
    attempt     BIGINT NOT NULL,
    spec        BYTEA NOT NULL,
    PRIMARY KEY (run_id, step_index, target_id)
);

-- Log lines in the batches the executor sent them, each a run of consecutive seqs.
CREATE TABLE run_log_chunks (
    run_id    TEXT NOT NULL,
    first_seq BIGINT NOT NULL,
    last_seq  BIGINT NOT NULL,
    body      BYTEA NOT NULL,
    PRIMARY KEY (run_id, first_seq)
);
