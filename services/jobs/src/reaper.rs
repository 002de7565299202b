//! The reaper: no run stays RUNNING without a live lease, and none stays QUEUED forever. It
//! requeues or fails runs whose executor stopped heartbeating, fails runs that waited past
//! their queue timeout, and requests again runs whose request was lost. Every step is a
//! conditional update on what it read, so several replicas may reap at once.

use std::time::Duration;

use opsconductor_messaging::Cause;
use opsconductor_platform::time::now_micros;

use crate::runs::{RunRow, RunStore};
use crate::store::JobStore;
use crate::validate;
use crate::JobsError;

const BATCH: i64 = 100;

#[derive(Clone)]
pub struct Reaper {
    pub jobs: JobStore,
    pub runs: RunStore,
    /// How long a QUEUED run waits for a claim before its request is published again.
    pub rerequest_after: Duration,
}

/// What one round did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Reaped {
    pub requeued: usize,
    pub lost: usize,
    pub queue_timeouts: usize,
    pub rerequested: usize,
}

impl Reaper {
    pub async fn round(&self) -> Result<Reaped, JobsError> {
        let cause = Cause::service("jobs");
        let now = now_micros();
        let mut reaped = Reaped::default();
        for row in self.runs.lapsed(now, BATCH).await? {
            self.lapsed(&row, &cause, &mut reaped).await?;
        }
        for row in self.runs.overdue(now, BATCH).await? {
            let error = "no executor claimed the run before its queue timeout".to_string();
            if self.runs.fail(&row, "QUEUE_TIMEOUT", error, &cause).await? {
                reaped.queue_timeouts += 1;
            }
        }
        let before = now - self.rerequest_after.as_micros() as i64;
        reaped.rerequested = self.runs.rerequest(before, BATCH).await?;
        Ok(reaped)
    }

    /// A run its executor gave back (shutting down): decided as if its lease had lapsed.
    pub async fn release(&self, row: &RunRow, cause: &Cause) -> Result<(), JobsError> {
        self.lapsed(row, cause, &mut Reaped::default()).await
    }

    async fn lapsed(
        &self,
        row: &RunRow,
        cause: &Cause,
        reaped: &mut Reaped,
    ) -> Result<(), JobsError> {
        let job = self.jobs.revision(row.job_id(), row.job_revision()).await?;
        let max_attempts = match job.max_attempts {
            0 => validate::DEFAULT_MAX_ATTEMPTS,
            n => n,
        };
        let may_repeat = !row.step_started() || job.requeue_after_start;
        if row.attempt() < max_attempts && may_repeat {
            let queue_timeout =
                validate::or_default(job.queue_timeout.as_ref(), validate::DEFAULT_QUEUE_TIMEOUT);
            if self.runs.requeue(row, queue_timeout, cause).await? {
                tracing::warn!(run_id = %row.run()?.id, attempt = row.attempt(), "executor lost; run requeued");
                reaped.requeued += 1;
            }
            return Ok(());
        }
        let why = if may_repeat {
            format!("the executor was lost and the run's {max_attempts} attempts are used up")
        } else {
            "the executor was lost after the run started a step, and the job does not allow \
             repeating steps (requeue_after_start)"
                .to_string()
        };
        if self.runs.fail(row, "EXECUTOR_LOST", why, cause).await? {
            tracing::warn!(attempt = row.attempt(), "executor lost; run failed");
            reaped.lost += 1;
        }
        Ok(())
    }
}

/// Runs a round every `every` until the task is stopped.
pub fn spawn(reaper: Reaper, every: Duration) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            match reaper.round().await {
                Ok(reaped) if reaped != Reaped::default() => {
                    tracing::info!(?reaped, "reaper round")
                }
                Ok(_) => {}
                Err(error) => tracing::warn!(%error, "reaper round failed"),
            }
        }
    })
}
