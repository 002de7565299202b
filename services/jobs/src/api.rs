//! The generated `JobsService` trait over the job and run stores. Each trait method unwraps
//! the request and wraps the answer; the inherent method of the same name does the work.

use std::collections::BTreeMap;
use std::pin::Pin;
use std::sync::Arc;

use futures::Stream;
use opsconductor_api::common::v1::Actor;
use opsconductor_api::jobs::v1::jobs_service_server::JobsService;
use opsconductor_api::jobs::v1::*;
use opsconductor_messaging::Cause;
use opsconductor_platform::client::Clients;
use opsconductor_platform::page::Page;
use opsconductor_platform::principal::Principal;
use opsconductor_platform::time::{from_duration, to_timestamp};
use opsconductor_platform::validate::{require_id, required, Violations};
use opsconductor_platform::ApiError;
use sha2::{Digest, Sha256};
use tonic::{Request, Response, Status};

use crate::reaper::Reaper;
use crate::runs::{NewRun, RunFilter, RunStore};
use crate::store::JobStore;
use crate::{targets, validate, watch, JobsError};

type Result<T> = std::result::Result<T, JobsError>;

const MUTABLE_FIELDS: [&str; 14] = [
    "name",
    "description",
    "parameters",
    "steps",
    "targets",
    "timeout",
    "labels",
    "max_attempts",
    "requeue_after_start",
    "queue_timeout",
    "max_concurrent_runs",
    "concurrency_policy",
    "max_parallel_targets",
    "max_failed_targets",
];

/// The service id the scheduler calls with: only it may start SCHEDULE runs.
const SCHEDULER: &str = "scheduler";

pub struct JobsApi {
    pub jobs: JobStore,
    pub runs: RunStore,
    pub reaper: Reaper,
    pub clients: Arc<Clients>,
}

fn principal<T>(request: &Request<T>) -> Option<Principal> {
    Principal::from_request(request).cloned()
}

/// Shell steps run code on the executor's host, with the executor's identity nearby: saving
/// one is an administrator's act whatever the method's policy admits.
fn shell_needs_admin(job: &Job, principal: Option<&Principal>) -> Result<()> {
    if validate::has_shell_steps(job) && !principal.is_some_and(Principal::is_admin) {
        return Err(ApiError::PermissionDenied(
            "only administrators may save a job with shell steps".into(),
        )
        .into());
    }
    Ok(())
}

impl JobsApi {
    async fn create(
        &self,
        req: CreateJobRequest,
        principal: Option<&Principal>,
        cause: &Cause,
    ) -> Result<Job> {
        let job = required("job", req.job)?;
        let mut v = Violations::new();
        validate::job(&mut v, &job);
        v.finish()?;
        shell_needs_admin(&job, principal)?;
        let job = self.jobs.create(&job, cause).await?;
        tracing::info!(job_id = %job.id, name = %job.name, "job created");
        Ok(job)
    }

    async fn update(
        &self,
        req: UpdateJobRequest,
        principal: Option<&Principal>,
        cause: &Cause,
    ) -> Result<Job> {
        let patch = required("job", req.job)?;
        let mut v = Violations::new();
        v.id("job.id", &patch.id);
        let paths = v.update_mask(req.update_mask, &MUTABLE_FIELDS);
        v.finish()?;
        let mut job = self.jobs.get(&patch.id).await?;
        let revision = job.revision;
        if req.expected_revision != 0 && req.expected_revision != revision {
            return Err(JobsError::RevisionMismatch {
                id: job.id,
                expected: req.expected_revision,
                actual: revision,
            });
        }
        for path in &paths {
            match path.as_str() {
                "name" => job.name = patch.name.clone(),
                "description" => job.description = patch.description.clone(),
                "parameters" => job.parameters = patch.parameters.clone(),
                "steps" => job.steps = patch.steps.clone(),
                "targets" => job.targets = patch.targets.clone(),
                "timeout" => job.timeout = patch.timeout,
                "labels" => job.labels = patch.labels.clone(),
                "max_attempts" => job.max_attempts = patch.max_attempts,
                "requeue_after_start" => job.requeue_after_start = patch.requeue_after_start,
                "queue_timeout" => job.queue_timeout = patch.queue_timeout,
                "max_concurrent_runs" => job.max_concurrent_runs = patch.max_concurrent_runs,
                "concurrency_policy" => job.concurrency_policy = patch.concurrency_policy,
                "max_parallel_targets" => job.max_parallel_targets = patch.max_parallel_targets,
                "max_failed_targets" => job.max_failed_targets = patch.max_failed_targets,
                _ => {}
            }
        }
        let mut v = Violations::new();
        validate::job(&mut v, &job);
        v.finish()?;
        shell_needs_admin(&job, principal)?;
        let job = self.jobs.update(&job, revision, &paths, cause).await?;
        tracing::info!(job_id = %job.id, revision = job.revision, "job updated");
        Ok(job)
    }

