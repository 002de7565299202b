//! The generated `NotificationService` trait over the stores. Each trait method unwraps the
//! request and wraps the answer; the inherent method of the same name does the work.

use std::sync::Arc;

use opsconductor_api::common::v1::NotificationChannel;
use opsconductor_api::notification::v1::notification_service_server::NotificationService;
use opsconductor_api::notification::v1::preview_template_request::Source as PreviewSource;
use opsconductor_api::notification::v1::send_notification_request::{Content, Recipient};
use opsconductor_api::notification::v1::subscription::Selector;
use opsconductor_api::notification::v1::*;
use opsconductor_messaging::Cause;
use opsconductor_notify_render as render;
use opsconductor_platform::client::Clients;
use opsconductor_platform::page::Page;
use opsconductor_platform::principal::Principal;
use opsconductor_platform::time::from_duration;
use opsconductor_platform::validate::{require_id, required, Violations};
use opsconductor_platform::ApiError;
use tonic::{Request, Response, Status};

use crate::deliveries::{DeliveryFilter, DeliveryRow, DeliveryStore, NewDelivery};
use crate::events::Notifier;
use crate::subscriptions::SubscriptionStore;
use crate::templates::TemplateStore;
use crate::validate;
use crate::worker::{Message, Senders};
use crate::{mask, quiet, NotificationError};

type Result<T> = std::result::Result<T, NotificationError>;

const TEMPLATE_FIELDS: [&str; 4] = ["subject", "body", "html_body", "description"];

pub struct NotificationApi {
    pub deliveries: DeliveryStore,
    pub templates: TemplateStore,
    pub subscriptions: SubscriptionStore,
    pub notifier: Notifier,
    pub senders: Arc<Senders>,
    pub clients: Arc<Clients>,
    pub allow_plain_http: bool,
}

/// Who is asking, for the read rules: administrators and services see every delivery; a user
/// sees those addressed to them.
struct Reader {
    all: bool,
    user_id: String,
}

impl Reader {
    fn of(principal: Option<&Principal>) -> Reader {
        match principal {
            Some(p) => Reader {
                all: p.is_admin() || (p.service.is_some() && p.user.is_none()),
                user_id: p.user_id().unwrap_or_default().to_string(),
            },
            None => Reader {
                all: false,
                user_id: String::new(),
            },
        }
    }

    fn may_read(&self, row: &DeliveryRow) -> bool {
        self.all || (!self.user_id.is_empty() && row.user_id == self.user_id)
    }

    fn show(&self, row: DeliveryRow, full: bool) -> Delivery {
        let reveal_email = self.all || row.user_id == self.user_id;
        let mut d = row.into_delivery();
        d.destination = mask::destination(d.channel, &d.destination, reveal_email);
        if !full {
            d.body.clear();
            d.html_body.clear();
        }
        d
    }
}

fn render_violation(prefix: &str, e: &render::RenderError) -> ApiError {
    ApiError::invalid(format!("{prefix}.{}", e.field()), e.to_string())
}

impl NotificationApi {
    fn check_channel_ready(&self, channel: NotificationChannel) -> Result<()> {
        if channel == NotificationChannel::Email && !self.senders.email_configured() {
            return Err(ApiError::FailedPrecondition {
                reason: "CHANNEL_NOT_CONFIGURED",
                message: "email is not configured (NOTIFICATION_SMTP_HOST)".into(),
            }
            .into());
        }
        Ok(())
    }

