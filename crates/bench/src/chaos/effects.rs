//! Where the drills' side effects land: an HTTP server counting each run's step request
//! (`/effect/<run id>`, `/sched/<run id>`) and each webhook delivery (by its `webhook-id`), so
//! a lost or repeated effect shows as a count of 0 or 2.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;

#[derive(Default)]
pub struct Counts {
    /// Step requests by run id, per path prefix ("effect", "sched").
    pub steps: HashMap<(String, String), u32>,
    /// Webhook deliveries by webhook-id.
    pub webhooks: HashMap<String, u32>,
    /// Runs the webhooks were about (a body mentions its run id), for "notified at least once".
    pub notified_runs: HashMap<String, u32>,
}

#[derive(Clone, Default)]
pub struct Effects {
    counts: Arc<Mutex<Counts>>,
}

impl Effects {
    pub async fn start(&self) -> anyhow::Result<SocketAddr> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let effects = self.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let effects = effects.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req| {
                        let effects = effects.clone();
                        async move { effects.record(req).await }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Ok(addr)
    }

    async fn record(&self, req: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
        use http_body_util::BodyExt;
        let path = req.uri().path().to_string();
        let webhook_id = req
            .headers()
            .get("webhook-id")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let body = req
            .into_body()
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        let mut parts = path.trim_start_matches('/').splitn(2, '/');
        let (kind, rest) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
        if let Ok(mut counts) = self.counts.lock() {
            match (kind, webhook_id) {
                ("notify", Some(id)) => {
                    *counts.webhooks.entry(id).or_default() += 1;
                    let run = serde_json::from_slice::<serde_json::Value>(&body)
                        .ok()
                        .and_then(|v| v["data"]["run"]["id"].as_str().map(str::to_string));
                    if let Some(run) = run {
                        *counts.notified_runs.entry(run).or_default() += 1;
                    }
                }
                ("effect" | "sched", _) => {
                    *counts
                        .steps
                        .entry((kind.to_string(), rest.to_string()))
                        .or_default() += 1;
                }
                _ => {}
            }
        }
        Ok(Response::new(Full::new(Bytes::from_static(b"ok"))))
    }

    pub fn with<T>(&self, read: impl FnOnce(&Counts) -> T) -> T {
        match self.counts.lock() {
            Ok(counts) => read(&counts),
            Err(poisoned) => read(&poisoned.into_inner()),
        }
    }
}
