-- A schedule's fire starts one run, ever: (schedule, due time) is unique on runs for as long as
-- the runs are kept, whatever idempotency key the scheduler used.
ALTER TABLE runs ADD COLUMN fire_time BIGINT;
CREATE UNIQUE INDEX runs_by_fire ON runs (schedule_id, fire_time) WHERE schedule_id <> '';
