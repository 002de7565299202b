//! Rendering untrusted templates in child processes with a memory limit.
//!
//! Fuel bounds the instructions a template runs, not the bytes it builds: `'x' * 100000000`
//! is one instruction, and a string doubled thirty times is thirty. A failed allocation aborts a
//! Rust process (it is not a panic), so no check inside the engine can turn "too big" into an
//! error once the allocation is attempted. Templates that people wrote (stored templates and
//! previews) therefore render in a child process (`opsconductor render-sandbox`) whose data
//! segment is limited with `RLIMIT_DATA`: a template that needs more dies alone, and the caller
//! gets [`RenderError::OutOfMemory`] naming the field and the limit. Built-in texts are ours and
//! render in-process.
//!
//! The protocol is JSON lines on the child's stdin and stdout: one [`Request`] in; a line
//! `{"field": …}` before each field is rendered (so the field that killed the child can be
//! named), then one [`Response`].

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Mutex;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};
use tokio::sync::Semaphore;

use crate::{engine, Channel, RenderError, Rendered, Source};

/// The first line a sandbox writes, so that a program that is not one is noticed at start-up.
const HELLO: &str = "opsconductor-render-sandbox 1";
/// The longest line read from a sandbox: three capped fields, JSON-escaped, with room to spare.
const MAX_LINE: u64 = 16 * 1024 * 1024;

/// How the sandbox processes are bounded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Each child's `RLIMIT_DATA`: heap and anonymous memory, in bytes.
    pub memory_bytes: u64,
    /// How long one render may take before its child is killed.
    pub timeout: Duration,
    /// Children at most, so renders at most in parallel.
    pub processes: usize,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            memory_bytes: 256 * 1024 * 1024,
            timeout: Duration::from_secs(5),
            processes: 2,
        }
    }
}

/// Why the sandbox could not give an answer about the template (the template is not to blame).
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    #[error("cannot start the render sandbox {program}: {message}")]
    Start { program: String, message: String },
    #[error("the render sandbox failed: {0}")]
    Broken(String),
}

#[derive(Serialize, Deserialize)]
struct Request {
    channel: i32,
    subject: String,
    body: String,
    html_body: String,
    context: serde_json::Value,
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Response {
    Field(String),
    Ok(Rendered),
    Err(WireError),
}

/// [`RenderError`] on the wire (its fields are `&'static str`).
#[derive(Serialize, Deserialize)]
struct WireError {
    kind: String,
    field: String,
    line: Option<usize>,
    message: String,
    limit: u64,
}

fn static_field(field: &str) -> &'static str {
    match field {
        "subject" => "subject",
        "html_body" => "html_body",
        _ => "body",
    }
}

impl From<&RenderError> for WireError {
    fn from(e: &RenderError) -> WireError {
        let (kind, line, message, limit) = match e {
            RenderError::Template { line, message, .. } => ("template", *line, message.clone(), 0),
            RenderError::TooLarge { limit, .. } => {
                ("too_large", None, String::new(), *limit as u64)
            }
            RenderError::NotJson { line, message } => ("not_json", *line, message.clone(), 0),
            RenderError::OutOfMemory { limit, .. } => ("memory", None, String::new(), *limit),
            RenderError::TimedOut { limit_ms, .. } => ("time", None, String::new(), *limit_ms),
        };
        WireError {
            kind: kind.into(),
            field: e.field().into(),
            line,
            message,
            limit,
        }
    }
}

impl From<WireError> for RenderError {
    fn from(w: WireError) -> RenderError {
        let field = static_field(&w.field);
        match w.kind.as_str() {
            "too_large" => RenderError::TooLarge {
                field,
                limit: usize::try_from(w.limit).unwrap_or(usize::MAX),
            },
            "not_json" => RenderError::NotJson {
                line: w.line,
                message: w.message,
            },
            "memory" => RenderError::OutOfMemory {
                field,
                limit: w.limit,
            },
            "time" => RenderError::TimedOut {
                field,
                limit_ms: w.limit,
            },
            _ => RenderError::Template {
                field,
                line: w.line,
                message: w.message,
            },
        }
    }
}

