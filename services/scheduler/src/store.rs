//! Schedules in SQLite or PostgreSQL. The schedule is stored encoded; name, revision, enabled
//! and the fire times are columns, so the database keeps names unique, makes updates
//! conditional on the revision, and finds due schedules through an index.

use opsconductor_api::scheduler::v1::Schedule;
use opsconductor_messaging::{AuditLog, Cause};
use opsconductor_platform::page::Page;
use opsconductor_platform::time::{now_micros, to_timestamp};
use opsconductor_storage::{is_unique_violation, Database, Select};
use prost::Message;

use crate::spec::Spec;
use crate::SchedulerError;

type Result<T> = std::result::Result<T, SchedulerError>;

pub(crate) const COLUMNS: &str = "id, revision, enabled, spec, next_fire_time, last_fire_time, \
                                  create_time, update_time";

#[derive(sqlx::FromRow)]
pub(crate) struct ScheduleRow {
    id: String,
    revision: i64,
    enabled: i64,
    spec: Vec<u8>,
    next_fire_time: Option<i64>,
    last_fire_time: Option<i64>,
    create_time: i64,
    update_time: i64,
}

impl ScheduleRow {
    pub(crate) fn id(&self) -> &str {
        &self.id
    }

    pub(crate) fn into_schedule(self) -> Result<Schedule> {
        let mut s = Schedule::decode(self.spec.as_slice())
            .map_err(|e| SchedulerError::Corrupt(self.id.clone(), e))?;
        s.id = self.id;
        s.revision = self.revision as u64;
        s.enabled = self.enabled != 0;
        s.next_fire_time = self.next_fire_time.map(to_timestamp);
        s.last_fire_time = self.last_fire_time.map(to_timestamp);
        s.create_time = Some(to_timestamp(self.create_time));
        s.update_time = Some(to_timestamp(self.update_time));
        Ok(s)
    }
}

/// What is stored in `spec`: the schedule without the fields kept in columns.
fn encoded(schedule: &Schedule) -> Vec<u8> {
    let mut s = schedule.clone();
    s.id.clear();
    s.revision = 0;
    s.enabled = false;
    s.next_fire_time = None;
    s.last_fire_time = None;
    s.create_time = None;
    s.update_time = None;
    s.encode_to_vec()
}

/// The next scheduled time after `after` and when it is due; none while disabled.
pub(crate) fn next_due(schedule: &Schedule, spec: &Spec, after: i64) -> (Option<i64>, Option<i64>) {
    if !schedule.enabled {
        return (None, None);
    }
    let next = spec.next_after(after);
    (next, next.map(|t| spec.due(&schedule.id, t)))
}

#[derive(Clone)]
pub struct ScheduleStore {
    db: Database,
    audit: AuditLog,
}

impl ScheduleStore {
    pub fn new(db: Database, audit: AuditLog) -> ScheduleStore {
        ScheduleStore { db, audit }
    }

    /// Stores a new schedule (enabled) whose id the caller chose.
    pub async fn create(
        &self,
        schedule: &Schedule,
        spec: &Spec,
        cause: &Cause,
    ) -> Result<Schedule> {
        let now = now_micros();
        let (next, due) = next_due(schedule, spec, now);
        let mut tx = self.db.begin().await?;
        let inserted = sqlx::query(
            "INSERT INTO schedules (id, name, job_id, revision, enabled, owner_user_id, spec, \
             next_fire_time, due_time, create_time, update_time) \
             VALUES ($1, $2, $3, 1, $4, $5, $6, $7, $8, $9, $9)",
        )
        .bind(&schedule.id)
        .bind(&schedule.name)
        .bind(&schedule.job_id)
        .bind(i64::from(schedule.enabled))
        .bind(&schedule.owner_user_id)
        .bind(encoded(schedule))
        .bind(next)
        .bind(due)
        .bind(now)
        .execute(&mut *tx)
        .await;
        match inserted {
            Ok(_) => {}
            Err(e) if is_unique_violation(&e) => {
                return Err(SchedulerError::NameTaken(schedule.name.clone()))
            }
            Err(e) => return Err(e.into()),
        }
        let details = [
            ("name", schedule.name.clone()),
            ("job_id", schedule.job_id.clone()),
        ];
        self.audit
            .record(
                &mut tx,
                cause,
                "schedule.create",
                ("schedule", &schedule.id),
                &details,
            )
            .await?;
        self.audit.commit(tx).await?;
        self.get(&schedule.id).await
    }

