//! Fire records: one row per (schedule, due time), ever. Due schedules become fire rows in the
//! transaction that moves the schedule on (`FOR UPDATE SKIP LOCKED` on PostgreSQL, so replicas
//! share the work; SQLite's single writer serializes it). A fire row is work while PENDING or
//! WAITING: a replica takes it by moving its `attempt_time` a lease ahead, and every later write
//! is conditional on that value, so a replica that lost its lease changes nothing.

use opsconductor_api::common::v1::Actor;
use opsconductor_api::scheduler::v1::{
    FireKind, FireOutcome, FireRecord, MisfirePolicy, Schedule, ScheduleFireFailed,
};
use opsconductor_messaging::topology::platform;
use opsconductor_messaging::{Names, Outbox, OutgoingMessage};
use opsconductor_platform::time::{from_duration, now_micros, to_std_duration, to_timestamp};
use opsconductor_storage::{Backend, Database};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use sqlx::AnyConnection;

use crate::spec::Spec;
use crate::store::{ScheduleRow, COLUMNS};
use crate::SchedulerError;

type Result<T> = std::result::Result<T, SchedulerError>;

/// At most this many due times of one schedule become rows per pass (a long outage of an
/// every-second schedule is worked off over several passes).
const MAX_TIMES_PER_PASS: usize = 1_000;

pub(crate) const FIRE_COLUMNS: &str = "id, schedule_id, scheduled_time, due_time, kind, outcome, \
                            attempt_time, attempts, fire_time, run_id, cancelled_run_id, error, \
                            error_reason, requested_by";

/// A fire as stored; `attempt_time` is the lease a replica holds while it works on it.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Fire {
    pub id: String,
    pub schedule_id: String,
    pub scheduled_time: i64,
    pub due_time: i64,
    pub kind: i64,
    pub outcome: i64,
    pub attempt_time: Option<i64>,
    pub attempts: i64,
    pub fire_time: Option<i64>,
    pub run_id: String,
    pub cancelled_run_id: String,
    pub error: String,
    pub error_reason: String,
    pub requested_by: String,
}

impl Fire {
    pub fn kind(&self) -> FireKind {
        FireKind::try_from(self.kind as i32).unwrap_or(FireKind::Scheduled)
    }

    pub fn outcome(&self) -> FireOutcome {
        FireOutcome::try_from(self.outcome as i32).unwrap_or(FireOutcome::Pending)
    }

    /// The placeholder it keeps in `schedule_runs` between deciding to start and knowing its
    /// run, so a fire of the same schedule decided meanwhile sees the schedule busy.
    pub fn placeholder(&self) -> String {
        format!("fire:{}", self.id)
    }

    pub fn record(&self) -> FireRecord {
        FireRecord {
            id: self.id.clone(),
            schedule_id: self.schedule_id.clone(),
            scheduled_time: Some(to_timestamp(self.scheduled_time)),
            fire_time: self.fire_time.map(to_timestamp),
            outcome: self.outcome as i32,
            run_id: self.run_id.clone(),
            cancelled_run_id: self.cancelled_run_id.clone(),
            error: self.error.clone(),
            lag: self.fire_time.map(|t| {
                from_duration(std::time::Duration::from_micros(
                    (t - self.scheduled_time).max(0) as u64,
                ))
            }),
            kind: self.kind as i32,
            requested_by: (!self.requested_by.is_empty()).then(|| Actor {
                user_id: self.requested_by.clone(),
                service_id: String::new(),
            }),
            error_reason: self.error_reason.clone(),
        }
    }
}

/// What became of a due time when it was recorded.
#[derive(Debug, PartialEq, Eq)]
enum Due {
    Fire,
    Missed,
}

/// How a schedule's missed times are treated (docs/scheduler.md, "Misfires").
pub fn misfire_threshold(schedule: &Schedule) -> i64 {
    schedule
        .misfire_threshold
        .as_ref()
        .and_then(to_std_duration)
        .filter(|d| !d.is_zero())
        .map(|d| d.as_micros() as i64)
        .unwrap_or(60_000_000)
}

fn catch_up_window(schedule: &Schedule) -> i64 {
    schedule
        .catch_up_window
        .as_ref()
        .and_then(to_std_duration)
        .filter(|d| !d.is_zero())
        .map(|d| d.as_micros() as i64)
        .unwrap_or(3_600_000_000)
}

/// Whether a due time `late` past its due time still fires; `later_due` says whether a later
/// time of the same schedule is due too (FIRE_ONCE fires only the latest).
pub fn still_fires(
    schedule: &Schedule,
    scheduled: i64,
    late: i64,
    now: i64,
    later_due: bool,
) -> bool {
    if late <= misfire_threshold(schedule) {
        return true;
    }
    match MisfirePolicy::try_from(schedule.misfire_policy) {
        Ok(MisfirePolicy::Skip) => false,
        Ok(MisfirePolicy::FireAll) => scheduled >= now - catch_up_window(schedule),
        _ => !later_due,
    }
}

