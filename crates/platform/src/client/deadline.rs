//! Deadlines that travel: a server remembers when its caller gives up (`grpc-timeout`), and
//! calls made while serving it carry what is left, minus a margin for the way back.

use std::future::Future;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use futures::future::{BoxFuture, FutureExt};
use http::{HeaderMap, HeaderValue, Request};
use tower::{Layer, Service};

tokio::task_local! {
    static DEADLINE: Instant;
}

/// Left for the answer to travel back and be handled.
pub const MARGIN: Duration = Duration::from_millis(20);

/// The deadline of the call being served, if its caller set one.
pub fn current() -> Option<Instant> {
    DEADLINE.try_with(|d| *d).ok()
}

/// Runs `f` under `deadline` (tests, and work a handler hands to another task).
pub fn scope<F: Future>(deadline: Instant, f: F) -> impl Future<Output = F::Output> {
    DEADLINE.scope(deadline, f)
}

/// `grpc-timeout` as the spec writes it: up to 8 digits and a unit (H, M, S, m, u, n).
pub fn parse_timeout(value: &str) -> Option<Duration> {
    if value.len() < 2 || value.len() > 9 {
        return None;
    }
    let (digits, unit) = value.split_at(value.len() - 1);
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n.checked_mul(3600)?),
        "M" => Duration::from_secs(n.checked_mul(60)?),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

/// `timeout` as a `grpc-timeout` value (milliseconds, rounded up, at most 8 digits).
pub fn format_timeout(timeout: Duration) -> HeaderValue {
    let ms = timeout.as_micros().div_ceil(1000).clamp(1, 99_999_999);
    HeaderValue::from_str(&format!("{ms}m")).unwrap_or_else(|_| HeaderValue::from_static("1m"))
}

/// The deadline a request's headers give, from `now`.
pub fn from_headers(headers: &HeaderMap, now: Instant) -> Option<Instant> {
    let timeout = parse_timeout(headers.get("grpc-timeout")?.to_str().ok()?)?;
    now.checked_add(timeout)
}

/// Serves each call under its caller's deadline, so the calls its handler makes inherit it.
/// Innermost: the handler runs in the task this layer's future is polled in.
#[derive(Clone, Default)]
pub struct DeadlineLayer;

impl<S> Layer<S> for DeadlineLayer {
    type Service = Deadline<S>;
    fn layer(&self, inner: S) -> Deadline<S> {
        Deadline { inner }
    }
}

#[derive(Clone)]
pub struct Deadline<S> {
    inner: S,
}

impl<S, B> Service<Request<B>> for Deadline<S>
where
    S: Service<Request<B>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<S::Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let deadline = from_headers(req.headers(), Instant::now());
        let fut = self.inner.call(req);
        match deadline {
            Some(deadline) => DEADLINE.scope(deadline, fut).boxed(),
            None => fut.boxed(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_timeouts_parse_by_the_spec() {
        assert_eq!(parse_timeout("250m"), Some(Duration::from_millis(250)));
        assert_eq!(parse_timeout("2S"), Some(Duration::from_secs(2)));
        assert_eq!(parse_timeout("1H"), Some(Duration::from_secs(3600)));
        assert_eq!(
            parse_timeout("99999999n"),
            Some(Duration::from_nanos(99_999_999))
        );
        for bad in ["", "m", "123456789m", "12x", "-1S", "1.5S"] {
            assert_eq!(parse_timeout(bad), None, "{bad}");
        }
        assert_eq!(format_timeout(Duration::from_micros(1500)), "2m");
        assert_eq!(format_timeout(Duration::ZERO), "1m");
    }

    #[tokio::test]
    async fn the_deadline_is_seen_inside_its_scope_only() {
        assert_eq!(current(), None);
        let at = Instant::now() + Duration::from_secs(1);
        assert_eq!(scope(at, async { current() }).await, Some(at));
    }
}
