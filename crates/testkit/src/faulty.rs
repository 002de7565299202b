//! A gRPC replica with injected faults, for the clients' resilience tests: it answers any
//! method with an empty message (which decodes as the default of any response type), fails
//! every other call with UNAVAILABLE, never answers, or is gone — and counts what reached it.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use bytes::Bytes;
use futures::stream;
use http::{HeaderMap, HeaderValue, Request, Response};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// How the replica answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// OK, every call.
    None,
    /// UNAVAILABLE for the 1st, 3rd, 5th … call it receives, OK for the others.
    EveryOtherUnavailable,
    /// Never answers.
    Hang,
}

#[derive(Default)]
struct State {
    fault: AtomicU8,
    received: AtomicU64,
    by_path: Mutex<HashMap<String, u64>>,
    last_timeout: Mutex<Option<String>>,
}

pub struct FaultyReplica {
    pub addr: SocketAddr,
    state: Arc<State>,
    task: JoinHandle<()>,
}

type Body = StreamBody<stream::Iter<std::vec::IntoIter<Result<Frame<Bytes>, Infallible>>>>;

impl FaultyReplica {
    pub async fn start(fault: Fault) -> FaultyReplica {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap_or_else(|e| panic!("bind: {e}"));
        FaultyReplica::serve(listener, fault)
    }

    /// On `addr` (a replica coming back where a killed one was).
    pub async fn start_at(addr: SocketAddr, fault: Fault) -> FaultyReplica {
        let listener = TcpListener::bind(addr)
            .await
            .unwrap_or_else(|e| panic!("bind {addr}: {e}"));
        FaultyReplica::serve(listener, fault)
    }

    fn serve(listener: TcpListener, fault: Fault) -> FaultyReplica {
        let addr = listener
            .local_addr()
            .unwrap_or_else(|e| panic!("local addr: {e}"));
        let state = Arc::new(State::default());
        state.fault.store(fault as u8, Ordering::SeqCst);
        let shared = state.clone();
        let task = tokio::spawn(async move {
            let mut connections = tokio::task::JoinSet::new();
            while let Ok((stream, _)) = listener.accept().await {
                let state = shared.clone();
                connections.spawn(async move {
                    let service = service_fn(move |req| answer(req, state.clone()));
                    let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        FaultyReplica { addr, state, task }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn set_fault(&self, fault: Fault) {
        self.state.fault.store(fault as u8, Ordering::SeqCst);
    }

    /// Calls received, all methods.
    pub fn received(&self) -> u64 {
        self.state.received.load(Ordering::SeqCst)
    }

    /// Calls received for `method` (its name, e.g. "GetUser").
    pub fn received_of(&self, method: &str) -> u64 {
        self.state
            .by_path
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .filter(|(path, _)| path.ends_with(&format!("/{method}")))
            .map(|(_, n)| n)
            .sum()
    }

    /// The `grpc-timeout` of the last call, as sent.
    pub fn last_timeout(&self) -> Option<String> {
        self.state
            .last_timeout
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Gone: the port refuses connections and open connections are dropped.
    pub async fn kill(mut self) -> SocketAddr {
        self.task.abort();
        // Gone once this returns: no call made after it can reach an open connection.
        let _ = (&mut self.task).await;
        self.addr
    }
}

impl Drop for FaultyReplica {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn answer(req: Request<Incoming>, state: Arc<State>) -> Result<Response<Body>, Infallible> {
    let n = state.received.fetch_add(1, Ordering::SeqCst) + 1;
    *state
        .by_path
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .entry(req.uri().path().to_string())
        .or_default() += 1;
    *state
        .last_timeout
        .lock()
        .unwrap_or_else(PoisonError::into_inner) = req
        .headers()
        .get("grpc-timeout")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    // Read the request to its end, as a server does before answering a unary call.
    let _ = req.into_body().collect().await;
    let fault = state.fault.load(Ordering::SeqCst);
    if fault == Fault::Hang as u8 {
        std::future::pending::<()>().await;
    }
    let grpc = |frames: Vec<Result<Frame<Bytes>, Infallible>>| {
        let mut response = Response::new(StreamBody::new(stream::iter(frames)));
        response.headers_mut().insert(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static("application/grpc"),
        );
        response
    };
    if fault == Fault::EveryOtherUnavailable as u8 && n % 2 == 1 {
        // Trailers only: the status in the headers, no body.
        let mut response = grpc(Vec::new());
        response
            .headers_mut()
            .insert("grpc-status", HeaderValue::from_static("14"));
        response
            .headers_mut()
            .insert("grpc-message", HeaderValue::from_static("injected%20fault"));
        return Ok(response);
    }
    let mut trailers = HeaderMap::new();
    trailers.insert("grpc-status", HeaderValue::from_static("0"));
    Ok(grpc(vec![
        Ok(Frame::data(Bytes::from_static(&[0, 0, 0, 0, 0]))),
        Ok(Frame::trailers(trailers)),
    ]))
}
