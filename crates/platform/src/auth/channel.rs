//! The client side's transport: a channel that attaches the identity's token to every call.

use std::task::{Context, Poll};

use futures::future::{BoxFuture, FutureExt};
use http::{HeaderValue, Request, Response};
use opsconductor_metrics::GrpcMetrics;
use tonic::body::Body;
use tonic::transport::Channel;
use tower::Service;

use super::{TokenSource, AUTHORIZATION};

/// A [`Channel`] that sends `authorization: Bearer <token>` from a [`TokenSource`]; a call
/// that set its own authorization header keeps it. With metrics, every call is recorded in
/// the `grpc_client_*` series.
#[derive(Clone)]
pub struct AuthChannel {
    inner: Channel,
    tokens: Option<TokenSource>,
    metrics: Option<GrpcMetrics>,
}

impl AuthChannel {
    pub fn new(inner: Channel, tokens: Option<TokenSource>) -> AuthChannel {
        AuthChannel {
            inner,
            tokens,
            metrics: None,
        }
    }

    /// Records every call in `metrics` (the client side's series).
    pub fn with_metrics(mut self, metrics: Option<GrpcMetrics>) -> AuthChannel {
        self.metrics = metrics;
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

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<Body>) -> Self::Future {
        let fresh = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, fresh);
        let tokens = self.tokens.clone();
        let metrics = self.metrics.clone();
        let path = request.uri().path().to_string();
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
            match metrics {
                Some(metrics) => metrics
                    .observe(&path, inner.call(request))
                    .await
                    .map(|response| response.map(Body::new)),
                None => inner.call(request).await,
            }
        }
        .boxed()
    }
}