    async fn send(&self, req: SendNotificationRequest, cause: &Cause) -> Result<Delivery> {
        let mut v = Violations::new();
        validate::idempotency_key(&mut v, &req.idempotency_key);
        let channel = validate::channel(&mut v, "channel", req.channel);
        validate::event_type(&mut v, "event_type", &req.event_type);
        match &req.recipient {
            None => v.add("recipient", "set destination or user_id"),
            Some(Recipient::Destination(d)) => {
                if let Some(c) = channel {
                    validate::destination(&mut v, "destination", c, d, self.allow_plain_http);
                }
            }
            Some(Recipient::UserId(id)) => v.id("user_id", id),
        }
        match &req.content {
            None => v.add("content", "set literal or template"),
            Some(Content::Literal(l)) => {
                v.max_chars("literal.subject", &l.subject, 1024);
                v.required_max("literal.body", &l.body, validate::MAX_BODY);
                if channel == Some(NotificationChannel::Webhook)
                    && serde_json::from_str::<serde_json::Value>(&l.body).is_err()
                {
                    v.add("literal.body", "a webhook body must be JSON");
                }
            }
            Some(Content::Template(t)) => {
                if !t.template_id.is_empty() {
                    v.id("template.template_id", &t.template_id);
                }
                validate::variables(&mut v, "template.variables", &t.variables);
            }
        }
        validate::signing_credential(
            &mut v,
            "signing_credential_id",
            &req.signing_credential_id,
            channel,
        );
        v.finish()?;
        let channel = channel.unwrap_or(NotificationChannel::Unspecified);
        self.check_channel_ready(channel)?;
        let (destination, user_id, signing, defer_until) = match req.recipient.clone() {
            Some(Recipient::UserId(user_id)) => {
                let (destination, signing, defer) =
                    self.user_destination(&user_id, channel, req.urgent).await?;
                (destination, user_id, signing, defer)
            }
            Some(Recipient::Destination(d)) => (d, String::new(), String::new(), None),
            None => return Err(ApiError::invalid("recipient", "is required").into()),
        };
        let signing = if req.signing_credential_id.is_empty() {
            signing
        } else {
            req.signing_credential_id.clone()
        };
        let content = match req.content.clone() {
            Some(Content::Literal(l)) => render::Rendered {
                subject: l.subject.replace(['\r', '\n'], " "),
                body: l.body,
                ..Default::default()
            },
            Some(Content::Template(t)) => {
                let context = render::context_from_variables(&t.variables);
                if t.template_id.is_empty() {
                    self.notifier
                        .render(channel, &req.event_type, &context)
                        .await?
                } else {
                    let stored = self.templates.get(&t.template_id).await?;
                    if stored.channel != channel as i32 {
                        return Err(ApiError::invalid(
                            "template.template_id",
                            "the template is for another channel",
                        )
                        .into());
                    }
                    let source = render::Source {
                        subject: &stored.subject,
                        body: &stored.body,
                        html_body: &stored.html_body,
                    };
                    self.notifier
                        .sandbox
                        .render(channel, &source, &context)
                        .await?
                        .map_err(|e| NotificationError::Render(e.to_string()))?
                }
            }
            None => return Err(ApiError::invalid("content", "is required").into()),
        };
        let new = NewDelivery {
            channel: channel as i32,
            destination,
            signing_credential_id: signing,
            user_id,
            subscription_id: String::new(),
            event_type: req.event_type.clone(),
            subject: content.subject,
            body: content.body,
            html_body: content.html_body,
            urgent: req.urgent,
            defer_until,
            requested_by: cause.actor.clone(),
            caller: format!("{}/{}", cause.actor.service_id, cause.actor.user_id),
            idempotency_key: req.idempotency_key.clone(),
            request_hash: validate::request_hash(&req),
        };
        self.deliveries.create(&new).await
    }

    /// A user's enabled destination for `channel`, its signing credential, and how long quiet
    /// hours hold a non-urgent delivery.
    async fn user_destination(
        &self,
        user_id: &str,
        channel: NotificationChannel,
        urgent: bool,
    ) -> Result<(String, String, Option<i64>)> {
        let prefs = self
            .notifier
            .preferences(user_id)
            .await?
            .ok_or_else(|| ApiError::invalid("user_id", "no user has this id"))?;
        let found = prefs
            .destinations
            .iter()
            .find(|d| d.enabled && d.channel == channel as i32)
            .ok_or(NotificationError::NoDestination)?;
        let defer = quiet::held_until(&prefs, urgent);
        Ok((
            found.destination.clone(),
            found.signing_credential_id.clone(),
            defer,
        ))
    }

