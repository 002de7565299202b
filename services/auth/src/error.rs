use opsconductor_platform::ApiError;
use opsconductor_storage::StorageError;
use thiserror::Error;

/// What the auth service can fail with; mapped to a gRPC status once, through [`ApiError`].
#[derive(Debug, Error)]
pub enum AuthServiceError {
    #[error(transparent)]
    Api(#[from] ApiError),
    /// Wrong username or password, or a disabled user: the caller is not told which.
    #[error("invalid username or password")]
    InvalidCredentials,
    #[error("invalid service credentials")]
    InvalidServiceCredentials,
    /// The refresh token is unknown, used, expired, or its session ended.
    #[error("the refresh token is not valid")]
    InvalidRefreshToken,
    #[error("session {0} not found")]
    SessionNotFound(String),
    #[error("the user service could not be reached: {0}")]
    UserService(String),
    #[error("signing failed: {0}")]
    Signing(String),
    #[error("signing keys cannot be used: {0}")]
    Keys(String),
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error(transparent)]
    Outbox(#[from] opsconductor_messaging::MessagingError),
}

impl From<sqlx::Error> for AuthServiceError {
    fn from(err: sqlx::Error) -> Self {
        AuthServiceError::Storage(err.into())
    }
}

impl From<AuthServiceError> for ApiError {
    fn from(err: AuthServiceError) -> ApiError {
        match err {
            AuthServiceError::Api(api) => api,
            e @ AuthServiceError::InvalidCredentials => ApiError::Unauthenticated {
                reason: "INVALID_CREDENTIALS",
                message: e.to_string(),
            },
            e @ AuthServiceError::InvalidServiceCredentials => ApiError::Unauthenticated {
                reason: "INVALID_CREDENTIALS",
                message: e.to_string(),
            },
            e @ AuthServiceError::InvalidRefreshToken => ApiError::Unauthenticated {
                reason: "REFRESH_TOKEN_INVALID",
                message: e.to_string(),
            },
            AuthServiceError::SessionNotFound(id) => ApiError::NotFound {
                kind: "session",
                id,
            },
            AuthServiceError::UserService(message) => ApiError::Unavailable {
                message: format!("the user service could not be reached: {message}"),
                retry_after: std::time::Duration::from_secs(1),
            },
            e @ (AuthServiceError::Signing(_) | AuthServiceError::Keys(_)) => ApiError::internal(e),
            AuthServiceError::Storage(e) => ApiError::from(e),
            AuthServiceError::Outbox(e) => ApiError::from(e),
        }
    }
}

impl From<AuthServiceError> for tonic::Status {
    fn from(err: AuthServiceError) -> tonic::Status {
        ApiError::from(err).into()
    }
}
