//! Tower layers every server runs behind: request ids, call tracing, and load shedding.

use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures::future::{BoxFuture, FutureExt};
use http::{HeaderValue, Request, Response};
use tokio::sync::Semaphore;
use tonic::Status;
use tonic_types::{ErrorDetails, StatusExt};
use tower::{Layer, Service};
use tower_http::classify::GrpcFailureClass;
use tracing::{Instrument, Span};

pub const REQUEST_ID_HEADER: &str = "x-request-id";

/// Gives every call a request id (the caller's `x-request-id`, or a new UUIDv7), visible to
/// handlers in the request headers and echoed in the response headers.
#[derive(Clone, Default)]
pub struct RequestIdLayer;

impl<S> Layer<S> for RequestIdLayer {
    type Service = RequestId<S>;
    fn layer(&self, inner: S) -> RequestId<S> {
        RequestId { inner }
    }
}

#[derive(Clone)]
pub struct RequestId<S> {
    inner: S,
}

impl<S, B, RB> Service<Request<B>> for RequestId<S>
where
    S: Service<Request<B>, Response = Response<RB>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<S::Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        let id = req
            .headers()
            .get(REQUEST_ID_HEADER)
            .filter(|v| v.len() <= 128 && v.to_str().is_ok())
            .cloned()
            .unwrap_or_else(|| {
                HeaderValue::from_str(&uuid::Uuid::now_v7().to_string())
                    .unwrap_or_else(|_| HeaderValue::from_static("invalid"))
            });
        req.headers_mut().insert(REQUEST_ID_HEADER, id.clone());
        let fut = self.inner.call(req);
        async move {
            let mut resp = fut.await?;
            resp.headers_mut().insert(REQUEST_ID_HEADER, id);
            Ok(resp)
        }
        .boxed()
    }
}

/// Sheds calls beyond `max` in flight with UNAVAILABLE and a RetryInfo, instead of queueing
/// them until every caller times out; the calls it admits run to their end even if their
/// caller leaves.
#[derive(Clone)]
pub struct LoadShedLayer {
    permits: Arc<Semaphore>,
}

impl LoadShedLayer {
    pub fn new(max: usize) -> Self {
        LoadShedLayer {
            permits: Arc::new(Semaphore::new(max)),
        }
    }
}

impl<S> Layer<S> for LoadShedLayer {
    type Service = LoadShed<S>;
    fn layer(&self, inner: S) -> LoadShed<S> {
        LoadShed {
            inner,
            permits: self.permits.clone(),
        }
    }
}

#[derive(Clone)]
pub struct LoadShed<S> {
    inner: S,
    permits: Arc<Semaphore>,
}

impl<S, B, RB> Service<Request<B>> for LoadShed<S>
where
    S: Service<Request<B>, Response = Response<RB>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    RB: Default + Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<S::Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        // Probes must see the truth under load: shedding them would get a busy server killed.
        if req.uri().path().starts_with("/grpc.health.v1.") {
            return self.inner.call(req).boxed();
        }
        match self.permits.clone().try_acquire_owned() {
            Ok(permit) => {
                let fut = self.inner.call(req);
                // The call runs to its end in a task of its own: a caller that goes away
                // mid-call (its deadline passed, its connection dropped) must not cut the
                // handler off halfway through a database transaction.
                let call = tokio::spawn(
                    async move {
                        let resp = fut.await;
                        drop(permit);
                        resp
                    }
                    // The handler stays in the call's span (its logs and trace).
                    .in_current_span(),
                );
                async move {
                    match call.await {
                        Ok(resp) => resp,
                        Err(_) => Ok(Status::internal("the call's handler failed").into_http()),
                    }
                }
                .boxed()
            }
            Err(_) => {
                let mut details = ErrorDetails::with_retry_info(Some(Duration::from_millis(100)));
                details.set_error_info(
                    "OVERLOADED",
                    crate::error::ERROR_DOMAIN,
                    std::collections::HashMap::new(),
                );
                let status = Status::with_error_details(
                    tonic::Code::Unavailable,
                    "server overloaded: too many calls in flight",
                    details,
                );
                futures::future::ready(Ok(status.into_http())).boxed()
            }
        }
    }
}

