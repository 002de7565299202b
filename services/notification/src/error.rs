use opsconductor_platform::ApiError;
use opsconductor_runtime::Infra;
use thiserror::Error;

/// What the notification service can fail with; mapped to a gRPC status once, through
/// [`ApiError`].
#[derive(Debug, Error)]
pub enum NotificationError {
    #[error(transparent)]
    Api(#[from] ApiError),
    #[error("{0} {1} not found")]
    NotFound(&'static str, String),
    #[error("a template for this channel and event type exists: {0}")]
    TemplateExists(String),
    #[error("the idempotency key was used for a different request")]
    KeyReused,
    #[error("the user has no enabled destination for this channel")]
    NoDestination,
    #[error("delivery {0} is {1}; only FAILED or DEAD_LETTERED deliveries are resent")]
    NotResendable(String, &'static str),
    #[error("the template cannot be rendered: {0}")]
    Render(String),
    /// The render sandbox could not be used (not the template's fault).
    #[error(transparent)]
    Sandbox(#[from] opsconductor_notify_render::sandbox::SandboxError),
    /// Another service answered with an error (kept as it came, to pass on).
    #[error("{0}")]
    Upstream(ApiError),
    /// A grouped write failed (the whole group's transaction); every writer in it retries.
    #[error("writing deliveries failed: {0}")]
    Write(String),
    #[error("stored {0} is invalid: {1}")]
    Corrupt(&'static str, String),
    #[error(transparent)]
    Infra(#[from] Infra),
}

opsconductor_runtime::service_error!(NotificationError);

impl From<NotificationError> for ApiError {
    fn from(err: NotificationError) -> ApiError {
        match err {
            NotificationError::Api(api) | NotificationError::Upstream(api) => api,
            NotificationError::NotFound(kind, id) => ApiError::NotFound { kind, id },
            NotificationError::TemplateExists(key) => ApiError::AlreadyExists {
                kind: "template",
                key,
            },
            e @ NotificationError::KeyReused => ApiError::FailedPrecondition {
                reason: "IDEMPOTENCY_KEY_REUSED",
                message: e.to_string(),
            },
            e @ NotificationError::NoDestination => ApiError::FailedPrecondition {
                reason: "NO_DESTINATION",
                message: e.to_string(),
            },
            e @ NotificationError::NotResendable(..) => ApiError::FailedPrecondition {
                reason: "NOT_RESENDABLE",
                message: e.to_string(),
            },
            e @ NotificationError::Render(_) => ApiError::FailedPrecondition {
                reason: "TEMPLATE_FAILED",
                message: e.to_string(),
            },
            e @ NotificationError::Sandbox(_) => ApiError::Unavailable {
                message: e.to_string(),
                retry_after: std::time::Duration::from_secs(1),
            },
            e @ (NotificationError::Corrupt(..) | NotificationError::Write(_)) => {
                ApiError::internal(e.to_string())
            }
            NotificationError::Infra(e) => e.into(),
        }
    }
}