    pub async fn get(&self, id: &str) -> Result<Schedule> {
        sqlx::query_as::<_, ScheduleRow>(&format!("SELECT {COLUMNS} FROM schedules WHERE id = $1"))
            .bind(id)
            .fetch_optional(self.db.pool())
            .await?
            .ok_or_else(|| SchedulerError::NotFound(id.to_string()))?
            .into_schedule()
    }

    pub async fn list(
        &self,
        job_id: Option<&str>,
        enabled_only: bool,
        page: &Page,
    ) -> Result<(Vec<Schedule>, String)> {
        let mut select = Select::new(format!("SELECT {COLUMNS} FROM schedules WHERE 1 = 1"));
        if let Some(job_id) = job_id {
            select.and("job_id = {}", job_id);
        }
        if enabled_only {
            select.and("enabled = {}", 1i64);
        }
        page.apply(&mut select, "id");
        let rows: Vec<ScheduleRow> = select.fetch_all(self.db.pool()).await?;
        let mut schedules = rows
            .into_iter()
            .map(ScheduleRow::into_schedule)
            .collect::<Result<Vec<_>>>()?;
        let token = page.finish(&mut schedules, |s| &s.id);
        Ok((schedules, token))
    }

    /// Stores `schedule` as its next revision if it is still at `revision`, with its fire
    /// times recomputed from now when `reschedule` (the spec, bounds or enabled changed).
    pub async fn replace(
        &self,
        schedule: &Schedule,
        spec: &Spec,
        revision: u64,
        reschedule: bool,
        (action, cause): (&str, &Cause),
    ) -> Result<Schedule> {
        let now = now_micros();
        let mut tx = self.db.begin().await?;
        let (next, due) = next_due(schedule, spec, now);
        // Placeholders in order of appearance: SQLite numbers them as they come.
        let sql = if reschedule {
            "UPDATE schedules SET name = $1, job_id = $2, enabled = $3, spec = $4, \
             revision = revision + 1, update_time = $5, next_fire_time = $6, due_time = $7 \
             WHERE id = $8 AND revision = $9"
        } else {
            "UPDATE schedules SET name = $1, job_id = $2, enabled = $3, spec = $4, \
             revision = revision + 1, update_time = $5 WHERE id = $6 AND revision = $7"
        };
        let mut query = sqlx::query(sql)
            .bind(&schedule.name)
            .bind(&schedule.job_id)
            .bind(i64::from(schedule.enabled))
            .bind(encoded(schedule))
            .bind(now);
        if reschedule {
            query = query.bind(next).bind(due);
        }
        let query = query.bind(&schedule.id).bind(revision as i64);
        match query.execute(&mut *tx).await {
            Ok(done) if done.rows_affected() == 1 => {}
            Ok(_) => return Err(SchedulerError::Conflict(schedule.id.clone())),
            Err(e) if is_unique_violation(&e) => {
                return Err(SchedulerError::NameTaken(schedule.name.clone()))
            }
            Err(e) => return Err(e.into()),
        }
        let details = [("revision", (revision + 1).to_string())];
        self.audit
            .record(&mut tx, cause, action, ("schedule", &schedule.id), &details)
            .await?;
        self.audit.commit(tx).await?;
        self.get(&schedule.id).await
    }

    /// Deletes a schedule with its fire records and what it knew of its runs.
    pub async fn delete(&self, id: &str, cause: &Cause) -> Result<()> {
        let mut tx = self.db.begin().await?;
        let deleted = sqlx::query("DELETE FROM schedules WHERE id = $1")
            .bind(id)
            .execute(&mut *tx)
            .await?;
        if deleted.rows_affected() == 0 {
            return Err(SchedulerError::NotFound(id.to_string()));
        }
        for table in ["fires", "schedule_runs"] {
            sqlx::query(&format!("DELETE FROM {table} WHERE schedule_id = $1"))
                .bind(id)
                .execute(&mut *tx)
                .await?;
        }
        self.audit
            .record(&mut tx, cause, "schedule.delete", ("schedule", id), &[])
            .await?;
        self.audit.commit(tx).await?;
        Ok(())
    }
}