/// The child's side: limits itself, greets, then renders one request per line until stdin
/// closes. Called by `opsconductor render-sandbox` before anything else runs.
pub fn serve(memory_bytes: u64) -> std::io::Result<()> {
    use nix::sys::resource::{setrlimit, Resource};
    use std::io::{BufRead, Write};
    let limit = |resource, value| {
        setrlimit(resource, value, value).map_err(|e| std::io::Error::from_raw_os_error(e as i32))
    };
    limit(Resource::RLIMIT_DATA, memory_bytes)?;
    // An allocation failure aborts: no core file of a template's memory.
    limit(Resource::RLIMIT_CORE, 0)?;
    let stdin = std::io::stdin();
    let mut out = std::io::stdout().lock();
    writeln!(out, "{HELLO}")?;
    out.flush()?;
    let mut line = String::new();
    loop {
        line.clear();
        if stdin.lock().read_line(&mut line)? == 0 {
            return Ok(());
        }
        let request: Request = serde_json::from_str(&line).map_err(std::io::Error::other)?;
        let channel = Channel::try_from(request.channel).unwrap_or(Channel::Unspecified);
        let source = Source {
            subject: &request.subject,
            body: &request.body,
            html_body: &request.html_body,
        };
        let mut report = |field: &'static str| {
            // A lost progress line only costs the field's name in an error.
            let _ = write_line(&mut out, &Response::Field(field.into()));
        };
        let result = engine::render_reporting(channel, &source, &request.context, &mut report);
        let response = match result {
            Ok(rendered) => Response::Ok(rendered),
            Err(e) => Response::Err(WireError::from(&e)),
        };
        write_line(&mut out, &response)?;
    }
}

fn write_line(out: &mut impl std::io::Write, response: &Response) -> std::io::Result<()> {
    serde_json::to_writer(&mut *out, response).map_err(std::io::Error::other)?;
    out.write_all(b"\n")?;
    out.flush()
}

struct Worker {
    // Held so the child is killed when the worker is dropped (kill_on_drop).
    _process: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

/// The parent's side: a few long-lived children, each used by one render at a time; a child
/// that dies or overruns is replaced.
pub struct Sandbox {
    program: PathBuf,
    args: Vec<OsString>,
    limits: Limits,
    idle: Mutex<Vec<Worker>>,
    permits: Semaphore,
}

impl std::fmt::Debug for Sandbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sandbox")
            .field("program", &self.program)
            .field("limits", &self.limits)
            .finish()
    }
}

impl Sandbox {
    /// Starts one child of `program args… --memory-bytes N` and checks that it greets: a
    /// misconfigured program fails at start-up, not at the first notification.
    pub async fn start(
        program: PathBuf,
        args: Vec<OsString>,
        limits: Limits,
    ) -> Result<Sandbox, SandboxError> {
        let sandbox = Sandbox {
            program,
            args,
            limits,
            idle: Mutex::new(Vec::new()),
            permits: Semaphore::new(limits.processes.max(1)),
        };
        let worker = sandbox.spawn().await?;
        sandbox.put_back(worker);
        Ok(sandbox)
    }

    pub fn limits(&self) -> Limits {
        self.limits
    }