    async fn list(&self, req: ListJobsRequest) -> Result<ListJobsResponse> {
        let mut v = Violations::new();
        let page = Page::parse(req.page_size, &req.page_token, &mut v);
        v.check(req.names.len() <= 100, "names", "at most 100 names");
        v.check(req.labels.len() <= 16, "labels", "at most 16 labels");
        v.finish()?;
        let (jobs, next_page_token) = self.jobs.list(&req.names, &req.labels, &page).await?;
        Ok(ListJobsResponse {
            jobs,
            next_page_token,
        })
    }

    async fn start_run(
        &self,
        req: StartRunRequest,
        principal: Option<&Principal>,
        cause: &Cause,
    ) -> Result<Run> {
        let mut v = Violations::new();
        v.id("job_id", &req.job_id);
        idempotency_key(&mut v, &req.idempotency_key);
        let mut trigger = req.trigger.unwrap_or_default();
        match TriggerKind::try_from(trigger.kind) {
            Ok(TriggerKind::Unspecified) => trigger.kind = TriggerKind::Manual as i32,
            Ok(TriggerKind::Manual) => {}
            Ok(TriggerKind::Schedule) => {
                v.id("trigger.schedule_id", &trigger.schedule_id);
                v.check(
                    trigger.fire_time.is_some(),
                    "trigger.fire_time",
                    "is required for SCHEDULE",
                );
                v.id("trigger.owner_user_id", &trigger.owner_user_id);
            }
            Err(_) => v.add("trigger.kind", "is not a trigger kind"),
        }
        v.finish()?;
        if trigger.kind == TriggerKind::Schedule as i32
            && principal.and_then(|p| p.service.as_deref()) != Some(SCHEDULER)
        {
            return Err(ApiError::PermissionDenied(
                "only the scheduler starts SCHEDULE runs".into(),
            )
            .into());
        }
        let job = self.jobs.get(&req.job_id).await?;
        let given: BTreeMap<String, String> = req.parameters.into_iter().collect();
        let mut v = Violations::new();
        let resolved = validate::parameters(&mut v, &job.parameters, &given);
        v.finish()?;
        validate::credentials_allowed(&job.parameters, &resolved)?;
        let targets = targets::resolve(&self.clients, &job).await?;
        let caller = cause_caller(cause);
        let triggered_by = scheduled_for(&trigger).unwrap_or_else(|| cause.actor.clone());
        let new = NewRun {
            queue_timeout: validate::or_default(
                job.queue_timeout.as_ref(),
                validate::DEFAULT_QUEUE_TIMEOUT,
            ),
            request_hash: request_hash(&job.id, &given, &trigger),
            parameters: given,
            targets,
            trigger,
            triggered_by,
            caller,
            idempotency_key: req.idempotency_key,
            rerun_of: String::new(),
            job,
        };
        let run = self.runs.start(new, cause).await?;
        tracing::info!(run_id = %run.id, job_id = %run.job_id, "run started");
        Ok(run)
    }

