//! What every OpsConductor service runs with besides its own domain, assembled once: settings
//! read from the environment, the service's identity and the token source that speaks for it,
//! the clients it calls other services with, the verifier behind the token checks in front of
//! it, the listener that applies signed token revocations as the auth service broadcasts them,
//! and the [`ServiceModule`] trait through which the binary and the test sandbox start any
//! service from one table.
//!
//! A service crate implements [`ServiceModule`]: it builds its store and API, then hands them
//! to [`ServiceContext::serve`].

mod context;
mod error;
mod module;
mod revocations;

pub use context::ServiceContext;
#[doc(hidden)]
pub use error::__private;
pub use error::{Infra, StartError};
pub use module::{broker_use, Built, SecretKind, SecretSpec, ServiceModule};
pub use revocations::RevocationSource;