    fn check_template(v: &mut Violations, t: &Template) -> Option<NotificationChannel> {
        let channel = validate::channel(v, "template.channel", t.channel);
        validate::event_type(v, "template.event_type", &t.event_type);
        v.max_chars("template.subject", &t.subject, 1024);
        v.required_max("template.body", &t.body, validate::MAX_BODY);
        v.max_chars("template.html_body", &t.html_body, validate::MAX_BODY);
        if !t.html_body.is_empty() && channel.is_some_and(|c| c != NotificationChannel::Email) {
            v.add("template.html_body", "only email has an HTML body");
        }
        v.max_chars("template.description", &t.description, 1024);
        v.printable("template.description", &t.description);
        channel
    }

    /// Parses the template and renders it with the event's sample, so a template that cannot
    /// work is refused when saved rather than when a run fails at night.
    async fn check_renders(&self, t: &Template, channel: NotificationChannel) -> Result<()> {
        let source = render::Source {
            subject: &t.subject,
            body: &t.body,
            html_body: &t.html_body,
        };
        render::check(channel, &source).map_err(|e| render_violation("template", &e))?;
        self.notifier
            .sandbox
            .render(channel, &source, &render::sample(&t.event_type))
            .await?
            .map_err(|e| render_violation("template", &e))?;
        Ok(())
    }

    async fn create_template(&self, req: CreateTemplateRequest, cause: &Cause) -> Result<Template> {
        let t = required("template", req.template)?;
        let mut v = Violations::new();
        let channel = Self::check_template(&mut v, &t);
        v.finish()?;
        self.check_renders(&t, channel.unwrap_or(NotificationChannel::Unspecified))
            .await?;
        self.templates.create(&t, cause).await
    }

    async fn update_template(&self, req: UpdateTemplateRequest, cause: &Cause) -> Result<Template> {
        let patch = required("template", req.template)?;
        let mut v = Violations::new();
        v.id("template.id", &patch.id);
        let paths = v.update_mask(req.update_mask, &TEMPLATE_FIELDS);
        v.finish()?;
        let mut t = self.templates.get(&patch.id).await?;
        for path in &paths {
            match path.as_str() {
                "subject" => t.subject = patch.subject.clone(),
                "body" => t.body = patch.body.clone(),
                "html_body" => t.html_body = patch.html_body.clone(),
                "description" => t.description = patch.description.clone(),
                _ => {}
            }
        }
        let mut v = Violations::new();
        let channel = Self::check_template(&mut v, &t);
        v.finish()?;
        self.check_renders(&t, channel.unwrap_or(NotificationChannel::Unspecified))
            .await?;
        self.templates.update(&t, &paths, cause).await
    }

    async fn preview(&self, req: PreviewTemplateRequest) -> Result<PreviewTemplateResponse> {
        let mut v = Violations::new();
        validate::variables(&mut v, "variables", &req.variables);
        let template = match req.source {
            None => {
                v.add("source", "set template_id or template");
                None
            }
            Some(PreviewSource::TemplateId(id)) => {
                v.id("template_id", &id);
                v.finish()?;
                return self.preview_stored(&id, &req.variables).await;
            }
            Some(PreviewSource::Template(t)) => {
                let channel = validate::channel(&mut v, "template.channel", t.channel);
                v.max_chars("template.subject", &t.subject, 1024);
                v.required_max("template.body", &t.body, validate::MAX_BODY);
                v.max_chars("template.html_body", &t.html_body, validate::MAX_BODY);
                channel.map(|c| (c, t))
            }
        };
        v.finish()?;
        let Some((channel, t)) = template else {
            return Err(ApiError::invalid("source", "is required").into());
        };
        self.render_preview(channel, &t, &req.variables).await
    }