#[derive(Clone)]
pub struct FireStore {
    db: Database,
    outbox: Outbox,
    events_exchange: String,
    ended: Family<OutcomeLabel, Counter>,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabel {
    outcome: String,
}

impl OutcomeLabel {
    fn of(outcome: FireOutcome) -> OutcomeLabel {
        OutcomeLabel {
            outcome: outcome
                .as_str_name()
                .trim_start_matches("FIRE_OUTCOME_")
                .to_ascii_lowercase(),
        }
    }
}

impl FireStore {
    pub fn new(db: Database, outbox: Outbox, names: &Names) -> FireStore {
        FireStore {
            db,
            outbox,
            events_exchange: names.exchange(&platform::events_exchange()),
            ended: Family::default(),
        }
    }

    fn skip_locked(&self) -> &'static str {
        match self.db.backend() {
            Backend::Postgres => " FOR UPDATE SKIP LOCKED",
            Backend::Sqlite => "",
        }
    }

    /// Turns schedules due by `now` into fire rows and moves each schedule to its next time.
    /// Returns the fires to start, already held by this replica until `lease_until`, each with
    /// the schedule as it was read here (so starting it does not read it again).
    pub async fn materialize(
        &self,
        now: i64,
        batch: i64,
        lease_until: i64,
    ) -> Result<Vec<(Fire, Option<Schedule>)>> {
        let mut tx = self.db.begin().await?;
        let rows: Vec<ScheduleRow> = sqlx::query_as(&format!(
            "SELECT {COLUMNS} FROM schedules WHERE due_time <= $1 ORDER BY due_time LIMIT $2{}",
            self.skip_locked()
        ))
        .bind(now)
        .bind(batch)
        .fetch_all(&mut *tx)
        .await?;
        let mut to_start = Vec::new();
        for row in rows {
            let id = row.id().to_string();
            let parsed = row.into_schedule().ok().and_then(|schedule| {
                let mut v = opsconductor_platform::validate::Violations::new();
                Spec::of(&mut v, "", &schedule, 0).map(|spec| (schedule, spec))
            });
            let Some((schedule, spec)) = parsed else {
                // Not due again until someone fixes it: a row that cannot be read must not
                // take a batch slot on every pass.
                tracing::error!(schedule_id = %id, "a stored schedule cannot be read; it stops firing");
                sqlx::query("UPDATE schedules SET due_time = NULL WHERE id = $1")
                    .bind(&id)
                    .execute(&mut *tx)
                    .await?;
                continue;
            };
            self.advance(&mut tx, &schedule, &spec, now, lease_until, &mut to_start)
                .await?;
        }
        tx.commit().await?;
        Ok(to_start)
    }

    async fn advance(
        &self,
        tx: &mut AnyConnection,
        schedule: &Schedule,
        spec: &Spec,
        now: i64,
        lease_until: i64,
        to_start: &mut Vec<(Fire, Option<Schedule>)>,
    ) -> Result<()> {
        let Some(mut t) = schedule
            .next_fire_time
            .as_ref()
            .map(opsconductor_platform::time::to_micros)
        else {
            return Ok(());
        };
        let mut last = None;
        let mut next = Some(t);
        for _ in 0..MAX_TIMES_PER_PASS {
            let due = spec.due(&schedule.id, t);
            if due > now {
                break;
            }
            next = spec.next_after(t);
            let later_due = next.is_some_and(|n| spec.due(&schedule.id, n) <= now);
            let what = if still_fires(schedule, t, now - due, now, later_due) {
                Due::Fire
            } else {
                Due::Missed
            };
            let fire = self.insert(tx, schedule, t, due, what, lease_until).await?;
            to_start.extend(fire.map(|f| (f, Some(schedule.clone()))));
            last = Some(t);
            match next {
                Some(n) => t = n,
                None => break,
            }
        }
        let due = next.map(|n| spec.due(&schedule.id, n));
        // A once schedule that fired is disabled: its next time is gone.
        let enabled = i64::from(next.is_some() || !spec.is_once());
        sqlx::query(
            "UPDATE schedules SET next_fire_time = $1, due_time = $2, \
             last_fire_time = COALESCE($3, last_fire_time), enabled = $4 WHERE id = $5",
        )
        .bind(next)
        .bind(due)
        .bind(last)
        .bind(enabled)
        .bind(&schedule.id)
        .execute(&mut *tx)
        .await?;
        Ok(())
    }

