//! The errors every service shares: why it could not start, and the failures below its domain
//! (its database, its outbox) with their one mapping to a gRPC status.

use opsconductor_messaging::MessagingError;
use opsconductor_platform::config::ConfigError;
use opsconductor_platform::policy::PolicyError;
use opsconductor_platform::ApiError;
use opsconductor_storage::StorageError;

/// Why a service could not be built.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error(transparent)]
    Policy(#[from] PolicyError),
    /// The service's own start-up step failed (e.g. creating the administrator).
    #[error("{0}")]
    Service(String),
}

/// A failure below a service's domain: its database or its outbox. Never the caller's doing:
/// an unreachable database is worth retrying (`UNAVAILABLE`), anything else is internal.
#[derive(Debug, thiserror::Error)]
pub enum Infra {
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error(transparent)]
    Messaging(#[from] MessagingError),
}

impl From<opsconductor_storage::sqlx::Error> for Infra {
    fn from(err: opsconductor_storage::sqlx::Error) -> Self {
        Infra::Storage(err.into())
    }
}

impl From<Infra> for ApiError {
    fn from(err: Infra) -> ApiError {
        match err {
            Infra::Storage(e) => e.into(),
            Infra::Messaging(e) => e.into(),
        }
    }
}

/// What the [`service_error!`] macro names; not for direct use.
#[doc(hidden)]
pub mod __private {
    pub use opsconductor_messaging::MessagingError;
    pub use opsconductor_platform::ApiError;
    pub use opsconductor_storage::{sqlx, StorageError};
    pub use tonic::Status;
}

/// The conversions every service error enum needs, given that it has the shared variants
/// `Api(#[from] ApiError)` (bad input and other errors already in API terms) and
/// `Infra(#[from] Infra)`, and a `From<$error> for ApiError` with its domain's mapping:
/// `?` then works on sqlx, storage and messaging results, and handlers return
/// `tonic::Status` through the one mapping in `opsconductor_platform::error`.
#[macro_export]
macro_rules! service_error {
    ($error:ident) => {
        impl From<$crate::__private::sqlx::Error> for $error {
            fn from(err: $crate::__private::sqlx::Error) -> Self {
                $error::Infra(err.into())
            }
        }

        impl From<$crate::__private::StorageError> for $error {
            fn from(err: $crate::__private::StorageError) -> Self {
                $error::Infra(err.into())
            }
        }

        impl From<$crate::__private::MessagingError> for $error {
            fn from(err: $crate::__private::MessagingError) -> Self {
                $error::Infra(err.into())
            }
        }

        impl From<$error> for $crate::__private::Status {
            fn from(err: $error) -> $crate::__private::Status {
                $crate::__private::ApiError::from(err).into()
            }
        }
    };
}
