//! One call through an upstream, made resilient: a deadline (inherited from the call being
//! served, or a default per method class), retries only where repeating is safe, within a
//! budget, with jittered backoff and never past the deadline, and replicas' breakers told
//! how each attempt went.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderMap, Request, Response};
use http_body_util::{BodyExt, Full, Limited};
use tonic::body::Body;
use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};
use tower::retry::budget::{Budget, TpsBudget};
use tower::{Service, ServiceExt};

use super::deadline;
use super::upstream::{Replica, Upstream};
use crate::policy::{MethodInfo, PolicyTable};

/// How calls are retried and bounded in time.
#[derive(Debug, Clone)]
pub struct RetrySettings {
    /// Attempts in all, the first included.
    pub max_attempts: u32,
    /// The first backoff; doubled per attempt, with full jitter.
    pub backoff: Duration,
    pub max_backoff: Duration,
    /// Retries allowed on top of calls, as a fraction of calls over the last 10 s …
    pub budget_ratio: f32,
    /// … plus this many per second whatever the traffic.
    pub budget_min_per_sec: u32,
    /// Deadline of a read (`NO_SIDE_EFFECTS`) made outside any call.
    pub read_timeout: Duration,
    /// Deadline of any other unary call made outside any call.
    pub write_timeout: Duration,
}

impl Default for RetrySettings {
    fn default() -> Self {
        RetrySettings {
            max_attempts: 3,
            backoff: Duration::from_millis(25),
            max_backoff: Duration::from_secs(1),
            budget_ratio: 0.1,
            budget_min_per_sec: 5,
            read_timeout: Duration::from_secs(5),
            write_timeout: Duration::from_secs(10),
        }
    }
}

/// What a client's calls share: the settings, one retry budget, the counters.
pub struct CallPolicy {
    pub settings: RetrySettings,
    budget: TpsBudget,
    max_message_bytes: usize,
    pub(crate) counters: CallCounters,
}

#[derive(Default)]
pub(crate) struct CallCounters {
    pub retries: AtomicU64,
    pub budget_exhausted: AtomicU64,
    pub breaker_refusals: AtomicU64,
    pub deadline_exceeded: AtomicU64,
}

impl CallPolicy {
    pub fn new(settings: RetrySettings, max_message_bytes: usize) -> CallPolicy {
        let budget = TpsBudget::new(
            Duration::from_secs(10),
            settings.budget_min_per_sec,
            settings.budget_ratio.clamp(0.0, 1000.0),
        );
        CallPolicy {
            settings,
            budget,
            max_message_bytes,
            counters: CallCounters::default(),
        }
    }

    /// Retries so far (for tests and metrics).
    pub fn retries(&self) -> u64 {
        self.counters.retries.load(Ordering::Relaxed)
    }

    fn backoff(&self, attempt: u32) -> Duration {
        let ceiling = self
            .settings
            .backoff
            .saturating_mul(1 << attempt.min(16))
            .min(self.settings.max_backoff);
        ceiling.mul_f64(rand::random::<f64>())
    }
}

/// How an attempt ended, for the breaker and the retry decision.
enum Outcome {
    Answered(Response<Body>),
    /// Retryable: the replica did not take the call (or said UNAVAILABLE / RESOURCE_EXHAUSTED
    /// with RetryInfo); `wait` is the server's RetryInfo, if any.
    Unavailable {
        answer: Result<Response<Body>, tonic::transport::Error>,
        wait: Option<Duration>,
        /// The replica that failed it, which a retry avoids.
        replica: Option<usize>,
        /// Nothing reached a server (the connection was refused, or no replica could be
        /// called): any call may be made again, whatever its idempotency.
        unsent: bool,
    },
}

