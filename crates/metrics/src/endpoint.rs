//! `GET /metrics` over HTTP/1.1 on a port of its own.
//!
//! The endpoint has no authentication, as Prometheus scrapes expect: it holds no secrets (label
//! values come from the code, never from a request) and belongs on a network only the scraper
//! reaches. Slow or idle connections are cut, and connections beyond a bound wait.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{header, Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use thiserror::Error;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;

use crate::Registry;

#[derive(Debug, Error)]
pub enum MetricsError {
    #[error("cannot listen for metrics on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// OpenMetrics text, which Prometheus negotiates and reads.
const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
/// Scrapers open one connection at a time; a few more for people with curl.
const MAX_CONNECTIONS: usize = 32;
const HEADER_TIMEOUT: Duration = Duration::from_secs(5);
const CONNECTION_TIMEOUT: Duration = Duration::from_secs(30);

/// A bound metrics listener; [`MetricsEndpoint::spawn`] serves it.
pub struct MetricsEndpoint {
    listener: TcpListener,
    local_addr: SocketAddr,
}

impl MetricsEndpoint {
    pub async fn bind(addr: SocketAddr) -> Result<MetricsEndpoint, MetricsError> {
        let bind_error = |source| MetricsError::Bind { addr, source };
        let listener = TcpListener::bind(addr).await.map_err(bind_error)?;
        let local_addr = listener.local_addr().map_err(bind_error)?;
        Ok(MetricsEndpoint {
            listener,
            local_addr,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Serves `registry` until the task is aborted.
    pub fn spawn(self, registry: Registry) -> JoinHandle<()> {
        let permits = Arc::new(Semaphore::new(MAX_CONNECTIONS));
        tokio::spawn(async move {
            loop {
                let Ok(permit) = permits.clone().acquire_owned().await else {
                    return;
                };
                let stream = match self.listener.accept().await {
                    Ok((stream, _)) => stream,
                    Err(e) => {
                        tracing::warn!(error = %e, "metrics endpoint: accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                let registry = registry.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |req| answer(req, registry.clone()));
                    let connection = hyper::server::conn::http1::Builder::new()
                        .timer(TokioTimer::new())
                        .header_read_timeout(HEADER_TIMEOUT)
                        .keep_alive(true)
                        .serve_connection(TokioIo::new(stream), service);
                    let _ = tokio::time::timeout(CONNECTION_TIMEOUT, connection).await;
                    drop(permit);
                });
            }
        })
    }
}

async fn answer(
    req: Request<Incoming>,
    registry: Registry,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let response = |status: StatusCode, content_type: &'static str, body: String| {
        let mut response = Response::new(Full::new(Bytes::from(body)));
        *response.status_mut() = status;
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            header::HeaderValue::from_static(content_type),
        );
        Ok(response)
    };
    if req.uri().path() != "/metrics" {
        return response(StatusCode::NOT_FOUND, "text/plain", "try /metrics\n".into());
    }
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return response(
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain",
            "GET /metrics\n".into(),
        );
    }
    response(StatusCode::OK, CONTENT_TYPE, registry.render())
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus_client::metrics::counter::Counter;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    async fn get(addr: SocketAddr, path: &str) -> String {
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        let request = format!("GET {path} HTTP/1.0\r\n\r\n");
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut out = String::new();
        stream.read_to_string(&mut out).await.unwrap();
        out
    }

    #[tokio::test]
    async fn serves_the_registry_at_metrics_only() {
        let registry = Registry::new();
        let calls = Counter::<u64>::default();
        registry.register("calls", "Calls.", calls.clone());
        calls.inc();
        let endpoint = MetricsEndpoint::bind("127.0.0.1:0".parse().unwrap())
            .await
            .unwrap();
        let addr = endpoint.local_addr();
        let task = endpoint.spawn(registry);
        let page = get(addr, "/metrics").await;
        assert!(page.starts_with("HTTP/1.0 200"), "{page}");
        assert!(page.contains("application/openmetrics-text"), "{page}");
        assert!(page.contains("\ncalls_total 1\n"), "{page}");
        assert!(get(addr, "/").await.starts_with("HTTP/1.0 404"));
        task.abort();
    }
}
