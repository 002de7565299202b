use opsconductor_platform::ApiError;
use opsconductor_runtime::Infra;
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
    /// The user service answered with an error (decoded) or could not be reached.
    #[error("the user service failed: {0}")]
    UserService(ApiError),
    #[error("signing failed: {0}")]
    Signing(String),
    #[error("signing keys cannot be used: {0}")]
    Keys(String),
    #[error(transparent)]
    Infra(#[from] Infra),
}

opsconductor_runtime::service_error!(AuthServiceError);

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
            // Whatever the user service said, the sign-in cannot be decided now.
            AuthServiceError::UserService(upstream) => ApiError::Unavailable {
                message: format!(
                    "the user service could not check the credentials: {} ({})",
                    upstream.reason(),
                    upstream
                ),
                retry_after: upstream
                    .retry_after()
                    .unwrap_or(std::time::Duration::from_secs(1)),
            },
            e @ (AuthServiceError::Signing(_) | AuthServiceError::Keys(_)) => ApiError::internal(e),
            AuthServiceError::Infra(e) => e.into(),
        }
    }
}
