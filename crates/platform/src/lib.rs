//! Everything an OpsConductor service needs to be served and to call others, so that a service
//! crate holds only its domain: configuration from the environment, one error model mapped to
//! `tonic::Status` with rich details, caller policies read from the descriptor set, the server
//! bootstrap (health, reflection, tracing, load shedding, graceful shutdown) and typed clients.

pub mod auth;
pub mod client;
pub mod config;
pub mod error;
pub mod health;
pub mod layers;
pub mod methods;
pub mod page;
pub mod policy;
pub mod principal;
pub mod rate_limit;
pub mod server;
pub mod services;
pub mod telemetry;
pub mod time;
pub mod validate;

pub use error::{ApiError, ApiResult};
pub use services::ServiceKind;