/// Makes `request` to `upstream` under `policy`.
pub(crate) async fn call(
    upstream: &Upstream,
    policy: &CallPolicy,
    request: Request<Body>,
) -> Result<Response<Body>, tonic::transport::Error> {
    let method = PolicyTable::global()
        .ok()
        .and_then(|table| table.method(request.uri().path()));
    let now = Instant::now();
    let deadline = deadline_for(method, policy, now);
    if deadline.is_some_and(|d| d <= now + deadline::MARGIN) {
        policy
            .counters
            .deadline_exceeded
            .fetch_add(1, Ordering::Relaxed);
        return Ok(
            Status::deadline_exceeded("no time left before the caller's deadline").into_http(),
        );
    }
    let (parts, body) = request.into_parts();
    // The body is read (to be sent again, and to see whether it carries an idempotency key)
    // for every known method but client streams.
    let buffer = method.is_some() && !is_client_streaming(method);
    let body = if buffer {
        match Limited::new(body, policy.max_message_bytes + 5)
            .collect()
            .await
        {
            Ok(collected) => Some(collected.to_bytes()),
            Err(_) => {
                return Ok(Status::invalid_argument("the request could not be read").into_http())
            }
        }
    } else {
        return attempt(
            upstream,
            policy,
            Request::from_parts(parts, body),
            deadline,
            None,
        )
        .await
        .into_answer();
    };
    let bytes = body.unwrap_or_default();
    let retryable = method.is_some_and(|m| retry_safe(m, &bytes));
    policy.budget.deposit();
    let mut tries = 0;
    let mut avoid = None;
    loop {
        tries += 1;
        let mut req = Request::new(Body::new(Full::new(bytes.clone())));
        *req.method_mut() = parts.method.clone();
        *req.uri_mut() = parts.uri.clone();
        *req.version_mut() = parts.version;
        *req.headers_mut() = parts.headers.clone();
        let outcome = attempt(upstream, policy, req, deadline, avoid).await;
        let (answer, wait, unsent) = match outcome {
            Outcome::Answered(response) => return Ok(response),
            Outcome::Unavailable {
                answer,
                wait,
                replica,
                unsent,
            } => {
                avoid = replica;
                (answer, wait, unsent)
            }
        };
        if !(retryable || unsent) || tries >= policy.settings.max_attempts {
            return answer;
        }
        let pause = policy.backoff(tries).max(wait.unwrap_or_default());
        if deadline.is_some_and(|d| Instant::now() + pause + deadline::MARGIN >= d) {
            return answer;
        }
        if !policy.budget.withdraw() {
            policy
                .counters
                .budget_exhausted
                .fetch_add(1, Ordering::Relaxed);
            return answer;
        }
        policy.counters.retries.fetch_add(1, Ordering::Relaxed);
        tracing::debug!(path = %parts.uri.path(), attempt = tries, pause_ms = pause.as_millis() as u64, "retrying");
        tokio::time::sleep(pause).await;
    }
}

impl Outcome {
    fn into_answer(self) -> Result<Response<Body>, tonic::transport::Error> {
        match self {
            Outcome::Answered(response) => Ok(response),
            Outcome::Unavailable { answer, .. } => answer,
        }
    }
}

