use opsconductor_tokens::TokenError;
use thiserror::Error;

use crate::ApiError;

/// Why a call could not be authenticated, or a token not obtained. Never holds a token.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum AuthError {
    #[error("no bearer token in the authorization header")]
    Missing,
    #[error("the authorization header is not \"Bearer <token>\"")]
    BadHeader,
    #[error(transparent)]
    Token(#[from] TokenError),
    #[error("the token has been revoked")]
    Revoked,
    #[error("a user token was expected for {0}")]
    NotAUser(&'static str),
    /// The keys to verify with could not be fetched (the auth service is unreachable and the
    /// token names a key not seen before).
    #[error("signing keys unavailable: {0}")]
    KeysUnavailable(String),
    /// A token source could not get a token.
    #[error("cannot obtain a token: {0}")]
    Fetch(String),
}

impl From<AuthError> for ApiError {
    fn from(err: AuthError) -> ApiError {
        let reason = match &err {
            AuthError::Missing => "TOKEN_MISSING",
            AuthError::Token(TokenError::Expired) => "TOKEN_EXPIRED",
            AuthError::Revoked => "TOKEN_REVOKED",
            AuthError::KeysUnavailable(message) | AuthError::Fetch(message) => {
                return ApiError::Unavailable {
                    message: format!("authentication unavailable: {message}"),
                    retry_after: std::time::Duration::from_secs(1),
                }
            }
            _ => "TOKEN_INVALID",
        };
        ApiError::Unauthenticated {
            reason,
            message: err.to_string(),
        }
    }
}

impl From<AuthError> for tonic::Status {
    fn from(err: AuthError) -> tonic::Status {
        ApiError::from(err).into()
    }
}
