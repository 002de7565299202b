//! Platform events become deliveries: RunStarted/RunFinished notify the user the run ran for
//! (per their preferences) and the matching subscriptions; an expiring credential notifies the
//! administrators; a failed schedule fire notifies the schedule's owner and its subscriptions.
//! Each delivery's idempotency key is the event's message id and the recipient, so a
//! redelivered event creates nothing twice.

use std::sync::Arc;

use opsconductor_api::common::v1::{Actor, NotificationChannel, Role};
use opsconductor_api::credentials::v1::CredentialExpiring;
use opsconductor_api::jobs::v1::{RunFinished, RunStarted};
use opsconductor_api::notification::v1::{OutcomeFilter, Subscription};
use opsconductor_api::scheduler::v1::ScheduleFireFailed;
use opsconductor_api::user::v1::{
    GetNotificationPreferencesRequest, ListUsersRequest, NotificationPreferences,
};
use opsconductor_messaging::{HandleError, Handlers, Received};
use opsconductor_notify_render as render;
use opsconductor_platform::client::Clients;
use tonic::Code;

use crate::deliveries::{DeliveryStore, NewDelivery};
use crate::subscriptions::SubscriptionStore;
use crate::templates::TemplateStore;
use crate::worker::Senders;
use crate::{quiet, NotificationError, SERVICE_ID};

/// One destination an event goes to.
struct Recipient {
    key: String,
    channel: i32,
    destination: String,
    signing_credential_id: String,
    user_id: String,
    subscription_id: String,
    defer_until: Option<i64>,
}

#[derive(Clone)]
pub struct Notifier {
    pub deliveries: DeliveryStore,
    pub templates: TemplateStore,
    pub subscriptions: SubscriptionStore,
    pub clients: Arc<Clients>,
    pub senders: Arc<Senders>,
    /// Where templates people wrote are rendered; built-in texts render in-process.
    pub sandbox: Arc<render::sandbox::Sandbox>,
}

/// Which outcome flag of a subscription an event type needs.
fn wanted(filter: &OutcomeFilter, event_type: &str) -> bool {
    match event_type {
        "run.started" => filter.started,
        "run.succeeded" => filter.succeeded,
        "run.failed" | "schedule.fire_failed" => filter.failed,
        "run.cancelled" => filter.cancelled,
        _ => false,
    }
}

fn retry(e: NotificationError) -> HandleError {
    HandleError::retry(e)
}

impl Notifier {
    pub fn handlers(&self) -> Handlers {
        let (a, b, c, d) = (self.clone(), self.clone(), self.clone(), self.clone());
        Handlers::new()
            .on(move |e: Received<RunStarted>| {
                let n = a.clone();
                async move { n.run_started(e).await.map_err(retry) }
            })
            .on(move |e: Received<RunFinished>| {
                let n = b.clone();
                async move { n.run_finished(e).await.map_err(retry) }
            })
            .on(move |e: Received<CredentialExpiring>| {
                let n = c.clone();
                async move { n.credential_expiring(e).await.map_err(retry) }
            })
            .on(move |e: Received<ScheduleFireFailed>| {
                let n = d.clone();
                async move { n.schedule_fire_failed(e).await.map_err(retry) }
            })
    }

    async fn run_started(&self, e: Received<RunStarted>) -> Result<(), NotificationError> {
        let run = &e.message;
        let event_type = "run.started";
        let owner = run_owner(
            run.triggered_by.as_ref(),
            run.trigger.as_ref().map(|t| &t.owner_user_id),
        );
        let mut recipients = self
            .user_recipients(&owner, |p| p.notify_on_start, false)
            .await?;
        let schedule_id = run
            .trigger
            .as_ref()
            .map(|t| t.schedule_id.as_str())
            .unwrap_or("");
        recipients.extend(
            self.subscribers(&run.job_id, schedule_id, &run.labels, event_type)
                .await?,
        );
        let context = render::run_started_context(run);
        self.notify(&e.meta.message_id, event_type, &context, recipients, false)
            .await
    }