    async fn rerun(&self, req: RerunRunRequest, cause: &Cause) -> Result<Run> {
        let mut v = Violations::new();
        v.id("id", &req.id);
        idempotency_key(&mut v, &req.idempotency_key);
        v.finish()?;
        let original = self.runs.get(&req.id).await?;
        if !crate::runs::is_final(RunState::try_from(original.state).unwrap_or_default()) {
            return Err(ApiError::FailedPrecondition {
                reason: "RUN_NOT_FINISHED",
                message: format!("run {} has not finished", original.id),
            }
            .into());
        }
        let job = self
            .jobs
            .revision(&original.job_id, original.job_revision)
            .await?;
        let mut targets = original.targets.clone();
        if req.failed_targets_only {
            let failed: std::collections::HashSet<&str> = original
                .steps
                .iter()
                .filter(|st| !st.target_id.is_empty() && st.state != StepState::Succeeded as i32)
                .map(|st| st.target_id.as_str())
                .collect();
            targets.retain(|t| failed.contains(t.id.as_str()));
            if targets.is_empty() {
                return Err(ApiError::FailedPrecondition {
                    reason: "NOTHING_TO_RERUN",
                    message: format!("no target of run {} failed", original.id),
                }
                .into());
            }
        }
        let given: BTreeMap<String, String> = original
            .parameters
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        // The original run was checked when it started, but perhaps before its job's SECRET
        // parameters had allowlists: a re-run is held to the revision's allowlist as it is.
        let mut v = Violations::new();
        let resolved = validate::parameters(&mut v, &job.parameters, &given);
        v.finish()?;
        validate::credentials_allowed(&job.parameters, &resolved)?;
        let current = match self.jobs.get(&original.job_id).await {
            Ok(current) => current.parameters,
            Err(JobsError::NotFound(..)) => Vec::new(),
            Err(e) => return Err(e),
        };
        validate::still_allowed(&job.parameters, &current, &resolved)?;
        let trigger = RunTrigger {
            kind: TriggerKind::Manual as i32,
            ..Default::default()
        };
        let mut hash = Sha256::new();
        hash.update(b"rerun\0");
        hash.update(original.id.as_bytes());
        hash.update([u8::from(req.failed_targets_only)]);
        let new = NewRun {
            queue_timeout: validate::or_default(
                job.queue_timeout.as_ref(),
                validate::DEFAULT_QUEUE_TIMEOUT,
            ),
            request_hash: hex::encode(hash.finalize()),
            parameters: given,
            targets,
            trigger,
            triggered_by: cause.actor.clone(),
            caller: cause_caller(cause),
            idempotency_key: req.idempotency_key,
            rerun_of: original.id.clone(),
            job,
        };
        let run = self.runs.start(new, cause).await?;
        tracing::info!(run_id = %run.id, rerun_of = %original.id, "run re-run");
        Ok(run)
    }

    async fn list_runs(&self, req: ListRunsRequest) -> Result<ListRunsResponse> {
        let mut v = Violations::new();
        let page = Page::parse(req.page_size, &req.page_token, &mut v);
        if !req.job_id.is_empty() {
            v.id("job_id", &req.job_id);
        }
        if !req.schedule_id.is_empty() {
            v.id("schedule_id", &req.schedule_id);
        }
        for (i, state) in req.states.iter().enumerate() {
            v.check(
                matches!(RunState::try_from(*state), Ok(s) if s != RunState::Unspecified),
                format!("states[{i}]"),
                "is not a run state",
            );
        }
        v.finish()?;
        let filter = RunFilter {
            job_id: (!req.job_id.is_empty()).then_some(req.job_id),
            states: req.states,
            schedule_id: (!req.schedule_id.is_empty()).then_some(req.schedule_id),
        };
        let (runs, next_page_token) = self.runs.list(&filter, &page).await?;
        Ok(ListRunsResponse {
            runs,
            next_page_token,
        })
    }

    async fn cancel_run(&self, req: CancelRunRequest, cause: &Cause) -> Result<Run> {
        let mut v = Violations::new();
        v.id("id", &req.id);
        v.max_chars("reason", &req.reason, 512);
        v.printable("reason", &req.reason);
        v.finish()?;
        let run = self.runs.cancel(&req.id, &req.reason, cause).await?;
        tracing::info!(run_id = %run.id, "run cancel requested");
        Ok(run)
    }

