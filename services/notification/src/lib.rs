//! The notification service: deliveries over email, Slack, Teams and signed webhooks. A
//! delivery is a row — destination and rendered content — and a NotificationRequested naming
//! only its id on the channel's quorum queue; the channel's worker claims the row, sends,
//! records the attempt, and leaves retries (at least the destination's Retry-After apart) and
//! dead letters to the messaging crate's ladder. Run events, expiring credentials and failed
//! schedule fires become deliveries per user preferences (with quiet hours) and subscriptions.

mod api;
mod counters;
mod deliveries;
mod error;
mod events;
mod limits;
mod mask;
mod quiet;
mod secrets;
mod settings;
mod subscriptions;
mod templates;
mod validate;
mod worker;
mod writer;

use std::sync::Arc;

use futures::future::{BoxFuture, FutureExt};
use opsconductor_api::common::v1::NotificationChannel;
use opsconductor_api::notification::v1::notification_service_server::NotificationServiceServer;
use opsconductor_api::notification::v1::NotificationRequested;
use opsconductor_messaging::topology::{platform, WorkQueue};
use opsconductor_messaging::{BrokerUse, Consumer, Handlers, Received, Topology};
use opsconductor_platform::ServiceKind;
use opsconductor_runtime::{
    Built, SecretKind, SecretSpec, ServiceContext, ServiceModule, StartError,
};
use opsconductor_storage::{Database, Migrations};

pub use api::NotificationApi;
pub use error::NotificationError;
pub use settings::Settings;

/// How deliveries record the service acting on its own.
pub(crate) const SERVICE_ID: &str = "notification";

/// The embedded schema, per backend.
pub fn migrations() -> Migrations {
    opsconductor_storage::embedded_migrations!()
}

/// A channel's routing key and queue name part: "email", "slack", "teams", "webhook".
pub(crate) fn channel_key(channel: i32) -> &'static str {
    match NotificationChannel::try_from(channel) {
        Ok(NotificationChannel::Email) => "email",
        Ok(NotificationChannel::Slack) => "slack",
        Ok(NotificationChannel::Teams) => "teams",
        Ok(NotificationChannel::Webhook) => "webhook",
        _ => "unspecified",
    }
}

/// The platform events the service turns into deliveries.
fn event_queues() -> [WorkQueue; 4] {
    [
        platform::run_started_notifications(),
        platform::run_finished_notifications(),
        platform::credential_expiring_notifications(),
        platform::schedule_fire_failed_notifications(),
    ]
}

/// The notification service, as the catalog lists it.
pub struct Notification;

/// A Standard Webhooks secret: `whsec_` and 32 random bytes in base64.
fn webhook_signing_secret() -> String {
    use base64::Engine;
    let bytes = rand::random::<[u8; 32]>();
    format!(
        "whsec_{}",
        base64::engine::general_purpose::STANDARD.encode(bytes)
    )
}

const SECRETS: &[SecretSpec] = &[SecretSpec {
    var: "NOTIFICATION_WEBHOOK_SIGNING_SECRET",
    file: "webhook-signing-secret",
    kind: SecretKind::Random(webhook_signing_secret),
}];

impl ServiceModule for Notification {
    fn kind(&self) -> ServiceKind {
        ServiceKind::Notification
    }

