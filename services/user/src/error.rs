use opsconductor_platform::ApiError;
use opsconductor_storage::StorageError;
use thiserror::Error;

/// What the user service can fail with; mapped to a gRPC status once, through [`ApiError`].
#[derive(Debug, Error)]
pub enum UserError {
    #[error(transparent)]
    Invalid(ApiError),
    #[error("user {0} not found")]
    NotFound(String),
    /// The caller passed the method's policy but may not act on this user (or field).
    #[error("{0}")]
    Forbidden(String),
    #[error("username {0} is taken")]
    UsernameTaken(String),
    #[error("the current password does not match")]
    WrongPassword,
    #[error("user {0} has no password to change")]
    PasswordNotSet(String),
    #[error("user {0} was changed concurrently; retry")]
    Conflict(String),
    #[error("too many password checks in progress")]
    Busy,
    #[error("password hashing failed: {0}")]
    Hash(String),
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error(transparent)]
    Outbox(#[from] opsconductor_messaging::MessagingError),
}

impl From<sqlx::Error> for UserError {
    fn from(err: sqlx::Error) -> Self {
        UserError::Storage(err.into())
    }
}

impl From<ApiError> for UserError {
    fn from(err: ApiError) -> Self {
        UserError::Invalid(err)
    }
}

impl From<UserError> for ApiError {
    fn from(err: UserError) -> ApiError {
        match err {
            UserError::Invalid(api) => api,
            UserError::NotFound(id) => ApiError::NotFound { kind: "user", id },
            UserError::Forbidden(message) => ApiError::PermissionDenied(message),
            UserError::UsernameTaken(key) => ApiError::AlreadyExists { kind: "user", key },
            UserError::WrongPassword => {
                ApiError::invalid("current_password", "does not match the current password")
            }
            UserError::PasswordNotSet(id) => ApiError::FailedPrecondition {
                reason: "PASSWORD_NOT_SET",
                message: format!(
                    "user {id} has no password to change; an administrator sets it with SetPassword"
                ),
            },
            UserError::Conflict(id) => ApiError::FailedPrecondition {
                reason: "CONCURRENT_MODIFICATION",
                message: format!("user {id} was changed concurrently; read it again and retry"),
            },
            UserError::Busy => ApiError::Unavailable {
                message: "too many password operations in progress".to_string(),
                retry_after: std::time::Duration::from_millis(500),
            },
            UserError::Hash(msg) => ApiError::internal(msg),
            UserError::Storage(e) => ApiError::from(e),
            UserError::Outbox(e) => ApiError::from(e),
        }
    }
}

impl From<UserError> for tonic::Status {
    fn from(err: UserError) -> tonic::Status {
        ApiError::from(err).into()
    }
}