    async fn list_run_logs(&self, req: ListRunLogsRequest) -> Result<ListRunLogsResponse> {
        let mut v = Violations::new();
        v.id("run_id", &req.run_id);
        let size = match req.page_size {
            0 => 500,
            n if n < 0 => {
                v.add("page_size", "must not be negative");
                500
            }
            n => n.min(5000) as usize,
        };
        let after = match req.page_token.as_str() {
            "" => 0,
            token => match token.strip_prefix("L").and_then(|n| n.parse::<u64>().ok()) {
                Some(n) => n,
                None => {
                    v.add("page_token", "is not a token returned by this method");
                    0
                }
            },
        };
        if !req.target_id.is_empty() {
            v.id("target_id", &req.target_id);
        }
        v.finish()?;
        let row = self.runs.row(&req.run_id).await?;
        let active =
            !crate::runs::is_final(RunState::try_from(row.run()?.state).unwrap_or_default());
        let (lines, cursor, cut) = self
            .runs
            .logs(&req.run_id, after, size, &req.step_name, &req.target_id)
            .await?;
        let more = cut || active;
        Ok(ListRunLogsResponse {
            lines,
            next_page_token: if more {
                format!("L{cursor}")
            } else {
                String::new()
            },
        })
    }

    async fn claim_run(&self, req: ClaimRunRequest, cause: &Cause) -> Result<ClaimRunResponse> {
        let mut v = Violations::new();
        v.id("run_id", &req.run_id);
        executor_id(&mut v, &req.executor_id);
        v.check(
            (16..=128).contains(&req.claim_key.len()),
            "claim_key",
            "is required: 16 to 128 characters the executor made for this claim",
        );
        v.finish()?;
        let row = self.runs.row(&req.run_id).await?;
        let job = self.jobs.revision(row.job_id(), row.job_revision()).await?;
        let claim = self
            .runs
            .claim(
                &req.run_id,
                &req.executor_id,
                &req.claim_key,
                job.max_concurrent_runs,
                cause,
            )
            .await?;
        let given: BTreeMap<String, String> = claim
            .run
            .parameters
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let mut v = Violations::new();
        let parameters = validate::parameters(&mut v, &job.parameters, &given);
        tracing::info!(run_id = %req.run_id, executor_id = %req.executor_id, attempt = claim.run.attempt, "run claimed");
        Ok(ClaimRunResponse {
            lease_token: claim.token,
            lease_expire_time: Some(to_timestamp(claim.lease_expire_time)),
            run: Some(claim.run),
            job: Some(job),
            parameters: parameters.into_iter().collect(),
            next_log_seq: claim.next_log_seq,
            heartbeat_interval: Some(from_duration(self.runs.lease() / 3)),
        })
    }

    /// What the credentials service asks before every reveal to an executor: the lease first
    /// (a run that ended, or a token that is not its live lease, answers LEASE_LOST), then
    /// which of the run's SECRET parameters names the credential and allows it at the run's
    /// own revision, and whether the target is the run's.
    async fn check_credential(
        &self,
        req: CheckRunCredentialRequest,
    ) -> Result<CheckRunCredentialResponse> {
        let mut v = Violations::new();
        v.id("run_id", &req.run_id);
        v.required("lease_token", &req.lease_token);
        v.id("credential_id", &req.credential_id);
        if !req.target_id.is_empty() {
            v.id("target_id", &req.target_id);
        }
        v.finish()?;
        let row = self.runs.held(&req.run_id, &req.lease_token).await?;
        let run = row.run()?;
        let job = self.jobs.revision(row.job_id(), row.job_revision()).await?;
        let given: BTreeMap<String, String> = run
            .parameters
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        // Problems with the values do not matter here: only a value that is valid, names this
        // credential and is on its parameter's allowlist grants anything.
        let resolved = validate::parameters(&mut Violations::new(), &job.parameters, &given);
        let parameter =
            validate::allowing(&job.parameters, &resolved, &req.credential_id).unwrap_or_default();
        let run_target =
            !req.target_id.is_empty() && run.targets.iter().any(|t| t.id == req.target_id);
        Ok(CheckRunCredentialResponse {
            parameter,
            run_target,
            executor_id: run.executor_id,
        })
    }

