//! `grpc.health.v1` that follows what a service depends on: the overall status ("") and each
//! served service turn NOT_SERVING while a dependency (its database now, the broker later)
//! fails a check, and for good once shutdown begins.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use opsconductor_storage::Database;
use tonic_health::server::HealthReporter;
use tonic_health::ServingStatus;

pub type CheckFuture<'a> = Pin<Box<dyn Future<Output = Result<(), String>> + Send + 'a>>;

/// Something a service needs in order to serve.
pub trait DependencyCheck: Send + Sync + 'static {
    fn name(&self) -> &str;
    fn check(&self) -> CheckFuture<'_>;

    /// Completes at the dependency's next change of state, when it can tell (a broker
    /// connection can; a database pool cannot): health is then re-checked at once instead of
    /// at the next interval, so a blip shorter than the interval still shows.
    fn changed(&self) -> Option<Pin<Box<dyn Future<Output = ()> + Send + 'static>>> {
        None
    }
}

impl DependencyCheck for Database {
    fn name(&self) -> &str {
        "database"
    }

    fn check(&self) -> CheckFuture<'_> {
        Box::pin(async move { self.ping().await.map_err(|e| e.to_string()) })
    }
}

/// The health of one server: its services' statuses and the checks that drive them.
#[derive(Clone)]
pub struct Health {
    reporter: HealthReporter,
    services: Arc<Vec<String>>,
    checks: Arc<Vec<Arc<dyn DependencyCheck>>>,
    shutting_down: Arc<AtomicBool>,
    serving: Arc<AtomicBool>,
    /// Times the status turned NOT_SERVING because a dependency failed.
    outages: Arc<AtomicU64>,
    /// Per check: 0 not checked yet, 1 passing, 2 failing (to log changes, not every check).
    states: Arc<Vec<std::sync::atomic::AtomicU8>>,
    /// Serializes publishing, so a check that started before shutdown cannot publish SERVING
    /// after shutdown published NOT_SERVING.
    publishing: Arc<tokio::sync::Mutex<()>>,
}

/// One check may take this long before it counts as failed.
const CHECK_TIMEOUT: Duration = Duration::from_secs(3);

impl Health {
    pub fn new(
        reporter: HealthReporter,
        services: Vec<String>,
        checks: Vec<Arc<dyn DependencyCheck>>,
    ) -> Self {
        let states = (0..checks.len())
            .map(|_| std::sync::atomic::AtomicU8::new(0))
            .collect();
        Health {
            reporter,
            services: Arc::new(services),
            checks: Arc::new(checks),
            shutting_down: Arc::new(AtomicBool::new(false)),
            serving: Arc::new(AtomicBool::new(false)),
            outages: Arc::new(AtomicU64::new(0)),
            states: Arc::new(states),
            publishing: Arc::new(tokio::sync::Mutex::new(())),
        }
    }

    /// Runs every check once and publishes the result; returns whether all passed.
    pub async fn refresh(&self) -> bool {
        let mut healthy = true;
        for (check, state) in self.checks.iter().zip(self.states.iter()) {
            let outcome = tokio::time::timeout(CHECK_TIMEOUT, check.check())
                .await
                .unwrap_or_else(|_| Err("timed out".to_string()));
            let now = if outcome.is_ok() { 1 } else { 2 };
            let before = state.swap(now, Ordering::SeqCst);
            match (&outcome, before) {
                (Err(error), 1) => {
                    tracing::warn!(dependency = check.name(), %error, "dependency check failed")
                }
                // Not ready yet at start-up: the dependency's own logs say why if it stays so.
                (Err(error), 0) => {
                    tracing::debug!(dependency = check.name(), %error, "dependency not ready yet")
                }
                (Ok(()), 2) => tracing::info!(dependency = check.name(), "dependency recovered"),
                _ => {}
            }
            healthy &= outcome.is_ok();
        }
        self.publish(healthy).await;
        healthy
    }

    async fn publish(&self, healthy: bool) {
        let _guard = self.publishing.lock().await;
        let serving = healthy && !self.shutting_down.load(Ordering::SeqCst);
        let was = self.serving.swap(serving, Ordering::SeqCst);
        if was && !serving && !self.shutting_down.load(Ordering::SeqCst) {
            self.outages.fetch_add(1, Ordering::SeqCst);
        }
        if was != serving {
            tracing::info!(
                services = ?self.services,
                status = if serving { "SERVING" } else { "NOT_SERVING" },
                "health changed"
            );
        }
        let status = if serving {
            ServingStatus::Serving
        } else {
            ServingStatus::NotServing
        };
        self.reporter.set_service_status("", status).await;
        for name in self.services.iter() {
            self.reporter.set_service_status(name, status).await;
        }
    }

    /// Turns every status NOT_SERVING for good: the first step of shutting down.
    pub async fn begin_shutdown(&self) {
        self.shutting_down.store(true, Ordering::SeqCst);
        self.publish(false).await;
    }

    pub fn is_serving(&self) -> bool {
        self.serving.load(Ordering::SeqCst)
    }

    /// How many times a failing dependency turned the server NOT_SERVING.
    pub fn outages(&self) -> u64 {
        self.outages.load(Ordering::SeqCst)
    }

    /// Re-checks every `interval`, and whenever a dependency reports a change, until shutdown
    /// begins.
    pub async fn watch(self, interval: Duration) {
        let mut ticker = tokio::time::interval(interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let changes: Vec<_> = self.checks.iter().filter_map(|c| c.changed()).collect();
            if changes.is_empty() {
                ticker.tick().await;
            } else {
                tokio::select! {
                    _ = ticker.tick() => {}
                    _ = futures::future::select_all(changes) => {}
                }
            }
            if self.shutting_down.load(Ordering::SeqCst) {
                return;
            }
            self.refresh().await;
        }
    }
}

/// The status values of `grpc.health.v1`, as the health check client returns them.
pub use tonic_health::pb::health_check_response::ServingStatus as ServingStatusPb;
