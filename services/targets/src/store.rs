//! Targets in SQLite or PostgreSQL. The target is stored encoded; name, OS and tags are
//! columns so that the database filters, orders and keeps names unique.

use opsconductor_api::targets::v1::Target;
use opsconductor_messaging::{AuditLog, Cause};
use opsconductor_platform::page::Page;
use opsconductor_platform::time::{now_micros, to_timestamp};
use opsconductor_storage::{is_unique_violation, Database, Select};
use prost::Message;
use sqlx::{Any, Transaction};

use crate::TargetsError;

#[derive(sqlx::FromRow)]
struct TargetRow {
    id: String,
    spec: Vec<u8>,
    create_time: i64,
    update_time: i64,
}

impl TargetRow {
    fn into_target(self) -> Result<Target, TargetsError> {
        let mut target = Target::decode(self.spec.as_slice())
            .map_err(|e| TargetsError::Corrupt(self.id.clone(), e))?;
        target.id = self.id;
        target.create_time = Some(to_timestamp(self.create_time));
        target.update_time = Some(to_timestamp(self.update_time));
        Ok(target)
    }
}

/// Filters of a target listing; every one given must match.
#[derive(Debug, Default)]
pub struct TargetFilter {
    pub tags: Vec<String>,
    pub os: Option<i32>,
    pub names: Vec<String>,
    pub credential_id: Option<String>,
}

/// Every change is written with its audit event, in one transaction.
#[derive(Clone)]
pub struct TargetStore {
    db: Database,
    audit: AuditLog,
}

/// What is stored in `spec`: the target without its id and times (those are columns).
fn spec(target: &Target) -> Vec<u8> {
    let mut t = target.clone();
    t.id.clear();
    t.create_time = None;
    t.update_time = None;
    t.encode_to_vec()
}

impl TargetStore {
    pub fn new(db: Database, audit: AuditLog) -> Self {
        TargetStore { db, audit }
    }

    pub async fn create(&self, target: &Target, cause: &Cause) -> Result<Target, TargetsError> {
        let id = uuid::Uuid::now_v7().to_string();
        let now = now_micros();
        let mut tx = self.db.begin().await?;
        let inserted = sqlx::query(
            "INSERT INTO targets (id, name, os, spec, create_time, update_time) \
             VALUES ($1, $2, $3, $4, $5, $5)",
        )
        .bind(&id)
        .bind(&target.name)
        .bind(i64::from(target.os))
        .bind(spec(target))
        .bind(now)
        .execute(&mut *tx)
        .await;
        match inserted {
            Ok(_) => {}
            Err(e) if is_unique_violation(&e) => {
                return Err(TargetsError::NameTaken(target.name.clone()))
            }
            Err(e) => return Err(e.into()),
        }
        write_tags(&mut tx, &id, &target.tags).await?;
        write_credential_refs(&mut tx, &id, target).await?;
        let details = [("name", target.name.clone())];
        self.audit
            .record(&mut tx, cause, "target.create", ("target", &id), &details)
            .await?;
        self.audit.commit(tx).await?;
        self.get(&id).await
    }

    pub async fn get(&self, id: &str) -> Result<Target, TargetsError> {
        Ok(self.versioned(id).await?.0)
    }

    /// The target and the update time it was read at (for optimistic updates).
    pub async fn versioned(&self, id: &str) -> Result<(Target, i64), TargetsError> {
        let row = sqlx::query_as::<_, TargetRow>(
            "SELECT id, spec, create_time, update_time FROM targets WHERE id = $1",
        )
        .bind(id)
        .fetch_optional(self.db.pool())
        .await?
        .ok_or_else(|| TargetsError::NotFound(id.to_string()))?;
        let version = row.update_time;
        Ok((row.into_target()?, version))
    }

