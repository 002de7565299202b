//! The `opsconductor` binary's engine: which services exist, how each is started over its
//! storage, and the three ways to run them (`up`, `serve`, `healthcheck`).

pub mod registry;
pub mod run;
pub mod secrets;

pub use run::{healthcheck, serve, up, UpOptions};