    fn secrets(&self) -> &'static [SecretSpec] {
        SECRETS
    }

    fn broker(&self) -> BrokerUse {
        let channels = platform::NOTIFICATION_CHANNELS
            .map(|c| platform::notification_queue(c).with_retry(settings::default_retry()));
        BrokerUse {
            topology: Topology::new()
                .exchange(platform::notification_exchange())
                .exchange(platform::events_exchange()),
            consumes: channels.into_iter().chain(event_queues()).collect(),
            ..BrokerUse::default()
        }
    }

    fn assemble<'a>(
        &'a self,
        db: Database,
        context: Arc<ServiceContext>,
        env: &'a opsconductor_platform::config::Env,
    ) -> BoxFuture<'a, Result<Built, StartError>> {
        async move {
            let settings = Settings::from_env(env)?;
            let channel_queues: Vec<WorkQueue> = platform::NOTIFICATION_CHANNELS
                .iter()
                .map(|c| platform::notification_queue(c).with_retry(settings.retry.clone()))
                .collect();
            let mut topology = opsconductor_runtime::broker_use(self).topology;
            for queue in &channel_queues {
                topology = topology.queue(queue.clone());
            }
            let messaging = context
                .start_messaging(&db, &migrations(), topology)
                .await?;
            let names = messaging.broker.names();
            let exchange = names.exchange(&platform::notification_exchange());
            let deliveries = deliveries::DeliveryStore::new(
                db.clone(),
                messaging.outbox.clone(),
                messaging.audit.clone(),
                exchange,
                settings.dedupe_window,
            );
            let templates = templates::TemplateStore::new(db.clone(), messaging.audit.clone());
            let subscriptions =
                subscriptions::SubscriptionStore::new(db.clone(), messaging.audit.clone());
            let secrets = secrets::Secrets::new(context.clients().clone(), settings.secret_cache);
            let senders = Arc::new(worker::Senders::new(
                settings.http_sender()?,
                settings.email.clone(),
                secrets,
                settings.default_signing_credential_id.clone(),
                settings.default_signing_key.clone(),
                settings.secret_cache,
            ));
            let sandbox = opsconductor_notify_render::sandbox::Sandbox::start(
                settings.render.program.clone(),
                vec!["render-sandbox".into()],
                settings.render.limits,
            )
            .await
            .map_err(|e| StartError::Service(e.to_string()))?;
            tracing::info!(
                program = %settings.render.program.display(),
                memory_bytes = settings.render.limits.memory_bytes,
                "templates people write render in sandbox processes"
            );
            let notifier = events::Notifier {
                sandbox: Arc::new(sandbox),
                deliveries: deliveries.clone(),
                templates: templates.clone(),
                subscriptions: subscriptions.clone(),
                clients: context.clients().clone(),
                senders: senders.clone(),
            };
            let worker = Arc::new(worker::Worker {
                deliveries: deliveries.clone(),
                senders: senders.clone(),
                limiter: limits::RateLimiter::new(settings.rate_per_minute, settings.rate_burst),
                retry: settings.retry.clone(),
                lease: settings.lease,
                max_limit_wait: settings.max_limit_wait,
                counters: counters::DeliveryCounters::register(context.metrics()),
            });
            let api = NotificationApi {
                deliveries: deliveries.clone(),
                templates,
                subscriptions,
                notifier: notifier.clone(),
                senders,
                clients: context.clients().clone(),
                allow_plain_http: settings.http.allow_plain_http,
            };
            let mut server =
                context.serve(NotificationServiceServer::new(api), db.clone(), &messaging)?;
            for queue in &channel_queues {
                let worker = worker.clone();
                let handlers = Handlers::new().on(move |m: Received<NotificationRequested>| {
                    let worker = worker.clone();
                    async move { worker.handle(m).await }
                });
                let consumer = Consumer::work(&messaging.broker, queue, handlers)
                    .prefetch(settings.concurrency.min(u16::MAX as usize) as u16)
                    .concurrency(settings.concurrency)
                    .start();
                server = server.with_worker(consumer);
            }
            for queue in event_queues() {
                let consumer =
                    Consumer::work(&messaging.broker, &queue, notifier.handlers()).start();
                server = server.with_worker(consumer);
            }
            server = server.with_worker(quiet::spawn_releaser(deliveries, settings.release_poll));
            let dead_letter_queues: Vec<WorkQueue> =
                channel_queues.into_iter().chain(event_queues()).collect();
            let server = context.with_dead_letters(server, db, &messaging, &dead_letter_queues);
            Ok(Built::new(server, context))
        }
        .boxed()
    }
}
