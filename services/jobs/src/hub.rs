//! The push path of `WatchRun`: what executors report is handed to the watchers of the run as
//! it is stored, with no polling of the database — in this process directly, and to the other
//! jobs replicas' watchers through a broker broadcast (`RunProgress`), since an executor
//! reports to whichever replica its call reaches. A watcher that falls behind (its channel
//! lagged) catches up from the database and goes on.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use opsconductor_api::jobs::v1::{RunProgress, WatchRunResponse};
use opsconductor_messaging::topology::platform;
use opsconductor_messaging::{Broker, OutgoingMessage};
use tokio::sync::{broadcast, mpsc};

/// Events buffered per run for a slow watcher before it has to catch up from the database.
const BUFFER: usize = 1024;
/// Progress messages waiting for the broker; beyond, they are dropped (watchers elsewhere
/// catch up from the database).
const FANOUT_BUFFER: usize = 4096;

#[derive(Clone)]
pub struct Hub {
    runs: Arc<Mutex<HashMap<String, broadcast::Sender<WatchRunResponse>>>>,
    /// This replica's id in the progress it publishes.
    pub origin: String,
    fanout: Option<mpsc::Sender<RunProgress>>,
}

impl Default for Hub {
    fn default() -> Self {
        Hub {
            runs: Arc::default(),
            origin: uuid::Uuid::now_v7().to_string(),
            fanout: None,
        }
    }
}

impl Hub {
    /// A hub that also publishes what is stored here to the other replicas, through `broker`.
    pub fn fanning_out(broker: &Broker) -> (Hub, tokio::task::JoinHandle<()>) {
        let (tx, rx) = mpsc::channel(FANOUT_BUFFER);
        let hub = Hub {
            fanout: Some(tx),
            ..Hub::default()
        };
        let exchange = broker.names().exchange(&platform::jobs_exchange());
        let task = tokio::spawn(publish(broker.clone(), exchange, rx));
        (hub, task)
    }

    pub fn subscribe(&self, run_id: &str) -> broadcast::Receiver<WatchRunResponse> {
        let mut runs = self.runs.lock().unwrap_or_else(|p| p.into_inner());
        runs.entry(run_id.to_string())
            .or_insert_with(|| broadcast::channel(BUFFER).0)
            .subscribe()
    }

    pub fn publish(&self, run_id: &str, event: WatchRunResponse) {
        self.publish_all(run_id, vec![event]);
    }

    /// Hands `events` to the run's watchers here and on the other replicas.
    pub fn publish_all(&self, run_id: &str, events: Vec<WatchRunResponse>) {
        if let Some(fanout) = &self.fanout {
            let progress = RunProgress {
                origin: self.origin.clone(),
                run_id: run_id.to_string(),
                events: events.clone(),
            };
            if fanout.try_send(progress).is_err() {
                tracing::debug!(%run_id, "run progress not fanned out: the broker is behind");
            }
        }
        self.deliver(run_id, events);
    }

    /// Hands `events` to the run's watchers in this process; forgets the run once nobody
    /// watches it.
    pub fn deliver(&self, run_id: &str, events: Vec<WatchRunResponse>) {
        let mut runs = self.runs.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(sender) = runs.get(run_id) {
            for event in events {
                if sender.send(event).is_err() {
                    runs.remove(run_id);
                    return;
                }
            }
        }
    }
}

/// Publishes progress in order, pipelining what has queued up meanwhile.
async fn publish(broker: Broker, exchange: String, mut rx: mpsc::Receiver<RunProgress>) {
    let mut batch = Vec::new();
    while rx.recv_many(&mut batch, 256).await > 0 {
        if broker.is_connected() {
            let messages: Vec<OutgoingMessage> = batch
                .iter()
                .map(|p| OutgoingMessage::new(&exchange, platform::RUN_PROGRESS, p).broadcast())
                .collect();
            for result in broker.publisher().publish_all(&messages).await {
                if let Err(error) = result {
                    tracing::debug!(%error, "run progress not published");
                }
            }
        }
        batch.clear();
    }
}
