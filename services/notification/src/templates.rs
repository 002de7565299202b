//! Stored templates, at most one per (channel, event type); every change audited.

use opsconductor_api::notification::v1::Template;
use opsconductor_messaging::{AuditLog, Cause};
use opsconductor_platform::page::Page;
use opsconductor_platform::time::{now_micros, to_timestamp};
use opsconductor_storage::{is_unique_violation, Database, Select};

use crate::NotificationError;

type Result<T> = std::result::Result<T, NotificationError>;

const COLUMNS: &str =
    "id, channel, event_type, subject, body, html_body, description, create_time, update_time";

#[derive(sqlx::FromRow)]
struct TemplateRow {
    id: String,
    channel: i64,
    event_type: String,
    subject: String,
    body: String,
    html_body: String,
    description: String,
    create_time: i64,
    update_time: i64,
}

impl From<TemplateRow> for Template {
    fn from(r: TemplateRow) -> Template {
        Template {
            id: r.id,
            channel: r.channel as i32,
            event_type: r.event_type,
            subject: r.subject,
            body: r.body,
            html_body: r.html_body,
            description: r.description,
            create_time: Some(to_timestamp(r.create_time)),
            update_time: Some(to_timestamp(r.update_time)),
        }
    }
}

#[derive(Clone)]
pub struct TemplateStore {
    db: Database,
    audit: AuditLog,
}

impl TemplateStore {
    pub fn new(db: Database, audit: AuditLog) -> TemplateStore {
        TemplateStore { db, audit }
    }

    pub async fn create(&self, t: &Template, cause: &Cause) -> Result<Template> {
        let id = uuid::Uuid::now_v7().to_string();
        let now = now_micros();
        let mut tx = self.db.begin().await?;
        let inserted = sqlx::query(
            "INSERT INTO templates (id, channel, event_type, subject, body, html_body, \
             description, create_time, update_time) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $8)",
        )
        .bind(&id)
        .bind(i64::from(t.channel))
        .bind(&t.event_type)
        .bind(&t.subject)
        .bind(&t.body)
        .bind(&t.html_body)
        .bind(&t.description)
        .bind(now)
        .execute(&mut *tx)
        .await;
        match inserted {
            Ok(_) => {}
            Err(e) if is_unique_violation(&e) => {
                return Err(NotificationError::TemplateExists(format!(
                    "{}/{}",
                    crate::channel_key(t.channel),
                    t.event_type
                )))
            }
            Err(e) => return Err(e.into()),
        }
        let details = [
            ("channel", crate::channel_key(t.channel).to_string()),
            ("event_type", t.event_type.clone()),
        ];
        self.audit
            .record(
                &mut tx,
                cause,
                "template.create",
                ("template", &id),
                &details,
            )
            .await?;
        self.audit.commit(tx).await?;
        self.get(&id).await
    }

    pub async fn get(&self, id: &str) -> Result<Template> {
        sqlx::query_as::<_, TemplateRow>(&format!("SELECT {COLUMNS} FROM templates WHERE id = $1"))
            .bind(id)
            .fetch_optional(self.db.pool())
            .await?
            .map(Template::from)
            .ok_or_else(|| NotificationError::NotFound("template", id.to_string()))
    }

    /// The stored template of (channel, event type), if any.
    pub async fn find(&self, channel: i32, event_type: &str) -> Result<Option<Template>> {
        Ok(sqlx::query_as::<_, TemplateRow>(&format!(
            "SELECT {COLUMNS} FROM templates WHERE channel = $1 AND event_type = $2"
        ))
        .bind(i64::from(channel))
        .bind(event_type)
        .fetch_optional(self.db.pool())
        .await?
        .map(Template::from))
    }

    pub async fn list(
        &self,
        channel: Option<i32>,
        event_type: Option<&str>,
        page: &Page,
    ) -> Result<(Vec<Template>, String)> {
        let mut q = Select::new(format!("SELECT {COLUMNS} FROM templates WHERE 1 = 1"));
        if let Some(c) = channel {
            q.and("channel = {}", i64::from(c));
        }
        if let Some(e) = event_type {
            q.and("event_type = {}", e);
        }
        page.apply(&mut q, "id");
        let rows: Vec<TemplateRow> = q.fetch_all(self.db.pool()).await?;
        let mut templates: Vec<Template> = rows.into_iter().map(Template::from).collect();
        let next = page.finish(&mut templates, |t| &t.id);
        Ok((templates, next))
    }

    pub async fn update(&self, t: &Template, fields: &[String], cause: &Cause) -> Result<Template> {
        let mut tx = self.db.begin().await?;
        let updated = sqlx::query(
            "UPDATE templates SET subject = $1, body = $2, html_body = $3, description = $4, \
             update_time = $5 WHERE id = $6",
        )
        .bind(&t.subject)
        .bind(&t.body)
        .bind(&t.html_body)
        .bind(&t.description)
        .bind(now_micros())
        .bind(&t.id)
        .execute(&mut *tx)
        .await?;
        if updated.rows_affected() == 0 {
            return Err(NotificationError::NotFound("template", t.id.clone()));
        }
        let details = [("fields", fields.join(","))];
        self.audit
            .record(
                &mut tx,
                cause,
                "template.update",
                ("template", &t.id),
                &details,
            )
            .await?;
        self.audit.commit(tx).await?;
        self.get(&t.id).await
    }

    pub async fn delete(&self, id: &str, cause: &Cause) -> Result<()> {
        let mut tx = self.db.begin().await?;
        let deleted = sqlx::query("DELETE FROM templates WHERE id = $1")
            .bind(id)
            .execute(&mut *tx)
            .await?;
        if deleted.rows_affected() == 0 {
            // Idempotent: deleting what is gone succeeds, and audits nothing.
            return Ok(());
        }
        self.audit
            .record(&mut tx, cause, "template.delete", ("template", id), &[])
            .await?;
        self.audit.commit(tx).await?;
        Ok(())
    }
}
