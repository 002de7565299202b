//! The push path of `WatchRun`: what executors report is handed to the watchers of the run in
//! this process as it is stored, with no polling of the database. A watcher that falls behind
//! (its channel lagged) catches up from the database and goes on.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use opsconductor_api::jobs::v1::WatchRunResponse;
use tokio::sync::broadcast;

/// Events buffered per run for a slow watcher before it has to catch up from the database.
const BUFFER: usize = 1024;

#[derive(Clone, Default)]
pub struct Hub {
    runs: Arc<Mutex<HashMap<String, broadcast::Sender<WatchRunResponse>>>>,
}

impl Hub {
    pub fn subscribe(&self, run_id: &str) -> broadcast::Receiver<WatchRunResponse> {
        let mut runs = self.runs.lock().unwrap_or_else(|p| p.into_inner());
        runs.entry(run_id.to_string())
            .or_insert_with(|| broadcast::channel(BUFFER).0)
            .subscribe()
    }

    /// Hands `event` to the run's watchers; forgets the run once nobody watches it.
    pub fn publish(&self, run_id: &str, event: WatchRunResponse) {
        let mut runs = self.runs.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(sender) = runs.get(run_id) {
            if sender.send(event).is_err() {
                runs.remove(run_id);
            }
        }
    }

    /// Runs with a watcher in this process (for tests and metrics).
    pub fn watched(&self) -> usize {
        let mut runs = self.runs.lock().unwrap_or_else(|p| p.into_inner());
        runs.retain(|_, s| s.receiver_count() > 0);
        runs.len()
    }
}
