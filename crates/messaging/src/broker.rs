//! One supervised connection per service. The supervisor connects with backoff, declares the
//! topology, hands the connection to publishers and consumers, and when the connection dies
//! (broker restart, `close_all_connections`, network) starts over — no process restart needed.
//!
//! lapin's own `enable_auto_recover` replays topology and consumers on a new socket, but gives
//! up after a fixed number of attempts and keeps deliveries whose ackers were poisoned by the
//! failure. A fresh connection per generation is simpler to reason about: consumers resubscribe
//! themselves, anything unacknowledged is redelivered by the broker, and anything unconfirmed is
//! published again by its owner (the outbox keeps it), with duplicates absorbed by inboxes.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use futures::StreamExt;
use lapin::options::ConfirmSelectOptions;
use lapin::{Channel, Connection, ConnectionProperties, Event};
use opsconductor_platform::health::{CheckFuture, DependencyCheck};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::config::BrokerConfig;
use crate::metrics::{Metrics, MetricsSnapshot};
use crate::producer::ProducerTrust;
use crate::publisher::Publisher;
use crate::topology::{self, Names, Topology};

/// A handle on the service's broker connection; cheap to clone.
#[derive(Clone)]
pub struct Broker {
    inner: Arc<Inner>,
    /// When the last handle goes, the supervisor stops.
    _alive: Arc<StopOnDrop>,
}

pub(crate) struct Inner {
    pub(crate) config: BrokerConfig,
    pub(crate) names: Names,
    topology: Topology,
    sessions: watch::Sender<Option<Arc<Session>>>,
    pub(crate) metrics: Metrics,
    trust: Option<ProducerTrust>,
    /// Messages ready in each work queue this service consumes, sampled by its consumers.
    pub(crate) lag: Family<QueueLabel, Gauge>,
    stop: watch::Sender<bool>,
    last_error: Mutex<Option<String>>,
    supervisor: Mutex<Option<JoinHandle<()>>>,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct QueueLabel {
    pub(crate) queue: String,
}

struct StopOnDrop(watch::Sender<bool>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        let _ = self.0.send(true);
    }
}

/// One live connection and the publishing channel opened on it.
pub(crate) struct Session {
    pub(crate) connection: Connection,
    pub(crate) generation: u64,
    publish: tokio::sync::Mutex<Option<Channel>>,
}

impl Session {
    /// The confirm-mode channel publishers share, reopened if a channel error closed it.
    pub(crate) async fn publish_channel(&self) -> lapin::Result<Channel> {
        let mut slot = self.publish.lock().await;
        if let Some(channel) = slot.as_ref() {
            if channel.status().connected() {
                return Ok(channel.clone());
            }
        }
        let channel = self.connection.create_channel().await?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        *slot = Some(channel.clone());
        Ok(channel)
    }
}

impl Broker {
    /// Starts supervising a connection to `config`'s broker, declaring `topology` on each.
    /// Returns at once; [`Broker::wait_connected`] waits for the first connection. Must be
    /// called inside a Tokio runtime.
    pub fn start(config: BrokerConfig, topology: Topology) -> Broker {
        Broker::start_with(config, topology, None)
    }

    /// [`Broker::start`], signing what it publishes and checking the producer of what it
    /// consumes with `trust` (every service; see [`ProducerTrust`]).
    pub fn start_trusted(config: BrokerConfig, topology: Topology, trust: ProducerTrust) -> Broker {
        Broker::start_with(config, topology, Some(trust))
    }

    fn start_with(
        config: BrokerConfig,
        topology: Topology,
        trust: Option<ProducerTrust>,
    ) -> Broker {
        let (stop, _) = watch::channel(false);
        let (sessions, _) = watch::channel(None);
        let inner = Arc::new(Inner {
            names: Names::new(&config.prefix),
            config,
            topology,
            sessions,
            metrics: Metrics::default(),
            trust,
            lag: Family::default(),
            stop: stop.clone(),
            last_error: Mutex::new(Some("not connected yet".to_string())),
            supervisor: Mutex::new(None),
        });
        let task = tokio::spawn(supervise(inner.clone()));
        *inner
            .supervisor
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(task);
        Broker {
            inner,
            _alive: Arc::new(StopOnDrop(stop)),
        }
    }

    pub fn names(&self) -> &Names {
        &self.inner.names
    }

    pub fn config(&self) -> &BrokerConfig {
        &self.inner.config
    }

    pub fn publisher(&self) -> Publisher {
        Publisher::new(self.clone(), true)
    }

