//! The executor: competes for `RunRequested` with its replicas, claims runs from the jobs
//! service under a lease, runs their steps (shell on this host as an unprivileged user, ssh on
//! targets, http) and reports back. It keeps nothing of its own: a run it holds lives in the
//! jobs service, so if this process dies the reaper gives the run to another executor.

mod api;
mod contain;
mod http;
mod instance;
mod logs;
mod mask;
mod runner;
mod shell;
mod ssh;

use std::sync::Arc;
use std::time::Duration;

use futures::future::{BoxFuture, FutureExt};
use opsconductor_api::executor::v1::executor_service_server::ExecutorServiceServer;
use opsconductor_api::jobs::v1::{RunCancelRequested, RunRequested};
use opsconductor_messaging::topology::platform;
use opsconductor_messaging::{BrokerUse, Consumer, HandleError, Handlers, Received};
use opsconductor_platform::config::{ConfigError, Env};
use opsconductor_platform::server::Worker;
use opsconductor_platform::ServiceKind;
use opsconductor_runtime::{Built, ServiceContext, ServiceModule, StartError};
use opsconductor_storage::{Database, Migrations};

pub use instance::{Instance, Stop};
pub use shell::StepUser;

/// The embedded schema, per backend (only the messaging tables).
pub fn migrations() -> Migrations {
    opsconductor_storage::embedded_migrations!()
}

/// How long a run request waits for a free slot before it goes back to the queue.
const SLOT_WAIT: Duration = Duration::from_secs(20);

/// How the executor runs (docs/configuration.md).
struct Settings {
    capacity: u32,
    contain: contain::Containment,
    /// Non-public networks http steps may reach (public addresses always).
    http_networks: opsconductor_egress::Policy,
    log_limits: logs::Limits,
}

impl Settings {
    fn from_env(env: &Env) -> Result<Settings, ConfigError> {
        let capacity = env.bounded("EXECUTOR_CAPACITY", 8, 1..=1024)? as u32;
        // Never run steps as root: a uid of their own each (contain.rs).
        let contain = contain::Containment::from_env(env)?;
        let networks = env.get("EXECUTOR_HTTP_ALLOW_NETWORKS").unwrap_or_default();
        let http_networks = opsconductor_egress::Policy::parse(&networks)
            .map_err(|e| ConfigError::invalid("EXECUTOR_HTTP_ALLOW_NETWORKS", &networks, e))?;
        let log_limits = logs::Limits {
            run_bytes: env.bounded(
                "EXECUTOR_LOG_MAX_BYTES",
                logs::Limits::default().run_bytes as u64,
                64 * 1024..=1024 * 1024 * 1024,
            )? as usize,
            line_bytes: env.bounded(
                "EXECUTOR_LOG_LINE_BYTES",
                logs::MAX_LINE_BYTES as u64,
                256..=logs::MAX_LINE_BYTES as u64,
            )? as usize,
        };
        Ok(Settings {
            capacity,
            contain,
            log_limits,
            http_networks,
        })
    }
}

/// The executor service, as the catalog lists it.
pub struct Executor;

impl ServiceModule for Executor {
    fn kind(&self) -> ServiceKind {
        ServiceKind::Executor
    }

    fn broker(&self) -> BrokerUse {
        BrokerUse {
            consumes: vec![platform::run_requests()],
            listens: vec![platform::run_cancellations()],
            ..BrokerUse::default()
        }
    }

    fn assemble<'a>(
        &'a self,
        db: Database,
        context: Arc<ServiceContext>,
        env: &'a Env,
    ) -> BoxFuture<'a, Result<Built, StartError>> {
        async move {
            let settings = Settings::from_env(env)?;
            let topology = opsconductor_runtime::broker_use(self).topology;
            let messaging = context
                .start_messaging(&db, &migrations(), topology)
                .await?;
            let service_id = env.get("SERVICE_ID").unwrap_or_else(|| "executor".into());
            let instance = Arc::new(Instance::new(&service_id, settings.capacity));
            settings.contain.announce();
            let truncated_logs = prometheus_client::metrics::counter::Counter::default();
            context.metrics().register(
                "opsconductor_executor_runs_log_truncated",
                "Runs whose log reached EXECUTOR_LOG_MAX_BYTES and was cut.",
                truncated_logs.clone(),
            );
            let runner = Arc::new(runner::Runner {
                clients: context.clients().clone(),
                instance: instance.clone(),
                http: http::client(settings.http_networks.clone()).map_err(StartError::Service)?,
                contain: Arc::new(settings.contain),
                log_limits: settings.log_limits,
                truncated_logs,
            });
            let requests = {
                let runner = runner.clone();
                Handlers::new().on(move |request: Received<RunRequested>| {
                    let runner = runner.clone();
                    async move { runner.take(request.message, SLOT_WAIT).await }
                })
            };
            let capacity = settings.capacity.min(u16::MAX as u32) as u16;
            let consumer = Consumer::work(&messaging.broker, &platform::run_requests(), requests)
                .prefetch(capacity)
                .concurrency(capacity as usize)
                .handler_timeout(SLOT_WAIT + Duration::from_secs(30))
                .start();
            let cancels = {
                let instance = instance.clone();
                Handlers::new().on(move |cancel: Received<RunCancelRequested>| {
                    let instance = instance.clone();
                    async move {
                        let message = cancel.message;
                        if instance.stop(&message.run_id, Stop::Cancel(message.reason)) {
                            tracing::info!(run_id = %message.run_id, "run cancel received");
                        }
                        Ok::<(), HandleError>(())
                    }
                })
            };
            let listener =
                Consumer::broadcast(&messaging.broker, &platform::run_cancellations(), cancels)
                    .start();
            let api = api::ExecutorApi {
                instance: instance.clone(),
                broker: messaging.broker.clone(),
            };
            let server = context
                .serve(ExecutorServiceServer::new(api), db.clone(), &messaging)?
                .with_worker(consumer)
                .with_worker(Drain(instance))
                .with_worker(listener);
            let server =
                context.with_dead_letters(server, db, &messaging, &[platform::run_requests()]);
            Ok(Built::new(server, context))
        }
        .boxed()
    }
}

/// On shutdown (after the request consumer stopped): let the runs held finish within the
/// grace period, then stop the rest and give them back to the jobs service.
struct Drain(Arc<Instance>);

impl Worker for Drain {
    fn stop(self: Box<Self>, grace: Duration) -> BoxFuture<'static, ()> {
        async move {
            let instance = self.0;
            instance.set_draining(true);
            let margin = Duration::from_secs(1).min(grace / 2);
            if tokio::time::timeout(grace - margin, instance.idle())
                .await
                .is_err()
            {
                tracing::warn!(
                    runs = instance.active_count(),
                    "grace period over; giving runs back"
                );
                instance.stop_all(Stop::Shutdown);
                let _ =
                    tokio::time::timeout(margin.max(Duration::from_millis(500)), instance.idle())
                        .await;
            }
        }
        .boxed()
    }
}
