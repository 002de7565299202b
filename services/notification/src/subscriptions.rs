//! Subscriptions: a destination that hears about the runs of a job, a schedule, or jobs with a
//! label. Stored with the selector as (kind, value), so an event finds its subscriptions
//! through one indexed query.

use opsconductor_api::common::v1::Actor;
use opsconductor_api::notification::v1::subscription::Selector;
use opsconductor_api::notification::v1::{OutcomeFilter, Subscription};
use opsconductor_messaging::{AuditLog, Cause};
use opsconductor_platform::page::Page;
use opsconductor_platform::time::{now_micros, to_timestamp};
use opsconductor_storage::{Database, Select};

use crate::NotificationError;

type Result<T> = std::result::Result<T, NotificationError>;

const COLUMNS: &str = "id, selector_kind, selector, channel, destination, signing_credential_id, \
    on_started, on_succeeded, on_failed, on_cancelled, description, created_user_id, \
    created_service_id, create_time";

#[derive(sqlx::FromRow)]
struct SubscriptionRow {
    id: String,
    selector_kind: String,
    selector: String,
    channel: i64,
    destination: String,
    signing_credential_id: String,
    on_started: i64,
    on_succeeded: i64,
    on_failed: i64,
    on_cancelled: i64,
    description: String,
    created_user_id: String,
    created_service_id: String,
    create_time: i64,
}

impl From<SubscriptionRow> for Subscription {
    fn from(r: SubscriptionRow) -> Subscription {
        let selector = match r.selector_kind.as_str() {
            "job" => Some(Selector::JobId(r.selector)),
            "schedule" => Some(Selector::ScheduleId(r.selector)),
            "label" => Some(Selector::Label(r.selector)),
            _ => None,
        };
        Subscription {
            id: r.id,
            selector,
            channel: r.channel as i32,
            destination: r.destination,
            outcomes: Some(OutcomeFilter {
                started: r.on_started != 0,
                succeeded: r.on_succeeded != 0,
                failed: r.on_failed != 0,
                cancelled: r.on_cancelled != 0,
            }),
            signing_credential_id: r.signing_credential_id,
            description: r.description,
            created_by: Some(Actor {
                user_id: r.created_user_id,
                service_id: r.created_service_id,
            }),
            create_time: Some(to_timestamp(r.create_time)),
        }
    }
}

/// A selector as stored.
pub fn selector_parts(selector: &Selector) -> (&'static str, &str) {
    match selector {
        Selector::JobId(id) => ("job", id),
        Selector::ScheduleId(id) => ("schedule", id),
        Selector::Label(label) => ("label", label),
    }
}

#[derive(Clone)]
pub struct SubscriptionStore {
    db: Database,
    audit: AuditLog,
}

impl SubscriptionStore {
    pub fn new(db: Database, audit: AuditLog) -> SubscriptionStore {
        SubscriptionStore { db, audit }
    }

    pub async fn create(&self, s: &Subscription, cause: &Cause) -> Result<Subscription> {
        let Some(selector) = &s.selector else {
            return Err(NotificationError::Corrupt(
                "subscription",
                "no selector".into(),
            ));
        };
        let (kind, value) = selector_parts(selector);
        let outcomes = s.outcomes.unwrap_or_default();
        let id = uuid::Uuid::now_v7().to_string();
        let mut tx = self.db.begin().await?;
        sqlx::query(&format!(
            "INSERT INTO subscriptions ({COLUMNS}) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)"
        ))
        .bind(&id)
        .bind(kind)
        .bind(value)
        .bind(i64::from(s.channel))
        .bind(&s.destination)
        .bind(&s.signing_credential_id)
        .bind(i64::from(outcomes.started))
        .bind(i64::from(outcomes.succeeded))
        .bind(i64::from(outcomes.failed))
        .bind(i64::from(outcomes.cancelled))
        .bind(&s.description)
        .bind(&cause.actor.user_id)
        .bind(&cause.actor.service_id)
        .bind(now_micros())
        .execute(&mut *tx)
        .await?;
        let details = [
            ("selector", format!("{kind}:{value}")),
            ("channel", crate::channel_key(s.channel).to_string()),
        ];
        self.audit
            .record(
                &mut tx,
                cause,
                "subscription.create",
                ("subscription", &id),
                &details,
            )
            .await?;
        self.audit.commit(tx).await?;
        self.get(&id).await
    }

    pub async fn get(&self, id: &str) -> Result<Subscription> {
        sqlx::query_as::<_, SubscriptionRow>(&format!(
            "SELECT {COLUMNS} FROM subscriptions WHERE id = $1"
        ))
        .bind(id)
        .fetch_optional(self.db.pool())
        .await?
        .map(Subscription::from)
        .ok_or_else(|| NotificationError::NotFound("subscription", id.to_string()))
    }

    pub async fn list(
        &self,
        selectors: &[(&'static str, String)],
        page: &Page,
    ) -> Result<(Vec<Subscription>, String)> {
        let mut q = Select::new(format!("SELECT {COLUMNS} FROM subscriptions WHERE 1 = 1"));
        for (kind, value) in selectors {
            q.and("selector_kind = {}", *kind)
                .and("selector = {}", value.as_str());
        }
        page.apply(&mut q, "id");
        let rows: Vec<SubscriptionRow> = q.fetch_all(self.db.pool()).await?;
        let mut subscriptions: Vec<Subscription> =
            rows.into_iter().map(Subscription::from).collect();
        let next = page.finish(&mut subscriptions, |s| &s.id);
        Ok((subscriptions, next))
    }

    /// Every subscription matching any of `selectors` (an event's job, schedule and labels).
    pub async fn matching(
        &self,
        selectors: &[(&'static str, String)],
    ) -> Result<Vec<Subscription>> {
        let mut found = Vec::new();
        for (kind, value) in selectors {
            let rows: Vec<SubscriptionRow> = sqlx::query_as(&format!(
                "SELECT {COLUMNS} FROM subscriptions WHERE selector_kind = $1 AND selector = $2 \
                 ORDER BY id"
            ))
            .bind(*kind)
            .bind(value)
            .fetch_all(self.db.pool())
            .await?;
            found.extend(rows.into_iter().map(Subscription::from));
        }
        Ok(found)
    }

    pub async fn delete(&self, id: &str, cause: &Cause) -> Result<()> {
        let mut tx = self.db.begin().await?;
        let deleted = sqlx::query("DELETE FROM subscriptions WHERE id = $1")
            .bind(id)
            .execute(&mut *tx)
            .await?;
        if deleted.rows_affected() == 0 {
            return Ok(());
        }
        self.audit
            .record(
                &mut tx,
                cause,
                "subscription.delete",
                ("subscription", id),
                &[],
            )
            .await?;
        self.audit.commit(tx).await?;
        Ok(())
    }
}
