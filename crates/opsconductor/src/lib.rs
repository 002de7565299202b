//! The `opsconductor` binary's engine: the ways to run the services of the catalog (`up`,
//! `serve`, `healthcheck`) and the deployment's secrets (`secrets init`).

pub mod run;
pub mod secrets;

pub use run::{healthcheck, serve, up, UpOptions};
