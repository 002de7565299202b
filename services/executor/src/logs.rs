//! A run's log on its way to the jobs service: lines get their seq here, secrets are masked
//! before a line is kept, and batches go out every 100 ms (or at once past 500 lines). A batch
//! that fails is sent again: the jobs service ignores seqs it already has.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use opsconductor_api::jobs::v1::{AppendRunLogsRequest, LogLine, LogStream};
use opsconductor_platform::client::Clients;
use opsconductor_platform::time::{now_micros, to_timestamp};
use tokio::sync::Notify;
use tracing::Instrument;

/// Longest line kept; longer ones are split.
pub const MAX_LINE_BYTES: usize = 16 * 1024;
/// Lines kept waiting for the jobs service at most; beyond, lines are counted and dropped.
const MAX_PENDING: usize = 100_000;
const BATCH: usize = 1000;
const EARLY_FLUSH: usize = 500;
const MASK: &str = "****";

struct State {
    next_seq: u64,
    pending: Vec<LogLine>,
    secrets: Vec<String>,
    dropped: u64,
    /// The end of each step attempt's standard output: what later steps see as its output.
    tails: std::collections::HashMap<(String, String, u32), String>,
}

/// How much of a step's standard output is kept as its output.
pub const MAX_OUTPUT_BYTES: usize = 64 * 1024;

#[derive(Clone)]
pub struct RunLog {
    state: Arc<Mutex<State>>,
    wake: Arc<Notify>,
}

/// Where a line comes from.
#[derive(Debug, Clone, Default)]
pub struct Origin {
    pub step_name: String,
    pub target_id: String,
    pub attempt: u32,
}

impl RunLog {
    pub fn new(next_seq: u64) -> RunLog {
        RunLog {
            state: Arc::new(Mutex::new(State {
                next_seq: next_seq.max(1),
                pending: Vec::new(),
                secrets: Vec::new(),
                dropped: 0,
                tails: std::collections::HashMap::new(),
            })),
            wake: Arc::new(Notify::new()),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Masks `secret` in every line written from now on (revealed credentials).
    pub fn add_secret(&self, secret: &str) {
        if !secret.is_empty() {
            let mut state = self.state();
            state.secrets.push(secret.to_string());
            // Longest first, so a secret containing another is masked whole.
            state.secrets.sort_by_key(|s| std::cmp::Reverse(s.len()));
        }
    }

    pub fn system(&self, origin: &Origin, text: impl Into<String>) {
        self.write(origin, LogStream::System, &text.into());
    }

    pub fn write(&self, origin: &Origin, stream: LogStream, text: &str) {
        let mut state = self.state();
        let mut text = text.to_string();
        for secret in &state.secrets {
            if text.contains(secret.as_str()) {
                text = text.replace(secret.as_str(), MASK);
            }
        }
        if stream == LogStream::Stdout && !origin.step_name.is_empty() {
            let key = (
                origin.step_name.clone(),
                origin.target_id.clone(),
                origin.attempt,
            );
            let tail = state.tails.entry(key).or_default();
            if !tail.is_empty() {
                tail.push('\n');
            }
            tail.push_str(&text);
            if tail.len() > MAX_OUTPUT_BYTES {
                let mut cut = tail.len() - MAX_OUTPUT_BYTES;
                while !tail.is_char_boundary(cut) {
                    cut += 1;
                }
                tail.drain(..cut);
            }
        }
        for piece in split(&text) {
            if state.pending.len() >= MAX_PENDING {
                state.dropped += 1;
                continue;
            }
            let seq = state.next_seq;
            state.next_seq += 1;
            state.pending.push(LogLine {
                seq,
                stream: stream as i32,
                step_name: origin.step_name.clone(),
                target_id: origin.target_id.clone(),
                attempt: origin.attempt,
                text: piece.to_string(),
                emit_time: Some(to_timestamp(now_micros())),
            });
        }
        if state.pending.len() >= EARLY_FLUSH {
            self.wake.notify_one();
        }
    }

    /// Sends what is pending, batch by batch; false when the jobs service refused the lease.
    pub async fn flush(
        &self,
        clients: &Clients,
        run_id: &str,
        token: &str,
    ) -> Result<(), tonic::Status> {
        loop {
            let batch: Vec<LogLine> = {
                let state = self.state();
                state.pending.iter().take(BATCH).cloned().collect()
            };
            if batch.is_empty() {
                return Ok(());
            }
            let last = batch.last().map(|l| l.seq).unwrap_or_default();
            let stored = clients
                .jobs()
                .append_run_logs(AppendRunLogsRequest {
                    run_id: run_id.to_string(),
                    lease_token: token.to_string(),
                    lines: batch,
                })
                .await?
                .into_inner();
            // What the jobs service has, not what was sent: a batch that raced another flush
            // of the same lines may have been stored only in part.
            let stored = stored.last_seq.min(last);
            self.state().pending.retain(|l| l.seq > stored);
            if stored < last {
                tokio::task::yield_now().await;
            }
        }
    }

    /// Flushes every 100 ms, or sooner when many lines wait, until the task is aborted.
    pub fn spawn_flusher(
        &self,
        clients: Arc<Clients>,
        run_id: String,
        token: String,
    ) -> tokio::task::JoinHandle<()> {
        let log = self.clone();
        let flusher = async move {
            loop {
                tokio::select! {
                    _ = log.wake.notified() => {}
                    _ = tokio::time::sleep(Duration::from_millis(100)) => {}
                }
                if let Err(status) = log.flush(&clients, &run_id, &token).await {
                    tracing::debug!(%run_id, %status, "log batch not sent; trying again");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            }
        }
        // Its calls belong to the run's trace.
        .in_current_span();
        tokio::spawn(flusher)
    }

    /// The attempt's standard output (its end, masked, trailing whitespace trimmed), forgotten
    /// here once taken.
    pub fn take_output(&self, origin: &Origin) -> String {
        let key = (
            origin.step_name.clone(),
            origin.target_id.clone(),
            origin.attempt,
        );
        let mut output = self.state().tails.remove(&key).unwrap_or_default();
        output.truncate(output.trim_end().len());
        output
    }

    /// Lines dropped because the jobs service could not keep up.
    pub fn dropped(&self) -> u64 {
        self.state().dropped
    }
}

/// Pieces of at most [`MAX_LINE_BYTES`], split on character boundaries.
fn split(text: &str) -> Vec<&str> {
    let mut pieces = Vec::new();
    let mut rest = text;
    while rest.len() > MAX_LINE_BYTES {
        let mut cut = MAX_LINE_BYTES;
        while !rest.is_char_boundary(cut) {
            cut -= 1;
        }
        pieces.push(&rest[..cut]);
        rest = &rest[cut..];
    }
    pieces.push(rest);
    pieces
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_masked_and_long_lines_split() {
        let log = RunLog::new(7);
        log.add_secret("hunter2");
        log.add_secret("hunter22");
        let origin = Origin::default();
        log.write(&origin, LogStream::Stdout, "pw=hunter22 and hunter2");
        log.write(&origin, LogStream::Stdout, &"é".repeat(MAX_LINE_BYTES));
        let state = log.state();
        assert_eq!(state.pending[0].text, "pw=**** and ****");
        assert_eq!(state.pending[0].seq, 7);
        assert_eq!(state.pending.len(), 3);
        assert!(state.pending.iter().all(|l| l.text.len() <= MAX_LINE_BYTES));
        assert_eq!(state.pending[2].seq, 9);
    }
}
