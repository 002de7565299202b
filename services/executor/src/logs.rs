//! A run's log on its way to the jobs service: lines get their seq here, secrets are masked
//! before a line is kept, and batches go out every 100 ms (or at once past 500 lines). A batch
//! that fails is sent again: the jobs service ignores seqs it already has.
//!
//! The log is bounded: a line longer than [`Limits::line_bytes`] is cut and ends with
//! [`LINE_TRUNCATED`]; once a run's log reaches [`Limits::run_bytes`] a marker line says so and
//! later lines are only counted (the step still runs, its output is still read and its last
//! lines still become its output), and at the end one more line says how much was dropped.
//! Lines waiting for the jobs service never exceed [`MAX_PENDING_BYTES`]: readers wait
//! ([`RunLog::room`]) until the flusher has sent some, which stops the step's pipe.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use opsconductor_api::jobs::v1::{AppendRunLogsRequest, LogLine, LogStream};
use opsconductor_platform::client::Clients;
use opsconductor_platform::time::{now_micros, to_timestamp};
use tokio::sync::Notify;
use tracing::Instrument;

use crate::mask::Masker;

/// Longest line the jobs service stores; [`Limits::line_bytes`] is at most this.
pub const MAX_LINE_BYTES: usize = 16 * 1024;
/// What ends a line cut at [`Limits::line_bytes`].
pub const LINE_TRUNCATED: &str = " …[line truncated]";
/// How a run's log that reached its cap says so.
pub const LOG_TRUNCATED: &str = "log truncated:";
/// What a stored line costs beyond its text (seq, stream, attempt, time, framing): counted
/// against the run's cap so that many short lines cannot store more than the cap says.
const LINE_OVERHEAD: usize = 32;
/// System lines (step results, errors) may go this far past the cap, so a truncated run's log
/// still says how each step ended.
const SYSTEM_RESERVE: usize = 64 * 1024;
/// Bytes waiting for the jobs service at most before readers wait.
pub const MAX_PENDING_BYTES: usize = 4 * 1024 * 1024;
/// Lines and bytes per AppendRunLogs call at most (well under the message size limit).
const BATCH: usize = 1000;
const BATCH_BYTES: usize = 1024 * 1024;
const EARLY_FLUSH: usize = 500;

/// How much of a run's output is kept (docs/configuration.md: `EXECUTOR_LOG_MAX_BYTES`,
/// `EXECUTOR_LOG_LINE_BYTES`).
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// A run's stored log at most: text plus [`LINE_OVERHEAD`] and the line's step and target
    /// per line.
    pub run_bytes: usize,
    /// A line at most, its truncation marker included.
    pub line_bytes: usize,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            run_bytes: 4 * 1024 * 1024,
            line_bytes: MAX_LINE_BYTES,
        }
    }
}

struct State {
    next_seq: u64,
    pending: Vec<LogLine>,
    /// Cost of the lines in `pending`.
    pending_bytes: usize,
    masker: Masker,
    /// Cost of every line kept so far.
    kept_bytes: usize,
    truncated: bool,
    dropped_lines: u64,
    dropped_bytes: u64,
    /// The end of each step attempt's standard output: what later steps see as its output.
    tails: std::collections::HashMap<(String, String, u32), String>,
}

/// How much of a step's standard output is kept as its output.
pub const MAX_OUTPUT_BYTES: usize = 64 * 1024;

#[derive(Clone)]
pub struct RunLog {
    state: Arc<Mutex<State>>,
    limits: Limits,
    wake: Arc<Notify>,
    /// Signalled whenever the flusher sent lines: readers waiting for room look again.
    drained: Arc<Notify>,
}

/// Where a line comes from.
#[derive(Debug, Clone, Default)]
pub struct Origin {
    pub step_name: String,
    pub target_id: String,
    pub attempt: u32,
}

