use opsconductor_platform::ApiError;
use opsconductor_runtime::Infra;
use thiserror::Error;

/// What the jobs service can fail with; mapped to a gRPC status once, through [`ApiError`].
#[derive(Debug, Error)]
pub enum JobsError {
    #[error(transparent)]
    Api(#[from] ApiError),
    #[error("{0} {1} not found")]
    NotFound(&'static str, String),
    #[error("job name {0} is taken")]
    NameTaken(String),
    #[error("job {id} is at revision {actual}, not {expected}")]
    RevisionMismatch {
        id: String,
        expected: u64,
        actual: u64,
    },
    #[error("job {0} was changed concurrently; retry")]
    Conflict(String),
    #[error("job {0} has queued or running runs")]
    HasActiveRuns(String),
    #[error("the idempotency key was used for a different request")]
    IdempotencyKeyReused,
    #[error("run {0} is held by another executor")]
    AlreadyClaimed(String),
    #[error("run {0} is not queued")]
    NotQueued(String),
    #[error("the lease on run {0} is lost")]
    LeaseLost(String),
    #[error("run {0} is not running")]
    NotRunning(String),
    #[error("job {0} already has its {1} concurrent runs")]
    ConcurrencyLimit(String, u32),
    #[error("the targets could not be resolved: {0}")]
    Targets(ApiError),
    #[error("stored {0} {1} cannot be decoded: {2}")]
    Corrupt(&'static str, String, prost::DecodeError),
    #[error(transparent)]
    Infra(#[from] Infra),
}

opsconductor_runtime::service_error!(JobsError);

impl From<JobsError> for ApiError {
    fn from(err: JobsError) -> ApiError {
        let precondition =
            |reason, message: String| ApiError::FailedPrecondition { reason, message };
        match err {
            JobsError::Api(api) => api,
            JobsError::NotFound(kind, id) => ApiError::NotFound { kind, id },
            JobsError::NameTaken(key) => ApiError::AlreadyExists { kind: "job", key },
            e @ JobsError::RevisionMismatch { .. } => {
                precondition("REVISION_MISMATCH", e.to_string())
            }
            JobsError::Conflict(id) => precondition(
                "CONCURRENT_MODIFICATION",
                format!("job {id} was changed concurrently; read it again and retry"),
            ),
            e @ JobsError::HasActiveRuns(_) => precondition("JOB_HAS_ACTIVE_RUNS", e.to_string()),
            e @ JobsError::IdempotencyKeyReused => {
                precondition("IDEMPOTENCY_KEY_REUSED", e.to_string())
            }
            e @ JobsError::AlreadyClaimed(_) => precondition("RUN_ALREADY_CLAIMED", e.to_string()),
            e @ JobsError::NotQueued(_) => precondition("RUN_NOT_QUEUED", e.to_string()),
            e @ JobsError::LeaseLost(_) => precondition("LEASE_LOST", e.to_string()),
            e @ JobsError::NotRunning(_) => precondition("RUN_NOT_RUNNING", e.to_string()),
            e @ JobsError::ConcurrencyLimit(..) => precondition("CONCURRENCY_LIMIT", e.to_string()),
            JobsError::Targets(upstream) => upstream,
            e @ JobsError::Corrupt(..) => ApiError::internal(e.to_string()),
            JobsError::Infra(e) => e.into(),
        }
    }
}
