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

    fn reason(&self) -> &'static str {
        match self {
            ApiError::InvalidArgument(_) => "FIELD_VIOLATION",
            ApiError::NotFound { .. } => "RESOURCE_NOT_FOUND",
            ApiError::AlreadyExists { .. } => "RESOURCE_ALREADY_EXISTS",
            ApiError::FailedPrecondition { reason, .. } => reason,
            ApiError::Unauthenticated { reason, .. } => reason,
            ApiError::PermissionDenied(_) => "PERMISSION_DENIED",
            ApiError::Unavailable { .. } => "UNAVAILABLE",
            ApiError::Internal(_) => "INTERNAL",
        }
    }
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
            ApiError::Internal(cause) => {
                tracing::error!(error = %cause, "internal error");
                (Code::Internal, "internal error".to_string())
            }
        };
        Status::with_error_details(code, message, details)
    }
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
            _ => ApiError::internal(err),
        }
    }
}

impl From<opsconductor_storage::sqlx::Error> for ApiError {
    fn from(err: opsconductor_storage::sqlx::Error) -> Self {
        ApiError::from(StorageError::from(err))
    }
}
