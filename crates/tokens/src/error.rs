use thiserror::Error;

/// Why a token was refused. Messages never include the token itself.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum TokenError {
    #[error("token is malformed: {0}")]
    Malformed(&'static str),
    #[error("token algorithm {0:?} is not accepted (only EdDSA)")]
    UnsupportedAlgorithm(String),
    #[error("token was signed by unknown key {0:?}")]
    UnknownKey(String),
    #[error("token signature is invalid")]
    BadSignature,
    #[error("token has expired")]
    Expired,
    #[error("token is not valid yet")]
    NotYetValid,
    #[error("token issuer is not accepted")]
    WrongIssuer,
    #[error("token audience is not accepted")]
    WrongAudience,
    #[error("key material is invalid: {0}")]
    BadKey(&'static str),
    #[error("claims cannot be encoded: {0}")]
    Encode(String),
}