    async fn report_step(&self, req: ReportStepResultRequest) -> Result<bool> {
        let step = required("step", req.step)?;
        let mut v = Violations::new();
        v.id("run_id", &req.run_id);
        v.required("lease_token", &req.lease_token);
        if !step.target_id.is_empty() {
            v.id("step.target_id", &step.target_id);
        }
        v.check(step.attempt >= 1, "step.attempt", "starts at 1");
        v.check(
            matches!(StepState::try_from(step.state), Ok(s) if s != StepState::Unspecified),
            "step.state",
            "is not a step state",
        );
        v.max_chars("step.error", &step.error, 4096);
        v.finish()?;
        self.runs
            .report_step(&req.run_id, &req.lease_token, step)
            .await
    }

    async fn append_logs(&self, req: AppendRunLogsRequest) -> Result<u64> {
        let mut v = Violations::new();
        v.id("run_id", &req.run_id);
        v.required("lease_token", &req.lease_token);
        v.check(req.lines.len() <= 1000, "lines", "at most 1000 lines");
        for (i, line) in req.lines.iter().enumerate() {
            v.check(line.seq >= 1, format!("lines[{i}].seq"), "starts at 1");
            v.check(
                line.text.len() <= 16 * 1024,
                format!("lines[{i}].text"),
                "at most 16 KiB",
            );
        }
        v.finish()?;
        self.runs
            .append_logs(&req.run_id, &req.lease_token, req.lines)
            .await
    }

    async fn complete_run(&self, req: CompleteRunRequest, cause: &Cause) -> Result<Run> {
        let mut v = Violations::new();
        v.id("run_id", &req.run_id);
        v.required("lease_token", &req.lease_token);
        let state = RunState::try_from(req.state).unwrap_or_default();
        v.check(
            crate::runs::is_final(state),
            "state",
            "must be SUCCEEDED, FAILED, CANCELLED or TIMED_OUT",
        );
        v.max_chars("error", &req.error, 4096);
        v.finish()?;
        let run = self
            .runs
            .complete(&req.run_id, &req.lease_token, state, &req.error, cause)
            .await?;
        tracing::info!(run_id = %run.id, state = state.as_str_name(), "run completed");
        Ok(run)
    }
}

fn idempotency_key(v: &mut Violations, key: &str) {
    if v.required("idempotency_key", key) {
        v.check(
            key.len() <= 128,
            "idempotency_key",
            "at most 128 characters",
        );
        v.printable("idempotency_key", key);
    }
}

fn executor_id(v: &mut Violations, id: &str) {
    if v.required("executor_id", id) {
        v.check(
            id.len() <= 128
                && id
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.:".contains(c)),
            "executor_id",
            "1-128 characters of A-Z, a-z, 0-9, '-', '_', '.' and ':'",
        );
    }
}

/// Who a schedule's run is started for: its owner, through the scheduler (which the handler
/// checked is the caller, and which checked the owner's account at the fire).
fn scheduled_for(trigger: &RunTrigger) -> Option<Actor> {
    (trigger.kind == TriggerKind::Schedule as i32).then(|| Actor {
        user_id: trigger.owner_user_id.clone(),
        service_id: SCHEDULER.to_string(),
    })
}

/// Idempotency keys are scoped to the caller: the service and the user it acts for.
fn cause_caller(cause: &Cause) -> String {
    format!("{}/{}", cause.actor.service_id, cause.actor.user_id)
}

