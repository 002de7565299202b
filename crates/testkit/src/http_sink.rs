//! A real HTTP/1.1 receiver on a loopback port for notification tests: it records what it is
//! sent and answers from a per-path script (then 200), fast enough for the benchmarks.

use std::collections::{HashMap, VecDeque};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::Notify;
use tokio::task::{JoinHandle, JoinSet};

/// One scripted answer.
#[derive(Debug, Clone, PartialEq)]
pub struct Reply {
    pub status: u16,
    /// Sent as `Retry-After` when set.
    pub retry_after: Option<String>,
    /// Waited before answering (to drive client timeouts).
    pub delay: Option<Duration>,
}

impl Reply {
    pub fn status(status: u16) -> Reply {
        Reply {
            status,
            retry_after: None,
            delay: None,
        }
    }

    pub fn retry_after(mut self, value: &str) -> Reply {
        self.retry_after = Some(value.to_owned());
        self
    }

    pub fn delay(mut self, delay: Duration) -> Reply {
        self.delay = Some(delay);
        self
    }
}

/// One request as it arrived, and the status it was (or is about to be) answered with.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub at: Instant,
    pub headers: HeaderMap,
    pub body: Bytes,
    pub status_sent: u16,
}

#[derive(Default)]
struct Path {
    script: VecDeque<Reply>,
    received: Vec<Recorded>,
}

#[derive(Default)]
struct State {
    paths: Mutex<HashMap<String, Path>>,
    arrived: Notify,
}

