use thiserror::Error;

/// Why a publish did not land. Every variant means the broker does not hold the message.
#[derive(Debug, Error, Clone)]
pub enum PublishError {
    /// No connection to the broker within the publish timeout; worth retrying.
    #[error("broker unavailable: {0}")]
    Unavailable(String),
    /// Published `mandatory` and no queue is bound for it: a topology mistake, not a blip.
    #[error(
        "unroutable: no queue is bound to exchange {exchange:?} for routing key {routing_key:?}"
    )]
    Unroutable {
        exchange: String,
        routing_key: String,
    },
    /// The broker refused it (negative confirm), e.g. a queue rejecting publishes.
    #[error("the broker refused the message (nack)")]
    Nacked,
    /// The exchange does not exist.
    #[error("exchange {0:?} does not exist")]
    NoSuchExchange(String),
    /// No confirm arrived in time; the message may or may not be held.
    #[error("no confirm within {0:?}")]
    Timeout(std::time::Duration),
    /// The channel or connection failed while the message was in flight.
    #[error("broker error: {0}")]
    Broker(String),
}

impl PublishError {
    /// Whether trying again later can succeed without anyone changing anything.
    pub fn is_transient(&self) -> bool {
        !matches!(
            self,
            PublishError::Unroutable { .. } | PublishError::NoSuchExchange(_)
        )
    }
}

/// What the messaging storage (outbox, inbox, dead letters) can fail with.
#[derive(Debug, Error)]
pub enum MessagingError {
    #[error(transparent)]
    Storage(#[from] opsconductor_storage::StorageError),
    #[error(transparent)]
    Publish(#[from] PublishError),
    #[error("stored message {0} is corrupt: {1}")]
    Corrupt(String, String),
}

impl From<sqlx::Error> for MessagingError {
    fn from(err: sqlx::Error) -> Self {
        MessagingError::Storage(err.into())
    }
}

impl From<MessagingError> for opsconductor_platform::ApiError {
    fn from(err: MessagingError) -> Self {
        match err {
            MessagingError::Storage(e) => e.into(),
            MessagingError::Publish(e) if e.is_transient() => {
                opsconductor_platform::ApiError::Unavailable {
                    message: format!("message broker: {e}"),
                    retry_after: std::time::Duration::from_secs(1),
                }
            }
            other => opsconductor_platform::ApiError::internal(other),
        }
    }
}