/// The caller's deadline less a margin; else a default for the method's class. Streams and
/// unknown methods made outside a call get none (a watch may last hours).
fn deadline_for(method: Option<&MethodInfo>, policy: &CallPolicy, now: Instant) -> Option<Instant> {
    let inherited = deadline::current().map(|d| d.checked_sub(deadline::MARGIN).unwrap_or(now));
    let default = match method {
        Some(m) if !m.server_streaming => Some(
            now + if m.idempotency == crate::policy::Idempotency::NoSideEffects {
                policy.settings.read_timeout
            } else {
                policy.settings.write_timeout
            },
        ),
        _ => None,
    };
    match (inherited, default) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

fn is_client_streaming(method: Option<&MethodInfo>) -> bool {
    method.is_some_and(|m| m.client_streaming)
}

/// One attempt on the next replica the breakers admit, bounded by `deadline`.
async fn attempt(
    upstream: &Upstream,
    policy: &CallPolicy,
    mut request: Request<Body>,
    deadline: Option<Instant>,
    avoid: Option<usize>,
) -> Outcome {
    let now = Instant::now();
    let (index, replica) = match upstream.pick(now, avoid) {
        Ok(picked) => picked,
        Err(wait) => {
            policy
                .counters
                .breaker_refusals
                .fetch_add(1, Ordering::Relaxed);
            let mut details = ErrorDetails::new();
            details.set_retry_info(Some(wait));
            let status = Status::with_error_details(
                Code::Unavailable,
                format!(
                    "every replica of {} is failing; not calling it for now",
                    upstream.name()
                ),
                details,
            );
            return Outcome::Unavailable {
                answer: Ok(status.into_http()),
                wait: Some(wait),
                replica: None,
                unsent: true,
            };
        }
    };
    if let Some(deadline) = deadline {
        let left = deadline.saturating_duration_since(now);
        request
            .headers_mut()
            .insert("grpc-timeout", deadline::format_timeout(left));
    }
    let mut channel = replica.channel.clone();
    let sent = async {
        channel.ready().await?;
        channel.call(request).await
    };
    let result = match deadline {
        Some(deadline) => match tokio::time::timeout_at(deadline.into(), sent).await {
            Ok(result) => result,
            Err(_) => return past_deadline(upstream, policy, replica),
        },
        None => sent.await,
    };
    if result.is_err() && deadline.is_some_and(|d| Instant::now() + deadline::MARGIN >= d) {
        // The channel gave up at the `grpc-timeout` it was handed: the deadline passed.
        return past_deadline(upstream, policy, replica);
    }
    let (failed, wait) = match &result {
        Err(_) => (true, None),
        Ok(response) => classify(response.headers()),
    };
    if let Some(b) = &replica.breaker {
        // Only an unreachable or unavailable replica counts against it, not refusals.
        b.record(is_unavailable(&result), Instant::now());
    }
    match result {
        Ok(response) if !failed => Outcome::Answered(response),
        answer => Outcome::Unavailable {
            unsent: answer.as_ref().err().is_some_and(refused),
            answer,
            wait,
            replica: Some(index),
        },
    }
}

/// The replica did not answer in time: it counts against its breaker, and the caller gets
/// DEADLINE_EXCEEDED (not retried: there is no time left).
fn past_deadline(upstream: &Upstream, policy: &CallPolicy, replica: &Replica) -> Outcome {
    if let Some(b) = &replica.breaker {
        b.record(true, Instant::now());
    }
    policy
        .counters
        .deadline_exceeded
        .fetch_add(1, Ordering::Relaxed);
    let status = Status::deadline_exceeded(format!(
        "{} did not answer before the deadline",
        upstream.name()
    ));
    Outcome::Answered(status.into_http())
}

/// The replica refused the connection: the request never left this process.
fn refused(error: &tonic::transport::Error) -> bool {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(e) = cause {
        if e.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::ConnectionRefused)
        {
            return true;
        }
        cause = e.source();
    }
    false
}

fn is_unavailable(result: &Result<Response<Body>, tonic::transport::Error>) -> bool {
    match result {
        Err(_) => true,
        Ok(response) => grpc_code(response.headers()) == Some(Code::Unavailable),
    }
}

fn grpc_code(headers: &HeaderMap) -> Option<Code> {
    let value: i32 = headers.get("grpc-status")?.to_str().ok()?.parse().ok()?;
    Some(Code::from_i32(value))
}

/// Whether an answer invites a retry, and after how long the server asked to wait.
fn classify(headers: &HeaderMap) -> (bool, Option<Duration>) {
    let retry_info = || {
        Status::from_header_map(headers)
            .and_then(|status| status.get_details_retry_info())
            .and_then(|info| info.retry_delay)
    };
    match grpc_code(headers) {
        Some(Code::Unavailable) => (true, retry_info()),
        Some(Code::ResourceExhausted) => match retry_info() {
            Some(wait) => (true, Some(wait)),
            None => (false, None),
        },
        _ => (false, None),
    }
}

/// Whether repeating this request cannot do harm: a read; an idempotent method, unless its
/// request has an `idempotency_key` field, which must then be set (a `StartRun` without a key
/// would start a second run); any method, with a key.
fn retry_safe(method: &MethodInfo, frame: &Bytes) -> bool {
    use crate::policy::Idempotency;
    match (method.idempotency, method.idempotency_key_field) {
        (Idempotency::NoSideEffects, _) | (Idempotency::Idempotent, None) => true,
        (_, Some(_)) => carries_idempotency_key(method, frame),
        (Idempotency::Unknown, None) => false,
    }
}

