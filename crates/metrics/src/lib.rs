//! Prometheus metrics: one registry per service, the gRPC series every server and client
//! records, and the HTTP endpoint that serves them.
//!
//! Built on `prometheus-client` rather than the `metrics` facade: the facade records into one
//! global recorder per process, while `opsconductor up` runs every service in one process
//! (each with its own `/metrics`) and the test sandboxes run many platforms side by side. A
//! registry per service keeps each service's series its own without labels to tell them apart.

mod endpoint;
mod grpc;
mod registry;

pub use endpoint::{MetricsEndpoint, MetricsError};
pub use grpc::{
    code_name, GrpcMetrics, GrpcMetricsLayer, GrpcMetricsService, MeteredBody, MethodKinds, Side,
};
pub use registry::{CounterSet, Registry};
