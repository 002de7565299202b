//! The firing loop of one replica: turn due schedules into fire rows, take fires whose time has
//! come, and start each fire's run: check the misfire policy, the owner's account and the
//! overlap policy, then `StartRun` with a key derived from (schedule, due time). Replicas share
//! the work through the database only.

use std::sync::Arc;
use std::time::Duration;

use futures::future::{BoxFuture, FutureExt};
use opsconductor_api::jobs::v1::{CancelRunRequest, RunTrigger, StartRunRequest, TriggerKind};
use opsconductor_api::scheduler::v1::{FireKind, FireOutcome, OverlapPolicy, Schedule};
use opsconductor_messaging::Cause;
use opsconductor_platform::client::Clients;
use opsconductor_platform::server::Worker;
use opsconductor_platform::time::{now_micros, to_timestamp};
use opsconductor_platform::validate::Violations;
use opsconductor_platform::ApiError;
use tokio::sync::{watch, Notify, Semaphore};
use tonic::Code;
use tracing::Instrument;

use crate::fires::{misfire_threshold, still_fires, End, Fire, FireStore};
use crate::overlap::Decision;
use crate::owner::{OwnerCheck, Refusal};
use crate::spec::Spec;
use crate::store::ScheduleStore;
use crate::SchedulerError;

/// How the loop runs (docs/configuration.md).
#[derive(Debug, Clone)]
pub struct EngineSettings {
    /// The longest sleep between looks at the database (other replicas' new schedules).
    pub poll: Duration,
    /// Schedules or fires taken per transaction.
    pub batch: i64,
    /// How long a replica holds a fire it works on before another may take it.
    pub lease: Duration,
    /// Fires started at once by this replica.
    pub concurrency: usize,
    /// How often a WAITING fire looks again if no RunFinished released it.
    pub recheck: Duration,
}

#[derive(Clone)]
pub struct Engine {
    pub fires: FireStore,
    pub schedules: ScheduleStore,
    pub clients: Arc<Clients>,
    pub owners: OwnerCheck,
    pub settings: EngineSettings,
    pub wake: Arc<Notify>,
}

const MAX_RETRY_MICROS: i64 = 30_000_000;

/// The scheduler's own identity, for what it changes by itself.
const SCHEDULER: &str = "scheduler";

impl Engine {
    /// Runs until stopped; stopping waits (up to the grace) for the fires in flight.
    pub fn spawn(self) -> Running {
        let (stop_tx, mut stop) = watch::channel(false);
        let task = tokio::spawn(async move {
            let permits = Arc::new(Semaphore::new(self.settings.concurrency));
            loop {
                if *stop.borrow() {
                    break;
                }
                let worked = match self.pass(&permits).await {
                    Ok(n) => n,
                    Err(e) => {
                        tracing::warn!(error = %e, "a scheduler pass failed; retrying");
                        0
                    }
                };
                if worked > 0 {
                    continue;
                }
                let sleep = self.sleep_for().await;
                tokio::select! {
                    _ = tokio::time::sleep(sleep) => {}
                    _ = self.wake.notified() => {}
                    _ = stop.changed() => {}
                }
            }
            // Fires in flight finish (each holds a permit).
            let _ = permits.acquire_many(self.settings.concurrency as u32).await;
        });
        Running {
            stop: stop_tx,
            task,
        }
    }

    /// One look at the database: due schedules, then due fires. How many fires it started.
    async fn pass(&self, permits: &Arc<Semaphore>) -> Result<usize, SchedulerError> {
        let room = (permits.available_permits() as i64).min(self.settings.batch);
        if room == 0 {
            // Every permit is out: wait for one before taking more.
            let _ = permits.clone().acquire_owned().await;
            return Ok(1);
        }
        let now = now_micros();
        let lease_until = now + self.settings.lease.as_micros() as i64;
        let mut fires = self.fires.materialize(now, room, lease_until).await?;
        let left = room - fires.len() as i64;
        if left > 0 {
            let taken = self.fires.take(now, left, lease_until).await?;
            fires.extend(taken.into_iter().map(|f| (f, None)));
        }
        let n = fires.len();
        for (fire, schedule) in fires {
            let Ok(permit) = permits.clone().acquire_owned().await else {
                break;
            };
            let engine = self.clone();
            // A fire is where a scheduled run's trace begins.
            let span = tracing::info_span!(
                "fire",
                otel.name = "schedule fire",
                fire_id = %fire.id,
                schedule_id = %fire.schedule_id,
            );
            tokio::spawn(
                async move {
                    let id = fire.id.clone();
                    if let Err(e) = engine.fire(fire, schedule).await {
                        tracing::warn!(fire_id = %id, error = %e, "a fire failed; it is retried when its lease lapses");
                    }
                    drop(permit);
                }
                .instrument(span),
            );
        }
        Ok(n)
    }

