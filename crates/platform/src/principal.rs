//! Who is calling: the identities the authentication layer verified, handed to handlers in the
//! request extensions. A user calls directly; a service calls as itself, or on behalf of a user
//! whose identity it forwards (then both are here, and both were authorized).

use std::fmt;
use std::sync::Arc;

use opsconductor_api::common::v1::{Actor, Role};

/// A verified caller.
#[derive(Clone, PartialEq, Eq)]
pub struct Principal {
    pub user: Option<UserIdentity>,
    /// The calling service's identity (`SERVICE_ID`), when a service calls.
    pub service: Option<String>,
}

/// A verified user.
#[derive(Clone, PartialEq, Eq)]
pub struct UserIdentity {
    pub id: String,
    pub role: Role,
    /// The session (refresh-token family) the token belongs to.
    pub session_id: Option<String>,
    /// The user's access token, so a service can forward it when it calls on the user's behalf.
    pub(crate) token: Arc<str>,
}

impl UserIdentity {
    pub fn new(id: &str, role: Role, session_id: Option<String>, token: &str) -> UserIdentity {
        UserIdentity {
            id: id.to_string(),
            role,
            session_id,
            token: token.into(),
        }
    }

    /// The access token, to forward on this user's behalf. Never log it.
    pub fn token(&self) -> &str {
        &self.token
    }
}

impl fmt::Debug for UserIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UserIdentity")
            .field("id", &self.id)
            .field("role", &self.role)
            .field("session_id", &self.session_id)
            .finish_non_exhaustive()
    }
}

impl fmt::Debug for Principal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Principal")
            .field("user", &self.user)
            .field("service", &self.service)
            .finish()
    }
}

impl Principal {
    pub fn user(identity: UserIdentity) -> Principal {
        Principal {
            user: Some(identity),
            service: None,
        }
    }

    pub fn service(id: &str) -> Principal {
        Principal {
            user: None,
            service: Some(id.to_string()),
        }
    }

    /// The principal the authentication layer attached to `request`.
    pub fn from_request<T>(request: &tonic::Request<T>) -> Option<&Principal> {
        request.extensions().get::<Principal>()
    }

    /// Whom idempotency keys and rate limits are scoped to: the service when a service calls,
    /// otherwise the user.
    pub fn subject(&self) -> &str {
        match (&self.service, &self.user) {
            (Some(service), _) => service,
            (None, Some(user)) => &user.id,
            (None, None) => "",
        }
    }

    pub fn user_id(&self) -> Option<&str> {
        self.user.as_ref().map(|u| u.id.as_str())
    }

    /// Whether the user behind the call (direct, or forwarded by a service) is an administrator.
    pub fn is_admin(&self) -> bool {
        self.user.as_ref().is_some_and(|u| u.role == Role::Admin)
    }

    /// Whether this caller may act on `user_id`'s own resources: the user, or an administrator.
    pub fn may_act_for(&self, user_id: &str) -> bool {
        self.is_admin() || self.user_id() == Some(user_id)
    }

    /// Who did it, for the audit trail.
    pub fn actor(&self) -> Actor {
        Actor {
            user_id: self.user_id().unwrap_or_default().to_string(),
            service_id: self.service.clone().unwrap_or_default(),
        }
    }
}

/// The role as tokens carry it: "viewer", "operator", "admin".
pub fn role_name(role: Role) -> &'static str {
    match role {
        Role::Viewer => "viewer",
        Role::Operator => "operator",
        Role::Admin => "admin",
        Role::Unspecified => "none",
    }
}

pub fn role_from_name(name: &str) -> Option<Role> {
    match name {
        "viewer" => Some(Role::Viewer),
        "operator" => Some(Role::Operator),
        "admin" => Some(Role::Admin),
        _ => None,
    }
}

impl Principal {
    /// The principal of a request the authentication layer admitted. Its absence means the
    /// server runs without authentication, which no served method tolerates.
    pub fn require<T>(request: &tonic::Request<T>) -> Result<&Principal, crate::ApiError> {
        Principal::from_request(request).ok_or_else(|| {
            crate::ApiError::PermissionDenied("the call carries no verified identity".into())
        })
    }

    /// Sends this caller's user identity along with `request`, for a service calling another
    /// on the user's behalf: the callee then authorizes both.
    pub fn forward<T>(&self, request: &mut tonic::Request<T>) {
        if let Some(user) = &self.user {
            if let Ok(mut value) = tonic::metadata::MetadataValue::try_from(user.token()) {
                value.set_sensitive(true);
                request
                    .metadata_mut()
                    .insert(crate::auth::ON_BEHALF_OF, value);
            }
        }
    }
}