    async fn spawn(&self) -> Result<Worker, SandboxError> {
        let failed = |message: String| SandboxError::Start {
            program: self.program.display().to_string(),
            message,
        };
        let mut process = Command::new(&self.program)
            .args(&self.args)
            .arg("--memory-bytes")
            .arg(self.limits.memory_bytes.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            // "memory allocation of N bytes failed" is expected; the error says it better.
            .stderr(Stdio::null())
            .env_clear()
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| failed(e.to_string()))?;
        let (Some(stdin), Some(stdout)) = (process.stdin.take(), process.stdout.take()) else {
            return Err(failed("no pipes".into()));
        };
        let mut worker = Worker {
            _process: process,
            stdin,
            stdout: BufReader::new(stdout),
        };
        let hello = tokio::time::timeout(self.limits.timeout, read_line(&mut worker.stdout))
            .await
            .map_err(|_| failed("it did not greet in time".into()))?
            .map_err(|e| failed(e.to_string()))?;
        if hello.trim_end() != HELLO {
            return Err(failed(format!(
                "it is not a render sandbox (it said {:?})",
                hello.chars().take(80).collect::<String>()
            )));
        }
        Ok(worker)
    }

    fn put_back(&self, worker: Worker) {
        if let Ok(mut idle) = self.idle.lock() {
            idle.push(worker);
        }
    }

    fn take_idle(&self) -> Option<Worker> {
        self.idle.lock().ok().and_then(|mut idle| idle.pop())
    }

    /// Renders like [`crate::render`], in a child. `Ok(Err(_))` is the template's fault (an
    /// exhausted child included); `Err(_)` is the sandbox's.
    pub async fn render(
        &self,
        channel: Channel,
        source: &Source<'_>,
        context: &serde_json::Value,
    ) -> Result<Result<Rendered, RenderError>, SandboxError> {
        let _permit = self
            .permits
            .acquire()
            .await
            .map_err(|e| SandboxError::Broken(e.to_string()))?;
        let mut worker = match self.take_idle() {
            Some(worker) => worker,
            None => self.spawn().await?,
        };
        let request = Request {
            channel: channel as i32,
            subject: source.subject.into(),
            body: source.body.into(),
            html_body: source.html_body.into(),
            context: context.clone(),
        };
        let mut line =
            serde_json::to_vec(&request).map_err(|e| SandboxError::Broken(e.to_string()))?;
        line.push(b'\n');
        if let Err(e) = worker.stdin.write_all(&line).await {
            // A child that died while idle: try once more with a fresh one.
            tracing::debug!(error = %e, "render sandbox gone; starting another");
            worker = self.spawn().await?;
            worker
                .stdin
                .write_all(&line)
                .await
                .map_err(|e| SandboxError::Broken(e.to_string()))?;
        }
        let mut field = "subject";
        let deadline = tokio::time::Instant::now() + self.limits.timeout;
        loop {
            let next = tokio::time::timeout_at(deadline, read_line(&mut worker.stdout)).await;
            let text = match next {
                Err(_) => {
                    return Ok(Err(RenderError::TimedOut {
                        field,
                        limit_ms: self.limits.timeout.as_millis() as u64,
                    }))
                }
                // The child died: the only thing a request can do to it is exhaust its memory.
                Ok(Err(_)) => {
                    return Ok(Err(RenderError::OutOfMemory {
                        field,
                        limit: self.limits.memory_bytes,
                    }))
                }
                Ok(Ok(text)) => text,
            };
            match serde_json::from_str::<Response>(&text) {
                Ok(Response::Field(name)) => field = static_field(&name),
                Ok(Response::Ok(rendered)) => {
                    self.put_back(worker);
                    return Ok(Ok(rendered));
                }
                Ok(Response::Err(e)) => {
                    self.put_back(worker);
                    return Ok(Err(RenderError::from(e)));
                }
                Err(e) => return Err(SandboxError::Broken(e.to_string())),
            }
        }
    }
}

/// One line, at most [`MAX_LINE`] bytes; end of file is an error.
async fn read_line(stdout: &mut BufReader<ChildStdout>) -> std::io::Result<String> {
    let mut line = String::new();
    let read = (&mut *stdout).take(MAX_LINE).read_line(&mut line).await?;
    if read == 0 || !line.ends_with('\n') {
        return Err(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            "the sandbox closed its output",
        ));
    }
    Ok(line)
}
