//! The scheduler service: schedules (cron in an IANA time zone, a fixed interval, or once) that
//! start job runs as their owner. Every due time becomes one fire row, unique on (schedule,
//! time), in the transaction that moves the schedule on; its run is started with a key derived
//! from the same pair, and the jobs service keeps that pair unique on runs, so a due time
//! starts one run however many replicas run and whichever of them dies mid-fire.

mod api;
mod engine;
mod error;
mod fires;
mod history;
mod overlap;
mod owner;
mod spec;
mod store;
mod validate;

use std::sync::Arc;
use std::time::Duration;

use futures::future::{BoxFuture, FutureExt};
use opsconductor_api::jobs::v1::{RunFinished, RunStarted};
use opsconductor_api::scheduler::v1::scheduler_service_server::SchedulerServiceServer;
use opsconductor_messaging::topology::platform;
use opsconductor_messaging::{BrokerUse, Consumer, HandleError, Handlers, Received, Topology};
use opsconductor_platform::config::{ConfigError, Env};
use opsconductor_platform::rate_limit::{Limiter, RateLimit};
use opsconductor_platform::ServiceKind;
use opsconductor_runtime::{Built, ServiceContext, ServiceModule, StartError};
use opsconductor_storage::{Database, Migrations};
use tokio::sync::Notify;

pub use api::SchedulerApi;
pub use engine::{Engine, EngineSettings};
pub use error::SchedulerError;
pub use fires::FireStore;
pub use store::ScheduleStore;

/// The embedded schema, per backend.
pub fn migrations() -> Migrations {
    opsconductor_storage::embedded_migrations!()
}

struct Settings {
    engine: EngineSettings,
    owner_cache: Duration,
    backfill: RateLimit,
}

impl Settings {
    fn from_env(env: &Env) -> Result<Settings, ConfigError> {
        Ok(Settings {
            // Due times a caller may backfill: two full backfills, refilled over an hour.
            backfill: RateLimit::from_env(env, "SCHEDULER_BACKFILL_RATE", "2000/3600s")?,
            engine: EngineSettings {
                poll: Duration::from_millis(env.bounded(
                    "SCHEDULER_POLL_MS",
                    1_000,
                    10..=60_000,
                )?),
                batch: env.bounded("SCHEDULER_BATCH", 256, 1..=10_000)? as i64,
                lease: Duration::from_millis(env.bounded(
                    "SCHEDULER_FIRE_LEASE_MS",
                    30_000,
                    500..=3_600_000,
                )?),
                concurrency: env.bounded("SCHEDULER_CONCURRENCY", 64, 1..=4_096)? as usize,
                recheck: Duration::from_millis(env.bounded(
                    "SCHEDULER_WAIT_RECHECK_MS",
                    60_000,
                    100..=3_600_000,
                )?),
            },
            owner_cache: Duration::from_millis(env.bounded(
                "SCHEDULER_OWNER_CACHE_MS",
                1_000,
                0..=60_000,
            )?),
        })
    }
}

/// The scheduler service, as the catalog lists it.
pub struct Scheduler;

impl ServiceModule for Scheduler {
    fn kind(&self) -> ServiceKind {
        ServiceKind::Scheduler
    }

    fn broker(&self) -> BrokerUse {
        BrokerUse {
            topology: Topology::new()
                .exchange(platform::events_exchange())
                .queue(platform::schedule_fire_failed_notifications()),
            consumes: vec![platform::scheduler_run_events()],
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
            let names = messaging.broker.names();
            let schedules = ScheduleStore::new(db.clone(), messaging.audit.clone());
            let fires = FireStore::new(db.clone(), messaging.outbox.clone(), names);
            fires.register_metrics(context.metrics());
            let wake = Arc::new(Notify::new());
            let engine = Engine {
                fires: fires.clone(),
                schedules: schedules.clone(),
                clients: context.clients().clone(),
                owners: owner::OwnerCheck::new(context.clients().clone(), settings.owner_cache),
                settings: settings.engine,
                wake: wake.clone(),
            };
            let api = SchedulerApi {
                schedules,
                history: history::History {
                    fires: fires.clone(),
                    audit: messaging.audit.clone(),
                },
                clients: context.clients().clone(),
                wake: wake.clone(),
                backfills: Arc::new(Limiter::new(settings.backfill, 10_000)),
            };
            let events = Consumer::work(
                &messaging.broker,
                &platform::scheduler_run_events(),
                run_events(fires, wake),
            )
            .start();
            let server = context
                .serve(SchedulerServiceServer::new(api), db.clone(), &messaging)?
                .with_worker(events)
                .with_worker(engine.spawn());
            let server = context.with_dead_letters(
                server,
                db,
                &messaging,
                &[platform::scheduler_run_events()],
            );
            Ok(Built::new(server, context))
        }
        .boxed()
    }
}

/// What the overlap policies know of running runs: RunStarted and RunFinished of runs a
/// schedule started (others are acknowledged and ignored).
fn run_events(fires: FireStore, wake: Arc<Notify>) -> Handlers {
    let started = fires.clone();
    Handlers::new()
        .on(move |event: Received<RunStarted>| {
            let fires = started.clone();
            async move {
                let event = event.message;
                let schedule_id = event.trigger.map(|t| t.schedule_id).unwrap_or_default();
                if !schedule_id.is_empty() {
                    fires
                        .run_started(&schedule_id, &event.run_id)
                        .await
                        .map_err(HandleError::retry)?;
                }
                Ok::<(), HandleError>(())
            }
        })
        .on(move |event: Received<RunFinished>| {
            let fires = fires.clone();
            let wake = wake.clone();
            async move {
                let event = event.message;
                if !event.schedule_id.is_empty() {
                    let released = fires
                        .run_finished(&event.schedule_id, &event.run_id)
                        .await
                        .map_err(HandleError::retry)?;
                    if released {
                        wake.notify_one();
                    }
                }
                Ok::<(), HandleError>(())
            }
        })
}