impl State {
    fn paths(&self) -> MutexGuard<'_, HashMap<String, Path>> {
        // A panicking test thread must not hide what was recorded from the others.
        self.paths.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The server; it stops (and drops its connections) when dropped.
pub struct HttpSink {
    addr: SocketAddr,
    state: Arc<State>,
    task: JoinHandle<()>,
}

impl HttpSink {
    pub async fn start() -> HttpSink {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap_or_else(|e| panic!("http sink bind: {e}"));
        let addr = listener
            .local_addr()
            .unwrap_or_else(|e| panic!("http sink address: {e}"));
        let state = Arc::new(State::default());
        let task = tokio::spawn(accept(listener, state.clone()));
        HttpSink { addr, state, task }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:<port>/<path>`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, normalize(path))
    }

    /// Queues answers for `path`, used in order; once they run out the path answers 200.
    pub fn script(&self, path: &str, responses: Vec<Reply>) {
        for r in &responses {
            assert!(
                StatusCode::from_u16(r.status).is_ok(),
                "invalid scripted status {}",
                r.status
            );
        }
        self.state
            .paths()
            .entry(normalize(path))
            .or_default()
            .script
            .extend(responses);
    }

    /// What `path` has received so far.
    pub fn received(&self, path: &str) -> Vec<Recorded> {
        self.state
            .paths()
            .get(&normalize(path))
            .map(|p| p.received.clone())
            .unwrap_or_default()
    }

    /// Waits until `path` has received at least `n` requests and returns them all; fails the
    /// test after `timeout`.
    pub async fn wait_for(&self, path: &str, n: usize, timeout: Duration) -> Vec<Recorded> {
        let key = normalize(path);
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            // Registered before counting, so an arrival between the count and the wait still
            // wakes it.
            let arrived = self.state.arrived.notified();
            tokio::pin!(arrived);
            arrived.as_mut().enable();
            let got = {
                let paths = self.state.paths();
                let received = paths.get(&key).map(|p| &p.received[..]).unwrap_or(&[]);
                (received.len() >= n).then(|| received.to_vec())
            };
            if let Some(got) = got {
                return got;
            }
            if tokio::time::timeout_at(deadline, arrived).await.is_err() {
                let count = self.received(&key).len();
                panic!("http sink: {key} received {count} of {n} requests within {timeout:?}");
            }
        }
    }
}

impl Drop for HttpSink {
    fn drop(&mut self) {
        // The accept task owns the connection tasks: aborting it ends them all.
        self.task.abort();
    }
}

fn normalize(path: &str) -> String {
    if path.starts_with('/') {
        path.to_owned()
    } else {
        format!("/{path}")
    }
}

async fn accept(listener: TcpListener, state: Arc<State>) {
    let mut connections = JoinSet::new();
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(_) => {
                // Out of descriptors, usually: give connections a moment to close.
                tokio::time::sleep(Duration::from_millis(5)).await;
                continue;
            }
        };
        while connections.try_join_next().is_some() {}
        let _ = stream.set_nodelay(true);
        let state = state.clone();
        connections.spawn(async move {
            let service = service_fn(move |req| handle(req, state.clone()));
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

async fn handle(
    req: Request<Incoming>,
    state: Arc<State>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let at = Instant::now();
    let key = req.uri().path().to_owned();
    let (parts, body) = req.into_parts();
    let body = match body.collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(_) => Bytes::new(),
    };
    let reply = {
        let mut paths = state.paths();
        let path = paths.entry(key).or_default();
        let reply = path
            .script
            .pop_front()
            .unwrap_or_else(|| Reply::status(200));
        path.received.push(Recorded {
            at,
            headers: parts.headers,
            body,
            status_sent: reply.status,
        });
        reply
    };
    state.arrived.notify_waiters();
    if let Some(delay) = reply.delay {
        tokio::time::sleep(delay).await;
    }
    let mut response = Response::new(Full::new(Bytes::new()));
    *response.status_mut() = StatusCode::from_u16(reply.status).unwrap_or(StatusCode::OK);
    if let Some(value) = reply
        .retry_after
        .as_deref()
        .and_then(|v| HeaderValue::from_str(v).ok())
    {
        response
            .headers_mut()
            .insert(http::header::RETRY_AFTER, value);
    }
    Ok(response)
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;

    use super::*;

    /// One request over a fresh connection; returns the status line and headers.
    async fn post(sink: &HttpSink, path: &str, body: &str) -> String {
        let mut stream = TcpStream::connect(sink.addr()).await.unwrap();
        let req = format!(
            "POST {path} HTTP/1.1\r\nhost: x\r\nx-test: yes\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        );
        stream.write_all(req.as_bytes()).await.unwrap();
        let mut out = String::new();
        stream.read_to_string(&mut out).await.unwrap();
        out
    }

    #[tokio::test]
    async fn scripts_records_and_wakes_waiters() {
        let sink = HttpSink::start().await;
        assert_eq!(
            sink.url("hook"),
            format!("http://127.0.0.1:{}/hook", sink.addr().port())
        );
        sink.script(
            "hook",
            vec![Reply::status(503).retry_after("7"), Reply::status(410)],
        );
        let requests = async {
            let first = post(&sink, "/hook?q=1", "one").await;
            assert!(first.starts_with("HTTP/1.1 503"), "{first}");
            assert!(
                first.to_ascii_lowercase().contains("retry-after: 7"),
                "{first}"
            );
            assert!(post(&sink, "/hook", "two")
                .await
                .starts_with("HTTP/1.1 410"));
            assert!(post(&sink, "/hook", "three")
                .await
                .starts_with("HTTP/1.1 200"));
        };
        // The waiter starts before any request arrives, so it is woken, not lucky.
        let waiting = sink.wait_for("/hook", 3, Duration::from_secs(5));
        let (got, ()) = tokio::join!(waiting, requests);
        let statuses: Vec<u16> = got.iter().map(|r| r.status_sent).collect();
        assert_eq!(statuses, [503, 410, 200]);
        assert_eq!(got[0].body, Bytes::from_static(b"one"));
        assert_eq!(got[0].headers["x-test"], "yes");
        assert!(got[0].at <= got[1].at);
        assert!(sink.received("/other").is_empty());
    }

    #[tokio::test]
    async fn delay_holds_the_answer() {
        let sink = HttpSink::start().await;
        sink.script(
            "/slow",
            vec![Reply::status(200).delay(Duration::from_millis(300))],
        );
        let started = Instant::now();
        post(&sink, "/slow", "").await;
        assert!(started.elapsed() >= Duration::from_millis(300));
    }

    #[tokio::test]
    #[should_panic(expected = "received 0 of 1 requests")]
    async fn wait_for_times_out_clearly() {
        let sink = HttpSink::start().await;
        sink.wait_for("/none", 1, Duration::from_millis(50)).await;
    }

    #[tokio::test]
    async fn stops_when_dropped() {
        let sink = HttpSink::start().await;
        let addr = sink.addr();
        drop(sink);
        tokio::task::yield_now().await;
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(TcpStream::connect(addr).await.is_err());
    }
}
