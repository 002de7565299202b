//! The integration suite: one test binary, one module per area. Every test talks to real
//! components — servers on loopback sockets, SQLite files, PostgreSQL at 127.0.0.1:5432, the
//! real grpcurl and a Python gRPC client — and isolates itself (own ports, own database).

mod attacks;
mod audit;
mod audit_events;
mod auth;
mod authz;
pub(crate) mod binary;
mod broker_accounts;
mod contracts;
mod credentials;
mod grpcurl;
mod health;
mod jobs;
mod metrics;
mod notification;
mod python;
mod resilience;
mod scheduler;
mod serving;
mod support;
mod targets;
mod traces;
mod user;