    async fn preview_stored(
        &self,
        id: &str,
        variables: &std::collections::HashMap<String, String>,
    ) -> Result<PreviewTemplateResponse> {
        let t = self.templates.get(id).await?;
        let channel =
            NotificationChannel::try_from(t.channel).unwrap_or(NotificationChannel::Unspecified);
        self.render_preview(channel, &t, variables).await
    }

    /// With no variables, the event type's sample context: what a real event would show.
    async fn render_preview(
        &self,
        channel: NotificationChannel,
        t: &Template,
        variables: &std::collections::HashMap<String, String>,
    ) -> Result<PreviewTemplateResponse> {
        let context = if variables.is_empty() {
            render::sample(&t.event_type)
        } else {
            render::context_from_variables(variables)
        };
        let source = render::Source {
            subject: &t.subject,
            body: &t.body,
            html_body: &t.html_body,
        };
        let rendered = self
            .notifier
            .sandbox
            .render(channel, &source, &context)
            .await?
            .map_err(|e| render_violation("template", &e))?;
        Ok(PreviewTemplateResponse {
            subject: rendered.subject,
            body: rendered.body,
            missing_variables: rendered.missing_variables,
        })
    }

    async fn get_delivery(&self, id: &str, reader: &Reader) -> Result<Delivery> {
        require_id("id", id)?;
        let row = self.deliveries.get(id).await?;
        // Someone else's delivery does not exist, as far as the caller can tell.
        if !reader.may_read(&row) {
            return Err(NotificationError::NotFound("delivery", id.to_string()));
        }
        let attempts = self.deliveries.attempts(id).await?;
        let mut d = reader.show(row, true);
        d.attempt_log = attempts;
        Ok(d)
    }

    async fn list_deliveries(
        &self,
        req: ListDeliveriesRequest,
        reader: &Reader,
    ) -> Result<ListDeliveriesResponse> {
        let mut v = Violations::new();
        let page = Page::parse(req.page_size, &req.page_token, &mut v);
        let channel = (req.channel != 0)
            .then(|| validate::channel(&mut v, "channel", req.channel))
            .flatten();
        if req.state != 0 && DeliveryState::try_from(req.state).is_err() {
            v.add("state", "is not a delivery state");
        }
        if !req.user_id.is_empty() {
            v.id("user_id", &req.user_id);
        }
        if !req.subscription_id.is_empty() {
            v.id("subscription_id", &req.subscription_id);
        }
        if !req.event_type.is_empty() {
            validate::event_type(&mut v, "event_type", &req.event_type);
        }
        v.finish()?;
        let user_id = if reader.all {
            (!req.user_id.is_empty()).then(|| req.user_id.clone())
        } else {
            if !req.user_id.is_empty() && req.user_id != reader.user_id {
                return Err(ApiError::PermissionDenied(
                    "only administrators list other users' deliveries".into(),
                )
                .into());
            }
            Some(reader.user_id.clone())
        };
        let filter = DeliveryFilter {
            channel: channel.map(|c| c as i32),
            state: (req.state != 0).then_some(req.state),
            user_id,
            event_type: (!req.event_type.is_empty()).then(|| req.event_type.clone()),
            subscription_id: (!req.subscription_id.is_empty()).then(|| req.subscription_id.clone()),
        };
        let mut rows = self
            .deliveries
            .list(&filter, page.fetch_limit(), page.after.as_deref())
            .await?;
        let next_page_token = page.finish(&mut rows, |r| &r.id);
        Ok(ListDeliveriesResponse {
            deliveries: rows.into_iter().map(|r| reader.show(r, false)).collect(),
            next_page_token,
        })
    }

