//! The steady load: N callers, each going round the services with an authenticated read
//! through the platform's clients (deadlines, retries, breakers — as a service calls another),
//! every outcome counted under the drill going on at that moment.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use opsconductor_api::audit::v1::ListAuditEventsRequest;
use opsconductor_api::auth::v1::ListSessionsRequest;
use opsconductor_api::credentials::v1::ListCredentialsRequest;
use opsconductor_api::executor::v1::GetExecutorStatusRequest;
use opsconductor_api::jobs::v1::GetJobRequest;
use opsconductor_api::notification::v1::ListDeliveriesRequest;
use opsconductor_api::scheduler::v1::GetScheduleRequest;
use opsconductor_api::targets::v1::ListTargetsRequest;
use opsconductor_api::user::v1::GetUserRequest;
use opsconductor_platform::client::Clients;
use tokio::sync::watch;

/// What the reads ask for.
#[derive(Clone)]
pub struct Ids {
    pub admin_id: String,
    pub job_id: String,
    pub schedule_id: String,
}

/// One drill's calls.
#[derive(Default)]
pub struct Window {
    pub latencies: Vec<Duration>,
    pub failed: u64,
    /// When each failure came back, and the first few errors.
    pub failure_times: Vec<Instant>,
    pub errors: Vec<String>,
}

pub struct Load {
    pub windows: Arc<Mutex<Vec<Window>>>,
    current: Arc<AtomicUsize>,
    stop: watch::Sender<bool>,
    workers: Vec<tokio::task::JoinHandle<()>>,
}

const CALLS: usize = 9;

async fn call(clients: &Clients, which: usize, ids: &Ids) -> Result<(), tonic::Status> {
    match which {
        0 => clients
            .auth()
            .list_sessions(ListSessionsRequest {
                page_size: 10,
                ..Default::default()
            })
            .await
            .map(drop),
        1 => clients
            .user()
            .get_user(GetUserRequest {
                id: ids.admin_id.clone(),
            })
            .await
            .map(drop),
        2 => clients
            .audit()
            .list_audit_events(ListAuditEventsRequest {
                page_size: 10,
                ..Default::default()
            })
            .await
            .map(drop),
        3 => clients
            .credentials()
            .list_credentials(ListCredentialsRequest {
                page_size: 10,
                ..Default::default()
            })
            .await
            .map(drop),
        4 => clients
            .targets()
            .list_targets(ListTargetsRequest {
                page_size: 10,
                ..Default::default()
            })
            .await
            .map(drop),
        5 => clients
            .jobs()
            .get_job(GetJobRequest {
                id: ids.job_id.clone(),
            })
            .await
            .map(drop),
        6 => clients
            .notification()
            .list_deliveries(ListDeliveriesRequest {
                page_size: 10,
                ..Default::default()
            })
            .await
            .map(drop),
        7 => clients
            .scheduler()
            .get_schedule(GetScheduleRequest {
                id: ids.schedule_id.clone(),
            })
            .await
            .map(drop),
        _ => clients
            .executor()
            .get_executor_status(GetExecutorStatusRequest {})
            .await
            .map(drop),
    }
}

/// The services the calls go to, in `call` order.
pub const SERVICES: [&str; CALLS] = [
    "auth",
    "user",
    "audit",
    "credentials",
    "targets",
    "jobs",
    "notification",
    "scheduler",
    "executor",
];

impl Load {
    pub fn start(clients: Arc<Clients>, ids: Ids, callers: usize) -> Load {
        let windows = Arc::new(Mutex::new(vec![Window::default()]));
        let current = Arc::new(AtomicUsize::new(0));
        let (stop, stopped) = watch::channel(false);
        let workers = (0..callers)
            .map(|worker| {
                let (clients, ids, windows, current, stopped) = (
                    clients.clone(),
                    ids.clone(),
                    windows.clone(),
                    current.clone(),
                    stopped.clone(),
                );
                tokio::spawn(async move {
                    let mut which = worker % CALLS;
                    while !*stopped.borrow() {
                        let started = Instant::now();
                        let result = call(&clients, which, &ids).await;
                        let took = started.elapsed();
                        let window = current.load(Ordering::Relaxed);
                        if let Ok(mut windows) = windows.lock() {
                            if let Some(w) = windows.get_mut(window) {
                                match result {
                                    Ok(()) => w.latencies.push(took),
                                    Err(status) => {
                                        w.failed += 1;
                                        w.failure_times.push(Instant::now());
                                        if w.errors.len() < 5 {
                                            w.errors.push(format!(
                                                "{}: {:?} {}",
                                                SERVICES[which],
                                                status.code(),
                                                status.message()
                                            ));
                                        }
                                    }
                                }
                            }
                        }
                        which = (which + 1) % CALLS;
                    }
                })
            })
            .collect();
        Load {
            windows,
            current,
            stop,
            workers,
        }
    }

    /// Counts from now on go to a new window; its index.
    pub fn next_window(&self) -> usize {
        let mut windows = self.windows.lock().unwrap_or_else(|p| p.into_inner());
        windows.push(Window::default());
        let index = windows.len() - 1;
        self.current.store(index, Ordering::Relaxed);
        index
    }

    pub fn current(&self) -> usize {
        self.current.load(Ordering::Relaxed)
    }

    pub async fn stop(self) -> Vec<Window> {
        let _ = self.stop.send(true);
        for worker in self.workers {
            let _ = worker.await;
        }
        let mut windows = self.windows.lock().unwrap_or_else(|p| p.into_inner());
        std::mem::take(&mut *windows)
    }
}
