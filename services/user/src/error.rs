use opsconductor_platform::ApiError;
use opsconductor_runtime::Infra;
use thiserror::Error;

/// What the user service can fail with; mapped to a gRPC status once, through [`ApiError`].
#[derive(Debug, Error)]
pub enum UserError {
    #[error(transparent)]
    Api(#[from] ApiError),
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
    #[error("stored preferences of user {0} cannot be decoded: {1}")]
    Corrupt(String, prost::DecodeError),
    #[error(transparent)]
    Infra(#[from] Infra),
}

opsconductor_runtime::service_error!(UserError);

impl From<UserError> for ApiError {
    fn from(err: UserError) -> ApiError {
        match err {
            UserError::Api(api) => api,
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
            e @ UserError::Corrupt(..) => ApiError::internal(e.to_string()),
            UserError::Infra(e) => e.into(),
        }
    }
}