    async fn test_channel(&self, req: TestChannelRequest) -> Result<TestChannelResponse> {
        let mut v = Violations::new();
        let channel = validate::channel(&mut v, "channel", req.channel);
        if let Some(c) = channel {
            validate::destination(
                &mut v,
                "destination",
                c,
                &req.destination,
                self.allow_plain_http,
            );
        }
        v.max_chars("message", &req.message, 4096);
        validate::signing_credential(
            &mut v,
            "signing_credential_id",
            &req.signing_credential_id,
            channel,
        );
        v.finish()?;
        let channel = channel.unwrap_or(NotificationChannel::Unspecified);
        self.check_channel_ready(channel)?;
        let mut context = render::sample("test");
        if !req.message.is_empty() {
            context["message"] = serde_json::Value::String(req.message.clone());
        }
        let content = render::render(channel, &render::builtin(channel, "test"), &context)
            .map_err(|e| NotificationError::Render(e.to_string()))?;
        let id = uuid::Uuid::now_v7().to_string();
        let message = Message {
            id: &id,
            channel,
            destination: &req.destination,
            subject: &content.subject,
            body: &content.body,
            html_body: &content.html_body,
            signing_credential_id: &req.signing_credential_id,
        };
        let attempt = self
            .senders
            .send(&message)
            .await
            .map_err(|e| ApiError::Unavailable {
                message: e.to_string(),
                retry_after: std::time::Duration::from_secs(1),
            })?;
        Ok(TestChannelResponse {
            delivered: attempt.is_delivered(),
            error: attempt.error,
            latency: Some(from_duration(attempt.latency)),
            status: attempt.status.map(u32::from).unwrap_or(0),
        })
    }

    async fn create_subscription(
        &self,
        req: CreateSubscriptionRequest,
        cause: &Cause,
    ) -> Result<Subscription> {
        let s = required("subscription", req.subscription)?;
        let mut v = Violations::new();
        match &s.selector {
            None => v.add("subscription.selector", "set job_id, schedule_id or label"),
            Some(Selector::JobId(id)) => v.id("subscription.job_id", id),
            Some(Selector::ScheduleId(id)) => v.id("subscription.schedule_id", id),
            Some(Selector::Label(label)) => validate::label(&mut v, "subscription.label", label),
        }
        let channel = validate::channel(&mut v, "subscription.channel", s.channel);
        if let Some(c) = channel {
            validate::destination(
                &mut v,
                "subscription.destination",
                c,
                &s.destination,
                self.allow_plain_http,
            );
        }
        let o = s.outcomes.unwrap_or_default();
        v.check(
            o.started || o.succeeded || o.failed || o.cancelled,
            "subscription.outcomes",
            "name at least one outcome",
        );
        validate::signing_credential(
            &mut v,
            "subscription.signing_credential_id",
            &s.signing_credential_id,
            channel,
        );
        v.max_chars("subscription.description", &s.description, 1024);
        v.printable("subscription.description", &s.description);
        v.finish()?;
        if let Some(c) = channel {
            self.check_channel_ready(c)?;
        }
        self.subscriptions.create(&s, cause).await
    }