    async fn sleep_for(&self) -> Duration {
        let poll = self.settings.poll;
        match self.fires.next_work().await {
            Ok(Some(at)) => {
                let wait = at - now_micros();
                if wait <= 0 {
                    Duration::from_millis(1)
                } else {
                    poll.min(Duration::from_micros(wait as u64))
                }
            }
            _ => poll,
        }
    }

    /// Takes one fire to its end, or leaves it for a retry.
    /// `schedule` when the caller just read it (a fire it wrote); read here otherwise.
    async fn fire(&self, fire: Fire, schedule: Option<Schedule>) -> Result<(), SchedulerError> {
        let read = match schedule {
            Some(s) => Ok(s),
            None => self.schedules.get(&fire.schedule_id).await,
        };
        let schedule = match read {
            Ok(s) => s,
            Err(SchedulerError::NotFound(_)) => return Ok(()),
            Err(e) => return Err(e),
        };
        let now = now_micros();
        if fire.kind() == FireKind::Scheduled && fire.outcome() == FireOutcome::Pending {
            let late = now - fire.due_time;
            // Only a fire later than the threshold is a misfire: the policy decides then.
            let missed = late > misfire_threshold(&schedule)
                && !still_fires(
                    &schedule,
                    fire.scheduled_time,
                    late,
                    now,
                    self.fires.later_recorded(&fire).await?,
                );
            if missed {
                let end = End::Skipped(
                    FireOutcome::SkippedMisfire,
                    "could not fire within the misfire threshold".into(),
                );
                self.fires.finish(&fire, end).await?;
                return Ok(());
            }
        }
        match self.owners.check(&schedule.owner_user_id).await {
            Ok(()) => {}
            Err(Refusal::Refused(reason, error)) => {
                tracing::warn!(schedule_id = %schedule.id, reason, "a fire failed: its owner may not run it");
                let end = End::Failed {
                    schedule: &schedule,
                    reason,
                    error,
                };
                self.fires.finish(&fire, end).await?;
                return Ok(());
            }
            Err(Refusal::Unavailable(error)) => return self.retry(&fire, &error).await,
        }
        let policy = OverlapPolicy::try_from(schedule.overlap_policy)
            .ok()
            .filter(|p| *p != OverlapPolicy::Unspecified)
            .unwrap_or(OverlapPolicy::Skip);
        let decision = if policy == OverlapPolicy::Allow && fire.kind() != FireKind::Backfill {
            Decision::Start
        } else {
            let recheck = now + self.settings.recheck.as_micros() as i64;
            self.fires.decide(&fire, policy, recheck).await?
        };
        match decision {
            Decision::Done => Ok(()),
            Decision::Wait { cancel } => {
                self.cancel(&schedule, &fire, cancel).await;
                Ok(())
            }
            Decision::Start => self.start(&schedule, &fire).await,
        }
    }

