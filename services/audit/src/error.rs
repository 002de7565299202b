use opsconductor_platform::ApiError;
use opsconductor_runtime::Infra;
use thiserror::Error;

/// What the audit service can fail with; mapped to a gRPC status once, through [`ApiError`].
#[derive(Debug, Error)]
pub enum AuditError {
    #[error(transparent)]
    Api(#[from] ApiError),
    #[error("audit event {0} not found")]
    NotFound(String),
    #[error("an event cannot be encoded: {0}")]
    Encode(String),
    #[error(transparent)]
    Infra(#[from] Infra),
}

opsconductor_runtime::service_error!(AuditError);

impl From<AuditError> for ApiError {
    fn from(err: AuditError) -> ApiError {
        match err {
            AuditError::Api(api) => api,
            AuditError::NotFound(id) => ApiError::NotFound {
                kind: "audit event",
                id,
            },
            e @ AuditError::Encode(_) => ApiError::internal(e.to_string()),
            AuditError::Infra(e) => e.into(),
        }
    }
}