/// Whether the request message sets its `idempotency_key` field: a scan of the top-level
/// fields of the one gRPC message in `frame`, not a decode.
fn carries_idempotency_key(method: &MethodInfo, frame: &Bytes) -> bool {
    let Some(field) = method.idempotency_key_field else {
        return false;
    };
    // 1 byte compression flag, 4 bytes length; a compressed message is not looked into.
    if frame.len() < 5 || frame[0] != 0 {
        return false;
    }
    let mut rest = &frame[5..];
    while !rest.is_empty() {
        let Some(tag) = varint(&mut rest) else {
            return false;
        };
        let (number, wire) = (tag >> 3, tag & 7);
        let len = match wire {
            0 => {
                if varint(&mut rest).is_none() {
                    return false;
                }
                0
            }
            1 => 8,
            2 => match varint(&mut rest) {
                Some(len) => len as usize,
                None => return false,
            },
            5 => 4,
            _ => return false,
        };
        if len > rest.len() {
            return false;
        }
        if wire == 2 && number == u64::from(field) && len > 0 {
            return true;
        }
        rest = &rest[len..];
    }
    false
}

fn varint(bytes: &mut &[u8]) -> Option<u64> {
    let mut value = 0u64;
    for shift in (0..64).step_by(7) {
        let (&byte, rest) = bytes.split_first()?;
        *bytes = rest;
        value |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Some(value);
        }
    }
    None
}

/// The counters of `policy` for `/metrics`.
pub(crate) fn counter_set(policy: &Arc<CallPolicy>) -> opsconductor_metrics::CounterSet {
    let read = |pick: fn(&CallCounters) -> &AtomicU64| {
        let policy = Arc::downgrade(policy);
        move || {
            policy
                .upgrade()
                .map_or(0, |p| pick(&p.counters).load(Ordering::Relaxed))
        }
    };
    opsconductor_metrics::CounterSet::new()
        .counter(
            "opsconductor_client_retries",
            "Calls to other services tried again.",
            read(|c| &c.retries),
        )
        .counter(
            "opsconductor_client_retry_budget_exhausted",
            "Retries not made because the retry budget was spent.",
            read(|c| &c.budget_exhausted),
        )
        .counter(
            "opsconductor_client_breaker_refusals",
            "Calls failed fast because every replica's circuit breaker was open.",
            read(|c| &c.breaker_refusals),
        )
        .counter(
            "opsconductor_client_deadline_exceeded",
            "Calls given up at their deadline (or with no time left to make them).",
            read(|c| &c.deadline_exceeded),
        )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(message: &[u8]) -> Bytes {
        let mut out = vec![0u8];
        out.extend_from_slice(&(message.len() as u32).to_be_bytes());
        out.extend_from_slice(message);
        Bytes::from(out)
    }

    #[test]
    fn an_idempotency_key_is_found_among_the_top_level_fields_only() {
        let method = MethodInfo {
            path: "/x.Y/Z".into(),
            policy: None,
            idempotency: crate::policy::Idempotency::Unknown,
            server_streaming: false,
            client_streaming: false,
            idempotency_key_field: Some(9),
        };
        // field 1 (string "ab"), field 2 (varint 300), field 9 (string "k")
        let with_key = [0x0a, 2, b'a', b'b', 0x10, 0xac, 0x02, 0x4a, 1, b'k'];
        assert!(carries_idempotency_key(&method, &frame(&with_key)));
        // field 9 empty, and a nested message whose field 9 is set
        let empty = [0x4a, 0, 0x0a, 3, 0x4a, 1, b'k'];
        assert!(!carries_idempotency_key(&method, &frame(&empty)));
        // truncated or garbage input is not a key
        assert!(!carries_idempotency_key(&method, &frame(&[0x4a, 5, b'k'])));
        assert!(!carries_idempotency_key(&method, &frame(&[0xff; 12])));
        assert!(!carries_idempotency_key(
            &method,
            &Bytes::from_static(&[0, 0])
        ));
    }
}
