//! What runs a schedule has going, from RunStarted/RunFinished (never by polling the jobs
//! service), and the overlap policies decided against it. A fire about to start a run keeps a
//! placeholder row meanwhile, and the decision takes the schedule's row lock on PostgreSQL
//! (SQLite's writer is single), so two fires of one schedule never both see it idle.

use opsconductor_api::scheduler::v1::{FireKind, FireOutcome, OverlapPolicy};
use opsconductor_platform::time::now_micros;
use opsconductor_storage::Backend;
use sqlx::AnyConnection;

use crate::fires::{End, Fire, FireStore};
use crate::SchedulerError;

type Result<T> = std::result::Result<T, SchedulerError>;

/// Finished rows are kept this long, so a fire that records its run after the run's
/// RunFinished was handled still finds it finished.
const FINISHED_RETENTION_MICROS: i64 = 3_600_000_000;

/// What a fire does, given what is running.
#[derive(Debug, PartialEq, Eq)]
pub enum Decision {
    /// Start the run (a placeholder is held).
    Start,
    /// Wait for the running ones to finish; cancel these first (CANCEL_PREVIOUS).
    Wait { cancel: Vec<String> },
    /// Recorded as skipped, or the fire is gone (schedule deleted, lease lost).
    Done,
}

impl FireStore {
    /// Decides `fire` under `policy` and records the decision (placeholder, WAITING, or
    /// SKIPPED_OVERLAP) in one transaction.
    pub async fn decide(
        &self,
        fire: &Fire,
        policy: OverlapPolicy,
        recheck_at: i64,
    ) -> Result<Decision> {
        let mut tx = self.db().begin().await?;
        let lock = match self.db().backend() {
            Backend::Postgres => " FOR UPDATE",
            Backend::Sqlite => "",
        };
        let exists: Option<(String,)> =
            sqlx::query_as(&format!("SELECT id FROM schedules WHERE id = $1{lock}"))
                .bind(&fire.schedule_id)
                .fetch_optional(&mut *tx)
                .await?;
        if exists.is_none() {
            return Ok(Decision::Done);
        }
        let active: Vec<(String,)> = sqlx::query_as(
            "SELECT run_id FROM schedule_runs WHERE schedule_id = $1 AND finished = 0 \
             AND run_id <> $2",
        )
        .bind(&fire.schedule_id)
        .bind(fire.placeholder())
        .fetch_all(&mut *tx)
        .await?;
        // Other fires of the schedule still to decide or held: an older one goes first.
        let others: Vec<(i64, i64)> = sqlx::query_as(
            "SELECT scheduled_time, outcome FROM fires WHERE schedule_id = $1 \
             AND outcome IN ($2, $3) AND id <> $4",
        )
        .bind(&fire.schedule_id)
        .bind(FireOutcome::Pending as i64)
        .bind(FireOutcome::Waiting as i64)
        .bind(&fire.id)
        .fetch_all(&mut *tx)
        .await?;
        let older_waiting = others.iter().any(|(t, _)| *t < fire.scheduled_time);
        let any_waiting = others
            .iter()
            .any(|(_, o)| *o == FireOutcome::Waiting as i64);
        let busy = !active.is_empty() || older_waiting;
        let backfill = fire.kind() == FireKind::Backfill;
        let policy = if backfill {
            OverlapPolicy::BufferAll
        } else {
            policy
        };
        let mut skipped = false;
        let decision = if !busy {
            hold(&mut tx, fire).await?;
            Decision::Start
        } else {
            match policy {
                OverlapPolicy::Allow => {
                    hold(&mut tx, fire).await?;
                    Decision::Start
                }
                OverlapPolicy::BufferOne
                    if fire.outcome() != FireOutcome::Waiting && any_waiting =>
                {
                    self.skip(&mut tx, fire).await?;
                    skipped = true;
                    Decision::Done
                }
                OverlapPolicy::BufferOne | OverlapPolicy::BufferAll => {
                    wait(&mut tx, fire, recheck_at, "").await?;
                    Decision::Wait { cancel: vec![] }
                }
                OverlapPolicy::CancelPrevious => {
                    let cancel: Vec<String> = active
                        .into_iter()
                        .map(|(id,)| id)
                        .filter(|id| !id.starts_with("fire:"))
                        .collect();
                    let first = cancel.first().cloned().unwrap_or_default();
                    wait(&mut tx, fire, recheck_at, &first).await?;
                    Decision::Wait { cancel }
                }
                _ => {
                    self.skip(&mut tx, fire).await?;
                    skipped = true;
                    Decision::Done
                }
            }
        };
        tx.commit().await?;
        if skipped {
            self.count(FireOutcome::SkippedOverlap);
        }
        Ok(decision)
    }

