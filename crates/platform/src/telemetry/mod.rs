//! Logs and traces.
//!
//! Logs: `OPSCONDUCTOR_LOG` filters (RUST_LOG syntax), `OPSCONDUCTOR_LOG_FORMAT` picks `text`
//! (default) or `json`.
//!
//! Traces: off unless `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` or `OTEL_EXPORTER_OTLP_ENDPOINT`
//! names a collector; then spans at INFO and above go there over OTLP/gRPC, whatever the log
//! filter says, and W3C trace context flows over gRPC metadata and AMQP headers
//! ([`propagation`]). The other standard `OTEL_*` variables (service name, resource attributes,
//! sampler, batch sizes, headers, timeout) are read by the OpenTelemetry SDK itself.

mod otlp;
pub mod propagation;

use std::sync::atomic::{AtomicBool, Ordering};

use tracing::Level;
use tracing_subscriber::filter::{filter_fn, EnvFilter};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{Layer, Registry};

use crate::config::{ConfigError, Env};

pub use otlp::Tracing;

static TRACING: AtomicBool = AtomicBool::new(false);

/// Whether spans are exported: the platform adds trace attributes and client spans only then.
pub fn tracing_enabled() -> bool {
    TRACING.load(Ordering::Relaxed)
}

/// The name of the span a health or reflection call gets: probes arrive every few seconds
/// from every orchestrator and say nothing about the work, so they are logged but not traced.
pub const PROBE_SPAN: &str = "grpc.probe";

/// A gRPC path's names as spans carry them: the full method (the span's name, without the
/// leading slash), its service and its method.
pub(crate) fn rpc_names(path: &str) -> (&str, &str, &str) {
    let full = path.trim_start_matches('/');
    let (service, method) = full.split_once('/').unwrap_or((full, ""));
    (full, service, method)
}

/// Installs the global subscriber once: logs to stderr, and spans to an OTLP collector when
/// one is configured. `service_name` is the `service.name` of the spans unless
/// `OTEL_SERVICE_NAME` says otherwise. A later call (tests start many services in one process)
/// keeps the first subscriber and returns a handle with tracing off.
pub fn init(env: &Env, service_name: &str) -> Result<Tracing, ConfigError> {
    let filter = env
        .get("OPSCONDUCTOR_LOG")
        .unwrap_or_else(|| "info".to_string());
    // lapin logs a returned (unroutable) message with its whole body; bodies may carry
    // destinations or details no log should hold, and the publisher reports the failure itself.
    let quiet = if filter.contains("lapin::returned_messages") {
        filter.clone()
    } else {
        format!("{filter},lapin::returned_messages=off")
    };
    let filter = EnvFilter::try_new(&quiet)
        .map_err(|e| ConfigError::invalid("OPSCONDUCTOR_LOG", &filter, e))?;
    let format = env
        .get("OPSCONDUCTOR_LOG_FORMAT")
        .unwrap_or_else(|| "text".to_string());
    let logs: Box<dyn Layer<Registry> + Send + Sync> = match format.as_str() {
        "text" => tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            .boxed(),
        "json" => tracing_subscriber::fmt::layer()
            .json()
            .flatten_event(true)
            .with_writer(std::io::stderr)
            .boxed(),
        other => {
            return Err(ConfigError::invalid(
                "OPSCONDUCTOR_LOG_FORMAT",
                other,
                "must be text or json",
            ))
        }
    };
    let tracing = Tracing::from_env(env, service_name)?;
    let mut layers = vec![logs.with_filter(filter).boxed()];
    if let Some(spans) = tracing.layer() {
        layers.push(
            spans
                // The platform's own spans (libraries' spans, such as the broker client's
                // connection loop, would each be a trace of their own), and events at INFO
                // and above from anywhere inside them.
                .with_filter(filter_fn(|meta| {
                    *meta.level() <= Level::INFO
                        && (meta.is_event()
                            || (meta.target().starts_with("opsconductor")
                                && meta.name() != PROBE_SPAN))
                }))
                .boxed(),
        );
    }
    let installed = tracing_subscriber::registry().with(layers).try_init();
    match installed {
        Ok(()) => {
            TRACING.store(tracing.enabled(), Ordering::Relaxed);
            tracing.announce();
            Ok(tracing)
        }
        // Already installed: keep the first, and do not export from a provider nobody feeds.
        Err(_) => Ok(Tracing::off()),
    }
}