    async fn run_finished(&self, e: Received<RunFinished>) -> Result<(), NotificationError> {
        let run = &e.message;
        let event_type = render::run_finished_event_type(run);
        let failed = event_type == "run.failed";
        let owner = run_owner(
            run.triggered_by.as_ref(),
            run.trigger.as_ref().map(|t| &t.owner_user_id),
        );
        let mut recipients = match event_type {
            "run.succeeded" => {
                self.user_recipients(&owner, |p| p.notify_on_success, false)
                    .await?
            }
            "run.failed" => {
                self.user_recipients(&owner, |p| p.notify_on_failure, true)
                    .await?
            }
            _ => Vec::new(),
        };
        recipients.extend(
            self.subscribers(&run.job_id, &run.schedule_id, &run.labels, event_type)
                .await?,
        );
        let context = render::run_finished_context(run);
        self.notify(&e.meta.message_id, event_type, &context, recipients, failed)
            .await
    }

    async fn credential_expiring(
        &self,
        e: Received<CredentialExpiring>,
    ) -> Result<(), NotificationError> {
        let mut recipients = Vec::new();
        for admin in self.administrators().await? {
            recipients.extend(self.user_recipients(&admin, |_| true, false).await?);
        }
        let context = render::credential_expiring_context(&e.message);
        self.notify(
            &e.meta.message_id,
            "credential.expiring",
            &context,
            recipients,
            false,
        )
        .await
    }

    async fn schedule_fire_failed(
        &self,
        e: Received<ScheduleFireFailed>,
    ) -> Result<(), NotificationError> {
        let event = &e.message;
        let event_type = "schedule.fire_failed";
        let mut recipients = self
            .user_recipients(&event.owner_user_id, |p| p.notify_on_failure, true)
            .await?;
        recipients.extend(
            self.subscribers(
                &event.job_id,
                &event.schedule_id,
                &Default::default(),
                event_type,
            )
            .await?,
        );
        let context = render::schedule_fire_failed_context(event);
        self.notify(&e.meta.message_id, event_type, &context, recipients, true)
            .await
    }

    /// The enabled destinations of `user_id` when `wants` their preferences; quiet hours hold
    /// back what is not `urgent`.
    async fn user_recipients(
        &self,
        user_id: &str,
        wants: impl Fn(&NotificationPreferences) -> bool,
        urgent: bool,
    ) -> Result<Vec<Recipient>, NotificationError> {
        if user_id.is_empty() {
            return Ok(Vec::new());
        }
        let Some(prefs) = self.preferences(user_id).await? else {
            // A user deleted since the run started hears nothing.
            return Ok(Vec::new());
        };
        if !wants(&prefs) {
            return Ok(Vec::new());
        }
        let defer_until = quiet::held_until(&prefs, urgent);
        Ok(prefs
            .destinations
            .into_iter()
            .filter(|d| d.enabled)
            .enumerate()
            .map(|(i, d)| Recipient {
                key: format!("user/{user_id}/{i}"),
                channel: d.channel,
                destination: d.destination,
                signing_credential_id: d.signing_credential_id,
                user_id: user_id.to_string(),
                subscription_id: String::new(),
                defer_until,
            })
            .collect())
    }

    /// A user's notification preferences; `None` when there is no such user.
    pub async fn preferences(
        &self,
        user_id: &str,
    ) -> Result<Option<NotificationPreferences>, NotificationError> {
        let request = GetNotificationPreferencesRequest {
            user_id: user_id.to_string(),
        };
        match self
            .clients
            .user()
            .get_notification_preferences(request)
            .await
        {
            Ok(r) => Ok(Some(r.into_inner().preferences.unwrap_or_default())),
            Err(s) if s.code() == Code::NotFound => Ok(None),
            Err(s) => Err(NotificationError::Upstream(
                opsconductor_platform::ApiError::from_status(&s),
            )),
        }
    }

