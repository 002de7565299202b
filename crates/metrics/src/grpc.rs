//! The gRPC series, named as the grpc-ecosystem middleware names them
//! (`grpc_server_started_total`, `grpc_server_handled_total{grpc_code}`,
//! `grpc_server_handling_seconds`, and the same with `client`), and the tower layer that
//! records them around a server's routes or a client's channel.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use futures::future::{BoxFuture, FutureExt};
use http::{HeaderMap, Request, Response};
use http_body::{Body, Frame, SizeHint};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use tower::{Layer, Service};

use crate::Registry;

/// Which end of the call the series describe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Server,
    Client,
}

/// `/package.Service/Method` → its kind ("unary", "client_stream", "server_stream",
/// "bidi_stream"). Only methods named here get their own labels: any other path is recorded
/// as service and method "unknown", so a caller inventing paths cannot create series.
#[derive(Debug, Clone, Default)]
pub struct MethodKinds {
    kinds: HashMap<String, &'static str>,
}

impl MethodKinds {
    pub fn new() -> MethodKinds {
        MethodKinds::default()
    }

    pub fn insert(&mut self, service: &str, method: &str, kind: &'static str) {
        self.kinds.insert(format!("/{service}/{method}"), kind);
    }

    fn labels(&self, path: &str) -> MethodLabels {
        match self.kinds.get(path) {
            Some(kind) => {
                let (service, method) = path
                    .trim_start_matches('/')
                    .split_once('/')
                    .unwrap_or(("unknown", "unknown"));
                MethodLabels {
                    grpc_type: kind,
                    grpc_service: service.to_string(),
                    grpc_method: method.to_string(),
                }
            }
            None => MethodLabels {
                grpc_type: "unknown",
                grpc_service: "unknown".into(),
                grpc_method: "unknown".into(),
            },
        }
    }
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MethodLabels {
    grpc_type: &'static str,
    grpc_service: String,
    grpc_method: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HandledLabels {
    grpc_type: &'static str,
    grpc_service: String,
    grpc_method: String,
    grpc_code: &'static str,
}

/// The families of one side, registered in a service's registry.
#[derive(Clone)]
pub struct GrpcMetrics {
    methods: Arc<MethodKinds>,
    started: Family<MethodLabels, Counter>,
    handled: Family<HandledLabels, Counter>,
    seconds: Family<MethodLabels, Histogram>,
}

/// The Prometheus client libraries' default buckets, as the grpc-ecosystem middleware uses.
const BUCKETS: [f64; 11] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

impl GrpcMetrics {
    pub fn register(registry: &Registry, side: Side, methods: MethodKinds) -> GrpcMetrics {
        let metrics = GrpcMetrics {
            methods: Arc::new(methods),
            started: Family::default(),
            handled: Family::default(),
            seconds: Family::new_with_constructor(|| Histogram::new(BUCKETS)),
        };
        let (side, who) = match side {
            Side::Server => ("server", "the server"),
            Side::Client => ("client", "the client"),
        };
        registry.register(
            &format!("grpc_{side}_started"),
            &format!("RPCs started on {who}."),
            metrics.started.clone(),
        );
        registry.register(
            &format!("grpc_{side}_handled"),
            &format!("RPCs completed on {who}, by status code."),
            metrics.handled.clone(),
        );
        registry.register(
            &format!("grpc_{side}_handling_seconds"),
            &format!("Time from the start of an RPC to its status on {who}."),
            metrics.seconds.clone(),
        );
        metrics
    }

    /// Counts a call to `path` as started; the returned record counts it handled.
    fn start(&self, path: &str) -> CallRecord {
        let labels = self.methods.labels(path);
        self.started.get_or_create(&labels).inc();
        CallRecord {
            metrics: self.clone(),
            labels,
            started: Instant::now(),
            done: false,
        }
    }
}

/// One call in flight: records its outcome once, when its status is known (or as CANCELLED
/// when its response is dropped before it).
struct CallRecord {
    metrics: GrpcMetrics,
    labels: MethodLabels,
    started: Instant,
    done: bool,
}

impl CallRecord {
    fn finish(&mut self, code: i32) {
        if std::mem::replace(&mut self.done, true) {
            return;
        }
        let labels = HandledLabels {
            grpc_type: self.labels.grpc_type,
            grpc_service: self.labels.grpc_service.clone(),
            grpc_method: self.labels.grpc_method.clone(),
            grpc_code: code_name(code),
        };
        self.metrics.handled.get_or_create(&labels).inc();
        self.metrics
            .seconds
            .get_or_create(&self.labels)
            .observe(self.started.elapsed().as_secs_f64());
    }
}

impl Drop for CallRecord {
    fn drop(&mut self) {
        self.finish(1);
    }
}

/// The code's name as the grpc-ecosystem middleware writes it (Go's `codes.Code` names).
pub fn code_name(code: i32) -> &'static str {
    match code {
        0 => "OK",
        1 => "Canceled",
        2 => "Unknown",
        3 => "InvalidArgument",
        4 => "DeadlineExceeded",
        5 => "NotFound",
        6 => "AlreadyExists",
        7 => "PermissionDenied",
        8 => "ResourceExhausted",
        9 => "FailedPrecondition",
        10 => "Aborted",
        11 => "OutOfRange",
        12 => "Unimplemented",
        13 => "Internal",
        14 => "Unavailable",
        15 => "DataLoss",
        16 => "Unauthenticated",
        _ => "Unknown",
    }
}

fn grpc_status(headers: &HeaderMap) -> Option<i32> {
    headers.get("grpc-status")?.to_str().ok()?.parse().ok()
}

/// Records the gRPC series of every call through the wrapped service.
#[derive(Clone)]
pub struct GrpcMetricsLayer {
    metrics: GrpcMetrics,
}

impl GrpcMetricsLayer {
    pub fn new(metrics: GrpcMetrics) -> GrpcMetricsLayer {
        GrpcMetricsLayer { metrics }
    }
}

impl<S> Layer<S> for GrpcMetricsLayer {
    type Service = GrpcMetricsService<S>;
    fn layer(&self, inner: S) -> GrpcMetricsService<S> {
        GrpcMetricsService {
            inner,
            metrics: self.metrics.clone(),
        }
    }
}

#[derive(Clone)]
pub struct GrpcMetricsService<S> {
    inner: S,
    metrics: GrpcMetrics,
}

impl<S, B, RB> Service<Request<B>> for GrpcMetricsService<S>
where
    S: Service<Request<B>, Response = Response<RB>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    RB: Send + 'static,
{
    type Response = Response<MeteredBody<RB>>;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<Self::Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let path = req.uri().path().to_string();
        self.metrics.observe(&path, self.inner.call(req)).boxed()
    }
}

