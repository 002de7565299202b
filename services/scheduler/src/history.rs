//! Fires people ask for (TriggerSchedule, BackfillSchedule) and the fire history they read.

use opsconductor_api::scheduler::v1::{FireKind, FireOutcome, Schedule};
use opsconductor_messaging::{AuditLog, Cause};
use opsconductor_platform::page::Page;
use opsconductor_platform::time::now_micros;
use opsconductor_storage::Select;

use crate::fires::{Fire, FireStore, FIRE_COLUMNS};
use crate::spec::Spec;
use crate::SchedulerError;

type Result<T> = std::result::Result<T, SchedulerError>;

/// The most due times one BackfillSchedule may fire.
pub const MAX_BACKFILL: usize = 1_000;

#[derive(Clone)]
pub struct History {
    pub fires: FireStore,
    pub audit: AuditLog,
}

fn asked(schedule: &Schedule, scheduled: i64, kind: FireKind, cause: &Cause) -> Fire {
    let now = now_micros();
    Fire {
        id: uuid::Uuid::now_v7().to_string(),
        schedule_id: schedule.id.clone(),
        scheduled_time: scheduled,
        due_time: scheduled,
        kind: kind as i64,
        outcome: FireOutcome::Pending as i64,
        // Due at once: whichever replica looks first takes it.
        attempt_time: Some(now),
        attempts: 0,
        fire_time: None,
        run_id: String::new(),
        cancelled_run_id: String::new(),
        error: String::new(),
        error_reason: String::new(),
        requested_by: cause.actor.user_id.clone(),
    }
}

impl History {
    /// A MANUAL fire due now.
    pub async fn trigger(&self, schedule: &Schedule, cause: &Cause) -> Result<Fire> {
        let fire = asked(schedule, now_micros(), FireKind::Manual, cause);
        let mut tx = self.fires.db().begin().await?;
        // Two triggers in one microsecond would share a due time; the second is refused.
        if !self.fires.insert_row(&mut tx, &fire).await? {
            return Err(SchedulerError::Conflict(schedule.id.clone()));
        }
        let details = [("fire_id", fire.id.clone())];
        self.audit
            .record(
                &mut tx,
                cause,
                "schedule.trigger",
                ("schedule", &schedule.id),
                &details,
            )
            .await?;
        self.audit.commit(tx).await?;
        Ok(fire)
    }

    /// BACKFILL fires for `times`, skipping those already recorded: (created, already).
    pub async fn backfill(
        &self,
        schedule: &Schedule,
        spec: &Spec,
        times: &[i64],
        cause: &Cause,
    ) -> Result<(u32, u32)> {
        let mut tx = self.fires.db().begin().await?;
        let mut created = 0u32;
        for t in times {
            let mut fire = asked(schedule, *t, FireKind::Backfill, cause);
            fire.due_time = spec.due(&schedule.id, *t);
            if self.fires.insert_row(&mut tx, &fire).await? {
                created += 1;
            }
        }
        let already = times.len() as u32 - created;
        let details = [
            ("created", created.to_string()),
            ("already_recorded", already.to_string()),
        ];
        self.audit
            .record(
                &mut tx,
                cause,
                "schedule.backfill",
                ("schedule", &schedule.id),
                &details,
            )
            .await?;
        self.audit.commit(tx).await?;
        Ok((created, already))
    }

    /// Fire records, most recently recorded first.
    pub async fn list(
        &self,
        schedule_id: Option<&str>,
        outcome: Option<FireOutcome>,
        page: &Page,
    ) -> Result<(Vec<Fire>, String)> {
        let mut select = Select::new(format!("SELECT {FIRE_COLUMNS} FROM fires WHERE 1 = 1"));
        if let Some(id) = schedule_id {
            select.and("schedule_id = {}", id);
        }
        if let Some(outcome) = outcome {
            select.and("outcome = {}", outcome as i64);
        }
        if let Some(after) = &page.after {
            select.and("id < {}", after.clone());
        }
        select.push(" ORDER BY id DESC").limit(page.fetch_limit());
        let mut fires: Vec<Fire> = select.fetch_all(self.fires.db().pool()).await?;
        let token = page.finish(&mut fires, |f| &f.id);
        Ok((fires, token))
    }
}
