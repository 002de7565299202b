//! HTTP steps with `reqwest` over rustls: no redirects followed, a timeout per attempt, and
//! at most [`MAX_BODY`] of the response read (and at most [`MAX_LOGGED`] of it logged).

use std::time::{Duration, Instant};

use opsconductor_api::jobs::v1::LogStream;
use opsconductor_egress::{check_literal, is_refusal, GuardedResolver, Policy, Refused};
use tokio::sync::watch;

use crate::instance::Stop;
use crate::logs::{Origin, RunLog};
use crate::shell::stopped;

pub const MAX_BODY: usize = 1024 * 1024;
const MAX_LOGGED: usize = 64 * 1024;

pub struct HttpRequest {
    pub method: String,
    pub url: String,
    pub headers: Vec<(String, String)>,
    pub body: String,
    pub expected: Vec<u32>,
    pub timeout: Duration,
}

/// How a request ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// A response arrived; `ok` when its status is one the step expects.
    Response {
        status: u16,
        ok: bool,
    },
    Failed(String),
    TimedOut,
    Stopped(Stop),
}

/// The client http steps share, and where it may connect (`EXECUTOR_HTTP_ALLOW_NETWORKS`).
pub struct Client {
    inner: reqwest::Client,
    policy: Policy,
}

pub fn client(policy: Policy) -> Result<Client, String> {
    let inner = reqwest::Client::builder()
        // A redirect could lead past the address checks to an internal host.
        .redirect(reqwest::redirect::Policy::none())
        // A proxy from the environment would resolve names itself, past the guard.
        .no_proxy()
        .dns_resolver(std::sync::Arc::new(GuardedResolver {
            policy: policy.clone(),
        }))
        .connect_timeout(Duration::from_secs(10))
        .user_agent(concat!("opsconductor-executor/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| format!("the HTTP client cannot be built: {e}"))?;
    Ok(Client { inner, policy })
}

/// Why a request was not sent: the address, and the setting that would allow it.
fn refused() -> String {
    format!("{Refused}; EXECUTOR_HTTP_ALLOW_NETWORKS lists the networks steps may reach")
}

pub async fn run(
    client: &Client,
    request: HttpRequest,
    log: &RunLog,
    origin: &Origin,
    stop: &mut watch::Receiver<Stop>,
) -> Outcome {
    let timeout = request.timeout;
    tokio::select! {
        outcome = tokio::time::timeout(timeout, send(client, request, log, origin)) => {
            outcome.unwrap_or(Outcome::TimedOut)
        }
        why = stopped(stop) => Outcome::Stopped(why),
    }
}

async fn send(client: &Client, request: HttpRequest, log: &RunLog, origin: &Origin) -> Outcome {
    let method = match reqwest::Method::from_bytes(request.method.as_bytes()) {
        Ok(m) => m,
        Err(_) => return Outcome::Failed(format!("{:?} is not an HTTP method", request.method)),
    };
    let url = match reqwest::Url::parse(&request.url) {
        Ok(url) if matches!(url.scheme(), "http" | "https") => url,
        Ok(url) => return Outcome::Failed(format!("{} URLs are not allowed", url.scheme())),
        Err(e) => return Outcome::Failed(format!("the URL is not valid: {e}")),
    };
    // An address written in the URL never reaches the resolver: checked here.
    if check_literal(&url, &client.policy).is_err() {
        return Outcome::Failed(refused());
    }
    let mut builder = client.inner.request(method.clone(), url.clone());
    for (name, value) in &request.headers {
        builder = builder.header(name, value);
    }
    if !request.body.is_empty() {
        builder = builder.body(request.body);
    }
    let started = Instant::now();
    let mut response = match builder.send().await {
        Ok(r) => r,
        Err(e) if is_refusal(&e) => return Outcome::Failed(refused()),
        Err(e) => {
            return Outcome::Failed(format!("{method} {} failed: {}", redact(&url), cause(&e)))
        }
    };
    let status = response.status().as_u16();
    let mut body = Vec::new();
    let mut truncated = false;
    loop {
        match response.chunk().await {
            Ok(Some(chunk)) => {
                let room = MAX_BODY - body.len();
                body.extend_from_slice(&chunk[..chunk.len().min(room)]);
                if chunk.len() > room {
                    truncated = true;
                    break;
                }
            }
            Ok(None) => break,
            Err(e) => {
                return Outcome::Failed(format!("reading the response failed: {}", cause(&e)))
            }
        }
    }
    log.system(
        origin,
        format!(
            "{method} {} → {status} in {} ms{}",
            redact(&url),
            started.elapsed().as_millis(),
            if truncated {
                " (body cut at 1 MiB)"
            } else {
                ""
            }
        ),
    );
    let shown = &body[..body.len().min(MAX_LOGGED)];
    for line in String::from_utf8_lossy(shown).lines() {
        log.write(origin, LogStream::Stdout, line);
    }
    let ok = if request.expected.is_empty() {
        (200..300).contains(&status)
    } else {
        request.expected.contains(&u32::from(status))
    };
    Outcome::Response { status, ok }
}

/// The URL without its user info and query (they may carry tokens).
fn redact(url: &reqwest::Url) -> String {
    let mut shown = url.clone();
    let _ = shown.set_username("");
    let _ = shown.set_password(None);
    if shown.query().is_some() {
        shown.set_query(Some("…"));
    }
    shown.to_string()
}

/// The error's causes, without the URL reqwest puts in its own message.
fn cause(error: &reqwest::Error) -> String {
    let mut parts = Vec::new();
    let mut source = std::error::Error::source(error);
    while let Some(inner) = source {
        parts.push(inner.to_string());
        source = inner.source();
    }
    if parts.is_empty() {
        "the request failed".into()
    } else {
        parts.join(": ")
    }
}