    async fn list_subscriptions(
        &self,
        req: ListSubscriptionsRequest,
    ) -> Result<ListSubscriptionsResponse> {
        let mut v = Violations::new();
        let page = Page::parse(req.page_size, &req.page_token, &mut v);
        let mut selectors: Vec<(&'static str, String)> = Vec::new();
        if !req.job_id.is_empty() {
            v.id("job_id", &req.job_id);
            selectors.push(("job", req.job_id.clone()));
        }
        if !req.schedule_id.is_empty() {
            v.id("schedule_id", &req.schedule_id);
            selectors.push(("schedule", req.schedule_id.clone()));
        }
        if !req.label.is_empty() {
            validate::label(&mut v, "label", &req.label);
            selectors.push(("label", req.label.clone()));
        }
        v.finish()?;
        let (subscriptions, next_page_token) = self.subscriptions.list(&selectors, &page).await?;
        Ok(ListSubscriptionsResponse {
            subscriptions: subscriptions.into_iter().map(masked).collect(),
            next_page_token,
        })
    }

    async fn delete_subscription(
        &self,
        id: &str,
        principal: Option<&Principal>,
        cause: &Cause,
    ) -> Result<()> {
        require_id("id", id)?;
        let s = match self.subscriptions.get(id).await {
            Ok(s) => s,
            Err(NotificationError::NotFound(..)) => return Ok(()),
            Err(e) => return Err(e),
        };
        let creator = s.created_by.map(|a| a.user_id).unwrap_or_default();
        let admin = principal.is_some_and(Principal::is_admin);
        let own = principal
            .and_then(Principal::user_id)
            .is_some_and(|u| u == creator);
        if !admin && !own {
            return Err(ApiError::PermissionDenied(
                "only its creator or an administrator deletes a subscription".into(),
            )
            .into());
        }
        self.subscriptions.delete(id, cause).await
    }
}

fn masked(mut s: Subscription) -> Subscription {
    s.destination = mask::destination(s.channel, &s.destination, false);
    s
}

#[tonic::async_trait]
impl NotificationService for NotificationApi {
    async fn send_notification(
        &self,
        request: Request<SendNotificationRequest>,
    ) -> std::result::Result<Response<SendNotificationResponse>, Status> {
        let cause = Cause::from_request(&request);
        let reader = Reader::of(Principal::from_request(&request));
        let delivery = self.send(request.into_inner(), &cause).await?;
        let mut delivery = delivery;
        delivery.destination =
            mask::destination(delivery.channel, &delivery.destination, reader.all);
        Ok(Response::new(SendNotificationResponse {
            delivery: Some(delivery),
        }))
    }

    async fn create_template(
        &self,
        request: Request<CreateTemplateRequest>,
    ) -> std::result::Result<Response<CreateTemplateResponse>, Status> {
        let cause = Cause::from_request(&request);
        let template = self.create_template(request.into_inner(), &cause).await?;
        Ok(Response::new(CreateTemplateResponse {
            template: Some(template),
        }))
    }

    async fn get_template(
        &self,
        request: Request<GetTemplateRequest>,
    ) -> std::result::Result<Response<GetTemplateResponse>, Status> {
        let id = request.into_inner().id;
        require_id("id", &id).map_err(NotificationError::from)?;
        let template = self.templates.get(&id).await?;
        Ok(Response::new(GetTemplateResponse {
            template: Some(template),
        }))
    }

    async fn list_templates(
        &self,
        request: Request<ListTemplatesRequest>,
    ) -> std::result::Result<Response<ListTemplatesResponse>, Status> {
        let req = request.into_inner();
        let mut v = Violations::new();
        let page = Page::parse(req.page_size, &req.page_token, &mut v);
        let channel = (req.channel != 0)
            .then(|| validate::channel(&mut v, "channel", req.channel))
            .flatten();
        if !req.event_type.is_empty() {
            validate::event_type(&mut v, "event_type", &req.event_type);
        }
        v.finish().map_err(NotificationError::from)?;
        let event_type = (!req.event_type.is_empty()).then_some(req.event_type.as_str());
        let (templates, next_page_token) = self
            .templates
            .list(channel.map(|c| c as i32), event_type, &page)
            .await?;
        Ok(Response::new(ListTemplatesResponse {
            templates,
            next_page_token,
        }))
    }

    async fn update_template(
        &self,
        request: Request<UpdateTemplateRequest>,
    ) -> std::result::Result<Response<UpdateTemplateResponse>, Status> {
        let cause = Cause::from_request(&request);
        let template = self.update_template(request.into_inner(), &cause).await?;
        Ok(Response::new(UpdateTemplateResponse {
            template: Some(template),
        }))
    }

