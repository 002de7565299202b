//! The jobs service: job definitions (typed parameters, ordered shell/ssh/http steps, target
//! selectors) and their runs. A run is QUEUED by `StartRun` with its `RunRequested` in the same
//! transaction; an executor claims it under a lease, heartbeats, reports steps and logs and
//! completes it; the reaper takes back runs whose lease lapsed, so none is ever stuck. Watchers
//! get what executors report pushed to them as it is stored.

mod api;
mod error;
mod hub;
mod reaper;
mod runs;
mod store;
mod targets;
mod validate;
mod watch;

use std::sync::Arc;
use std::time::Duration;

use futures::future::{BoxFuture, FutureExt};
use opsconductor_api::jobs::v1::jobs_service_server::JobsServiceServer;
use opsconductor_api::jobs::v1::RunProgress;
use opsconductor_messaging::topology::platform;
use opsconductor_messaging::{
    Broker, BrokerUse, Consumer, HandleError, Handlers, Received, RunningConsumer, Topology,
};
use opsconductor_platform::config::{ConfigError, Env};
use opsconductor_platform::server::Tasks;
use opsconductor_platform::ServiceKind;
use opsconductor_runtime::{Built, ServiceContext, ServiceModule, StartError};
use opsconductor_storage::{Database, Migrations};

pub use api::JobsApi;
pub use error::JobsError;
pub use hub::Hub;
pub use reaper::{Reaped, Reaper};
pub use runs::RunStore;
pub use store::JobStore;

/// The embedded schema, per backend.
pub fn migrations() -> Migrations {
    opsconductor_storage::embedded_migrations!()
}

/// How the jobs service runs (docs/configuration.md).
struct Settings {
    lease: Duration,
    reap_every: Duration,
    rerequest_after: Duration,
}

impl Settings {
    fn from_env(env: &Env) -> Result<Settings, ConfigError> {
        Ok(Settings {
            lease: Duration::from_millis(env.bounded(
                "JOBS_RUN_LEASE_MS",
                30_000,
                300..=3_600_000,
            )?),
            reap_every: env.positive_millis("JOBS_REAPER_INTERVAL_MS", 5_000)?,
            rerequest_after: Duration::from_millis(env.bounded(
                "JOBS_REREQUEST_AFTER_MS",
                60_000,
                100..=86_400_000,
            )?),
        })
    }
}

/// The jobs service, as the catalog lists it.
pub struct Jobs;

impl ServiceModule for Jobs {
    fn kind(&self) -> ServiceKind {
        ServiceKind::Jobs
    }

    fn broker(&self) -> BrokerUse {
        BrokerUse {
            topology: Topology::new()
                .queue(platform::run_requests())
                .exchange(platform::jobs_exchange())
                .queue(platform::run_started_notifications())
                .queue(platform::run_finished_notifications()),
            listens: vec![platform::run_progress()],
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
            let jobs = JobStore::new(db.clone(), messaging.audit.clone());
            let (hub, fanout) = Hub::fanning_out(&messaging.broker);
            let progress = listen_to_progress(&messaging.broker, hub.clone());
            let runs = RunStore::new(
                db.clone(),
                messaging.audit.clone(),
                messaging.outbox.clone(),
                messaging.broker.names(),
                hub,
                settings.lease,
            );
            runs.register_metrics(context.metrics());
            let reaper = Reaper {
                jobs: jobs.clone(),
                runs: runs.clone(),
                rerequest_after: settings.rerequest_after,
            };
            let api = JobsApi {
                jobs,
                runs,
                reaper: reaper.clone(),
                clients: context.clients().clone(),
            };
            let server = context
                .serve(JobsServiceServer::new(api), db, &messaging)?
                .with_worker(progress)
                .with_worker(Tasks(vec![
                    reaper::spawn(reaper, settings.reap_every),
                    fanout,
                ]));
            Ok(Built::new(server, context))
        }
        .boxed()
    }
}

/// Hands the progress other replicas stored to this replica's watchers.
fn listen_to_progress(broker: &Broker, hub: Hub) -> RunningConsumer {
    let handlers = Handlers::new().on(move |progress: Received<RunProgress>| {
        let hub = hub.clone();
        async move {
            let progress = progress.message;
            if progress.origin != hub.origin {
                hub.deliver(&progress.run_id, progress.events);
            }
            Ok::<(), HandleError>(())
        }
    });
    Consumer::broadcast(broker, &platform::run_progress(), handlers).start()
}