    async fn start(&self, schedule: &Schedule, fire: &Fire) -> Result<(), SchedulerError> {
        let request = StartRunRequest {
            job_id: schedule.job_id.clone(),
            parameters: schedule.parameters.clone(),
            idempotency_key: format!("{}/{}", schedule.id, fire.scheduled_time),
            trigger: Some(RunTrigger {
                kind: TriggerKind::Schedule as i32,
                schedule_id: schedule.id.clone(),
                fire_time: Some(to_timestamp(fire.scheduled_time)),
                owner_user_id: schedule.owner_user_id.clone(),
            }),
        };
        match self.clients.jobs().start_run(request).await {
            Ok(response) => {
                let run_id = response.into_inner().run.map(|r| r.id).unwrap_or_default();
                tracing::debug!(schedule_id = %schedule.id, run_id, "fired");
                self.fires.finish(fire, End::Started(&run_id)).await?;
                Ok(())
            }
            Err(status) if retryable(status.code()) => {
                self.retry(fire, &format!("the jobs service: {}", status.message()))
                    .await
            }
            Err(status) => {
                let reason = match status.code() {
                    Code::NotFound => "JOB_NOT_FOUND",
                    Code::InvalidArgument => "INVALID_PARAMETERS",
                    // A SECRET value the job's allowlist no longer admits.
                    Code::PermissionDenied => "CREDENTIAL_NOT_ALLOWED",
                    _ => "START_REFUSED",
                };
                let error = ApiError::from_status(&status).to_string();
                tracing::warn!(schedule_id = %schedule.id, reason, %error, "a fire failed");
                let end = End::Failed {
                    schedule,
                    reason,
                    error,
                };
                self.fires.finish(fire, end).await?;
                if reason == "JOB_NOT_FOUND" && schedule.enabled {
                    self.pause_orphan(schedule).await?;
                }
                Ok(())
            }
        }
    }

    /// A schedule whose job was deleted would only ever fail (and tell its owner each time):
    /// it is paused once, with a note saying why. A schedule changed meanwhile is left to its
    /// owner.
    async fn pause_orphan(&self, schedule: &Schedule) -> Result<(), SchedulerError> {
        let mut paused = schedule.clone();
        paused.enabled = false;
        paused.pause_note = format!(
            "paused by the scheduler: its job {} no longer exists",
            schedule.job_id
        );
        paused.paused_by = Some(Cause::service(SCHEDULER).actor);
        paused.pause_time = Some(to_timestamp(now_micros()));
        let mut v = Violations::new();
        let Some(spec) = Spec::of(&mut v, "", &paused, 0) else {
            return Ok(());
        };
        let cause = Cause::service(SCHEDULER);
        let paused = self
            .schedules
            .replace(
                &paused,
                &spec,
                schedule.revision,
                true,
                ("schedule.pause", &cause),
            )
            .await;
        match paused {
            Ok(_) => {
                tracing::warn!(schedule_id = %schedule.id, job_id = %schedule.job_id, "schedule paused: its job is gone");
                Ok(())
            }
            Err(SchedulerError::Conflict(_)) => Ok(()),
            Err(e) => Err(e),
        }
    }

    async fn retry(&self, fire: &Fire, error: &str) -> Result<(), SchedulerError> {
        let backoff =
            (1_000_000i64 << fire.attempts.clamp(1, 6).saturating_sub(1)).min(MAX_RETRY_MICROS);
        tracing::info!(fire_id = %fire.id, error, "a fire is retried");
        self.fires
            .retry_at(fire, now_micros() + backoff, error)
            .await
    }

    /// CANCEL_PREVIOUS: asks the jobs service to cancel what runs; the fire waits for the
    /// RunFinished of each.
    async fn cancel(&self, schedule: &Schedule, fire: &Fire, runs: Vec<String>) {
        for run_id in runs {
            let request = CancelRunRequest {
                id: run_id.clone(),
                reason: format!(
                    "superseded by schedule {}'s fire {}",
                    schedule.name, fire.id
                ),
            };
            if let Err(status) = self.clients.jobs().cancel_run(request).await {
                if status.code() != Code::FailedPrecondition {
                    tracing::warn!(run_id, error = %status.message(), "cancelling the previous run failed; the fire waits and tries again");
                }
            }
        }
    }
}

/// The loop, as a worker of the server: stopped after the server drained.
pub struct Running {
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl Worker for Running {
    fn stop(self: Box<Self>, grace: Duration) -> BoxFuture<'static, ()> {
        let _ = self.stop.send(true);
        let task = self.task;
        async move {
            // A fire cut short is safe: its lease lapses and another replica takes it.
            let _ = tokio::time::timeout(grace, task).await;
        }
        .boxed()
    }
}

/// Failures worth another try: the jobs service down, overloaded or slow.
fn retryable(code: Code) -> bool {
    matches!(
        code,
        Code::Unavailable
            | Code::DeadlineExceeded
            | Code::ResourceExhausted
            | Code::Aborted
            | Code::Internal
            | Code::Unknown
            | Code::Unauthenticated
    )
}
