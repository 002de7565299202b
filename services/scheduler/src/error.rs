use opsconductor_platform::ApiError;
use opsconductor_runtime::Infra;
use thiserror::Error;

/// What the scheduler can fail with; mapped to a gRPC status once, through [`ApiError`].
#[derive(Debug, Error)]
pub enum SchedulerError {
    #[error(transparent)]
    Api(#[from] ApiError),
    #[error("schedule {0} not found")]
    NotFound(String),
    #[error("schedule name {0} is taken")]
    NameTaken(String),
    #[error("schedule {id} is at revision {actual}, not {expected}")]
    RevisionMismatch {
        id: String,
        expected: u64,
        actual: u64,
    },
    #[error("schedule {0} was changed concurrently; retry")]
    Conflict(String),
    /// The jobs or user service answered with an error (kept as it came, to pass on).
    #[error("{0}")]
    Upstream(ApiError),
    #[error("stored schedule {0} cannot be decoded: {1}")]
    Corrupt(String, prost::DecodeError),
    #[error(transparent)]
    Infra(#[from] Infra),
}

opsconductor_runtime::service_error!(SchedulerError);

impl From<SchedulerError> for ApiError {
    fn from(err: SchedulerError) -> ApiError {
        match err {
            SchedulerError::Api(api) | SchedulerError::Upstream(api) => api,
            SchedulerError::NotFound(id) => ApiError::NotFound {
                kind: "schedule",
                id,
            },
            SchedulerError::NameTaken(key) => ApiError::AlreadyExists {
                kind: "schedule",
                key,
            },
            e @ SchedulerError::RevisionMismatch { .. } => ApiError::FailedPrecondition {
                reason: "REVISION_MISMATCH",
                message: e.to_string(),
            },
            SchedulerError::Conflict(id) => ApiError::FailedPrecondition {
                reason: "CONCURRENT_MODIFICATION",
                message: format!("schedule {id} was changed concurrently; read it again and retry"),
            },
            e @ SchedulerError::Corrupt(..) => ApiError::internal(e.to_string()),
            SchedulerError::Infra(e) => e.into(),
        }
    }
}