    /// Records one due time; the fire to start when it is new and fires.
    async fn insert(
        &self,
        tx: &mut AnyConnection,
        schedule: &Schedule,
        scheduled: i64,
        due: i64,
        what: Due,
        lease_until: i64,
    ) -> Result<Option<Fire>> {
        let (outcome, attempt_time, error) = match what {
            Due::Fire => (FireOutcome::Pending, Some(lease_until), String::new()),
            Due::Missed => (
                FireOutcome::SkippedMisfire,
                None,
                "missed by more than the misfire threshold".to_string(),
            ),
        };
        let fire = Fire {
            id: uuid::Uuid::now_v7().to_string(),
            schedule_id: schedule.id.clone(),
            scheduled_time: scheduled,
            due_time: due,
            kind: FireKind::Scheduled as i64,
            outcome: outcome as i64,
            attempt_time,
            attempts: 1,
            fire_time: None,
            run_id: String::new(),
            cancelled_run_id: String::new(),
            error,
            error_reason: String::new(),
            requested_by: String::new(),
        };
        let new = self.insert_row(tx, &fire).await?;
        Ok((new && what == Due::Fire).then_some(fire))
    }

    /// Inserts `fire` unless its (schedule, time) has one; whether it was new.
    pub async fn insert_row(&self, tx: &mut AnyConnection, fire: &Fire) -> Result<bool> {
        let done = sqlx::query(
            "INSERT INTO fires (id, schedule_id, scheduled_time, due_time, kind, outcome, \
             attempt_time, attempts, error, requested_by) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) \
             ON CONFLICT (schedule_id, scheduled_time) DO NOTHING",
        )
        .bind(&fire.id)
        .bind(&fire.schedule_id)
        .bind(fire.scheduled_time)
        .bind(fire.due_time)
        .bind(fire.kind)
        .bind(fire.outcome)
        .bind(fire.attempt_time)
        .bind(fire.attempts)
        .bind(&fire.error)
        .bind(&fire.requested_by)
        .execute(&mut *tx)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Takes PENDING and WAITING fires whose time has come (retries, released waits, fires
    /// whose replica died), holding each until `lease_until`.
    pub async fn take(&self, now: i64, batch: i64, lease_until: i64) -> Result<Vec<Fire>> {
        let mut tx = self.db.begin().await?;
        let mut fires: Vec<Fire> = sqlx::query_as(&format!(
            "SELECT {FIRE_COLUMNS} FROM fires WHERE attempt_time <= $1 \
             ORDER BY attempt_time LIMIT $2{}",
            self.skip_locked()
        ))
        .bind(now)
        .bind(batch)
        .fetch_all(&mut *tx)
        .await?;
        for fire in &mut fires {
            sqlx::query(
                "UPDATE fires SET attempt_time = $1, attempts = attempts + 1 WHERE id = $2",
            )
            .bind(lease_until)
            .bind(&fire.id)
            .execute(&mut *tx)
            .await?;
            fire.attempt_time = Some(lease_until);
            fire.attempts += 1;
        }
        tx.commit().await?;
        Ok(fires)
    }

    /// When this replica should look again: the earliest due schedule or fire.
    pub async fn next_work(&self) -> Result<Option<i64>> {
        let (schedules,): (Option<i64>,) =
            sqlx::query_as("SELECT MIN(due_time) FROM schedules WHERE due_time IS NOT NULL")
                .fetch_one(self.db.pool())
                .await?;
        let (fires,): (Option<i64>,) =
            sqlx::query_as("SELECT MIN(attempt_time) FROM fires WHERE attempt_time IS NOT NULL")
                .fetch_one(self.db.pool())
                .await?;
        Ok(match (schedules, fires) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        })
    }

    /// Whether a later SCHEDULED fire of the same schedule is recorded (FIRE_ONCE fires only
    /// the latest of the times it missed).
    pub async fn later_recorded(&self, fire: &Fire) -> Result<bool> {
        let found: Option<(String,)> = sqlx::query_as(
            "SELECT id FROM fires WHERE schedule_id = $1 AND kind = $2 AND scheduled_time > $3 \
             LIMIT 1",
        )
        .bind(&fire.schedule_id)
        .bind(FireKind::Scheduled as i64)
        .bind(fire.scheduled_time)
        .fetch_optional(self.db.pool())
        .await?;
        Ok(found.is_some())
    }

    /// Counts fires by how they ended in `registry` (`opsconductor_schedule_fires_total`).
    pub fn register_metrics(&self, registry: &opsconductor_metrics::Registry) {
        // Every end from the start, at 0: a rate over a series that appears later misses its
        // first increase.
        for outcome in [
            FireOutcome::RunStarted,
            FireOutcome::SkippedOverlap,
            FireOutcome::SkippedMisfire,
            FireOutcome::Failed,
        ] {
            self.ended
                .get_or_create(&OutcomeLabel::of(outcome))
                .inc_by(0);
        }
        registry.register(
            "opsconductor_schedule_fires",
            "Fires that ended, by outcome (run_started, failed, skipped_overlap, skipped_misfire ...).",
            self.ended.clone(),
        );
    }

    /// Counts a fire's end (once its transaction committed).
    pub(crate) fn count(&self, outcome: FireOutcome) {
        self.ended.get_or_create(&OutcomeLabel::of(outcome)).inc();
    }

    /// Ends a fire held under its lease: the outcome, and for FAILED a ScheduleFireFailed for
    /// the owner, staged in the same transaction. False when the lease was lost.
    pub async fn finish(&self, fire: &Fire, end: End<'_>) -> Result<bool> {
        let mut tx = self.db.begin().await?;
        let done = self.finish_on(&mut tx, fire, &end).await?;
        if done {
            if let End::Failed {
                schedule,
                reason,
                error,
            } = &end
            {
                let mut record = fire.clone();
                record.outcome = FireOutcome::Failed as i64;
                record.error_reason = reason.to_string();
                record.error = error.clone();
                let event = ScheduleFireFailed {
                    schedule_id: schedule.id.clone(),
                    schedule_name: schedule.name.clone(),
                    job_id: schedule.job_id.clone(),
                    owner_user_id: schedule.owner_user_id.clone(),
                    fire: Some(record.record()),
                };
                let message = OutgoingMessage::new(
                    &self.events_exchange,
                    platform::SCHEDULE_FIRE_FAILED,
                    &event,
                )
                .with_correlation_id(fire.id.clone());
                self.outbox.stage(&mut tx, &message).await?;
            }
        }
        self.outbox.commit(tx).await?;
        if done {
            self.count(end.outcome());
        }
        Ok(done)
    }

    pub(crate) async fn finish_on(
        &self,
        tx: &mut AnyConnection,
        fire: &Fire,
        end: &End<'_>,
    ) -> Result<bool> {
        let now = now_micros();
        let outcome = end.outcome();
        let (run_id, fire_time, error, reason) = match end {
            End::Started(run_id) => (*run_id, Some(now), "", ""),
            End::Skipped(_, error) => ("", None, error.as_str(), ""),
            End::Failed { reason, error, .. } => ("", None, error.as_str(), *reason),
        };
        let done = sqlx::query(
            "UPDATE fires SET outcome = $1, run_id = $2, fire_time = $3, error = $4, \
             error_reason = $5, attempt_time = NULL WHERE id = $6 AND attempt_time = $7",
        )
        .bind(outcome as i64)
        .bind(run_id)
        .bind(fire_time)
        .bind(error)
        .bind(reason)
        .bind(&fire.id)
        .bind(fire.attempt_time)
        .execute(&mut *tx)
        .await?;
        if done.rows_affected() == 0 {
            return Ok(false);
        }
        sqlx::query("DELETE FROM schedule_runs WHERE run_id = $1")
            .bind(fire.placeholder())
            .execute(&mut *tx)
            .await?;
        if let End::Started(run_id) = end {
            crate::overlap::mark_running(tx, run_id, &fire.schedule_id).await?;
        }
        // Nothing of the schedule runs any more (no run was started, or its RunFinished came
        // before this record): what waited behind this fire may go.
        crate::overlap::release_after(tx, &fire.schedule_id).await?;
        Ok(true)
    }

    /// Tries again at `at` (the jobs or user service was unavailable), keeping the lease
    /// semantics: whoever holds it then takes it.
    pub async fn retry_at(&self, fire: &Fire, at: i64, error: &str) -> Result<()> {
        sqlx::query(
            "UPDATE fires SET attempt_time = $1, error = $2 WHERE id = $3 AND attempt_time = $4",
        )
        .bind(at)
        .bind(error)
        .bind(&fire.id)
        .bind(fire.attempt_time)
        .execute(self.db.pool())
        .await?;
        Ok(())
    }

    pub fn db(&self) -> &Database {
        &self.db
    }
}

/// How a fire ends.
pub enum End<'a> {
    Started(&'a str),
    Skipped(FireOutcome, String),
    Failed {
        schedule: &'a Schedule,
        reason: &'static str,
        error: String,
    },
}

impl End<'_> {
    fn outcome(&self) -> FireOutcome {
        match self {
            End::Started(_) => FireOutcome::RunStarted,
            End::Skipped(outcome, _) => *outcome,
            End::Failed { .. } => FireOutcome::Failed,
        }
    }
}
