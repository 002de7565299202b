//! The server side: a tower layer (authorization needs the method path, which a tonic
//! interceptor cannot see) in front of every service's routes.

use std::sync::Arc;
use std::task::{Context, Poll};

use futures::future::{BoxFuture, FutureExt};
use http::{HeaderMap, Request, Response};
use opsconductor_api::common::v1::Role;
use opsconductor_tokens::Kind;
use tower::{Layer, Service};

use super::{AuthError, Verified, Verifier, AUTHORIZATION, ON_BEHALF_OF};
use crate::policy::{PolicyError, PolicyTable};
use crate::principal::{Principal, UserIdentity};
use crate::ApiError;

/// Health and reflection answer without a token: probes and grpcurl must work before login.
fn is_open(path: &str) -> bool {
    path.starts_with("/grpc.health.v1.") || path.starts_with("/grpc.reflection.")
}

/// A caller a policy refused, on a method whose policy says `audit_refusals`.
#[derive(Debug, Clone)]
pub struct Refusal {
    /// The method's path, `/package.Service/Method`.
    pub method: String,
    pub principal: Principal,
    pub reason: String,
    pub request_id: String,
}

/// Records refusals in the service's audit trail. Called on the request path: hand the work to
/// a task, do not wait for it.
pub trait RefusalAudit: Send + Sync + 'static {
    fn refused(&self, refusal: Refusal);
}

/// Decides who may call what: tokens verified by the [`Verifier`], policies from the
/// descriptor set.
pub struct Authenticator {
    policies: &'static PolicyTable,
    verifier: Arc<Verifier>,
    refusals: Option<Arc<dyn RefusalAudit>>,
}

impl Authenticator {
    pub fn new(verifier: Arc<Verifier>) -> Result<Authenticator, PolicyError> {
        Ok(Authenticator {
            policies: PolicyTable::global()?,
            verifier,
            refusals: None,
        })
    }

    /// Tells `refusals` about refused callers of methods whose policy asks for it.
    pub fn with_refusal_audit(mut self, refusals: Arc<dyn RefusalAudit>) -> Authenticator {
        self.refusals = Some(refusals);
        self
    }

    pub fn verifier(&self) -> &Arc<Verifier> {
        &self.verifier
    }

    /// The caller of the method at `path`, verified from `headers` and admitted by the
    /// method's policy; `None` for a public method.
    pub async fn authorize(
        &self,
        path: &str,
        headers: &HeaderMap,
    ) -> Result<Option<Principal>, ApiError> {
        let Some(method) = self.policies.method(path) else {
            return Err(ApiError::PermissionDenied(format!(
                "{path} is not a method of the contracts"
            )));
        };
        let Some(policy) = &method.policy else {
            return Err(ApiError::PermissionDenied(format!(
                "{path} declares no caller policy"
            )));
        };
        if policy.public {
            return Ok(None);
        }
        let token = bearer(headers)?;
        let verified = self.verifier.verify(token).await?;
        let mut principal = identity(&verified, token);
        let refused = |principal: &Principal, reason: String| {
            if let (true, Some(refusals)) = (policy.audit_refusals, &self.refusals) {
                refusals.refused(Refusal {
                    method: path.to_string(),
                    principal: principal.clone(),
                    reason: reason.clone(),
                    request_id: headers
                        .get(crate::layers::REQUEST_ID_HEADER)
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or_default()
                        .to_string(),
                });
            }
            ApiError::PermissionDenied(reason)
        };
        if let Some(forwarded) = headers.get(ON_BEHALF_OF) {
            if principal.service.is_none() {
                return Err(refused(
                    &principal,
                    "only services may call on behalf of a user".into(),
                ));
            }
            let user_token = forwarded.to_str().map_err(|_| AuthError::BadHeader)?;
            let user = self.verifier.verify(user_token).await?;
            if user.claims.kind != Kind::User {
                return Err(AuthError::NotAUser(ON_BEHALF_OF).into());
            }
            principal.user = identity(&user, user_token).user;
        }
        if super::admits(policy, &principal) {
            Ok(Some(principal))
        } else {
            let reason = format!("{} may not call {path}", describe(&principal));
            Err(refused(&principal, reason))
        }
    }
}

fn bearer(headers: &HeaderMap) -> Result<&str, AuthError> {
    let value = headers.get(AUTHORIZATION).ok_or(AuthError::Missing)?;
    let value = value.to_str().map_err(|_| AuthError::BadHeader)?;
    match value.split_once(' ') {
        Some((scheme, token))
            if scheme.eq_ignore_ascii_case("bearer") && !token.trim().is_empty() =>
        {
            Ok(token.trim())
        }
        _ => Err(AuthError::BadHeader),
    }
}

fn identity(verified: &Verified, token: &str) -> Principal {
    let claims = &verified.claims;
    match claims.kind {
        Kind::Service => Principal::service(&claims.sub),
        Kind::User => {
            let role = claims
                .role
                .as_deref()
                .and_then(crate::principal::role_from_name)
                .unwrap_or(Role::Unspecified);
            Principal::user(UserIdentity::new(
                &claims.sub,
                role,
                claims.sid.clone(),
                token,
            ))
        }
    }
}

fn describe(principal: &Principal) -> String {
    match (&principal.service, &principal.user) {
        (Some(service), Some(user)) => format!(
            "service {service} on behalf of a user with role {}",
            crate::principal::role_name(user.role)
        ),
        (Some(service), None) => format!("service {service}"),
        (None, Some(user)) => format!(
            "a user with role {}",
            crate::principal::role_name(user.role)
        ),
        (None, None) => "nobody".into(),
    }
}

/// Puts an [`Authenticator`] in front of a server's routes.
#[derive(Clone)]
pub struct AuthLayer {
    authenticator: Arc<Authenticator>,
}

impl AuthLayer {
    pub fn new(authenticator: Arc<Authenticator>) -> AuthLayer {
        AuthLayer { authenticator }
    }
}

impl<S> Layer<S> for AuthLayer {
    type Service = Auth<S>;
    fn layer(&self, inner: S) -> Auth<S> {
        Auth {
            inner,
            authenticator: self.authenticator.clone(),
        }
    }
}

#[derive(Clone)]
pub struct Auth<S> {
    inner: S,
    authenticator: Arc<Authenticator>,
}

impl<S, B, RB> Service<Request<B>> for Auth<S>
where
    S: Service<Request<B>, Response = Response<RB>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    B: Send + 'static,
    RB: Default + Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<S::Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        if is_open(request.uri().path()) {
            return self.inner.call(request).boxed();
        }
        // The service that was polled ready goes with the call; a fresh clone stays behind.
        let fresh = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, fresh);
        let authenticator = self.authenticator.clone();
        let (mut parts, body) = request.into_parts();
        async move {
            match authenticator
                .authorize(parts.uri.path(), &parts.headers)
                .await
            {
                Ok(principal) => {
                    if let Some(principal) = principal {
                        parts.extensions.insert(principal);
                    }
                    inner.call(Request::from_parts(parts, body)).await
                }
                Err(error) => {
                    tracing::debug!(%error, "call refused");
                    Ok(tonic::Status::from(error).into_http())
                }
            }
        }
        .boxed()
    }
}