    pub fn metrics(&self) -> MetricsSnapshot {
        self.inner.metrics.snapshot()
    }

    pub(crate) fn trust(&self) -> Option<&ProducerTrust> {
        self.inner.trust.as_ref()
    }

    /// A publisher that sends messages on as they are (a consumer's retries and dead letters,
    /// replays): never signed as this service's.
    pub(crate) fn forwarder(&self) -> Publisher {
        Publisher::new(self.clone(), false)
    }

    pub(crate) fn counters(&self) -> &Metrics {
        &self.inner.metrics
    }

    /// The consumer-lag gauge of `queue`.
    pub(crate) fn lag(&self, queue: &str) -> Gauge {
        self.inner
            .lag
            .get_or_create(&QueueLabel {
                queue: queue.to_string(),
            })
            .clone()
    }

    /// Exposes the counters in `registry` (without keeping the connection alive: a scrape
    /// after the broker is gone reads zeros).
    pub fn register_metrics(&self, registry: &opsconductor_metrics::Registry) {
        let inner = Arc::downgrade(&self.inner);
        let read = move || {
            inner
                .upgrade()
                .map(|inner| inner.metrics.snapshot())
                .unwrap_or_default()
        };
        registry.register_collector(MetricsSnapshot::counter_set(Arc::new(read)));
        registry.register(
            "opsconductor_consumer_lag_messages",
            "Messages ready in a work queue this service consumes and not yet delivered to it (sampled every 5 s).",
            self.inner.lag.clone(),
        );
    }

    pub fn is_connected(&self) -> bool {
        self.inner
            .sessions
            .borrow()
            .as_ref()
            .is_some_and(|s| s.connection.status().connected())
    }

    /// Why the broker is not connected, when it is not.
    pub fn last_error(&self) -> Option<String> {
        self.inner
            .last_error
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Waits until connected (true) or `timeout` passes (false).
    pub async fn wait_connected(&self, timeout: Duration) -> bool {
        self.session(timeout).await.is_some()
    }

    /// The live session, waiting up to `timeout` for one.
    pub(crate) async fn session(&self, timeout: Duration) -> Option<Arc<Session>> {
        let mut rx = self.inner.sessions.subscribe();
        let wait = rx.wait_for(|s| {
            s.as_ref()
                .is_some_and(|s| s.connection.status().connected())
        });
        let session = match tokio::time::timeout(timeout, wait).await {
            Ok(Ok(session)) => session.clone(),
            _ => None,
        };
        session
    }

    /// Follows sessions as they come and go (consumers resubscribe on each).
    pub(crate) fn sessions(&self) -> watch::Receiver<Option<Arc<Session>>> {
        self.inner.sessions.subscribe()
    }

    /// Completes when the broker is closed.
    pub(crate) async fn stopped(&self) {
        let mut stop = self.inner.stop.subscribe();
        let _ = stop.wait_for(|s| *s).await;
    }

    /// Closes the current connection as a broker restart would; the supervisor reconnects.
    /// Unacknowledged deliveries go back to their queues. For tests and operators' drills.
    pub async fn force_reconnect(&self) {
        let session = self.inner.sessions.borrow().clone();
        if let Some(session) = session {
            let _ = session
                .connection
                .close(320, "forced reconnect".into())
                .await;
        }
    }

    /// Stops supervising and closes the connection. Consumers and relays should be shut down
    /// first, so their in-flight work can still be acknowledged.
    pub async fn close(&self) {
        let _ = self.inner.stop.send(true);
        let task = self
            .inner
            .supervisor
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(task) = task {
            let _ = task.await;
        }
    }

    /// A health check that fails while disconnected, with the reason.
    pub fn health_check(&self) -> BrokerHealth {
        BrokerHealth(self.clone())
    }
}

/// Health follows the broker connection.
pub struct BrokerHealth(Broker);

impl DependencyCheck for BrokerHealth {
    fn name(&self) -> &str {
        "broker"
    }

    fn changed(
        &self,
    ) -> Option<std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send + 'static>>> {
        let mut sessions = self.0.sessions();
        Some(Box::pin(async move {
            let _ = sessions.changed().await;
        }))
    }

    fn check(&self) -> CheckFuture<'_> {
        Box::pin(async move {
            if self.0.is_connected() {
                Ok(())
            } else {
                Err(self
                    .0
                    .last_error()
                    .unwrap_or_else(|| "not connected".to_string()))
            }
        })
    }
}

