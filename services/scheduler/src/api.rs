//! The generated `SchedulerService` trait over the stores. Each trait method unwraps the
//! request and wraps the answer; the inherent method of the same name does the work.

use std::sync::Arc;
use std::time::Duration;

use opsconductor_api::jobs::v1::{GetJobRequest, Job, ParameterType};
use opsconductor_api::scheduler::v1::scheduler_service_server::SchedulerService;
use opsconductor_api::scheduler::v1::*;
use opsconductor_messaging::Cause;
use opsconductor_platform::client::Clients;
use opsconductor_platform::page::Page;
use opsconductor_platform::rate_limit::Limiter;
use opsconductor_platform::time::{now_micros, to_micros, to_timestamp};
use opsconductor_platform::validate::{require_id, required, Violations};
use opsconductor_platform::ApiError;
use tokio::sync::Notify;
use tonic::{Code, Request, Response, Status};

use crate::history::History;
use crate::spec::Spec;
use crate::store::ScheduleStore;
use crate::{validate, SchedulerError};

type Result<T> = std::result::Result<T, SchedulerError>;

const MUTABLE_FIELDS: [&str; 14] = [
    "name",
    "description",
    "job_id",
    "parameters",
    "cron",
    "interval",
    "once",
    "misfire_policy",
    "overlap_policy",
    "misfire_threshold",
    "jitter",
    "active_from",
    "active_until",
    "catch_up_window",
];

/// Fields whose change moves the next fire time.
const TIMING_FIELDS: [&str; 6] = [
    "cron",
    "interval",
    "once",
    "jitter",
    "active_from",
    "active_until",
];

pub struct SchedulerApi {
    pub schedules: ScheduleStore,
    pub history: History,
    pub clients: Arc<Clients>,
    pub wake: Arc<Notify>,
    /// Due times each caller may backfill (`SCHEDULER_BACKFILL_RATE`).
    pub backfills: Arc<Limiter>,
}

