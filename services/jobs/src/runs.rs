//! Runs: their state machine as conditional updates, so one claimant wins a claim, only the
//! lease holder reports, and the reaper takes back exactly the lease it saw lapse — on SQLite
//! and on PostgreSQL with several replicas. Every transition stages its messages (outbox) and
//! audit event in the transaction that makes it, and is pushed to the run's watchers after
//! commit.

use std::collections::BTreeMap;
use std::time::Duration;

use opsconductor_api::common::v1::Actor;
use opsconductor_api::jobs::v1::{
    watch_run_response::Event, ConcurrencyPolicy, Job, LogLine, ParameterType, Run,
    RunCancelRequested, RunFinished, RunRequested, RunStarted, RunState, RunStep, RunTarget,
    RunTrigger, StepState, WatchRunResponse,
};
use opsconductor_messaging::topology::platform;
use opsconductor_messaging::{AuditLog, Cause, Names, Outbox, OutgoingMessage};
use opsconductor_platform::page::Page;
use opsconductor_platform::time::{now_micros, to_timestamp};
use opsconductor_storage::{is_unique_violation, Database, Select};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prost::Message;
use sha2::{Digest, Sha256};
use sqlx::AnyConnection;

use crate::hub::Hub;
use crate::JobsError;

const COLUMNS: &str = "id, job_id, job_revision, state, attempt, executor_id, lease_hash, \
                       lease_expire_time, step_started, cancel_requested, next_log_seq, spec, \
                       create_time, update_time";

#[derive(sqlx::FromRow, Clone)]
pub struct RunRow {
    id: String,
    job_id: String,
    job_revision: i64,
    state: i64,
    attempt: i64,
    executor_id: String,
    lease_hash: String,
    lease_expire_time: i64,
    step_started: i64,
    cancel_requested: i64,
    next_log_seq: i64,
    spec: Vec<u8>,
    create_time: i64,
    update_time: i64,
}

impl RunRow {
    pub fn run(&self) -> Result<Run, JobsError> {
        let mut run = Run::decode(self.spec.as_slice())
            .map_err(|e| JobsError::Corrupt("run", self.id.clone(), e))?;
        run.id = self.id.clone();
        run.job_id = self.job_id.clone();
        run.job_revision = self.job_revision as u64;
        run.state = self.state as i32;
        run.attempt = self.attempt as u32;
        run.executor_id = self.executor_id.clone();
        run.cancel_requested = self.cancel_requested != 0;
        run.create_time = Some(to_timestamp(self.create_time));
        run.update_time = Some(to_timestamp(self.update_time));
        Ok(run)
    }

    fn state(&self) -> RunState {
        RunState::try_from(self.state as i32).unwrap_or(RunState::Unspecified)
    }

    pub fn attempt(&self) -> u32 {
        self.attempt as u32
    }

    pub fn job_id(&self) -> &str {
        &self.job_id
    }

    pub fn job_revision(&self) -> u64 {
        self.job_revision as u64
    }

    pub fn step_started(&self) -> bool {
        self.step_started != 0
    }
}

/// What is stored in `spec`: the run without its column fields and step results.
fn spec(run: &Run) -> Vec<u8> {
    let mut r = run.clone();
    r.id.clear();
    r.job_id.clear();
    r.job_revision = 0;
    r.state = 0;
    r.attempt = 0;
    r.executor_id.clear();
    r.cancel_requested = false;
    r.steps.clear();
    r.create_time = None;
    r.update_time = None;
    r.encode_to_vec()
}

/// A schedule's due time, in micros (none for a manual run).
fn fire_time(trigger: &RunTrigger) -> Option<i64> {
    if trigger.schedule_id.is_empty() {
        return None;
    }
    trigger
        .fire_time
        .as_ref()
        .map(opsconductor_platform::time::to_micros)
}

/// Runs of `job_id` in one of `states`.
async fn count(
    connection: &mut AnyConnection,
    job_id: &str,
    states: &[RunState],
) -> Result<i64, JobsError> {
    let placeholders: Vec<String> = (0..states.len()).map(|i| format!("${}", i + 2)).collect();
    let sql = format!(
        "SELECT COUNT(*) FROM runs WHERE job_id = $1 AND state IN ({})",
        placeholders.join(", ")
    );
    let mut query = sqlx::query_as::<_, (i64,)>(&sql).bind(job_id);
    for state in states {
        query = query.bind(*state as i64);
    }
    Ok(query.fetch_one(connection).await?.0)
}

pub fn is_final(state: RunState) -> bool {
    !matches!(
        state,
        RunState::Queued | RunState::Running | RunState::Unspecified
    )
}

