//! This executor process: its id, its capacity, the runs it holds and how to stop each.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use opsconductor_api::executor::v1::ActiveRun;
use tokio::sync::{watch, Semaphore};

/// Why a run's steps must stop now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Stop {
    /// Keep going.
    No,
    /// CancelRun was called.
    Cancel(String),
    /// The lease is gone: another executor may hold the run; report nothing more.
    LeaseLost,
    /// The run's own timeout passed.
    RunTimeout,
    /// The process is shutting down past its drain grace: give the run back.
    Shutdown,
}

struct Held {
    info: ActiveRun,
    stop: watch::Sender<Stop>,
}

pub struct Instance {
    pub id: String,
    pub capacity: u32,
    pub start_time: i64,
    pub permits: Arc<Semaphore>,
    draining: AtomicBool,
    runs: Mutex<BTreeMap<String, Held>>,
    idle: tokio::sync::Notify,
}

impl Instance {
    pub fn new(service_id: &str, capacity: u32) -> Instance {
        let unique = uuid::Uuid::now_v7().simple().to_string();
        Instance {
            id: format!("{service_id}-{}", &unique[unique.len() - 12..]),
            capacity,
            start_time: opsconductor_platform::time::now_micros(),
            permits: Arc::new(Semaphore::new(capacity as usize)),
            draining: AtomicBool::new(false),
            runs: Mutex::new(BTreeMap::new()),
            idle: tokio::sync::Notify::new(),
        }
    }

    fn runs(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Held>> {
        self.runs.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Registers a run about to be claimed; None when this process already holds it (a
    /// duplicate request).
    pub fn hold(&self, info: ActiveRun) -> Option<watch::Receiver<Stop>> {
        let mut runs = self.runs();
        if runs.contains_key(&info.run_id) {
            return None;
        }
        let (stop, rx) = watch::channel(Stop::No);
        runs.insert(info.run_id.clone(), Held { info, stop });
        Some(rx)
    }

    pub fn release(&self, run_id: &str) {
        let mut runs = self.runs();
        runs.remove(run_id);
        if runs.is_empty() {
            self.idle.notify_waiters();
        }
    }

    pub fn update(&self, run_id: &str, change: impl FnOnce(&mut ActiveRun)) {
        if let Some(held) = self.runs().get_mut(run_id) {
            change(&mut held.info);
        }
    }

    /// Tells the run's steps to stop; false when this process does not hold it.
    pub fn stop(&self, run_id: &str, why: Stop) -> bool {
        match self.runs().get(run_id) {
            Some(held) => {
                held.stop.send_if_modified(|current| {
                    // The first reason wins: a cancel is not turned into a shutdown.
                    if *current == Stop::No {
                        *current = why;
                        true
                    } else {
                        false
                    }
                });
                true
            }
            None => false,
        }
    }

    pub fn stop_all(&self, why: Stop) {
        let ids: Vec<String> = self.runs().keys().cloned().collect();
        for id in ids {
            self.stop(&id, why.clone());
        }
    }

    /// The runs held now, oldest claim first.
    pub fn active(&self) -> Vec<ActiveRun> {
        let mut runs: Vec<ActiveRun> = self.runs().values().map(|h| h.info.clone()).collect();
        runs.sort_by_key(|r| {
            r.claim_time
                .map(|t| (t.seconds, t.nanos))
                .unwrap_or_default()
        });
        runs
    }

    pub fn active_count(&self) -> usize {
        self.runs().len()
    }

    pub fn draining(&self) -> bool {
        self.draining.load(Ordering::SeqCst)
    }

    pub fn set_draining(&self, draining: bool) {
        self.draining.store(draining, Ordering::SeqCst);
    }

    /// Waits until no run is held.
    pub async fn idle(&self) {
        loop {
            let notified = self.idle.notified();
            if self.active_count() == 0 {
                return;
            }
            notified.await;
        }
    }
}