    async fn subscribers(
        &self,
        job_id: &str,
        schedule_id: &str,
        labels: &std::collections::HashMap<String, String>,
        event_type: &str,
    ) -> Result<Vec<Recipient>, NotificationError> {
        let mut selectors = Vec::new();
        if !job_id.is_empty() {
            selectors.push(("job", job_id.to_string()));
        }
        if !schedule_id.is_empty() {
            selectors.push(("schedule", schedule_id.to_string()));
        }
        let mut labels: Vec<_> = labels.iter().collect();
        labels.sort();
        selectors.extend(
            labels
                .into_iter()
                .map(|(k, v)| ("label", format!("{k}={v}"))),
        );
        let found = self.subscriptions.matching(&selectors).await?;
        Ok(found
            .into_iter()
            .filter(|s: &Subscription| wanted(&s.outcomes.unwrap_or_default(), event_type))
            .map(|s| Recipient {
                key: format!("subscription/{}", s.id),
                channel: s.channel,
                destination: s.destination,
                signing_credential_id: s.signing_credential_id,
                user_id: String::new(),
                subscription_id: s.id,
                defer_until: None,
            })
            .collect())
    }

    async fn administrators(&self) -> Result<Vec<String>, NotificationError> {
        let mut ids = Vec::new();
        let mut page_token = String::new();
        loop {
            let request = ListUsersRequest {
                page_size: 500,
                page_token: page_token.clone(),
                role: Role::Admin as i32,
                ..Default::default()
            };
            let page = self
                .clients
                .user()
                .list_users(request)
                .await
                .map_err(|s| {
                    NotificationError::Upstream(opsconductor_platform::ApiError::from_status(&s))
                })?
                .into_inner();
            ids.extend(page.users.into_iter().map(|u| u.id));
            if page.next_page_token.is_empty() {
                return Ok(ids);
            }
            page_token = page.next_page_token;
        }
    }

    /// Renders and stores one delivery per recipient (idempotently, keyed by the event).
    async fn notify(
        &self,
        event_id: &str,
        event_type: &str,
        context: &render::Value,
        recipients: Vec<Recipient>,
        urgent: bool,
    ) -> Result<(), NotificationError> {
        for r in recipients {
            let channel = NotificationChannel::try_from(r.channel)
                .unwrap_or(NotificationChannel::Unspecified);
            if channel == NotificationChannel::Email && !self.senders.email_configured() {
                tracing::debug!(
                    event_type,
                    "email is not configured; not notifying by email"
                );
                continue;
            }
            let content = self.render(channel, event_type, context).await?;
            let new = NewDelivery {
                channel: r.channel,
                destination: r.destination,
                signing_credential_id: r.signing_credential_id,
                user_id: r.user_id,
                subscription_id: r.subscription_id,
                event_type: event_type.to_string(),
                subject: content.subject,
                body: content.body,
                html_body: content.html_body,
                urgent,
                defer_until: r.defer_until,
                requested_by: Actor {
                    user_id: String::new(),
                    service_id: SERVICE_ID.into(),
                },
                caller: "events".into(),
                idempotency_key: format!("{event_id}/{}", r.key),
                request_hash: String::new(),
            };
            self.deliveries.create(&new).await?;
        }
        Ok(())
    }

    /// The stored template of (channel, event), or the built-in one when there is none or it
    /// fails on this event (a broken template must not swallow a failure notice).
    pub async fn render(
        &self,
        channel: NotificationChannel,
        event_type: &str,
        context: &render::Value,
    ) -> Result<render::Rendered, NotificationError> {
        if let Some(t) = self.templates.find(channel as i32, event_type).await? {
            let source = render::Source {
                subject: &t.subject,
                body: &t.body,
                html_body: &t.html_body,
            };
            match self.sandbox.render(channel, &source, context).await? {
                Ok(rendered) => return Ok(rendered),
                Err(e) => {
                    tracing::warn!(template_id = %t.id, error = %e, "template failed; using the built-in text")
                }
            }
        }
        render::render(channel, &render::builtin(channel, event_type), context)
            .map_err(|e| NotificationError::Render(e.to_string()))
    }
}

/// Who a run ran for: the schedule's owner for a scheduled run, else the user who started it.
fn run_owner(triggered_by: Option<&Actor>, schedule_owner: Option<&String>) -> String {
    schedule_owner
        .filter(|o| !o.is_empty())
        .cloned()
        .or_else(|| triggered_by.map(|a| a.user_id.clone()))
        .unwrap_or_default()
}
