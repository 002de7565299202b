use opsconductor_platform::ApiError;
use opsconductor_runtime::Infra;
use thiserror::Error;

use crate::vault::VaultError;

/// What the credentials service can fail with; mapped to a gRPC status once, through
/// [`ApiError`]. No variant holds secret material.
#[derive(Debug, Error)]
pub enum CredentialsError {
    #[error(transparent)]
    Api(#[from] ApiError),
    #[error("credential {0} not found")]
    NotFound(String),
    #[error("credential name {0} is taken")]
    NameTaken(String),
    #[error("credential {0} was changed concurrently; retry")]
    Conflict(String),
    #[error("targets still refer to the credential: {}", .0.join(", "))]
    InUse(Vec<String>),
    #[error("secret version {0} is not revealable (replaced, and its grace is over)")]
    VersionGone(u64),
    #[error("the active key version is {active}, not {expected}")]
    KeyVersionMismatch { expected: u64, active: u64 },
    #[error("the idempotency key was used for another request")]
    KeyReused,
    #[error(transparent)]
    Vault(#[from] VaultError),
    #[error("the reveal is refused: {0}")]
    Refused(String),
    #[error("the reveal cannot be checked now: {0}")]
    CheckUnavailable(String),
    #[error(transparent)]
    Infra(#[from] Infra),
}

opsconductor_runtime::service_error!(CredentialsError);

impl From<CredentialsError> for ApiError {
    fn from(err: CredentialsError) -> ApiError {
        match err {
            CredentialsError::Api(api) => api,
            CredentialsError::NotFound(id) => ApiError::NotFound {
                kind: "credential",
                id,
            },
            CredentialsError::NameTaken(key) => ApiError::AlreadyExists {
                kind: "credential",
                key,
            },
            CredentialsError::Conflict(id) => ApiError::FailedPrecondition {
                reason: "CONCURRENT_MODIFICATION",
                message: format!(
                    "credential {id} was changed concurrently; read it again and retry"
                ),
            },
            e @ CredentialsError::InUse(_) => ApiError::FailedPrecondition {
                reason: "CREDENTIAL_IN_USE",
                message: format!("{e}; change those targets first, or delete with force"),
            },
            e @ CredentialsError::VersionGone(_) => ApiError::FailedPrecondition {
                reason: "SECRET_VERSION_EXPIRED",
                message: e.to_string(),
            },
            e @ CredentialsError::KeyVersionMismatch { .. } => ApiError::FailedPrecondition {
                reason: "KEY_VERSION_MISMATCH",
                message: format!("{e}; read it again and retry"),
            },
            e @ CredentialsError::KeyReused => ApiError::FailedPrecondition {
                reason: "IDEMPOTENCY_KEY_REUSED",
                message: e.to_string(),
            },
            CredentialsError::Vault(e) => ApiError::internal(e.to_string()),
            e @ CredentialsError::Refused(_) => ApiError::PermissionDenied(e.to_string()),
            CredentialsError::CheckUnavailable(message) => ApiError::Unavailable {
                message,
                retry_after: std::time::Duration::from_secs(1),
            },
            CredentialsError::Infra(e) => e.into(),
        }
    }
}