fn lease_hash(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// A run about to be stored by `StartRun`.
pub struct NewRun {
    pub job: Job,
    pub parameters: BTreeMap<String, String>,
    pub targets: Vec<RunTarget>,
    pub trigger: RunTrigger,
    pub triggered_by: Actor,
    pub caller: String,
    pub idempotency_key: String,
    pub request_hash: String,
    pub queue_timeout: Duration,
    /// The run this one re-runs, if any.
    pub rerun_of: String,
}

impl NewRun {
    /// The credentials the run's SECRET parameters name, given or by default.
    fn parameter_credential_ids(&self) -> Vec<String> {
        let mut ids: Vec<String> = self
            .job
            .parameters
            .iter()
            .filter(|p| p.r#type == ParameterType::Secret as i32)
            .filter_map(|p| {
                self.parameters
                    .get(&p.name)
                    .cloned()
                    .or_else(|| (!p.default_value.is_empty()).then(|| p.default_value.clone()))
            })
            .filter(|id| !id.is_empty())
            .collect();
        ids.sort();
        ids.dedup();
        ids
    }
}

/// A claim: the lease token (only ever returned, never stored) and the run as claimed.
pub struct Claim {
    pub token: String,
    pub lease_expire_time: i64,
    pub run: Run,
    pub next_log_seq: u64,
}

/// Filters of a run listing.
#[derive(Default)]
pub struct RunFilter {
    pub job_id: Option<String>,
    pub states: Vec<i32>,
    pub schedule_id: Option<String>,
}

#[derive(Clone)]
pub struct RunStore {
    db: Database,
    audit: AuditLog,
    outbox: Outbox,
    jobs_exchange: String,
    events_exchange: String,
    hub: Hub,
    lease: Duration,
    finished: Family<StateLabel, Counter>,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabel {
    state: &'static str,
}

/// A ListRunLogs page's lines at most, in bytes as [`log_line_bytes`] counts them (whole
/// lines; a page always has at least one).
pub const MAX_LOG_PAGE_BYTES: usize = 1024 * 1024;

/// What a line weighs in a page: its text, step and target, and its fixed fields.
fn log_line_bytes(line: &LogLine) -> usize {
    line.text.len() + line.step_name.len() + line.target_id.len() + 32
}

impl RunStore {
    /// Counts finished runs by end state in `registry` (`opsconductor_runs_finished_total`).
    pub fn register_metrics(&self, registry: &opsconductor_metrics::Registry) {
        // Every end state from the start, at 0: a rate over a series that appears later
        // misses its first increase.
        for state in ["succeeded", "failed", "cancelled", "timed_out"] {
            self.finished.get_or_create(&StateLabel { state }).inc_by(0);
        }
        registry.register(
            "opsconductor_runs_finished",
            "Runs that ended, by their end state.",
            self.finished.clone(),
        );
    }

    /// Counts `run` as finished (once its transaction committed).
    fn count_finished(&self, run: &Run) {
        let state = match RunState::try_from(run.state) {
            Ok(RunState::Succeeded) => "succeeded",
            Ok(RunState::Failed) => "failed",
            Ok(RunState::Cancelled) => "cancelled",
            Ok(RunState::TimedOut) => "timed_out",
            _ => "other",
        };
        self.finished.get_or_create(&StateLabel { state }).inc();
    }

    pub fn new(
        db: Database,
        audit: AuditLog,
        outbox: Outbox,
        names: &Names,
        hub: Hub,
        lease: Duration,
    ) -> RunStore {
        RunStore {
            db,
            audit,
            outbox,
            jobs_exchange: names.exchange(&platform::jobs_exchange()),
            events_exchange: names.exchange(&platform::events_exchange()),
            hub,
            lease,
            finished: Family::default(),
        }
    }

    pub fn hub(&self) -> &Hub {
        &self.hub
    }

    pub fn lease(&self) -> Duration {
        self.lease
    }

    /// Stores a QUEUED run and its RunRequested; the same caller and key return the run
    /// stored first (or IDEMPOTENCY_KEY_REUSED when the request differs).
    pub async fn start(&self, new: NewRun, cause: &Cause) -> Result<Run, JobsError> {
        let id = uuid::Uuid::now_v7().to_string();
        let now = now_micros();
        let parameter_credential_ids = new.parameter_credential_ids();
        let run = Run {
            id: id.clone(),
            job_id: new.job.id.clone(),
            job_revision: new.job.revision,
            job_name: new.job.name.clone(),
            state: RunState::Queued as i32,
            parameters: new.parameters.into_iter().collect(),
            trigger: Some(new.trigger.clone()),
            triggered_by: Some(new.triggered_by),
            targets: new.targets,
            labels: new.job.labels.clone(),
            parameter_credential_ids,
            rerun_of: new.rerun_of,
            ..Run::default()
        };
        let mut tx = self.db.begin().await?;
        let refuse = new.job.max_concurrent_runs > 0
            && new.job.concurrency_policy == ConcurrencyPolicy::Refuse as i32;
        // DeleteJob takes the row FOR UPDATE: a run is never started on a deleted job. With a
        // limit to enforce, starts of one job take turns.
        let lock = match (self.db.backend(), refuse) {
            (opsconductor_storage::Backend::Postgres, true) => {
                "SELECT id FROM jobs WHERE id = $1 FOR UPDATE"
            }
            (opsconductor_storage::Backend::Postgres, false) => {
                "SELECT id FROM jobs WHERE id = $1 FOR SHARE"
            }
            (opsconductor_storage::Backend::Sqlite, _) => "SELECT id FROM jobs WHERE id = $1",
        };
        let exists: Option<(String,)> = sqlx::query_as(lock)
            .bind(&new.job.id)
            .fetch_optional(&mut *tx)
            .await?;
        if exists.is_none() {
            return Err(JobsError::NotFound("job", new.job.id));
        }
        if refuse {
            let active =
                count(&mut tx, &new.job.id, &[RunState::Queued, RunState::Running]).await?;
            if active >= i64::from(new.job.max_concurrent_runs) {
                // A retry of a start that got in returns its run, limit or not.
                drop(tx);
                if let Some(run) = self
                    .by_key(&new.caller, &new.idempotency_key, &new.request_hash)
                    .await?
                {
                    return Ok(run);
                }
                return Err(JobsError::ConcurrencyLimit(
                    new.job.name.clone(),
                    new.job.max_concurrent_runs,
                ));
            }
        }
        let inserted = sqlx::query(
            "INSERT INTO runs (id, job_id, job_revision, state, attempt, schedule_id, caller, \
             idempotency_key, request_hash, requested_time, queue_deadline, spec, create_time, \
             update_time, fire_time) \
             VALUES ($1, $2, $3, $4, 0, $5, $6, $7, $8, $9, $10, $11, $9, $9, $12)",
        )
        .bind(&id)
        .bind(&new.job.id)
        .bind(new.job.revision as i64)
        .bind(RunState::Queued as i64)
        .bind(&new.trigger.schedule_id)
        .bind(&new.caller)
        .bind(&new.idempotency_key)
        .bind(&new.request_hash)
        .bind(now)
        .bind(now.saturating_add(new.queue_timeout.as_micros() as i64))
        .bind(spec(&run))
        .bind(fire_time(&new.trigger))
        .execute(&mut *tx)
        .await;
        match inserted {
            Ok(_) => {}
            Err(e) if is_unique_violation(&e) => {
                drop(tx);
                if let Some(run) = self
                    .by_key(&new.caller, &new.idempotency_key, &new.request_hash)
                    .await?
                {
                    return Ok(run);
                }
                // Another key, the same fire: the fire's one run.
                return self
                    .by_fire(&new.trigger)
                    .await?
                    .ok_or_else(|| JobsError::Infra(sqlx::Error::RowNotFound.into()));
            }
            Err(e) => return Err(e.into()),
        }
        self.stage_request(&mut tx, &run, 1).await?;
        let details = [
            ("job", run.job_name.clone()),
            ("job_revision", run.job_revision.to_string()),
        ];
        self.audit
            .record(&mut tx, cause, "run.start", ("run", &id), &details)
            .await?;
        self.audit.commit(tx).await?;
        self.get(&id).await
    }

    /// The run a caller started with `key`, if any; IDEMPOTENCY_KEY_REUSED when the request
    /// differed.
    async fn by_key(&self, caller: &str, key: &str, hash: &str) -> Result<Option<Run>, JobsError> {
        let found: Option<(String, String)> = sqlx::query_as(
            "SELECT id, request_hash FROM runs WHERE caller = $1 AND idempotency_key = $2",
        )
        .bind(caller)
        .bind(key)
        .fetch_optional(self.db.pool())
        .await?;
        match found {
            None => Ok(None),
            Some((_, stored)) if stored != hash => Err(JobsError::IdempotencyKeyReused),
            Some((id, _)) => Ok(Some(self.get(&id).await?)),
        }
    }

    /// The run a schedule's fire started, if any.
    async fn by_fire(&self, trigger: &RunTrigger) -> Result<Option<Run>, JobsError> {
        let Some(fire_time) = fire_time(trigger) else {
            return Ok(None);
        };
        let found: Option<(String,)> =
            sqlx::query_as("SELECT id FROM runs WHERE schedule_id = $1 AND fire_time = $2")
                .bind(&trigger.schedule_id)
                .bind(fire_time)
                .fetch_optional(self.db.pool())
                .await?;
        match found {
            Some((id,)) => Ok(Some(self.get(&id).await?)),
            None => Ok(None),
        }
    }

    async fn stage_request(
        &self,
        connection: &mut AnyConnection,
        run: &Run,
        attempt: u32,
    ) -> Result<(), JobsError> {
        let request = RunRequested {
            run_id: run.id.clone(),
            job_id: run.job_id.clone(),
            attempt,
            requested_time: Some(to_timestamp(now_micros())),
        };
        let message = OutgoingMessage::new(&self.jobs_exchange, platform::RUN_REQUESTED, &request)
            .with_correlation_id(run.id.clone());
        self.outbox.stage(connection, &message).await?;
        Ok(())
    }

    async fn stage_finished(
        &self,
        connection: &mut AnyConnection,
        run: &Run,
    ) -> Result<(), JobsError> {
        // Read on the transaction's own connection: waiting for another one while holding
        // SQLite's write lock could wait for a connection that waits for the lock.
        let rows: Vec<(Vec<u8>,)> = sqlx::query_as(
            "SELECT spec FROM run_steps WHERE run_id = $1 ORDER BY step_index, target_id",
        )
        .bind(&run.id)
        .fetch_all(&mut *connection)
        .await?;
        let steps = decode_steps(&run.id, rows)?;
        let failed_steps = steps
            .into_iter()
            .filter(|s| {
                matches!(
                    StepState::try_from(s.state),
                    Ok(StepState::Failed | StepState::TimedOut)
                )
            })
            .take(20)
            .collect();
        let trigger = run.trigger.clone().unwrap_or_default();
        let finished = RunFinished {
            run_id: run.id.clone(),
            job_id: run.job_id.clone(),
            job_name: run.job_name.clone(),
            state: run.state,
            start_time: run.start_time,
            end_time: run.end_time,
            triggered_by: run.triggered_by.clone(),
            schedule_id: trigger.schedule_id.clone(),
            error: run.error.clone(),
            attempt: run.attempt,
            job_revision: run.job_revision,
            trigger: Some(trigger),
            labels: run.labels.clone(),
            failed_steps,
            error_reason: run.error_reason.clone(),
        };
        let message =
            OutgoingMessage::new(&self.events_exchange, platform::RUN_FINISHED, &finished)
                .with_correlation_id(run.id.clone());
        self.outbox.stage(connection, &message).await?;
        Ok(())
    }

    pub async fn row(&self, id: &str) -> Result<RunRow, JobsError> {
        sqlx::query_as::<_, RunRow>(&format!("SELECT {COLUMNS} FROM runs WHERE id = $1"))
            .bind(id)
            .fetch_optional(self.db.pool())
            .await?
            .ok_or_else(|| JobsError::NotFound("run", id.to_string()))
    }

    /// The run with its step results.
    pub async fn get(&self, id: &str) -> Result<Run, JobsError> {
        let mut run = self.row(id).await?.run()?;
        run.steps = self.steps(id).await?;
        Ok(run)
    }

    pub async fn steps(&self, run_id: &str) -> Result<Vec<RunStep>, JobsError> {
        let rows: Vec<(Vec<u8>,)> = sqlx::query_as(
            "SELECT spec FROM run_steps WHERE run_id = $1 ORDER BY step_index, target_id",
        )
        .bind(run_id)
        .fetch_all(self.db.pool())
        .await?;
        decode_steps(run_id, rows)
    }
}

fn decode_steps(run_id: &str, rows: Vec<(Vec<u8>,)>) -> Result<Vec<RunStep>, JobsError> {
    rows.into_iter()
        .map(|(spec,)| {
            RunStep::decode(spec.as_slice())
                .map_err(|e| JobsError::Corrupt("run step", run_id.to_string(), e))
        })
        .collect()
}

impl RunStore {
    /// Runs newest first, without step results.
    pub async fn list(
        &self,
        filter: &RunFilter,
        page: &Page,
    ) -> Result<(Vec<Run>, String), JobsError> {
        let mut select = Select::new(format!("SELECT {COLUMNS} FROM runs WHERE 1 = 1"));
        if let Some(job_id) = &filter.job_id {
            select.and("job_id = {}", job_id.clone());
        }
        if let Some(schedule_id) = &filter.schedule_id {
            select.and("schedule_id = {}", schedule_id.clone());
        }
        if !filter.states.is_empty() {
            let states: Vec<i64> = filter.states.iter().map(|s| i64::from(*s)).collect();
            select.and_in("state IN ({})", states);
        }
        if let Some(after) = &page.after {
            select.and("id < {}", after.clone());
        }
        select.push(" ORDER BY id DESC").limit(page.fetch_limit());
        let rows: Vec<RunRow> = select.fetch_all(self.db.pool()).await?;
        let mut runs = rows
            .iter()
            .map(RunRow::run)
            .collect::<Result<Vec<_>, _>>()?;
        let token = page.finish(&mut runs, |r| &r.id);
        Ok((runs, token))
    }

    /// Cancels a queued run at once; asks the executor of a running one to stop it.
    pub async fn cancel(&self, id: &str, reason: &str, cause: &Cause) -> Result<Run, JobsError> {
        for _ in 0..5 {
            let row = self.row(id).await?;
            let mut run = row.run()?;
            let details = [("reason", reason.to_string())];
            match row.state() {
                RunState::Queued => {
                    run.state = RunState::Cancelled as i32;
                    run.cancel_reason = reason.to_string();
                    run.error = format!("cancelled before it started: {reason}");
                    run.error_reason = "CANCELLED".into();
                    run.end_time = Some(to_timestamp(now_micros()));
                    let mut tx = self.db.begin().await?;
                    let done = sqlx::query(
                        "UPDATE runs SET state = $1, spec = $2, update_time = $3 \
                         WHERE id = $4 AND state = $5",
                    )
                    .bind(RunState::Cancelled as i64)
                    .bind(spec(&run))
                    .bind(now_micros().max(row.update_time + 1))
                    .bind(id)
                    .bind(RunState::Queued as i64)
                    .execute(&mut *tx)
                    .await?;
                    if done.rows_affected() == 0 {
                        continue;
                    }
                    self.stage_finished(&mut tx, &run).await?;
                    self.audit
                        .record(&mut tx, cause, "run.cancel", ("run", id), &details)
                        .await?;
                    self.audit.commit(tx).await?;
                    self.count_finished(&run);
                    return self.get_and_push(id).await;
                }
                RunState::Running if row.cancel_requested == 0 => {
                    run.cancel_reason = reason.to_string();
                    let mut tx = self.db.begin().await?;
                    let done = sqlx::query(
                        "UPDATE runs SET cancel_requested = 1, spec = $1, update_time = $2 \
                         WHERE id = $3 AND state = $4 AND attempt = $5",
                    )
                    .bind(spec(&run))
                    .bind(now_micros().max(row.update_time + 1))
                    .bind(id)
                    .bind(RunState::Running as i64)
                    .bind(row.attempt)
                    .execute(&mut *tx)
                    .await?;
                    if done.rows_affected() == 0 {
                        continue;
                    }
                    let request = RunCancelRequested {
                        run_id: id.to_string(),
                        reason: reason.to_string(),
                        actor: Some(cause.actor.clone()),
                        request_time: Some(to_timestamp(now_micros())),
                    };
                    // Executors that are not listening learn it from their next heartbeat.
                    let message = OutgoingMessage::new(
                        &self.jobs_exchange,
                        platform::RUN_CANCEL_REQUESTED,
                        &request,
                    )
                    .broadcast();
                    self.outbox.stage(&mut tx, &message).await?;
                    self.audit
                        .record(&mut tx, cause, "run.cancel", ("run", id), &details)
                        .await?;
                    self.audit.commit(tx).await?;
                    return self.get_and_push(id).await;
                }
                _ => return self.get(id).await,
            }
        }
        Err(JobsError::Api(
            opsconductor_platform::ApiError::Unavailable {
                message: format!("run {id} kept changing while it was being cancelled"),
                retry_after: Duration::from_millis(100),
            },
        ))
    }

    async fn get_and_push(&self, id: &str) -> Result<Run, JobsError> {
        let run = self.get(id).await?;
        self.hub.publish(
            id,
            WatchRunResponse {
                event: Some(Event::Run(run.clone())),
            },
        );
        Ok(run)
    }

    /// Takes a QUEUED run for `executor_id` under a new lease. The same claim repeated (its
    /// earlier answer was lost: same executor, same `claim_key`) gets a fresh token; anyone
    /// else is refused.
    pub async fn claim(
        &self,
        id: &str,
        executor_id: &str,
        claim_key: &str,
        max_running: u32,
        cause: &Cause,
    ) -> Result<Claim, JobsError> {
        let claim_hash = lease_hash(claim_key);
        let row = self.row(id).await?;
        let token = hex::encode(rand::random::<[u8; 32]>());
        let now = now_micros();
        let expire = now + self.lease.as_micros() as i64;
        let mut run = row.run()?;
        let mut tx = self.db.begin().await?;
        let done =
            match row.state() {
                RunState::Queued => {
                    if max_running > 0 {
                        if self.db.backend() == opsconductor_storage::Backend::Postgres {
                            // Claims of one job take turns: two cannot both see a free slot.
                            sqlx::query("SELECT id FROM jobs WHERE id = $1 FOR UPDATE")
                                .bind(&row.job_id)
                                .execute(&mut *tx)
                                .await?;
                        }
                        let running = count(&mut tx, &row.job_id, &[RunState::Running]).await?;
                        if running >= i64::from(max_running) {
                            return Err(JobsError::ConcurrencyLimit(
                                run.job_name.clone(),
                                max_running,
                            ));
                        }
                    }
                    run.start_time.get_or_insert(to_timestamp(now));
                    sqlx::query(
                        "UPDATE runs SET state = $1, attempt = attempt + 1, executor_id = $2, \
                     lease_hash = $3, lease_expire_time = $4, step_started = 0, spec = $5, \
                     update_time = $6, claim_hash = $10 WHERE id = $7 AND state = $8 \
                     AND attempt = $9",
                    )
                    .bind(RunState::Running as i64)
                    .bind(executor_id)
                    .bind(lease_hash(&token))
                    .bind(expire)
                    .bind(spec(&run))
                    .bind(now.max(row.update_time + 1))
                    .bind(id)
                    .bind(RunState::Queued as i64)
                    .bind(row.attempt)
                    .bind(&claim_hash)
                    .execute(&mut *tx)
                    .await?
                }
                RunState::Running if row.executor_id == executor_id => sqlx::query(
                    "UPDATE runs SET lease_hash = $1, lease_expire_time = $2, update_time = $3 \
                 WHERE id = $4 AND state = $5 AND attempt = $6 AND executor_id = $7 \
                 AND claim_hash = $8",
                )
                .bind(lease_hash(&token))
                .bind(expire)
                .bind(now.max(row.update_time + 1))
                .bind(id)
                .bind(RunState::Running as i64)
                .bind(row.attempt)
                .bind(executor_id)
                .bind(&claim_hash)
                .execute(&mut *tx)
                .await?,
                RunState::Running => return Err(JobsError::AlreadyClaimed(id.to_string())),
                _ => return Err(JobsError::NotQueued(id.to_string())),
            };
        if done.rows_affected() == 0 {
            // Another executor won the race (or the run was cancelled meanwhile).
            return match self.row(id).await?.state() {
                RunState::Running => Err(JobsError::AlreadyClaimed(id.to_string())),
                _ => Err(JobsError::NotQueued(id.to_string())),
            };
        }
        if row.state() == RunState::Queued {
            let attempt = row.attempt() + 1;
            let started = RunStarted {
                run_id: id.to_string(),
                job_id: run.job_id.clone(),
                job_name: run.job_name.clone(),
                attempt,
                executor_id: executor_id.to_string(),
                start_time: Some(to_timestamp(now)),
                triggered_by: run.triggered_by.clone(),
                trigger: run.trigger.clone(),
                labels: run.labels.clone(),
            };
            let message =
                OutgoingMessage::new(&self.events_exchange, platform::RUN_STARTED, &started)
                    .with_correlation_id(id.to_string());
            self.outbox.stage(&mut tx, &message).await?;
            let details = [
                ("executor_id", executor_id.to_string()),
                ("attempt", attempt.to_string()),
            ];
            self.audit
                .record(&mut tx, cause, "run.claim", ("run", id), &details)
                .await?;
        }
        self.audit.commit(tx).await?;
        let row = self.row(id).await?;
        let run = self.get_and_push(id).await?;
        Ok(Claim {
            token,
            lease_expire_time: expire,
            run,
            next_log_seq: row.next_log_seq.max(1) as u64,
        })
    }

    /// The run, if `token` is its live lease.
    pub async fn held(&self, id: &str, token: &str) -> Result<RunRow, JobsError> {
        let row = self.row(id).await?;
        if row.state() != RunState::Running
            || row.lease_hash != lease_hash(token)
            || row.lease_expire_time < now_micros()
        {
            return Err(JobsError::LeaseLost(id.to_string()));
        }
        Ok(row)
    }

    /// The run as its lease holder sees it (for a release).
    pub async fn held_row(&self, id: &str, token: &str) -> Result<RunRow, JobsError> {
        let row = self.row(id).await?;
        if row.state() != RunState::Running || row.lease_hash != lease_hash(token) {
            return Err(JobsError::LeaseLost(id.to_string()));
        }
        Ok(row)
    }

    /// Extends the lease; returns its new expiry, and the cancel request if there is one.
    pub async fn heartbeat(
        &self,
        id: &str,
        token: &str,
    ) -> Result<(i64, Option<String>), JobsError> {
        let now = now_micros();
        let expire = now + self.lease.as_micros() as i64;
        let done = sqlx::query(
            "UPDATE runs SET lease_expire_time = $1 WHERE id = $2 AND state = $3 \
             AND lease_hash = $4 AND lease_expire_time >= $5",
        )
        .bind(expire)
        .bind(id)
        .bind(RunState::Running as i64)
        .bind(lease_hash(token))
        .bind(now)
        .execute(self.db.pool())
        .await?;
        let row = self.row(id).await?;
        if done.rows_affected() == 0 {
            return Err(JobsError::LeaseLost(id.to_string()));
        }
        let cancel = (row.cancel_requested != 0).then(|| row.run().map(|r| r.cancel_reason));
        Ok((expire, cancel.transpose()?))
    }

    /// Records a step result of the lease's attempt; a result of an earlier claim, or of an
    /// earlier step attempt, never replaces a later one. Returns whether cancel was requested.
    pub async fn report_step(
        &self,
        id: &str,
        token: &str,
        mut step: RunStep,
    ) -> Result<bool, JobsError> {
        let row = self.held(id, token).await?;
        step.run_attempt = row.attempt();
        let mut tx = self.db.begin().await?;
        sqlx::query(
            "INSERT INTO run_steps (run_id, step_index, target_id, run_attempt, attempt, spec) \
             VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (run_id, step_index, target_id) DO UPDATE \
             SET run_attempt = excluded.run_attempt, attempt = excluded.attempt, spec = excluded.spec \
             WHERE run_steps.run_attempt < excluded.run_attempt \
             OR (run_steps.run_attempt = excluded.run_attempt AND run_steps.attempt <= excluded.attempt)",
        )
        .bind(id)
        .bind(i64::from(step.step_index))
        .bind(&step.target_id)
        .bind(row.attempt)
        .bind(i64::from(step.attempt))
        .bind(step.encode_to_vec())
        .execute(&mut *tx)
        .await?;
        if row.step_started == 0 {
            sqlx::query("UPDATE runs SET step_started = 1 WHERE id = $1 AND attempt = $2")
                .bind(id)
                .bind(row.attempt)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        self.hub.publish(
            id,
            WatchRunResponse {
                event: Some(Event::Step(step)),
            },
        );
        Ok(row.cancel_requested != 0)
    }

    /// Appends lines continuing the log; lines already stored are skipped. Returns the last
    /// seq stored.
    pub async fn append_logs(
        &self,
        id: &str,
        token: &str,
        lines: Vec<LogLine>,
    ) -> Result<u64, JobsError> {
        self.held(id, token).await?;
        let last = self.last_log_seq(id).await?;
        let fresh: Vec<LogLine> = lines.into_iter().filter(|l| l.seq > last).collect();
        let Some(first) = fresh.first().map(|l| l.seq) else {
            return Ok(last);
        };
        for (i, line) in fresh.iter().enumerate() {
            if line.seq != last + 1 + i as u64 {
                return Err(JobsError::Api(opsconductor_platform::ApiError::invalid(
                    "lines",
                    format!("seqs must continue the log without gaps from {}", last + 1),
                )));
            }
        }
        let last_seq = first + fresh.len() as u64 - 1;
        let mut body = Vec::new();
        for line in &fresh {
            line.encode_length_delimited(&mut body)
                .map_err(|e| JobsError::Api(opsconductor_platform::ApiError::internal(e)))?;
        }
        let mut tx = self.db.begin().await?;
        let inserted = sqlx::query(
            "INSERT INTO run_log_chunks (run_id, first_seq, last_seq, body) VALUES ($1, $2, $3, $4)",
        )
        .bind(id)
        .bind(first as i64)
        .bind(last_seq as i64)
        .bind(body)
        .execute(&mut *tx)
        .await;
        match inserted {
            Ok(_) => {}
            // The same batch sent twice at once: the other one stored it.
            Err(e) if is_unique_violation(&e) => return self.last_log_seq(id).await,
            Err(e) => return Err(e.into()),
        }
        sqlx::query("UPDATE runs SET next_log_seq = $1 WHERE id = $2 AND next_log_seq <= $1")
            .bind(last_seq as i64 + 1)
            .bind(id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        let events = fresh
            .into_iter()
            .map(|line| WatchRunResponse {
                event: Some(Event::LogLine(line)),
            })
            .collect();
        self.hub.publish_all(id, events);
        Ok(last_seq)
    }

    async fn last_log_seq(&self, id: &str) -> Result<u64, JobsError> {
        let (last,): (Option<i64>,) =
            sqlx::query_as("SELECT MAX(last_seq) FROM run_log_chunks WHERE run_id = $1")
                .bind(id)
                .fetch_one(self.db.pool())
                .await?;
        Ok(last.unwrap_or(0).max(0) as u64)
    }

    /// Log lines with seq above `after`, in order, at most `limit` lines and about
    /// [`MAX_LOG_PAGE_BYTES`] (always at least one line), filtered; and whether the page was
    /// cut (by either bound) before the end of what is stored.
    pub async fn logs(
        &self,
        id: &str,
        after: u64,
        limit: usize,
        step_name: &str,
        target_id: &str,
    ) -> Result<(Vec<LogLine>, u64, bool), JobsError> {
        let mut lines = Vec::new();
        let mut cursor = after;
        let mut bytes = 0;
        loop {
            // A few chunks at a time: a chunk holds up to a thousand lines.
            let chunks: Vec<(i64, Vec<u8>)> = sqlx::query_as(
                "SELECT last_seq, body FROM run_log_chunks WHERE run_id = $1 AND last_seq > $2 \
                 ORDER BY first_seq LIMIT 4",
            )
            .bind(id)
            .bind(cursor as i64)
            .fetch_all(self.db.pool())
            .await?;
            if chunks.is_empty() {
                return Ok((lines, cursor, false));
            }
            for (_, body) in chunks {
                let mut buf = body.as_slice();
                while !buf.is_empty() {
                    let line = LogLine::decode_length_delimited(&mut buf)
                        .map_err(|e| JobsError::Corrupt("log chunk", id.to_string(), e))?;
                    if line.seq <= cursor {
                        continue;
                    }
                    if (step_name.is_empty() || line.step_name == step_name)
                        && (target_id.is_empty() || line.target_id == target_id)
                    {
                        let size = log_line_bytes(&line);
                        if !lines.is_empty() && bytes + size > MAX_LOG_PAGE_BYTES {
                            // This line starts the next page.
                            return Ok((lines, cursor, true));
                        }
                        bytes += size;
                        cursor = line.seq;
                        lines.push(line);
                        if lines.len() >= limit {
                            return Ok((lines, cursor, true));
                        }
                    } else {
                        cursor = line.seq;
                    }
                }
            }
        }
    }

    /// Ends the run in `state`, releasing the lease. Completing a finished run again with the
    /// same state returns it; anything else without the lease is LEASE_LOST.
    pub async fn complete(
        &self,
        id: &str,
        token: &str,
        state: RunState,
        error: &str,
        cause: &Cause,
    ) -> Result<Run, JobsError> {
        let row = self.row(id).await?;
        if row.state() == state {
            return self.get(id).await;
        }
        if row.state() != RunState::Running || row.lease_hash != lease_hash(token) {
            return Err(JobsError::LeaseLost(id.to_string()));
        }
        let mut run = row.run()?;
        run.state = state as i32;
        run.error = error.to_string();
        run.error_reason = match state {
            RunState::Succeeded => String::new(),
            RunState::Cancelled => "CANCELLED".into(),
            RunState::TimedOut => "RUN_TIMEOUT".into(),
            _ => "STEP_FAILED".into(),
        };
        self.finish(&row, run, "run.complete", cause).await
    }

    /// Moves `row` (still as read) to the final state in `run`, with its RunFinished.
    async fn finish(
        &self,
        row: &RunRow,
        mut run: Run,
        action: &str,
        cause: &Cause,
    ) -> Result<Run, JobsError> {
        let now = now_micros();
        run.end_time = Some(to_timestamp(now));
        let mut tx = self.db.begin().await?;
        let done = sqlx::query(
            "UPDATE runs SET state = $1, lease_hash = '', lease_expire_time = 0, spec = $2, \
             update_time = $3 WHERE id = $4 AND state = $5 AND attempt = $6 AND lease_hash = $7",
        )
        .bind(i64::from(run.state))
        .bind(spec(&run))
        .bind(now.max(row.update_time + 1))
        .bind(&row.id)
        .bind(row.state)
        .bind(row.attempt)
        .bind(&row.lease_hash)
        .execute(&mut *tx)
        .await?;
        if done.rows_affected() == 0 {
            return Err(JobsError::LeaseLost(row.id.clone()));
        }
        run.attempt = row.attempt();
        run.job_id = row.job_id.clone();
        run.job_revision = row.job_revision();
        run.id = row.id.clone();
        self.stage_finished(&mut tx, &run).await?;
        self.request_next(&mut tx, &row.job_id).await?;
        let state = RunState::try_from(run.state)
            .map(|s| s.as_str_name())
            .unwrap_or("?");
        let details = [
            ("state", state.to_string()),
            ("error_reason", run.error_reason.clone()),
        ];
        self.audit
            .record(&mut tx, cause, action, ("run", &row.id), &details)
            .await?;
        self.audit.commit(tx).await?;
        self.count_finished(&run);
        self.get_and_push(&row.id).await
    }

    /// A run ended: the oldest queued run of the job, which may have waited for its slot, is
    /// requested again at once (a duplicate request is harmless).
    async fn request_next(
        &self,
        connection: &mut AnyConnection,
        job_id: &str,
    ) -> Result<(), JobsError> {
        let waiting: Option<(String, i64)> = sqlx::query_as(
            "SELECT id, attempt FROM runs WHERE job_id = $1 AND state = $2 ORDER BY id LIMIT 1",
        )
        .bind(job_id)
        .bind(RunState::Queued as i64)
        .fetch_optional(&mut *connection)
        .await?;
        if let Some((id, attempt)) = waiting {
            let run = Run {
                id,
                job_id: job_id.to_string(),
                ..Run::default()
            };
            self.stage_request(connection, &run, attempt.max(0) as u32 + 1)
                .await?;
        }
        Ok(())
    }

    /// RUNNING runs whose lease lapsed before `now`, at most `limit`.
    pub async fn lapsed(&self, now: i64, limit: i64) -> Result<Vec<RunRow>, JobsError> {
        Ok(sqlx::query_as::<_, RunRow>(&format!(
            "SELECT {COLUMNS} FROM runs WHERE state = $1 AND lease_expire_time < $2 LIMIT $3"
        ))
        .bind(RunState::Running as i64)
        .bind(now)
        .bind(limit)
        .fetch_all(self.db.pool())
        .await?)
    }

    /// Puts a run whose executor was lost back in the queue, if the lease is still the one
    /// seen lapse. False when another replica's reaper (or the executor) got there first.
    pub async fn requeue(
        &self,
        row: &RunRow,
        queue_timeout: Duration,
        cause: &Cause,
    ) -> Result<bool, JobsError> {
        let now = now_micros();
        let run = row.run()?;
        let mut tx = self.db.begin().await?;
        let done = sqlx::query(
            "UPDATE runs SET state = $1, executor_id = '', lease_hash = '', lease_expire_time = 0, \
             cancel_requested = 0, requested_time = $2, queue_deadline = $3, update_time = $4 \
             WHERE id = $5 AND state = $6 AND attempt = $7 AND lease_hash = $8",
        )
        .bind(RunState::Queued as i64)
        .bind(now)
        .bind(now.saturating_add(queue_timeout.as_micros() as i64))
        .bind(now.max(row.update_time + 1))
        .bind(&row.id)
        .bind(RunState::Running as i64)
        .bind(row.attempt)
        .bind(&row.lease_hash)
        .execute(&mut *tx)
        .await?;
        if done.rows_affected() == 0 {
            return Ok(false);
        }
        let mut requested = run.clone();
        requested.id = row.id.clone();
        requested.job_id = row.job_id.clone();
        self.stage_request(&mut tx, &requested, row.attempt() + 1)
            .await?;
        let details = [
            ("lost_executor_id", row.executor_id.clone()),
            ("attempt", row.attempt().to_string()),
        ];
        self.audit
            .record(&mut tx, cause, "run.requeue", ("run", &row.id), &details)
            .await?;
        self.audit.commit(tx).await?;
        self.get_and_push(&row.id).await?;
        Ok(true)
    }

    /// Fails a run for a reason the service found (EXECUTOR_LOST, QUEUE_TIMEOUT), if it is
    /// still as `row` saw it.
    pub async fn fail(
        &self,
        row: &RunRow,
        reason: &str,
        error: String,
        cause: &Cause,
    ) -> Result<bool, JobsError> {
        let mut run = row.run()?;
        run.state = RunState::Failed as i32;
        run.error = error;
        run.error_reason = reason.to_string();
        match self.finish(row, run, "run.fail", cause).await {
            Ok(_) => Ok(true),
            Err(JobsError::LeaseLost(_)) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// QUEUED runs past their queue deadline.
    pub async fn overdue(&self, now: i64, limit: i64) -> Result<Vec<RunRow>, JobsError> {
        Ok(sqlx::query_as::<_, RunRow>(&format!(
            "SELECT {COLUMNS} FROM runs WHERE state = $1 AND queue_deadline < $2 LIMIT $3"
        ))
        .bind(RunState::Queued as i64)
        .bind(now)
        .bind(limit)
        .fetch_all(self.db.pool())
        .await?)
    }

    /// Requests again the QUEUED runs requested before `before` (a request that was
    /// dead-lettered, or taken by an executor that died before claiming).
    pub async fn rerequest(&self, before: i64, limit: i64) -> Result<usize, JobsError> {
        let rows: Vec<RunRow> = sqlx::query_as::<_, RunRow>(&format!(
            "SELECT {COLUMNS} FROM runs WHERE state = $1 AND requested_time < $2 LIMIT $3"
        ))
        .bind(RunState::Queued as i64)
        .bind(before)
        .bind(limit)
        .fetch_all(self.db.pool())
        .await?;
        let mut sent = 0;
        for row in rows {
            let mut tx = self.db.begin().await?;
            let done = sqlx::query(
                "UPDATE runs SET requested_time = $1 WHERE id = $2 AND state = $3 AND attempt = $4 \
                 AND requested_time < $5",
            )
            .bind(now_micros())
            .bind(&row.id)
            .bind(RunState::Queued as i64)
            .bind(row.attempt)
            .bind(before)
            .execute(&mut *tx)
            .await?;
            if done.rows_affected() == 0 {
                continue;
            }
            let mut run = row.run()?;
            run.id = row.id.clone();
            self.stage_request(&mut tx, &run, row.attempt() + 1).await?;
            self.outbox.commit(tx).await?;
            sent += 1;
        }
        Ok(sent)
    }
}
