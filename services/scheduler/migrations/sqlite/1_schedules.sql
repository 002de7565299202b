-- Schedules and their fires. The schedule is kept encoded in `spec`; the columns beside it
-- exist to keep names unique, make updates conditional on the revision, and find due work.
CREATE TABLE schedules (
    id             TEXT PRIMARY KEY,
    name           TEXT NOT NULL UNIQUE,
    job_id         TEXT NOT NULL,
    revision       BIGINT NOT NULL,
    enabled        BIGINT NOT NULL,
    owner_user_id  TEXT NOT NULL,
    spec           BLOB NOT NULL,
    -- The next scheduled time (micros) and when it is due (that time plus its jitter); NULL
    -- while paused or after the last fire.
    next_fire_time BIGINT,
    due_time       BIGINT,
    last_fire_time BIGINT,
    create_time    BIGINT NOT NULL,
    update_time    BIGINT NOT NULL
);
CREATE INDEX schedules_due ON schedules (due_time) WHERE due_time IS NOT NULL;
CREATE INDEX schedules_by_job ON schedules (job_id);

-- One row per due time, ever: the unique key is what makes a fire happen once however many
-- replicas see it due. PENDING and WAITING rows are work; `attempt_time` is when a replica may
-- next take one (a replica that takes it moves it forward by a lease, so a replica that dies
-- mid-fire leaves it to another).
CREATE TABLE fires (
    id               TEXT PRIMARY KEY,
    schedule_id      TEXT NOT NULL,
    scheduled_time   BIGINT NOT NULL,
    due_time         BIGINT NOT NULL,
    kind             BIGINT NOT NULL,
    outcome          BIGINT NOT NULL,
    attempt_time     BIGINT,
    attempts         BIGINT NOT NULL DEFAULT 0,
    fire_time        BIGINT,
    run_id           TEXT NOT NULL DEFAULT '',
    cancelled_run_id TEXT NOT NULL DEFAULT '',
    error            TEXT NOT NULL DEFAULT '',
    error_reason     TEXT NOT NULL DEFAULT '',
    requested_by     TEXT NOT NULL DEFAULT '',
    UNIQUE (schedule_id, scheduled_time)
);
CREATE INDEX fires_work ON fires (attempt_time) WHERE attempt_time IS NOT NULL;
CREATE INDEX fires_waiting ON fires (schedule_id, outcome, scheduled_time);

-- The runs schedules started that have not finished, as RunStarted/RunFinished tell it (the
-- overlap policies read this). A RunFinished may overtake the fire's own record of its run:
-- whichever comes second finds the row and leaves it finished.
CREATE TABLE schedule_runs (
    run_id      TEXT PRIMARY KEY,
    schedule_id TEXT NOT NULL,
    finished    BIGINT NOT NULL,
    update_time BIGINT NOT NULL
);
CREATE INDEX schedule_runs_active ON schedule_runs (schedule_id, finished);