/// Logs one line per call: method, gRPC status code, latency and request id.
// The type is tower-http's, spelled out once here so callers never have to.
#[allow(clippy::type_complexity)]
pub fn trace_layer() -> tower_http::trace::TraceLayer<
    tower_http::classify::SharedClassifier<tower_http::classify::GrpcErrorsAsFailures>,
    impl Fn(&Request<tonic::body::Body>) -> Span + Clone,
    (),
    impl Fn(&Response<tonic::body::Body>, Duration, &Span) + Clone,
    (),
    impl Fn(Option<&http::HeaderMap>, Duration, &Span) + Clone,
    impl Fn(GrpcFailureClass, Duration, &Span) + Clone,
> {
    tower_http::trace::TraceLayer::new_for_grpc()
        .make_span_with(|req: &Request<tonic::body::Body>| {
            let request_id = req
                .headers()
                .get(REQUEST_ID_HEADER)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("");
            let path = req.uri().path();
            if is_probe(path) {
                return tracing::info_span!(
                    crate::telemetry::PROBE_SPAN,
                    method = %path,
                    request_id = %request_id
                );
            }
            // Named for the method, with the semantic conventions' rpc.* attributes; a child of
            // the caller's span when the call carries W3C trace context.
            let (full, service, method) = crate::telemetry::rpc_names(path);
            let span = tracing::info_span!(
                "grpc",
                method = %path,
                request_id = %request_id,
                otel.name = tracing::field::Empty,
                otel.kind = tracing::field::Empty,
                rpc.system = tracing::field::Empty,
                rpc.service = tracing::field::Empty,
                rpc.method = tracing::field::Empty,
                rpc.grpc.status_code = tracing::field::Empty,
                otel.status_code = tracing::field::Empty,
            );
            // Only for the trace: log lines keep their short span.
            if crate::telemetry::tracing_enabled() {
                span.record("otel.name", full);
                span.record("otel.kind", "server");
                span.record("rpc.system", "grpc");
                span.record("rpc.service", service);
                span.record("rpc.method", method);
                crate::telemetry::propagation::adopt(&span, req.headers());
            }
            span
        })
        .on_request(())
        .on_response(
            |resp: &Response<tonic::body::Body>, latency: Duration, span: &Span| {
                // Errors returned before any message carry grpc-status in the headers
                // ("trailers-only"); successful calls report theirs at end of stream.
                if let Some(code) = resp.headers().get("grpc-status") {
                    let code = code.to_str().unwrap_or("?");
                    record_code(span, code);
                    if code != "0" {
                        tracing::info!(
                            code,
                            latency_ms = latency.as_secs_f64() * 1e3,
                            "call failed"
                        );
                    }
                }
            },
        )
        .on_body_chunk(())
        .on_eos(
            |trailers: Option<&http::HeaderMap>, duration: Duration, span: &Span| {
                let code = trailers
                    .and_then(|t| t.get("grpc-status"))
                    .and_then(|v| v.to_str().ok());
                // A trailers-only answer recorded its code from the headers already.
                if let Some(code) = code {
                    record_code(span, code);
                }
                let code = code.unwrap_or("0");
                // Successful calls are the bulk of traffic: debug for them, info for failures.
                let latency_ms = duration.as_secs_f64() * 1e3;
                if code == "0" {
                    tracing::debug!(code, latency_ms, "call finished");
                } else {
                    tracing::info!(code, latency_ms, "call failed");
                }
            },
        )
        .on_failure(
            |class: GrpcFailureClass, latency: Duration, _span: &Span| match class {
                GrpcFailureClass::Code(code) => {
                    tracing::debug!(
                        code = code.get(),
                        latency_ms = latency.as_secs_f64() * 1e3,
                        "call failed"
                    )
                }
                GrpcFailureClass::Error(error) => {
                    tracing::warn!(%error, latency_ms = latency.as_secs_f64() * 1e3, "call errored")
                }
            },
        )
}

/// Health and reflection: logged, not traced (see [`crate::telemetry::PROBE_SPAN`]).
fn is_probe(path: &str) -> bool {
    path.starts_with("/grpc.health.v1.") || path.starts_with("/grpc.reflection.")
}

/// The call's status on its span. Per the semantic conventions a server span is an error only
/// for codes that point at the server (UNKNOWN, DEADLINE_EXCEEDED, UNIMPLEMENTED, INTERNAL,
/// UNAVAILABLE, DATA_LOSS), not for a caller's bad request.
fn record_code(span: &Span, code: &str) {
    if !crate::telemetry::tracing_enabled() {
        return;
    }
    span.record("rpc.grpc.status_code", code.parse::<i64>().unwrap_or(-1));
    if matches!(code, "2" | "4" | "12" | "13" | "14" | "15") {
        span.record("otel.status_code", "ERROR");
    }
}