    async fn skip(&self, tx: &mut AnyConnection, fire: &Fire) -> Result<()> {
        let end = End::Skipped(
            FireOutcome::SkippedOverlap,
            "the schedule's previous run had not finished".into(),
        );
        self.finish_on(tx, fire, &end).await?;
        Ok(())
    }

    /// A run of a schedule started (RunStarted, or a fire that started it).
    pub async fn run_started(&self, schedule_id: &str, run_id: &str) -> Result<()> {
        let mut connection = self.db().pool().acquire().await?;
        mark_running(&mut connection, run_id, schedule_id).await
    }

    /// A run of a schedule finished: when nothing else of it runs, its oldest WAITING fire is
    /// due now. Whether one was released.
    pub async fn run_finished(&self, schedule_id: &str, run_id: &str) -> Result<bool> {
        let now = now_micros();
        let mut tx = self.db().begin().await?;
        sqlx::query(
            "INSERT INTO schedule_runs (run_id, schedule_id, finished, update_time) \
             VALUES ($1, $2, 1, $3) \
             ON CONFLICT (run_id) DO UPDATE SET finished = 1, update_time = $3",
        )
        .bind(run_id)
        .bind(schedule_id)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        let active = active_runs(&mut tx, schedule_id).await?;
        let released = active == 0 && release(&mut tx, schedule_id, now).await?;
        sqlx::query("DELETE FROM schedule_runs WHERE finished = 1 AND update_time < $1")
            .bind(now - FINISHED_RETENTION_MICROS)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(released)
    }
}

async fn active_runs(tx: &mut AnyConnection, schedule_id: &str) -> Result<i64> {
    let (active,): (i64,) = sqlx::query_as(
        "SELECT COUNT(*) FROM schedule_runs WHERE schedule_id = $1 AND finished = 0",
    )
    .bind(schedule_id)
    .fetch_one(&mut *tx)
    .await?;
    Ok(active)
}

/// Makes the schedule's oldest WAITING fire due now; whether there was one.
async fn release(tx: &mut AnyConnection, schedule_id: &str, now: i64) -> Result<bool> {
    let oldest: Option<(String,)> = sqlx::query_as(
        "SELECT id FROM fires WHERE schedule_id = $1 AND outcome = $2 \
         ORDER BY scheduled_time LIMIT 1",
    )
    .bind(schedule_id)
    .bind(FireOutcome::Waiting as i64)
    .fetch_optional(&mut *tx)
    .await?;
    let Some((id,)) = oldest else {
        return Ok(false);
    };
    sqlx::query("UPDATE fires SET attempt_time = $1 WHERE id = $2")
        .bind(now)
        .bind(&id)
        .execute(&mut *tx)
        .await?;
    Ok(true)
}

/// A fire ended without a run: what waited behind it may go, if nothing of the schedule runs.
pub(crate) async fn release_after(tx: &mut AnyConnection, schedule_id: &str) -> Result<bool> {
    if active_runs(tx, schedule_id).await? > 0 {
        return Ok(false);
    }
    release(tx, schedule_id, now_micros()).await
}

async fn hold(tx: &mut AnyConnection, fire: &Fire) -> Result<()> {
    mark_running(tx, &fire.placeholder(), &fire.schedule_id).await
}

/// Records `run_id` (a run, or a fire's placeholder) as running, unless it is known already —
/// a RunFinished that came first keeps it finished.
pub(crate) async fn mark_running(
    connection: &mut AnyConnection,
    run_id: &str,
    schedule_id: &str,
) -> Result<()> {
    sqlx::query(
        "INSERT INTO schedule_runs (run_id, schedule_id, finished, update_time) \
         VALUES ($1, $2, 0, $3) ON CONFLICT (run_id) DO NOTHING",
    )
    .bind(run_id)
    .bind(schedule_id)
    .bind(now_micros())
    .execute(&mut *connection)
    .await?;
    Ok(())
}

/// WAITING until `recheck_at` at the latest (a RunFinished releases it sooner).
async fn wait(tx: &mut AnyConnection, fire: &Fire, recheck_at: i64, cancelled: &str) -> Result<()> {
    sqlx::query(
        "UPDATE fires SET outcome = $1, attempt_time = $2, \
         cancelled_run_id = CASE WHEN $3 = '' THEN cancelled_run_id ELSE $3 END \
         WHERE id = $4 AND attempt_time = $5",
    )
    .bind(FireOutcome::Waiting as i64)
    .bind(recheck_at)
    .bind(cancelled)
    .bind(&fire.id)
    .bind(fire.attempt_time)
    .execute(&mut *tx)
    .await?;
    Ok(())
}