    async fn delete_template(
        &self,
        request: Request<DeleteTemplateRequest>,
    ) -> std::result::Result<Response<DeleteTemplateResponse>, Status> {
        let cause = Cause::from_request(&request);
        let id = request.into_inner().id;
        require_id("id", &id).map_err(NotificationError::from)?;
        self.templates.delete(&id, &cause).await?;
        Ok(Response::new(DeleteTemplateResponse {}))
    }

    async fn preview_template(
        &self,
        request: Request<PreviewTemplateRequest>,
    ) -> std::result::Result<Response<PreviewTemplateResponse>, Status> {
        Ok(Response::new(self.preview(request.into_inner()).await?))
    }

    async fn resend_delivery(
        &self,
        request: Request<ResendDeliveryRequest>,
    ) -> std::result::Result<Response<ResendDeliveryResponse>, Status> {
        let cause = Cause::from_request(&request);
        let id = request.into_inner().id;
        require_id("id", &id).map_err(NotificationError::from)?;
        let mut delivery = self.deliveries.resend(&id, &cause).await?;
        delivery.destination = mask::destination(delivery.channel, &delivery.destination, true);
        Ok(Response::new(ResendDeliveryResponse {
            delivery: Some(delivery),
        }))
    }

    async fn get_delivery(
        &self,
        request: Request<GetDeliveryRequest>,
    ) -> std::result::Result<Response<GetDeliveryResponse>, Status> {
        let reader = Reader::of(Principal::from_request(&request));
        let delivery = self.get_delivery(&request.into_inner().id, &reader).await?;
        Ok(Response::new(GetDeliveryResponse {
            delivery: Some(delivery),
        }))
    }

    async fn list_deliveries(
        &self,
        request: Request<ListDeliveriesRequest>,
    ) -> std::result::Result<Response<ListDeliveriesResponse>, Status> {
        let reader = Reader::of(Principal::from_request(&request));
        Ok(Response::new(
            self.list_deliveries(request.into_inner(), &reader).await?,
        ))
    }

    async fn test_channel(
        &self,
        request: Request<TestChannelRequest>,
    ) -> std::result::Result<Response<TestChannelResponse>, Status> {
        Ok(Response::new(
            self.test_channel(request.into_inner()).await?,
        ))
    }

    async fn create_subscription(
        &self,
        request: Request<CreateSubscriptionRequest>,
    ) -> std::result::Result<Response<CreateSubscriptionResponse>, Status> {
        let cause = Cause::from_request(&request);
        let s = self
            .create_subscription(request.into_inner(), &cause)
            .await?;
        Ok(Response::new(CreateSubscriptionResponse {
            subscription: Some(masked(s)),
        }))
    }

    async fn get_subscription(
        &self,
        request: Request<GetSubscriptionRequest>,
    ) -> std::result::Result<Response<GetSubscriptionResponse>, Status> {
        let id = request.into_inner().id;
        require_id("id", &id).map_err(NotificationError::from)?;
        let s = self.subscriptions.get(&id).await?;
        Ok(Response::new(GetSubscriptionResponse {
            subscription: Some(masked(s)),
        }))
    }

    async fn list_subscriptions(
        &self,
        request: Request<ListSubscriptionsRequest>,
    ) -> std::result::Result<Response<ListSubscriptionsResponse>, Status> {
        Ok(Response::new(
            self.list_subscriptions(request.into_inner()).await?,
        ))
    }

    async fn delete_subscription(
        &self,
        request: Request<DeleteSubscriptionRequest>,
    ) -> std::result::Result<Response<DeleteSubscriptionResponse>, Status> {
        let cause = Cause::from_request(&request);
        let principal = Principal::from_request(&request).cloned();
        let id = request.into_inner().id;
        self.delete_subscription(&id, principal.as_ref(), &cause)
            .await?;
        Ok(Response::new(DeleteSubscriptionResponse {}))
    }
}
