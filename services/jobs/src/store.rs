//! Job definitions in SQLite or PostgreSQL. The job is stored encoded; name and revision are
//! columns so the database keeps names unique and updates conditional on the revision. Every
//! revision is kept in `job_revisions`, because a run executes the revision it started with.

use opsconductor_api::jobs::v1::{Job, RunState};
use opsconductor_messaging::{AuditLog, Cause};
use opsconductor_platform::page::Page;
use opsconductor_platform::time::{now_micros, to_timestamp};
use opsconductor_storage::{is_unique_violation, Database, Select};
use prost::Message;
use sqlx::AnyConnection;

use crate::JobsError;

#[derive(sqlx::FromRow)]
struct JobRow {
    id: String,
    revision: i64,
    spec: Vec<u8>,
    create_time: i64,
    update_time: i64,
}

impl JobRow {
    fn into_job(self) -> Result<Job, JobsError> {
        let mut job = Job::decode(self.spec.as_slice())
            .map_err(|e| JobsError::Corrupt("job", self.id.clone(), e))?;
        job.id = self.id;
        job.revision = self.revision as u64;
        job.create_time = Some(to_timestamp(self.create_time));
        job.update_time = Some(to_timestamp(self.update_time));
        Ok(job)
    }
}

/// What is stored in `spec`: the job without its id, revision and times (those are columns).
fn spec(job: &Job) -> Vec<u8> {
    let mut j = job.clone();
    j.id.clear();
    j.revision = 0;
    j.create_time = None;
    j.update_time = None;
    j.encode_to_vec()
}

#[derive(Clone)]
pub struct JobStore {
    db: Database,
    audit: AuditLog,
}

impl JobStore {
    pub fn new(db: Database, audit: AuditLog) -> JobStore {
        JobStore { db, audit }
    }

    pub async fn create(&self, job: &Job, cause: &Cause) -> Result<Job, JobsError> {
        let id = uuid::Uuid::now_v7().to_string();
        let now = now_micros();
        let mut tx = self.db.begin().await?;
        let inserted = sqlx::query(
            "INSERT INTO jobs (id, name, revision, spec, create_time, update_time) \
             VALUES ($1, $2, 1, $3, $4, $4)",
        )
        .bind(&id)
        .bind(&job.name)
        .bind(spec(job))
        .bind(now)
        .execute(&mut *tx)
        .await;
        match inserted {
            Ok(_) => {}
            Err(e) if is_unique_violation(&e) => {
                return Err(JobsError::NameTaken(job.name.clone()))
            }
            Err(e) => return Err(e.into()),
        }
        keep_revision(&mut tx, &id, 1, job).await?;
        let details = [("name", job.name.clone())];
        self.audit
            .record(&mut tx, cause, "job.create", ("job", &id), &details)
            .await?;
        self.audit.commit(tx).await?;
        self.get(&id).await
    }

    pub async fn get(&self, id: &str) -> Result<Job, JobsError> {
        sqlx::query_as::<_, JobRow>(
            "SELECT id, revision, spec, create_time, update_time FROM jobs WHERE id = $1",
        )
        .bind(id)
        .fetch_optional(self.db.pool())
        .await?
        .ok_or_else(|| JobsError::NotFound("job", id.to_string()))?
        .into_job()
    }

    /// The job as it was at `revision` (what a run executes), even after it was deleted.
    pub async fn revision(&self, id: &str, revision: u64) -> Result<Job, JobsError> {
        let (spec,): (Vec<u8>,) =
            sqlx::query_as("SELECT spec FROM job_revisions WHERE job_id = $1 AND revision = $2")
                .bind(id)
                .bind(revision as i64)
                .fetch_optional(self.db.pool())
                .await?
                .ok_or_else(|| JobsError::NotFound("job revision", format!("{id}@{revision}")))?;
        let mut job = Job::decode(spec.as_slice())
            .map_err(|e| JobsError::Corrupt("job", id.to_string(), e))?;
        job.id = id.to_string();
        job.revision = revision;
        Ok(job)
    }

