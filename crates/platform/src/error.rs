//! One error model for every service: typed errors that become a `tonic::Status` in exactly one
//! place, with Google rich error details — `BadRequest` field violations for bad input,
//! `ErrorInfo` with a stable reason always, `RetryInfo` where trying again makes sense.

use std::time::Duration;

use opsconductor_storage::StorageError;
use thiserror::Error;
use tonic::{Code, Status};
use tonic_types::{ErrorDetails, FieldViolation, StatusExt};

/// The `ErrorInfo.domain` of every error the platform returns.
pub const ERROR_DOMAIN: &str = "opsconductor";

pub type ApiResult<T> = Result<T, ApiError>;

/// An error a handler returns. Services convert their domain errors into this once; the
/// conversion into `tonic::Status` happens here and nowhere else.
#[derive(Debug, Error)]
pub enum ApiError {
    /// The request is malformed: each violation names a field path and what is wrong with it.
    #[error("invalid argument: {}", summarize(.0))]
    InvalidArgument(Vec<FieldViolation>),
    #[error("{kind} {id:?} not found")]
    NotFound { kind: &'static str, id: String },
    #[error("{kind} {key:?} already exists")]
    AlreadyExists { kind: &'static str, key: String },
    /// The system is not in a state where the request can be done; `reason` is a stable
    /// UPPER_SNAKE identifier clients may branch on.
    #[error("{message}")]
    FailedPrecondition {
        reason: &'static str,
        message: String,
    },
    /// No usable credentials: a missing, malformed, expired, wrongly signed or revoked token.
    /// `reason` is stable (`TOKEN_MISSING`, `TOKEN_EXPIRED`, `TOKEN_INVALID`, `TOKEN_REVOKED`,
    /// `INVALID_CREDENTIALS`).
    #[error("unauthenticated: {message}")]
    Unauthenticated {
        reason: &'static str,
        message: String,
    },
    #[error("permission denied: {0}")]
    PermissionDenied(String),
    /// A dependency is down or overloaded: safe to retry after `retry_after`.
    #[error("unavailable: {message}")]
    Unavailable {
        message: String,
        retry_after: Duration,
    },
    /// The caller is over a rate limit (e.g. too many failed password checks): try again
    /// after `retry_after`.
    #[error("rate limited: {message}")]
    ResourceExhausted {
        message: String,
        retry_after: Duration,
    },
    /// What another service answered, decoded by [`ApiError::from_status`].
    #[error(transparent)]
    Upstream(Upstream),
    /// A bug or an unexpected failure. The cause is logged; the caller sees a generic message.
    #[error("internal error: {0}")]
    Internal(Box<dyn std::error::Error + Send + Sync>),
}

fn summarize(violations: &[FieldViolation]) -> String {
    violations
        .iter()
        .map(|v| format!("{}: {}", v.field, v.description))
        .collect::<Vec<_>>()
        .join("; ")
}

impl ApiError {
    pub fn invalid(field: impl Into<String>, description: impl Into<String>) -> Self {
        ApiError::InvalidArgument(vec![FieldViolation::new(field, description)])
    }

    pub fn internal(err: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> Self {
        ApiError::Internal(err.into())
    }

    /// The stable `ErrorInfo.reason` this error is sent with.
    pub fn reason(&self) -> &str {
        match self {
            ApiError::InvalidArgument(_) => "FIELD_VIOLATION",
            ApiError::NotFound { .. } => "RESOURCE_NOT_FOUND",
            ApiError::AlreadyExists { .. } => "RESOURCE_ALREADY_EXISTS",
            ApiError::FailedPrecondition { reason, .. } => reason,
            ApiError::Unauthenticated { reason, .. } => reason,
            ApiError::PermissionDenied(_) => "PERMISSION_DENIED",
            ApiError::Unavailable { .. } => "UNAVAILABLE",
            ApiError::ResourceExhausted { .. } => "RATE_LIMITED",
            ApiError::Upstream(upstream) => &upstream.reason,
            ApiError::Internal(_) => "INTERNAL",
        }
    }

    /// The gRPC code this error is sent with.
    pub fn code(&self) -> Code {
        match self {
            ApiError::InvalidArgument(_) => Code::InvalidArgument,
            ApiError::NotFound { .. } => Code::NotFound,
            ApiError::AlreadyExists { .. } => Code::AlreadyExists,
            ApiError::FailedPrecondition { .. } => Code::FailedPrecondition,
            ApiError::Unauthenticated { .. } => Code::Unauthenticated,
            ApiError::PermissionDenied(_) => Code::PermissionDenied,
            ApiError::Unavailable { .. } => Code::Unavailable,
            ApiError::ResourceExhausted { .. } => Code::ResourceExhausted,
            ApiError::Upstream(upstream) => upstream.code,
            ApiError::Internal(_) => Code::Internal,
        }
    }

    /// When trying again makes sense, after how long.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            ApiError::Unavailable { retry_after, .. }
            | ApiError::ResourceExhausted { retry_after, .. } => Some(*retry_after),
            ApiError::Upstream(upstream) => upstream.retry_after,
            _ => None,
        }
    }

    /// The bad fields of an `INVALID_ARGUMENT`, ours or a callee's.
    pub fn violations(&self) -> &[FieldViolation] {
        match self {
            ApiError::InvalidArgument(violations) => violations,
            ApiError::Upstream(upstream) => &upstream.violations,
            _ => &[],
        }
    }

    /// Decodes a status another service answered with: its code, the `ErrorInfo` reason
    /// (or the code's name when there is none), field violations and `RetryInfo`, so the
    /// calling service can branch on them instead of on a message string.
    pub fn from_status(status: &Status) -> ApiError {
        let details = status.get_error_details();
        let reason = details
            .error_info()
            .map(|info| info.reason.clone())
            .filter(|reason| !reason.is_empty())
            .unwrap_or_else(|| format!("{:?}", status.code()).to_uppercase());
        ApiError::Upstream(Upstream {
            code: status.code(),
            reason,
            message: status.message().to_string(),
            violations: details
                .bad_request()
                .map(|bad| bad.field_violations.clone())
                .unwrap_or_default(),
            retry_after: details.retry_info().and_then(|retry| retry.retry_delay),
        })
    }
}

/// A callee's error, decoded. Passed on to our own caller with its code, reason, violations
/// and retry advice, except that a callee refusing *our* credentials is our failure, not the
/// caller's: that goes on as `UNAVAILABLE` (a token being refreshed, keys not yet fetched).
#[derive(Debug, Clone, Error)]
#[error("{code:?} from upstream: {message}")]
pub struct Upstream {
    pub code: Code,
    pub reason: String,
    pub message: String,
    pub violations: Vec<FieldViolation>,
    pub retry_after: Option<Duration>,
}

impl From<ApiError> for Status {
    fn from(err: ApiError) -> Status {
        let reason = err.reason();
        let mut details = ErrorDetails::new();
        details.set_error_info(reason, ERROR_DOMAIN, std::collections::HashMap::new());
        let (code, message) = match &err {
            ApiError::InvalidArgument(violations) => {
                details.set_bad_request(violations.clone());
                (Code::InvalidArgument, err.to_string())
            }
            ApiError::NotFound { kind, id } => {
                details.set_resource_info(*kind, id.clone(), "", "not found");
                (Code::NotFound, err.to_string())
            }
            ApiError::AlreadyExists { kind, key } => {
                details.set_resource_info(*kind, key.clone(), "", "already exists");
                (Code::AlreadyExists, err.to_string())
            }
            ApiError::FailedPrecondition { .. } => (Code::FailedPrecondition, err.to_string()),
            ApiError::Unauthenticated { .. } => (Code::Unauthenticated, err.to_string()),
            ApiError::PermissionDenied(_) => (Code::PermissionDenied, err.to_string()),
            ApiError::Unavailable { retry_after, .. } => {
                details.set_retry_info(Some(*retry_after));
                (Code::Unavailable, err.to_string())
            }
            ApiError::ResourceExhausted { retry_after, .. } => {
                details.set_retry_info(Some(*retry_after));
                (Code::ResourceExhausted, err.to_string())
            }
            ApiError::Upstream(upstream) => return upstream_status(upstream),
            ApiError::Internal(cause) => {
                tracing::error!(error = %cause, "internal error");
                (Code::Internal, "internal error".to_string())
            }
        };
        Status::with_error_details(code, message, details)
    }
}

fn upstream_status(upstream: &Upstream) -> Status {
    let mut details = ErrorDetails::new();
    let (code, reason) = if upstream.code == Code::Unauthenticated {
        (Code::Unavailable, "UPSTREAM_UNAUTHENTICATED")
    } else {
        (upstream.code, upstream.reason.as_str())
    };
    details.set_error_info(reason, ERROR_DOMAIN, std::collections::HashMap::new());
    if !upstream.violations.is_empty() {
        details.set_bad_request(upstream.violations.clone());
    }
    match (upstream.retry_after, code) {
        (Some(delay), _) => {
            details.set_retry_info(Some(delay));
        }
        (None, Code::Unavailable) => {
            details.set_retry_info(Some(Duration::from_secs(1)));
        }
        _ => {}
    }
    Status::with_error_details(code, upstream.message.clone(), details)
}

impl From<StorageError> for ApiError {
    /// Storage failures that a client did not cause: a database that cannot be reached is
    /// worth retrying; anything else is internal. Duplicates are mapped by each store, which
    /// knows which resource and key clashed.
    fn from(err: StorageError) -> Self {
        match &err {
            StorageError::Database(
                sqlx_err @ (opsconductor_storage::sqlx::Error::PoolTimedOut
                | opsconductor_storage::sqlx::Error::Io(_)
                | opsconductor_storage::sqlx::Error::PoolClosed),
            ) => ApiError::Unavailable {
                message: format!("database unavailable: {sqlx_err}"),
                retry_after: Duration::from_secs(1),
            },
            // PostgreSQL going away under a pooled connection (a restart, a failover): the
            // connection is dead, the next one will work. Class 08 is "connection exception";
            // 57P01-57P03 are "admin shutdown", "crash shutdown", "cannot connect now".
            StorageError::Database(opsconductor_storage::sqlx::Error::Database(db))
                if db.code().is_some_and(|c| {
                    c.starts_with("08") || matches!(&*c, "57P01" | "57P02" | "57P03")
                }) =>
            {
                ApiError::Unavailable {
                    message: "database unavailable: the connection was lost".into(),
                    retry_after: Duration::from_millis(200),
                }
            }
            _ => ApiError::internal(err),
        }
    }
}

impl From<opsconductor_storage::sqlx::Error> for ApiError {
    fn from(err: opsconductor_storage::sqlx::Error) -> Self {
        ApiError::from(StorageError::from(err))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_callee_status_keeps_its_code_reason_violations_and_retry_info() {
        let sent: Status = ApiError::InvalidArgument(vec![
            FieldViolation::new("a", "is required"),
            FieldViolation::new("b", "must be a UUID"),
        ])
        .into();
        let decoded = ApiError::from_status(&sent);
        assert_eq!(decoded.code(), Code::InvalidArgument);
        assert_eq!(decoded.reason(), "FIELD_VIOLATION");
        let fields: Vec<_> = decoded
            .violations()
            .iter()
            .map(|v| v.field.as_str())
            .collect();
        assert_eq!(fields, ["a", "b"]);
        // Passed on, it is still the same error.
        let again = ApiError::from_status(&Status::from(decoded));
        assert_eq!(again.violations().len(), 2);

        let busy: Status = ApiError::ResourceExhausted {
            message: "slow down".into(),
            retry_after: Duration::from_secs(7),
        }
        .into();
        let decoded = ApiError::from_status(&busy);
        assert_eq!(decoded.code(), Code::ResourceExhausted);
        assert_eq!(decoded.reason(), "RATE_LIMITED");
        assert_eq!(decoded.retry_after(), Some(Duration::from_secs(7)));

        // A bare status (a transport failure) still has a reason to branch on.
        let bare = ApiError::from_status(&Status::unavailable("connection refused"));
        assert_eq!(bare.reason(), "UNAVAILABLE");
        assert_eq!(bare.retry_after(), None);

        // A callee refusing our token is our failure: the caller sees UNAVAILABLE.
        let refused: Status = ApiError::Unauthenticated {
            reason: "TOKEN_EXPIRED",
            message: "expired".into(),
        }
        .into();
        let passed_on = Status::from(ApiError::from_status(&refused));
        assert_eq!(passed_on.code(), Code::Unavailable);
        assert_eq!(
            passed_on.get_details_error_info().unwrap().reason,
            "UPSTREAM_UNAUTHENTICATED"
        );
        assert!(passed_on.get_details_retry_info().is_some());
    }
}
