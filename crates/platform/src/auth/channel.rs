//! The client side's transport: a channel that attaches the identity's token to every call,
//! and (for the platform's clients) makes each call resilient ([`crate::client::call`]).

use std::sync::Arc;
use std::task::{Context, Poll};

use futures::future::{BoxFuture, FutureExt};
use http::{HeaderValue, Request, Response};
use opsconductor_metrics::GrpcMetrics;
use tonic::body::Body;
use tonic::transport::Channel;
use tower::Service;
use tracing::Instrument;

use super::{TokenSource, AUTHORIZATION};
use crate::client::{CallPolicy, Upstream};

/// Sends `authorization: Bearer <token>` from a [`TokenSource`]; a call that set its own
/// authorization header keeps it. With a [`CallPolicy`], calls get deadlines, safe retries
/// and per-replica circuit breakers; with metrics, every call is recorded in the
/// `grpc_client_*` series.
#[derive(Clone)]
pub struct AuthChannel {
    upstream: Upstream,
    tokens: Option<TokenSource>,
    metrics: Option<GrpcMetrics>,
    policy: Option<Arc<CallPolicy>>,
}

impl AuthChannel {
    /// Over one channel, calls made as they are.
    pub fn new(inner: Channel, tokens: Option<TokenSource>) -> AuthChannel {
        AuthChannel::over(Upstream::single(inner), tokens)
    }

    pub fn over(upstream: Upstream, tokens: Option<TokenSource>) -> AuthChannel {
        AuthChannel {
            upstream,
            tokens,
            metrics: None,
            policy: None,
        }
    }

    /// Records every call in `metrics` (the client side's series).
    pub fn with_metrics(mut self, metrics: Option<GrpcMetrics>) -> AuthChannel {
        self.metrics = metrics;
        self
    }

    /// Calls under `policy`: deadlines, retries, breakers.
    pub fn with_policy(mut self, policy: Arc<CallPolicy>) -> AuthChannel {
        self.policy = Some(policy);
        self
    }

    pub fn tokens(&self) -> Option<&TokenSource> {
        self.tokens.as_ref()
    }
}

impl Service<Request<Body>> for AuthChannel {
    type Response = Response<Body>;
    type Error = tonic::transport::Error;
    type Future = BoxFuture<'static, Result<Response<Body>, tonic::transport::Error>>;

    /// Always ready: each call waits for its replica's channel itself.
    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, mut request: Request<Body>) -> Self::Future {
        let upstream = self.upstream.clone();
        let tokens = self.tokens.clone();
        let metrics = self.metrics.clone();
        let policy = self.policy.clone();
        let path = request.uri().path().to_string();
        let span = client_span(&path);
        match &span {
            Some(span) => crate::telemetry::propagation::inject(span, request.headers_mut()),
            None => crate::telemetry::propagation::inject_unsampled(request.headers_mut()),
        }
        async move {
            if let Some(tokens) = tokens.filter(|_| !request.headers().contains_key(AUTHORIZATION))
            {
                let token = match tokens.token().await {
                    Ok(token) => token,
                    Err(error) => return Ok(tonic::Status::from(error).into_http()),
                };
                match HeaderValue::from_str(&format!("Bearer {token}")) {
                    Ok(mut value) => {
                        value.set_sensitive(true);
                        request.headers_mut().insert(AUTHORIZATION, value);
                    }
                    Err(_) => {
                        return Ok(
                            tonic::Status::internal("the token is not a header value").into_http()
                        )
                    }
                }
            }
            let response = async move {
                match &policy {
                    Some(policy) => crate::client::call::call(&upstream, policy, request).await,
                    None => upstream.call_once(request).await,
                }
            };
            match metrics {
                Some(metrics) => metrics
                    .observe(&path, response)
                    .await
                    .map(|response| response.map(Body::new)),
                None => response.await,
            }
        }
        .instrument(span.unwrap_or_else(tracing::Span::none))
        .boxed()
    }
}

/// A call's client span, a child of the span making it; its context travels in the request
/// (every attempt carries the same one: retries are one call to the caller). None when traces
/// are off, or for a call made outside any traced work (a poll, a token refresh): those would
/// each be a trace of their own, and are left out.
fn client_span(path: &str) -> Option<tracing::Span> {
    use opentelemetry::trace::TraceContextExt;
    use tracing_opentelemetry::OpenTelemetrySpanExt;
    if !crate::telemetry::tracing_enabled() {
        return None;
    }
    let parent = tracing::Span::current().context();
    if !parent.span().span_context().is_valid() {
        return None;
    }
    let (full, service, method) = crate::telemetry::rpc_names(path);
    Some(tracing::info_span!(
        "grpc.client",
        otel.name = %full,
        otel.kind = "client",
        rpc.system = "grpc",
        rpc.service = %service,
        rpc.method = %method,
    ))
}