    pub async fn list(
        &self,
        names: &[String],
        labels: &std::collections::HashMap<String, String>,
        page: &Page,
    ) -> Result<(Vec<Job>, String), JobsError> {
        let mut select = Select::new(
            "SELECT id, revision, spec, create_time, update_time FROM jobs WHERE 1 = 1",
        );
        if !names.is_empty() {
            select.and_in("name IN ({})", names);
        }
        // Labels live inside the encoded job: filter a page at a time until it is full.
        let mut jobs = Vec::new();
        let mut page = page.clone();
        loop {
            let mut query = select.clone();
            page.apply(&mut query, "id");
            let rows: Vec<JobRow> = query.fetch_all(self.db.pool()).await?;
            let fetched = rows.len() as i64;
            let mut last = None;
            for row in rows {
                last = Some(row.id.clone());
                let job = row.into_job()?;
                if labels.iter().all(|(k, v)| job.labels.get(k) == Some(v)) {
                    jobs.push(job);
                }
                if jobs.len() as i64 >= page.fetch_limit() {
                    break;
                }
            }
            if jobs.len() as i64 >= page.fetch_limit() || fetched < page.fetch_limit() {
                break;
            }
            match last {
                Some(id) => page.after = Some(id),
                None => break,
            }
        }
        let token = page.finish(&mut jobs, |j| &j.id);
        Ok((jobs, token))
    }

    /// Saves `job` as the next revision if it is still at `revision`.
    pub async fn update(
        &self,
        job: &Job,
        revision: u64,
        fields: &[String],
        cause: &Cause,
    ) -> Result<Job, JobsError> {
        let next = revision + 1;
        let now = now_micros();
        let mut tx = self.db.begin().await?;
        let updated = sqlx::query(
            "UPDATE jobs SET name = $1, revision = $2, spec = $3, update_time = $4 \
             WHERE id = $5 AND revision = $6",
        )
        .bind(&job.name)
        .bind(next as i64)
        .bind(spec(job))
        .bind(now)
        .bind(&job.id)
        .bind(revision as i64)
        .execute(&mut *tx)
        .await;
        let done = match updated {
            Ok(done) => done,
            Err(e) if is_unique_violation(&e) => {
                return Err(JobsError::NameTaken(job.name.clone()))
            }
            Err(e) => return Err(e.into()),
        };
        if done.rows_affected() == 0 {
            drop(tx);
            self.get(&job.id).await?;
            return Err(JobsError::Conflict(job.id.clone()));
        }
        keep_revision(&mut tx, &job.id, next, job).await?;
        let details = [
            ("name", job.name.clone()),
            ("revision", next.to_string()),
            ("fields", fields.join(",")),
        ];
        self.audit
            .record(&mut tx, cause, "job.update", ("job", &job.id), &details)
            .await?;
        self.audit.commit(tx).await?;
        self.get(&job.id).await
    }

    /// Deletes the job unless a run of it is queued or running (checked in the transaction
    /// that deletes, so a run started meanwhile is either seen or refused).
    pub async fn delete(&self, id: &str, cause: &Cause) -> Result<(), JobsError> {
        let mut tx = self.db.begin().await?;
        if self.db.backend() == opsconductor_storage::Backend::Postgres {
            // StartRun reads the job FOR SHARE: the two cannot interleave.
            sqlx::query("SELECT id FROM jobs WHERE id = $1 FOR UPDATE")
                .bind(id)
                .execute(&mut *tx)
                .await?;
        }
        let (active,): (i64,) =
            sqlx::query_as("SELECT COUNT(*) FROM runs WHERE job_id = $1 AND state IN ($2, $3)")
                .bind(id)
                .bind(RunState::Queued as i64)
                .bind(RunState::Running as i64)
                .fetch_one(&mut *tx)
                .await?;
        if active > 0 {
            return Err(JobsError::HasActiveRuns(id.to_string()));
        }
        let done = sqlx::query("DELETE FROM jobs WHERE id = $1")
            .bind(id)
            .execute(&mut *tx)
            .await?;
        if done.rows_affected() == 0 {
            return Err(JobsError::NotFound("job", id.to_string()));
        }
        self.audit
            .record(&mut tx, cause, "job.delete", ("job", id), &[])
            .await?;
        self.audit.commit(tx).await?;
        Ok(())
    }
}

async fn keep_revision(
    connection: &mut AnyConnection,
    id: &str,
    revision: u64,
    job: &Job,
) -> Result<(), JobsError> {
    sqlx::query("INSERT INTO job_revisions (job_id, revision, spec) VALUES ($1, $2, $3)")
        .bind(id)
        .bind(revision as i64)
        .bind(spec(job))
        .execute(connection)
        .await?;
    Ok(())
}
