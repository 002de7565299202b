use opsconductor_platform::ApiError;
use opsconductor_runtime::Infra;
use thiserror::Error;

/// What the targets service can fail with; mapped to a gRPC status once, through [`ApiError`].
#[derive(Debug, Error)]
pub enum TargetsError {
    #[error(transparent)]
    Api(#[from] ApiError),
    #[error("target {0} not found")]
    NotFound(String),
    #[error("target name {0} is taken")]
    NameTaken(String),
    #[error("target {0} was changed concurrently; retry")]
    Conflict(String),
    #[error("stored target {0} cannot be decoded: {1}")]
    Corrupt(String, prost::DecodeError),
    #[error(transparent)]
    Infra(#[from] Infra),
}

opsconductor_runtime::service_error!(TargetsError);

impl From<TargetsError> for ApiError {
    fn from(err: TargetsError) -> ApiError {
        match err {
            TargetsError::Api(api) => api,
            TargetsError::NotFound(id) => ApiError::NotFound { kind: "target", id },
            TargetsError::NameTaken(key) => ApiError::AlreadyExists {
                kind: "target",
                key,
            },
            TargetsError::Conflict(id) => ApiError::FailedPrecondition {
                reason: "CONCURRENT_MODIFICATION",
                message: format!("target {id} was changed concurrently; read it again and retry"),
            },
            e @ TargetsError::Corrupt(..) => ApiError::internal(e.to_string()),
            TargetsError::Infra(e) => e.into(),
        }
    }
}