    pub async fn list(
        &self,
        filter: &TargetFilter,
        page: &Page,
    ) -> Result<(Vec<Target>, String), TargetsError> {
        let mut select = Select::new(
            "SELECT t.id, t.spec, t.create_time, t.update_time FROM targets t WHERE 1 = 1",
        );
        if !filter.tags.is_empty() {
            // Every tag asked for: as many matching tag rows as tags.
            select.and_in(
                &format!(
                    "(SELECT COUNT(*) FROM target_tags g WHERE g.target_id = t.id \
                     AND g.tag IN ({{}})) = {}",
                    filter.tags.len()
                ),
                &filter.tags,
            );
        }
        if let Some(os) = filter.os {
            select.and("t.os = {}", os);
        }
        if !filter.names.is_empty() {
            select.and_in("t.name IN ({})", &filter.names);
        }
        if let Some(credential_id) = &filter.credential_id {
            select.and(
                "t.id IN (SELECT c.target_id FROM target_credentials c WHERE c.credential_id = {})",
                credential_id,
            );
        }
        page.apply(&mut select, "t.id");
        let rows: Vec<TargetRow> = select.fetch_all(self.db.pool()).await?;
        let mut targets = rows
            .into_iter()
            .map(TargetRow::into_target)
            .collect::<Result<Vec<_>, _>>()?;
        let token = page.finish(&mut targets, |t| &t.id);
        Ok((targets, token))
    }

    /// Replaces the target if it is still at `expected_update_time`; `fields` are the ones the
    /// caller changed, for the audit trail.
    pub async fn update(
        &self,
        target: &Target,
        expected_update_time: i64,
        fields: &[String],
        cause: &Cause,
    ) -> Result<Target, TargetsError> {
        let now = now_micros().max(expected_update_time + 1);
        let mut tx = self.db.begin().await?;
        let updated = sqlx::query(
            "UPDATE targets SET name = $1, os = $2, spec = $3, update_time = $4 \
             WHERE id = $5 AND update_time = $6",
        )
        .bind(&target.name)
        .bind(i64::from(target.os))
        .bind(spec(target))
        .bind(now)
        .bind(&target.id)
        .bind(expected_update_time)
        .execute(&mut *tx)
        .await;
        let done = match updated {
            Ok(done) => done,
            Err(e) if is_unique_violation(&e) => {
                return Err(TargetsError::NameTaken(target.name.clone()))
            }
            Err(e) => return Err(e.into()),
        };
        if done.rows_affected() == 0 {
            drop(tx);
            self.get(&target.id).await?;
            return Err(TargetsError::Conflict(target.id.clone()));
        }
        sqlx::query("DELETE FROM target_tags WHERE target_id = $1")
            .bind(&target.id)
            .execute(&mut *tx)
            .await?;
        write_tags(&mut tx, &target.id, &target.tags).await?;
        sqlx::query("DELETE FROM target_credentials WHERE target_id = $1")
            .bind(&target.id)
            .execute(&mut *tx)
            .await?;
        write_credential_refs(&mut tx, &target.id, target).await?;
        let details = [("name", target.name.clone()), ("fields", fields.join(","))];
        self.audit
            .record(
                &mut tx,
                cause,
                "target.update",
                ("target", &target.id),
                &details,
            )
            .await?;
        self.audit.commit(tx).await?;
        self.get(&target.id).await
    }

    pub async fn delete(&self, id: &str, cause: &Cause) -> Result<(), TargetsError> {
        let mut tx = self.db.begin().await?;
        for table in ["target_tags", "target_credentials"] {
            sqlx::query(&format!("DELETE FROM {table} WHERE target_id = $1"))
                .bind(id)
                .execute(&mut *tx)
                .await?;
        }
        let done = sqlx::query("DELETE FROM targets WHERE id = $1")
            .bind(id)
            .execute(&mut *tx)
            .await?;
        if done.rows_affected() == 0 {
            return Err(TargetsError::NotFound(id.to_string()));
        }
        self.audit
            .record(&mut tx, cause, "target.delete", ("target", id), &[])
            .await?;
        self.audit.commit(tx).await?;
        Ok(())
    }
}

async fn write_tags(
    tx: &mut Transaction<'static, Any>,
    id: &str,
    tags: &[String],
) -> Result<(), TargetsError> {
    for tag in tags {
        sqlx::query("INSERT INTO target_tags (target_id, tag) VALUES ($1, $2)")
            .bind(id)
            .bind(tag)
            .execute(&mut **tx)
            .await?;
    }
    Ok(())
}

async fn write_credential_refs(
    tx: &mut Transaction<'static, Any>,
    id: &str,
    target: &Target,
) -> Result<(), TargetsError> {
    let mut ids: Vec<&str> = target
        .credential_refs
        .iter()
        .map(|r| r.credential_id.as_str())
        .collect();
    ids.sort_unstable();
    ids.dedup();
    for credential_id in ids {
        sqlx::query("INSERT INTO target_credentials (target_id, credential_id) VALUES ($1, $2)")
            .bind(id)
            .bind(credential_id)
            .execute(&mut **tx)
            .await?;
    }
    Ok(())
}