/// What makes two StartRun requests "the same request" for an idempotency key.
fn request_hash(
    job_id: &str,
    parameters: &BTreeMap<String, String>,
    trigger: &RunTrigger,
) -> String {
    let mut hash = Sha256::new();
    hash.update(job_id.as_bytes());
    for (k, v) in parameters {
        hash.update([0]);
        hash.update(k.as_bytes());
        hash.update([0]);
        hash.update(v.as_bytes());
    }
    hash.update([1]);
    hash.update(trigger.kind.to_le_bytes());
    hash.update(trigger.schedule_id.as_bytes());
    if let Some(t) = &trigger.fire_time {
        hash.update(t.seconds.to_le_bytes());
        hash.update(t.nanos.to_le_bytes());
    }
    hex::encode(hash.finalize())
}

type WatchStream =
    Pin<Box<dyn Stream<Item = std::result::Result<WatchRunResponse, Status>> + Send>>;

#[tonic::async_trait]
impl JobsService for JobsApi {
    async fn create_job(
        &self,
        request: Request<CreateJobRequest>,
    ) -> std::result::Result<Response<CreateJobResponse>, Status> {
        let cause = Cause::from_request(&request);
        let principal = principal(&request);
        let job = self
            .create(request.into_inner(), principal.as_ref(), &cause)
            .await?;
        Ok(Response::new(CreateJobResponse { job: Some(job) }))
    }

    async fn get_job(
        &self,
        request: Request<GetJobRequest>,
    ) -> std::result::Result<Response<GetJobResponse>, Status> {
        let req = request.into_inner();
        require_id("id", &req.id)?;
        let job = self.jobs.get(&req.id).await?;
        Ok(Response::new(GetJobResponse { job: Some(job) }))
    }

    async fn list_jobs(
        &self,
        request: Request<ListJobsRequest>,
    ) -> std::result::Result<Response<ListJobsResponse>, Status> {
        Ok(Response::new(self.list(request.into_inner()).await?))
    }

    async fn update_job(
        &self,
        request: Request<UpdateJobRequest>,
    ) -> std::result::Result<Response<UpdateJobResponse>, Status> {
        let cause = Cause::from_request(&request);
        let principal = principal(&request);
        let job = self
            .update(request.into_inner(), principal.as_ref(), &cause)
            .await?;
        Ok(Response::new(UpdateJobResponse { job: Some(job) }))
    }

    async fn delete_job(
        &self,
        request: Request<DeleteJobRequest>,
    ) -> std::result::Result<Response<DeleteJobResponse>, Status> {
        let cause = Cause::from_request(&request);
        let req = request.into_inner();
        require_id("id", &req.id)?;
        self.jobs.delete(&req.id, &cause).await?;
        tracing::info!(job_id = %req.id, "job deleted");
        Ok(Response::new(DeleteJobResponse {}))
    }

    async fn start_run(
        &self,
        request: Request<StartRunRequest>,
    ) -> std::result::Result<Response<StartRunResponse>, Status> {
        let cause = Cause::from_request(&request);
        let principal = principal(&request);
        let run = self
            .start_run(request.into_inner(), principal.as_ref(), &cause)
            .await?;
        Ok(Response::new(StartRunResponse { run: Some(run) }))
    }

    async fn rerun_run(
        &self,
        request: Request<RerunRunRequest>,
    ) -> std::result::Result<Response<RerunRunResponse>, Status> {
        let cause = Cause::from_request(&request);
        let run = self.rerun(request.into_inner(), &cause).await?;
        Ok(Response::new(RerunRunResponse { run: Some(run) }))
    }

    async fn get_run(
        &self,
        request: Request<GetRunRequest>,
    ) -> std::result::Result<Response<GetRunResponse>, Status> {
        let req = request.into_inner();
        require_id("id", &req.id)?;
        let run = self.runs.get(&req.id).await?;
        Ok(Response::new(GetRunResponse { run: Some(run) }))
    }

    async fn list_runs(
        &self,
        request: Request<ListRunsRequest>,
    ) -> std::result::Result<Response<ListRunsResponse>, Status> {
        Ok(Response::new(self.list_runs(request.into_inner()).await?))
    }