/// Refuses a schedule whose values name a credential its job's SECRET parameter does not
/// allow: the jobs service would refuse each of its runs the same way (PERMISSION_DENIED,
/// naming the parameter). Defaults are the job's own, already checked against its allowlists.
fn credentials_allowed(job: &Job, schedule: &Schedule) -> Result<()> {
    for spec in job
        .parameters
        .iter()
        .filter(|p| p.r#type == ParameterType::Secret as i32)
    {
        let Some(credential_id) = schedule.parameters.get(&spec.name) else {
            continue;
        };
        if !credential_id.is_empty() && !spec.allowed_credential_ids.contains(credential_id) {
            return Err(ApiError::PermissionDenied(format!(
                "parameter {:?} of job {} may not name credential {credential_id}: it is not in \
                 the parameter's allowed_credential_ids",
                spec.name, job.name
            ))
            .into());
        }
    }
    Ok(())
}

impl SchedulerApi {
    /// The schedule's job as it is now; None when it does not exist.
    async fn job_of(&self, schedule: &Schedule) -> Result<Option<Job>> {
        let request = GetJobRequest {
            id: schedule.job_id.clone(),
        };
        match self.clients.jobs().get_job(request).await {
            Ok(response) => Ok(response.into_inner().job),
            Err(status) if status.code() == Code::NotFound => Ok(None),
            Err(status) => Err(SchedulerError::Upstream(ApiError::from_status(&status))),
        }
    }

    /// The job must exist (a schedule of a missing job would only ever fail), and accept the
    /// credentials the schedule's SECRET values name.
    async fn check_job(&self, schedule: &Schedule) -> Result<()> {
        match self.job_of(schedule).await? {
            Some(job) => credentials_allowed(&job, schedule),
            None => Err(ApiError::invalid("schedule.job_id", "no job has this id").into()),
        }
    }

    /// Before asking for fires (TriggerSchedule, BackfillSchedule): the job may have narrowed
    /// its SECRET parameters' allowlists since the schedule was saved, and the caller (an
    /// operator) must hear PERMISSION_DENIED now rather than find failed fires later. A job
    /// that is gone is left to the fire, which fails with JOB_NOT_FOUND as it always did.
    async fn check_credentials(&self, schedule: &Schedule) -> Result<()> {
        match self.job_of(schedule).await? {
            Some(job) => credentials_allowed(&job, schedule),
            None => Ok(()),
        }
    }

    async fn create(&self, req: CreateScheduleRequest, cause: &Cause) -> Result<Schedule> {
        let mut schedule = required("schedule", req.schedule)?;
        let now = now_micros();
        schedule.id = uuid::Uuid::now_v7().to_string();
        schedule.enabled = true;
        schedule.revision = 0;
        schedule.owner_user_id = cause.actor.user_id.clone();
        schedule.pause_note.clear();
        schedule.paused_by = None;
        schedule.pause_time = None;
        anchor_interval(&mut schedule, now);
        let mut v = Violations::new();
        let spec = validate::schedule(&mut v, &schedule);
        v.finish()?;
        let spec = spec.ok_or_else(|| ApiError::invalid("schedule.spec", "is invalid"))?;
        if schedule.owner_user_id.is_empty() {
            return Err(ApiError::PermissionDenied(
                "a schedule is owned by the user who creates it; call as a user".into(),
            )
            .into());
        }
        self.check_job(&schedule).await?;
        let created = self.schedules.create(&schedule, &spec, cause).await?;
        tracing::info!(schedule_id = %created.id, name = %created.name, "schedule created");
        self.wake.notify_one();
        Ok(created)
    }

    async fn update(&self, req: UpdateScheduleRequest, cause: &Cause) -> Result<Schedule> {
        let patch = required("schedule", req.schedule)?;
        let mut v = Violations::new();
        v.id("schedule.id", &patch.id);
        let paths = v.update_mask(req.update_mask, &MUTABLE_FIELDS);
        v.finish()?;
        let mut schedule = self.schedules.get(&patch.id).await?;
        let revision = schedule.revision;
        if req.expected_revision != 0 && req.expected_revision != revision {
            return Err(SchedulerError::RevisionMismatch {
                id: schedule.id,
                expected: req.expected_revision,
                actual: revision,
            });
        }
        for path in &paths {
            match path.as_str() {
                "name" => schedule.name = patch.name.clone(),
                "description" => schedule.description = patch.description.clone(),
                "job_id" => schedule.job_id = patch.job_id.clone(),
                "parameters" => schedule.parameters = patch.parameters.clone(),
                "cron" | "interval" | "once" => schedule.spec = patch.spec.clone(),
                "misfire_policy" => schedule.misfire_policy = patch.misfire_policy,
                "overlap_policy" => schedule.overlap_policy = patch.overlap_policy,
                "misfire_threshold" => schedule.misfire_threshold = patch.misfire_threshold,
                "jitter" => schedule.jitter = patch.jitter,
                "active_from" => schedule.active_from = patch.active_from,
                "active_until" => schedule.active_until = patch.active_until,
                "catch_up_window" => schedule.catch_up_window = patch.catch_up_window,
                _ => {}
            }
        }
        anchor_interval(&mut schedule, now_micros());
        let mut v = Violations::new();
        let spec = validate::schedule(&mut v, &schedule);
        v.finish()?;
        let spec = spec.ok_or_else(|| ApiError::invalid("schedule.spec", "is invalid"))?;
        if paths.iter().any(|p| p == "job_id" || p == "parameters") {
            self.check_job(&schedule).await?;
        }
        let reschedule = paths.iter().any(|p| TIMING_FIELDS.contains(&p.as_str()));
        let updated = self
            .schedules
            .replace(
                &schedule,
                &spec,
                revision,
                reschedule,
                ("schedule.update", cause),
            )
            .await?;
        self.wake.notify_one();
        Ok(updated)
    }

    /// Pauses or resumes; a schedule already in that state is returned as it is.
    async fn set_enabled(&self, id: &str, note: Option<String>, cause: &Cause) -> Result<Schedule> {
        let mut schedule = self.schedules.get(id).await?;
        let enable = note.is_none();
        if schedule.enabled == enable {
            return Ok(schedule);
        }
        schedule.enabled = enable;
        match note {
            Some(note) => {
                schedule.pause_note = note;
                schedule.paused_by = Some(cause.actor.clone());
                schedule.pause_time = Some(to_timestamp(now_micros()));
            }
            None => {
                schedule.pause_note.clear();
                schedule.paused_by = None;
                schedule.pause_time = None;
            }
        }
        let mut v = Violations::new();
        let spec = Spec::of(&mut v, "schedule.", &schedule, 0)
            .ok_or_else(|| SchedulerError::Api(ApiError::internal("stored spec is invalid")))?;
        let action = if enable {
            "schedule.resume"
        } else {
            "schedule.pause"
        };
        let revision = schedule.revision;
        let changed = self
            .schedules
            .replace(&schedule, &spec, revision, true, (action, cause))
            .await?;
        tracing::info!(schedule_id = %id, action, "schedule {}", if enable { "resumed" } else { "paused" });
        self.wake.notify_one();
        Ok(changed)
    }

    async fn preview(&self, req: PreviewScheduleRequest) -> Result<Vec<prost_types::Timestamp>> {
        let mut v = Violations::new();
        v.check(
            (0..=100).contains(&req.count),
            "count",
            "must be between 1 and 100",
        );
        let now = now_micros();
        let spec = match &req.source {
            None => {
                v.add(
                    "source",
                    "a schedule_id, cron, interval or once is required",
                );
                None
            }
            Some(preview_schedule_request::Source::ScheduleId(id)) => {
                v.id("schedule_id", id);
                v.finish()?;
                let schedule = self.schedules.get(id).await?;
                v = Violations::new();
                Spec::of(&mut v, "", &schedule, 0)
            }
            Some(preview_schedule_request::Source::Cron(c)) => {
                Spec::bare(&mut v, &schedule::Spec::Cron(c.clone()), now)
            }
            Some(preview_schedule_request::Source::Interval(i)) => {
                Spec::bare(&mut v, &schedule::Spec::Interval(*i), now)
            }
            Some(preview_schedule_request::Source::Once(o)) => {
                Spec::bare(&mut v, &schedule::Spec::Once(*o), now)
            }
        };
        v.finish()?;
        let spec = spec.ok_or_else(|| ApiError::invalid("source", "is invalid"))?;
        let count = if req.count == 0 { 10 } else { req.count };
        let mut t = req.after_time.as_ref().map(to_micros).unwrap_or(now);
        let mut times = Vec::new();
        while times.len() < count as usize {
            match spec.next_after(t) {
                Some(next) => {
                    times.push(to_timestamp(next));
                    t = next;
                }
                None => break,
            }
        }
        Ok(times)
    }

    async fn trigger(&self, req: TriggerScheduleRequest, cause: &Cause) -> Result<FireRecord> {
        require_id("id", &req.id)?;
        let schedule = self.schedules.get(&req.id).await?;
        self.check_credentials(&schedule).await?;
        let fire = self.history.trigger(&schedule, cause).await?;
        tracing::info!(schedule_id = %schedule.id, fire_id = %fire.id, "schedule triggered");
        self.wake.notify_one();
        Ok(fire.record())
    }

    async fn backfill(
        &self,
        req: BackfillScheduleRequest,
        cause: &Cause,
    ) -> Result<BackfillScheduleResponse> {
        let mut v = Violations::new();
        v.id("id", &req.id);
        let now = now_micros();
        let start = req.start_time.as_ref().map(to_micros);
        let end = req.end_time.as_ref().map(to_micros);
        v.check(start.is_some(), "start_time", "is required");
        match (start, end) {
            (_, None) => v.add("end_time", "is required"),
            (Some(s), Some(e)) if e <= s => v.add("end_time", "must be after start_time"),
            (_, Some(e)) if e > now => v.add("end_time", "must not be in the future"),
            _ => {}
        }
        v.finish()?;
        let (start, end) = (start.unwrap_or_default(), end.unwrap_or_default());
        let schedule = self.schedules.get(&req.id).await?;
        self.check_credentials(&schedule).await?;
        let mut v = Violations::new();
        let spec = Spec::of(&mut v, "", &schedule, 0)
            .ok_or_else(|| SchedulerError::Api(ApiError::internal("stored spec is invalid")))?;
        let mut times = Vec::new();
        let mut t = start - 1;
        while let Some(next) = spec.next_after(t) {
            if next >= end {
                break;
            }
            if times.len() == crate::history::MAX_BACKFILL {
                return Err(ApiError::invalid(
                    "end_time",
                    format!(
                        "the range holds more than {} due times; backfill it in parts",
                        crate::history::MAX_BACKFILL
                    ),
                )
                .into());
            }
            times.push(next);
            t = next;
        }
        // Each due time becomes a run: a caller gets so many per hour, whatever the schedules.
        let caller = if cause.actor.user_id.is_empty() {
            format!("service:{}", cause.actor.service_id)
        } else {
            format!("user:{}", cause.actor.user_id)
        };
        let cost = u32::try_from(times.len()).unwrap_or(u32::MAX);
        if let Err(wait) = self.backfills.spend(&caller, cost) {
            return Err(ApiError::ResourceExhausted {
                message: format!(
                    "backfilling {} due times would exceed this caller's backfill budget \
                     (SCHEDULER_BACKFILL_RATE); try a smaller range or later",
                    times.len()
                ),
                retry_after: wait.min(Duration::from_secs(3600)),
            }
            .into());
        }
        let (created, already) = self
            .history
            .backfill(&schedule, &spec, &times, cause)
            .await?;
        self.wake.notify_one();
        Ok(BackfillScheduleResponse {
            created,
            already_recorded: already,
        })
    }

    async fn list_fires(&self, req: ListFireRecordsRequest) -> Result<ListFireRecordsResponse> {
        let mut v = Violations::new();
        let page = Page::parse(req.page_size, &req.page_token, &mut v);
        if !req.schedule_id.is_empty() {
            v.id("schedule_id", &req.schedule_id);
        }
        let outcome = match FireOutcome::try_from(req.outcome) {
            Ok(FireOutcome::Unspecified) => None,
            Ok(o) => Some(o),
            Err(_) => {
                v.add("outcome", format!("{} is not a fire outcome", req.outcome));
                None
            }
        };
        v.finish()?;
        let schedule_id = (!req.schedule_id.is_empty()).then_some(req.schedule_id.as_str());
        let (fires, next_page_token) = self.history.list(schedule_id, outcome, &page).await?;
        Ok(ListFireRecordsResponse {
            fire_records: fires.iter().map(|f| f.record()).collect(),
            next_page_token,
        })
    }
}

/// An interval without a start counts from `now`, fixed once and stored, so every replica
/// computes the same times.
fn anchor_interval(schedule: &mut Schedule, now: i64) {
    if let Some(schedule::Spec::Interval(i)) = &mut schedule.spec {
        if i.start_time.is_none() {
            i.start_time = Some(to_timestamp(now));
        }
    }
}

fn cause<T>(request: &Request<T>) -> Cause {
    Cause::from_request(request)
}

type Answer<T> = std::result::Result<Response<T>, Status>;

#[tonic::async_trait]
impl SchedulerService for SchedulerApi {
    async fn create_schedule(
        &self,
        request: Request<CreateScheduleRequest>,
    ) -> Answer<CreateScheduleResponse> {
        let cause = cause(&request);
        let schedule = self.create(request.into_inner(), &cause).await?;
        Ok(Response::new(CreateScheduleResponse {
            schedule: Some(schedule),
        }))
    }

    async fn get_schedule(
        &self,
        request: Request<GetScheduleRequest>,
    ) -> Answer<GetScheduleResponse> {
        let req = request.into_inner();
        require_id("id", &req.id)?;
        let schedule = self.schedules.get(&req.id).await?;
        Ok(Response::new(GetScheduleResponse {
            schedule: Some(schedule),
        }))
    }

    async fn list_schedules(
        &self,
        request: Request<ListSchedulesRequest>,
    ) -> Answer<ListSchedulesResponse> {
        let req = request.into_inner();
        let mut v = Violations::new();
        let page = Page::parse(req.page_size, &req.page_token, &mut v);
        if !req.job_id.is_empty() {
            v.id("job_id", &req.job_id);
        }
        v.finish()?;
        let job_id = (!req.job_id.is_empty()).then_some(req.job_id.as_str());
        let (schedules, next_page_token) =
            self.schedules.list(job_id, req.enabled_only, &page).await?;
        Ok(Response::new(ListSchedulesResponse {
            schedules,
            next_page_token,
        }))
    }

    async fn update_schedule(
        &self,
        request: Request<UpdateScheduleRequest>,
    ) -> Answer<UpdateScheduleResponse> {
        let cause = cause(&request);
        let schedule = self.update(request.into_inner(), &cause).await?;
        Ok(Response::new(UpdateScheduleResponse {
            schedule: Some(schedule),
        }))
    }

    async fn delete_schedule(
        &self,
        request: Request<DeleteScheduleRequest>,
    ) -> Answer<DeleteScheduleResponse> {
        let cause = cause(&request);
        let req = request.into_inner();
        require_id("id", &req.id)?;
        self.schedules.delete(&req.id, &cause).await?;
        tracing::info!(schedule_id = %req.id, "schedule deleted");
        Ok(Response::new(DeleteScheduleResponse {}))
    }

    async fn pause_schedule(
        &self,
        request: Request<PauseScheduleRequest>,
    ) -> Answer<PauseScheduleResponse> {
        let cause = cause(&request);
        let req = request.into_inner();
        let mut v = Violations::new();
        v.id("id", &req.id);
        v.max_chars("note", &req.note, 1024);
        v.finish()?;
        let schedule = self.set_enabled(&req.id, Some(req.note), &cause).await?;
        Ok(Response::new(PauseScheduleResponse {
            schedule: Some(schedule),
        }))
    }

    async fn resume_schedule(
        &self,
        request: Request<ResumeScheduleRequest>,
    ) -> Answer<ResumeScheduleResponse> {
        let cause = cause(&request);
        let req = request.into_inner();
        require_id("id", &req.id)?;
        let schedule = self.set_enabled(&req.id, None, &cause).await?;
        Ok(Response::new(ResumeScheduleResponse {
            schedule: Some(schedule),
        }))
    }

    async fn preview_schedule(
        &self,
        request: Request<PreviewScheduleRequest>,
    ) -> Answer<PreviewScheduleResponse> {
        let fire_times = self.preview(request.into_inner()).await?;
        Ok(Response::new(PreviewScheduleResponse { fire_times }))
    }

    async fn trigger_schedule(
        &self,
        request: Request<TriggerScheduleRequest>,
    ) -> Answer<TriggerScheduleResponse> {
        let cause = cause(&request);
        let fire_record = self.trigger(request.into_inner(), &cause).await?;
        Ok(Response::new(TriggerScheduleResponse {
            fire_record: Some(fire_record),
        }))
    }

    async fn backfill_schedule(
        &self,
        request: Request<BackfillScheduleRequest>,
    ) -> Answer<BackfillScheduleResponse> {
        let cause = cause(&request);
        Ok(Response::new(
            self.backfill(request.into_inner(), &cause).await?,
        ))
    }

    async fn list_fire_records(
        &self,
        request: Request<ListFireRecordsRequest>,
    ) -> Answer<ListFireRecordsResponse> {
        Ok(Response::new(self.list_fires(request.into_inner()).await?))
    }
}