impl GrpcMetrics {
    /// Records the call to `path` that `response` answers: started now, handled when its
    /// status is known (a transport error counts as UNAVAILABLE).
    pub fn observe<RB, E>(
        &self,
        path: &str,
        response: impl std::future::Future<Output = Result<Response<RB>, E>>,
    ) -> impl std::future::Future<Output = Result<Response<MeteredBody<RB>>, E>> {
        let mut record = self.start(path);
        async move {
            match response.await {
                Ok(response) => {
                    // A call refused before any message carries its status in the headers
                    // ("trailers only").
                    if let Some(code) = grpc_status(response.headers()) {
                        record.finish(code);
                    }
                    Ok(response.map(|body| MeteredBody {
                        inner: body,
                        record: Some(record),
                    }))
                }
                Err(e) => {
                    record.finish(14);
                    Err(e)
                }
            }
        }
    }
}

pin_project_lite::pin_project! {
    /// A response body that records its call's status when the trailers pass.
    pub struct MeteredBody<B> {
        #[pin]
        inner: B,
        record: Option<CallRecord>,
    }
}

impl<B> MeteredBody<B> {
    /// The wrapped body (what it still records is recorded as cancelled).
    pub fn into_inner(self) -> B {
        self.inner
    }
}

impl<B: Body> Body for MeteredBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.project();
        let polled = this.inner.poll_frame(cx);
        if let Some(record) = this.record.as_mut() {
            match &polled {
                Poll::Ready(Some(Ok(frame))) => {
                    if let Some(code) = frame.trailers_ref().and_then(grpc_status) {
                        record.finish(code);
                    }
                }
                // A body that ends without a status, or fails, did not complete the call.
                Poll::Ready(None) => record.finish(2),
                Poll::Ready(Some(Err(_))) => record.finish(14),
                Poll::Pending => {}
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