async fn supervise(inner: Arc<Inner>) {
    let mut stop = inner.stop.subscribe();
    let mut failures: u32 = 0;
    let mut generation = 0u64;
    let url = inner.config.redacted_url();
    loop {
        if *stop.borrow() {
            break;
        }
        let attempt = tokio::select! {
            result = connect(&inner) => result,
            _ = stop.wait_for(|s| *s) => break,
        };
        match attempt {
            Ok(connection) => {
                generation += 1;
                failures = 0;
                Metrics::add(&inner.metrics.connections, 1);
                set_error(&inner, None);
                tracing::info!(broker = %url, generation, "connected to the broker");
                let mut events = connection.events_listener();
                let session = Arc::new(Session {
                    connection,
                    generation,
                    publish: tokio::sync::Mutex::new(None),
                });
                inner.sessions.send_replace(Some(session.clone()));
                let mut ticker = tokio::time::interval(Duration::from_millis(250));
                let reason = loop {
                    tokio::select! {
                        event = events.next() => match event {
                            // A channel error (a publish to a missing exchange) closes that
                            // channel only; its owner opens another.
                            Some(Event::Error(error)) if error.is_amqp_soft_error()
                                && session.connection.status().connected() => {
                                tracing::debug!(%error, "channel closed by the broker");
                            }
                            Some(Event::Error(error)) => break error.to_string(),
                            None => break "connection closed".to_string(),
                            Some(_) => {}
                        },
                        _ = ticker.tick() => {
                            if !session.connection.status().connected() {
                                break "connection closed".to_string();
                            }
                        }
                        _ = stop.wait_for(|s| *s) => break String::new(),
                    }
                };
                inner.sessions.send_replace(None);
                if *stop.borrow() {
                    set_error(&inner, Some("closed".to_string()));
                    let _ = session.connection.close(200, "shutting down".into()).await;
                    break;
                }
                tracing::warn!(broker = %url, generation, %reason, "lost the broker connection; reconnecting");
                set_error(&inner, Some(reason));
                let _ = session.connection.close(200, "reconnecting".into()).await;
                sleep_or_stop(backoff(&inner.config, 0), &mut stop).await;
            }
            Err(error) => {
                // The first failure is news; repeats while the broker stays down are not.
                if failures == 0 {
                    tracing::warn!(broker = %url, %error, "cannot connect to the broker; retrying");
                } else {
                    tracing::debug!(broker = %url, %error, failures, "still cannot connect to the broker");
                }
                set_error(&inner, Some(error));
                failures = failures.saturating_add(1);
                sleep_or_stop(backoff(&inner.config, failures), &mut stop).await;
            }
        }
    }
    inner.sessions.send_replace(None);
}

async fn connect(inner: &Inner) -> Result<Connection, String> {
    let properties = ConnectionProperties::default()
        // "<prefix>-<service>": "opsconductor-jobs" in production; a test's own prefix lets it
        // find (and close) its services' connections among others'.
        .with_connection_name(format!("{}-{}", inner.config.prefix, inner.config.service).into());
    let connection = tokio::time::timeout(
        Duration::from_secs(10),
        Connection::connect(inner.config.url(), properties),
    )
    .await
    .map_err(|_| "connecting timed out".to_string())?
    .map_err(|e| e.to_string())?;
    let declared = async {
        let channel = connection.create_channel().await?;
        topology::declare(
            &channel,
            &inner.names,
            &inner.topology,
            inner.config.dead_letter_strategy,
            inner.config.declare,
        )
        .await?;
        channel.close(200, "declared".into()).await
    }
    .await;
    if let Err(error) = declared {
        let _ = connection.close(200, "topology failed".into()).await;
        return Err(format!("declaring the topology failed: {error}"));
    }
    Ok(connection)
}

fn set_error(inner: &Inner, error: Option<String>) {
    *inner
        .last_error
        .lock()
        .unwrap_or_else(PoisonError::into_inner) = error;
}

/// Exponential from `reconnect_min` to `reconnect_max`, with jitter so a fleet of services
/// does not reconnect in lockstep after a broker restart.
fn backoff(config: &BrokerConfig, failures: u32) -> Duration {
    let base = config
        .reconnect_min
        .saturating_mul(2u32.saturating_pow(failures.min(16)))
        .min(config.reconnect_max);
    base.mul_f64(0.5 + rand::random::<f64>() * 0.5)
}

async fn sleep_or_stop(delay: Duration, stop: &mut watch::Receiver<bool>) {
    tokio::select! {
        _ = tokio::time::sleep(delay) => {}
        _ = stop.wait_for(|s| *s) => {}
    }
}