impl RunLog {
    pub fn new(next_seq: u64, limits: Limits) -> RunLog {
        RunLog {
            state: Arc::new(Mutex::new(State {
                next_seq: next_seq.max(1),
                pending: Vec::new(),
                pending_bytes: 0,
                masker: Masker::default(),
                kept_bytes: 0,
                truncated: false,
                dropped_lines: 0,
                dropped_bytes: 0,
                tails: std::collections::HashMap::new(),
            })),
            limits: Limits {
                run_bytes: limits.run_bytes,
                line_bytes: limits
                    .line_bytes
                    .clamp(LINE_TRUNCATED.len() + 16, MAX_LINE_BYTES),
            },
            wake: Arc::new(Notify::new()),
            drained: Arc::new(Notify::new()),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Masks `secret` (and its encodings, see [`Masker`]) in every line, error and output
    /// written from now on.
    pub fn add_secret(&self, secret: &str) {
        self.state().masker.add(secret);
    }

    /// `text` with every secret known so far masked: for step and run errors, which leave the
    /// executor without passing through the log.
    pub fn mask(&self, text: &str) -> String {
        self.state().masker.mask(text).into_owned()
    }

    pub fn system(&self, origin: &Origin, text: impl Into<String>) {
        self.write(origin, LogStream::System, &text.into());
    }

    /// Writes `text` (one line, or a step's output cut by [`Lines`]): masked, cut at the line
    /// limit (also when `cut` says the reader already dropped the rest), counted against the
    /// run's limit.
    pub fn write(&self, origin: &Origin, stream: LogStream, text: &str) {
        self.write_line(origin, stream, text, false);
    }

    fn write_line(&self, origin: &Origin, stream: LogStream, text: &str, cut: bool) {
        let mut state = self.state();
        // Masked before anything is cut: a secret is whole in `text` (see `Lines`).
        let text = state.masker.mask(text);
        let mut text = if cut || text.len() > self.limits.line_bytes {
            let mut end = (self.limits.line_bytes - LINE_TRUNCATED.len()).min(text.len());
            while !text.is_char_boundary(end) {
                end -= 1;
            }
            let mut shown = text[..end].to_string();
            shown.push_str(LINE_TRUNCATED);
            shown
        } else {
            text.into_owned()
        };
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
            // Trimmed once it holds twice the output: the cost of trimming stays per byte.
            if tail.len() > 2 * MAX_OUTPUT_BYTES {
                trim_front(tail, MAX_OUTPUT_BYTES);
            }
        }
        let cost = text.len() + origin.step_name.len() + origin.target_id.len() + LINE_OVERHEAD;
        let limit = match stream {
            LogStream::System => self.limits.run_bytes + SYSTEM_RESERVE,
            _ => self.limits.run_bytes,
        };
        if state.kept_bytes + cost > limit || (state.truncated && stream != LogStream::System) {
            if !state.truncated {
                state.truncated = true;
                let marker = format!(
                    "{LOG_TRUNCATED} this run's log reached its limit of {} bytes; later output is not kept",
                    self.limits.run_bytes
                );
                self.push(&mut state, &Origin::default(), LogStream::System, marker);
            }
            state.dropped_lines += 1;
            state.dropped_bytes += text.len() as u64;
            return;
        }
        text.shrink_to_fit();
        self.push(&mut state, origin, stream, text);
    }

    fn push(&self, state: &mut State, origin: &Origin, stream: LogStream, text: String) {
        let cost = text.len() + origin.step_name.len() + origin.target_id.len() + LINE_OVERHEAD;
        state.kept_bytes += cost;
        state.pending_bytes += cost;
        let seq = state.next_seq;
        state.next_seq += 1;
        state.pending.push(LogLine {
            seq,
            stream: stream as i32,
            step_name: origin.step_name.clone(),
            target_id: origin.target_id.clone(),
            attempt: origin.attempt,
            text,
            emit_time: Some(to_timestamp(now_micros())),
        });
        if state.pending.len() >= EARLY_FLUSH || state.pending_bytes >= BATCH_BYTES {
            self.wake.notify_one();
        }
    }

    /// Waits until fewer than [`MAX_PENDING_BYTES`] wait for the jobs service: a reader calls
    /// this before it reads more, so a step that writes faster than its log is sent blocks on
    /// its pipe instead of filling the executor's memory.
    pub async fn room(&self) {
        loop {
            let drained = self.drained.notified();
            tokio::pin!(drained);
            drained.as_mut().enable();
            if self.state().pending_bytes < MAX_PENDING_BYTES {
                return;
            }
            self.wake.notify_one();
            drained.await;
        }
    }

    /// A splitter of one stream's bytes into lines for this log.
    pub fn lines(&self, origin: &Origin, stream: LogStream) -> Lines {
        Lines {
            log: self.clone(),
            origin: origin.clone(),
            stream,
            pending: Vec::new(),
            skipping: false,
        }
    }

    /// Sends what is pending, batch by batch; Err when the jobs service refused (or could not
    /// be reached).
    pub async fn flush(
        &self,
        clients: &Clients,
        run_id: &str,
        token: &str,
    ) -> Result<(), tonic::Status> {
        loop {
            let batch: Vec<LogLine> = {
                let state = self.state();
                let mut size = 0;
                state
                    .pending
                    .iter()
                    .take(BATCH)
                    .take_while(|l| {
                        size += l.text.len() + LINE_OVERHEAD;
                        size <= BATCH_BYTES || size == l.text.len() + LINE_OVERHEAD
                    })
                    .cloned()
                    .collect()
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
            {
                let mut state = self.state();
                let mut freed = 0;
                state.pending.retain(|l| {
                    let keep = l.seq > stored;
                    if !keep {
                        freed +=
                            l.text.len() + l.step_name.len() + l.target_id.len() + LINE_OVERHEAD;
                    }
                    keep
                });
                state.pending_bytes = state.pending_bytes.saturating_sub(freed);
            }
            self.drained.notify_waiters();
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
        trim_front(&mut output, MAX_OUTPUT_BYTES);
        output.truncate(output.trim_end().len());
        output
    }

    /// At the end of the run: when the log was truncated, a last line saying how much was not
    /// kept (past every limit: it is the line a reader looks for). True when it was.
    pub fn finish(&self) -> bool {
        let mut state = self.state();
        if !state.truncated {
            return false;
        }
        let text = format!(
            "{LOG_TRUNCATED} {} lines ({} bytes) past the limit of {} bytes were not kept",
            state.dropped_lines, state.dropped_bytes, self.limits.run_bytes
        );
        self.push(&mut state, &Origin::default(), LogStream::System, text);
        true
    }
}

#[cfg(test)]
impl RunLog {
    /// What a jobs service that takes every batch at once would leave: nothing pending.
    pub fn drain_for_test(&self) -> usize {
        let taken = {
            let mut state = self.state();
            state.pending_bytes = 0;
            std::mem::take(&mut state.pending).len()
        };
        self.drained.notify_waiters();
        taken
    }
}

/// Drops the front of `text` so that at most `max` bytes remain, on a character boundary.
fn trim_front(text: &mut String, max: usize) {
    if text.len() > max {
        let mut cut = text.len() - max;
        while !text.is_char_boundary(cut) {
            cut += 1;
        }
        text.drain(..cut);
    }
}

/// One stream's bytes cut into lines for a [`RunLog`]. A line longer than the line limit is
/// cut, but only once the bytes after the cut that could complete a secret begun before it
/// have arrived (the longest form of a secret): the masker sees the secret whole and the cut
/// line shows no part of it. The rest of such a line is read and dropped.
pub struct Lines {
    log: RunLog,
    origin: Origin,
    stream: LogStream,
    pending: Vec<u8>,
    /// In the dropped rest of a cut line.
    skipping: bool,
}

impl Lines {
    pub fn push(&mut self, mut data: &[u8]) {
        let hold = self.log.limits.line_bytes + self.log.state().masker.longest() + 1;
        while !data.is_empty() {
            let newline = data.iter().position(|b| *b == b'\n');
            if self.skipping {
                match newline {
                    Some(end) => {
                        self.skipping = false;
                        data = &data[end + 1..];
                    }
                    None => return,
                }
                continue;
            }
            match newline {
                Some(end) if self.pending.len() + end < hold => {
                    self.pending.extend_from_slice(&data[..end]);
                    self.emit(false);
                    data = &data[end + 1..];
                }
                _ => {
                    let take = (hold - self.pending.len()).min(data.len());
                    self.pending.extend_from_slice(&data[..take]);
                    data = &data[take..];
                    if self.pending.len() >= hold {
                        self.emit(true);
                        self.skipping = true;
                    }
                }
            }
        }
    }

    /// The stream ended: what is left is the last line.
    pub fn finish(&mut self) {
        if !self.pending.is_empty() {
            self.emit(false);
        }
        self.skipping = false;
    }

    fn emit(&mut self, cut: bool) {
        let bytes = std::mem::take(&mut self.pending);
        let text = String::from_utf8_lossy(&bytes);
        let text = if cut {
            text.as_ref()
        } else {
            text.trim_end_matches('\r')
        };
        self.log.write_line(&self.origin, self.stream, text, cut);
        // The buffer is reused: its capacity stays one line's worth.
        self.pending = bytes;
        self.pending.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn texts(log: &RunLog) -> Vec<String> {
        log.state().pending.iter().map(|l| l.text.clone()).collect()
    }

    #[test]
    fn secrets_are_masked_and_long_lines_cut() {
        let log = RunLog::new(7, Limits::default());
        log.add_secret("hunter2");
        log.add_secret("hunter22");
        let origin = Origin::default();
        log.write(&origin, LogStream::Stdout, "pw=hunter22 and hunter2");
        log.write(&origin, LogStream::Stdout, &"é".repeat(MAX_LINE_BYTES));
        let state = log.state();
        assert_eq!(state.pending[0].text, "pw=**** and ****");
        assert_eq!(state.pending[0].seq, 7);
        assert_eq!(state.pending.len(), 2);
        assert!(state.pending.iter().all(|l| l.text.len() <= MAX_LINE_BYTES));
        assert!(state.pending[1].text.ends_with(LINE_TRUNCATED));
        assert_eq!(state.pending[1].seq, 8);
    }

    /// A secret that straddles the line limit, fed in reads that split it too, is masked: no
    /// prefix of it shows before the cut.
    #[test]
    fn a_secret_across_a_read_boundary_is_masked() {
        let secret = "s3cr3t-value-0123456789";
        for before in [MAX_LINE_BYTES - 30, MAX_LINE_BYTES - 5, 100] {
            let log = RunLog::new(1, Limits::default());
            log.add_secret(secret);
            let mut lines = log.lines(&Origin::default(), LogStream::Stdout);
            let data = format!(
                "{}{secret}{}\nnext {secret}\n",
                "x".repeat(before),
                "y".repeat(40)
            );
            for piece in data.as_bytes().chunks(4096 - 3) {
                lines.push(piece);
            }
            lines.finish();
            let texts = texts(&log);
            assert_eq!(texts.len(), 2, "{before}");
            assert_eq!(texts[1], "next ****");
            for text in &texts {
                for n in 4..secret.len() {
                    assert!(!text.contains(&secret[..n]), "{before}: a prefix shows");
                }
            }
        }
    }

    #[test]
    fn a_run_log_stops_at_its_limit_and_says_so() {
        let limits = Limits {
            run_bytes: 64 * 1024,
            line_bytes: 1024,
        };
        let log = RunLog::new(1, limits);
        let origin = Origin {
            step_name: "flood".into(),
            target_id: String::new(),
            attempt: 1,
        };
        let mut lines = log.lines(&origin, LogStream::Stdout);
        let line = "x".repeat(100) + "\n";
        for _ in 0..10_000 {
            lines.push(line.as_bytes());
        }
        // One line without an end, far over the line limit.
        lines.push("z".repeat(100_000).as_bytes());
        lines.finish();
        log.system(&origin, "exited with 0");
        assert!(log.finish());
        let state = log.state();
        let stored: usize = state
            .pending
            .iter()
            .map(|l| l.text.len() + l.step_name.len() + LINE_OVERHEAD)
            .sum();
        assert!(stored <= limits.run_bytes + SYSTEM_RESERVE, "{stored}");
        let last = &state.pending[state.pending.len() - 1].text;
        assert!(last.starts_with(LOG_TRUNCATED), "{last}");
        assert!(state.pending.iter().any(|l| l.text == "exited with 0"));
        assert!(state.dropped_lines > 9000);
        // The output is still the end of what the step printed.
        drop(state);
        let output = log.take_output(&origin);
        assert!(output.len() <= MAX_OUTPUT_BYTES);
        assert!(
            output.ends_with(LINE_TRUNCATED),
            "{}",
            &output[output.len() - 40..]
        );
    }

    #[test]
    fn short_logs_are_not_truncated_and_tails_stay_bounded() {
        let log = RunLog::new(1, Limits::default());
        let origin = Origin {
            step_name: "s".into(),
            ..Origin::default()
        };
        for i in 0..1000 {
            log.write(
                &origin,
                LogStream::Stdout,
                &format!("line {i} {}", "y".repeat(500)),
            );
        }
        assert!(!log.finish());
        let output = log.take_output(&origin);
        assert!(output.len() <= MAX_OUTPUT_BYTES);
        assert!(output.ends_with(&format!("line 999 {}", "y".repeat(500))));
    }
}
