//! `WatchRun`: the run as it is, then what the hub pushes, deduplicated by log seq; the log
//! read from the database only to start, after a lag, and once more at the end.

use std::pin::Pin;

use futures::Stream;
use opsconductor_api::jobs::v1::{
    watch_run_response::Event, RunState, WatchRunRequest, WatchRunResponse,
};
use tokio::sync::{broadcast, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tonic::Status;

use crate::runs::{is_final, RunStore};
use crate::JobsError;

type Item = Result<WatchRunResponse, Status>;

/// How long a watch waits without news before it looks at the run in the database.
const SILENCE: std::time::Duration = std::time::Duration::from_secs(5);

pub async fn watch(
    runs: RunStore,
    req: WatchRunRequest,
) -> Result<Pin<Box<dyn Stream<Item = Item> + Send>>, JobsError> {
    // Subscribe before reading, so nothing falls between the read and the first push.
    let events = runs.hub().subscribe(&req.id);
    let run = runs.get(&req.id).await?;
    let (tx, rx) = mpsc::channel(256);
    tokio::spawn(async move {
        let mut watcher = Watcher {
            runs,
            tx,
            id: req.id,
            logs: req.include_logs,
            last_seq: req.after_log_seq,
        };
        if let Err(error) = watcher.run(run, events).await {
            let _ = watcher.tx.send(Err(Status::from(error))).await;
        }
    });
    Ok(Box::pin(ReceiverStream::new(rx)))
}

struct Watcher {
    runs: RunStore,
    tx: mpsc::Sender<Item>,
    id: String,
    logs: bool,
    last_seq: u64,
}

/// The watcher went away: stop.
struct Gone;

impl From<Gone> for JobsError {
    fn from(_: Gone) -> JobsError {
        JobsError::Api(opsconductor_platform::ApiError::internal("watcher gone"))
    }
}

fn finished(state: i32) -> bool {
    is_final(RunState::try_from(state).unwrap_or_default())
}

impl Watcher {
    async fn send(&self, event: Event) -> Result<(), Gone> {
        self.tx
            .send(Ok(WatchRunResponse { event: Some(event) }))
            .await
            .map_err(|_| Gone)
    }

    async fn run(
        &mut self,
        run: opsconductor_api::jobs::v1::Run,
        mut events: broadcast::Receiver<WatchRunResponse>,
    ) -> Result<(), JobsError> {
        let done = finished(run.state);
        if self.send(Event::Run(run)).await.is_err() {
            return Ok(());
        }
        if self.catch_up().await.is_err() || done {
            return Ok(());
        }
        loop {
            // Silence is checked against the database now and then: a final event that never
            // reached this replica (its progress was dropped) must not keep the watch open.
            let received = tokio::select! {
                received = events.recv() => received,
                _ = tokio::time::sleep(SILENCE) => {
                    let run = self.runs.get(&self.id).await?;
                    if finished(run.state) {
                        if self.catch_up().await.is_ok() {
                            let _ = self.send(Event::Run(run)).await;
                        }
                        return Ok(());
                    }
                    continue;
                }
            };
            let event = match received {
                Ok(WatchRunResponse { event: Some(event) }) => event,
                Ok(_) => continue,
                Err(broadcast::error::RecvError::Lagged(_)) => {
                    let run = self.runs.get(&self.id).await?;
                    let done = finished(run.state);
                    if self.catch_up().await.is_err()
                        || self.send(Event::Run(run)).await.is_err()
                        || done
                    {
                        return Ok(());
                    }
                    continue;
                }
                Err(broadcast::error::RecvError::Closed) => return Ok(()),
            };
            let sent = match event {
                Event::LogLine(line) if self.logs && line.seq == self.last_seq + 1 => {
                    self.last_seq = line.seq;
                    self.send(Event::LogLine(line)).await
                }
                // A gap (lines stored before this watcher subscribed): read them.
                Event::LogLine(line) if self.logs && line.seq > self.last_seq => {
                    self.catch_up().await
                }
                Event::LogLine(_) => Ok(()),
                Event::Run(run) => {
                    let done = finished(run.state);
                    if done && self.catch_up().await.is_err() {
                        return Ok(());
                    }
                    let sent = self.send(Event::Run(run)).await;
                    if done {
                        return Ok(());
                    }
                    sent
                }
                Event::Step(step) => self.send(Event::Step(step)).await,
            };
            if sent.is_err() {
                return Ok(());
            }
        }
    }

    /// Sends the stored lines after the last one sent.
    async fn catch_up(&mut self) -> Result<(), Gone> {
        if !self.logs {
            return Ok(());
        }
        loop {
            let (lines, _, _) = match self.runs.logs(&self.id, self.last_seq, 1000, "", "").await {
                Ok(page) => page,
                Err(error) => {
                    let _ = self.tx.send(Err(Status::from(error))).await;
                    return Err(Gone);
                }
            };
            if lines.is_empty() {
                return Ok(());
            }
            for line in lines {
                self.last_seq = line.seq;
                self.send(Event::LogLine(line)).await?;
            }
        }
    }
}