    async fn cancel_run(
        &self,
        request: Request<CancelRunRequest>,
    ) -> std::result::Result<Response<CancelRunResponse>, Status> {
        let cause = Cause::from_request(&request);
        let run = self.cancel_run(request.into_inner(), &cause).await?;
        Ok(Response::new(CancelRunResponse { run: Some(run) }))
    }

    type WatchRunStream = WatchStream;

    async fn watch_run(
        &self,
        request: Request<WatchRunRequest>,
    ) -> std::result::Result<Response<WatchStream>, Status> {
        let req = request.into_inner();
        require_id("id", &req.id)?;
        let stream = watch::watch(self.runs.clone(), req).await?;
        Ok(Response::new(stream))
    }

    async fn list_run_logs(
        &self,
        request: Request<ListRunLogsRequest>,
    ) -> std::result::Result<Response<ListRunLogsResponse>, Status> {
        Ok(Response::new(
            self.list_run_logs(request.into_inner()).await?,
        ))
    }

    async fn claim_run(
        &self,
        request: Request<ClaimRunRequest>,
    ) -> std::result::Result<Response<ClaimRunResponse>, Status> {
        let cause = Cause::from_request(&request);
        Ok(Response::new(
            self.claim_run(request.into_inner(), &cause).await?,
        ))
    }

    async fn heartbeat_run(
        &self,
        request: Request<HeartbeatRunRequest>,
    ) -> std::result::Result<Response<HeartbeatRunResponse>, Status> {
        let req = request.into_inner();
        let mut v = Violations::new();
        v.id("run_id", &req.run_id);
        v.required("lease_token", &req.lease_token);
        v.finish().map_err(JobsError::from)?;
        let (expire, cancel) = self.runs.heartbeat(&req.run_id, &req.lease_token).await?;
        Ok(Response::new(HeartbeatRunResponse {
            lease_expire_time: Some(to_timestamp(expire)),
            cancel_requested: cancel.is_some(),
            cancel_reason: cancel.unwrap_or_default(),
        }))
    }

    async fn report_step_result(
        &self,
        request: Request<ReportStepResultRequest>,
    ) -> std::result::Result<Response<ReportStepResultResponse>, Status> {
        let cancel_requested = self.report_step(request.into_inner()).await?;
        Ok(Response::new(ReportStepResultResponse { cancel_requested }))
    }

    async fn append_run_logs(
        &self,
        request: Request<AppendRunLogsRequest>,
    ) -> std::result::Result<Response<AppendRunLogsResponse>, Status> {
        let last_seq = self.append_logs(request.into_inner()).await?;
        Ok(Response::new(AppendRunLogsResponse { last_seq }))
    }

    async fn release_run(
        &self,
        request: Request<ReleaseRunRequest>,
    ) -> std::result::Result<Response<ReleaseRunResponse>, Status> {
        let cause = Cause::from_request(&request);
        let req = request.into_inner();
        let mut v = Violations::new();
        v.id("run_id", &req.run_id);
        v.required("lease_token", &req.lease_token);
        v.max_chars("reason", &req.reason, 512);
        v.finish().map_err(JobsError::from)?;
        let row = self.runs.held_row(&req.run_id, &req.lease_token).await?;
        self.reaper.release(&row, &cause).await?;
        tracing::info!(run_id = %req.run_id, reason = %req.reason, "run released by its executor");
        let run = self.runs.get(&req.run_id).await?;
        Ok(Response::new(ReleaseRunResponse { run: Some(run) }))
    }

    async fn check_run_credential(
        &self,
        request: Request<CheckRunCredentialRequest>,
    ) -> std::result::Result<Response<CheckRunCredentialResponse>, Status> {
        Ok(Response::new(
            self.check_credential(request.into_inner()).await?,
        ))
    }

    async fn complete_run(
        &self,
        request: Request<CompleteRunRequest>,
    ) -> std::result::Result<Response<CompleteRunResponse>, Status> {
        let cause = Cause::from_request(&request);
        let run = self.complete_run(request.into_inner(), &cause).await?;
        Ok(Response::new(CompleteRunResponse { run: Some(run) }))
    }
}
