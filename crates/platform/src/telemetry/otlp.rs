//! Exporting spans to an OTLP collector over gRPC.

use std::sync::Arc;
use std::time::Duration;

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::{WithExportConfig, OTEL_EXPORTER_OTLP_ENDPOINT};
use opentelemetry_sdk::error::{OTelSdkError, OTelSdkResult};
use opentelemetry_sdk::trace::{SdkTracerProvider, SpanData, SpanExporter};
use opentelemetry_sdk::Resource;
use tracing_subscriber::Registry;

use crate::config::{ConfigError, Env};

const TRACES_ENDPOINT: &str = "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT";

/// The process's trace export, if any. Keep it until the services stopped, then
/// [`Tracing::shutdown`] sends what is still buffered.
pub struct Tracing {
    provider: Option<SdkTracerProvider>,
    endpoint: String,
}

impl Tracing {
    pub fn off() -> Tracing {
        Tracing {
            provider: None,
            endpoint: String::new(),
        }
    }

    /// On when an endpoint is set (and `OTEL_SDK_DISABLED` is not `true`). Must run inside
    /// the Tokio runtime: the exporter's channel lives there.
    pub fn from_env(env: &Env, service_name: &str) -> Result<Tracing, ConfigError> {
        let set = |var: &str| env.get(var).filter(|v| !v.trim().is_empty());
        let Some((var, endpoint)) = set(TRACES_ENDPOINT)
            .map(|e| (TRACES_ENDPOINT, e))
            .or_else(|| set(OTEL_EXPORTER_OTLP_ENDPOINT).map(|e| (OTEL_EXPORTER_OTLP_ENDPOINT, e)))
        else {
            return Ok(Tracing::off());
        };
        if set("OTEL_SDK_DISABLED").is_some_and(|v| v.eq_ignore_ascii_case("true")) {
            return Ok(Tracing::off());
        }
        // This build has no TLS on the gRPC side: a collector agent beside the service (or a
        // sidecar) takes plain OTLP and forwards it over TLS.
        let uri: http::Uri = endpoint
            .parse()
            .map_err(|e| ConfigError::invalid(var, &endpoint, e))?;
        if uri.scheme_str() != Some("http") || uri.host().is_none() {
            return Err(ConfigError::invalid(
                var,
                &endpoint,
                "must be an http:// address of an OTLP/gRPC collector (TLS is not built in: \
                 run a collector agent beside the service)",
            ));
        }
        let runtime = tokio::runtime::Handle::try_current()
            .map_err(|e| ConfigError::invalid(var, &endpoint, e))?;
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .with_endpoint(endpoint.clone())
            .build()
            .map_err(|e| ConfigError::invalid(var, &endpoint, e))?;
        let mut resource = Resource::builder();
        if set("OTEL_SERVICE_NAME").is_none() {
            resource = resource.with_service_name(service_name.to_string());
        }
        let resource = resource
            .with_attribute(opentelemetry::KeyValue::new(
                "service.version",
                env!("CARGO_PKG_VERSION"),
            ))
            .build();
        let provider = SdkTracerProvider::builder()
            .with_batch_exporter(OnRuntime {
                inner: Arc::new(exporter),
                runtime,
            })
            .with_resource(resource)
            .build();
        // For the log line: no user info, no path.
        let shown = match uri.port_u16() {
            Some(port) => format!("http://{}:{port}", uri.host().unwrap_or_default()),
            None => format!("http://{}", uri.host().unwrap_or_default()),
        };
        Ok(Tracing {
            provider: Some(provider),
            endpoint: shown,
        })
    }

    pub fn enabled(&self) -> bool {
        self.provider.is_some()
    }

    pub(super) fn layer(
        &self,
    ) -> Option<tracing_opentelemetry::OpenTelemetryLayer<Registry, opentelemetry_sdk::trace::Tracer>>
    {
        self.provider.as_ref().map(|provider| {
            tracing_opentelemetry::layer()
                .with_tracer(provider.tracer("opsconductor"))
                .with_location(false)
                .with_threads(false)
                .with_tracked_inactivity(false)
        })
    }

    /// Once the subscriber is installed: W3C trace context in and out, and a line saying so.
    pub(super) fn announce(&self) {
        if self.provider.is_some() {
            opentelemetry::global::set_text_map_propagator(
                opentelemetry_sdk::propagation::TraceContextPropagator::new(),
            );
            tracing::info!(endpoint = %self.endpoint, "exporting traces over OTLP/gRPC");
        }
    }

    /// Sends the spans still buffered (within a few seconds) and stops exporting.
    pub async fn shutdown(self) {
        let Some(provider) = self.provider else {
            return;
        };
        // The batch processor's thread hands each export to this runtime and waits: block a
        // thread of the blocking pool for it, never a worker.
        let done = tokio::task::spawn_blocking(move || {
            provider.shutdown_with_timeout(Duration::from_secs(5))
        })
        .await;
        if let Ok(Err(error)) = done {
            tracing::warn!(%error, "traces could not all be sent at shutdown");
        }
    }
}

/// The SDK's batch processor exports from a thread of its own, where tonic finds no reactor:
/// each export runs on the service's runtime instead.
#[derive(Debug)]
struct OnRuntime<E> {
    inner: Arc<E>,
    runtime: tokio::runtime::Handle,
}

impl<E: SpanExporter + 'static> SpanExporter for OnRuntime<E> {
    fn export(
        &self,
        batch: Vec<SpanData>,
    ) -> impl std::future::Future<Output = OTelSdkResult> + Send {
        let inner = self.inner.clone();
        let task = self.runtime.spawn(async move { inner.export(batch).await });
        async move {
            task.await
                .unwrap_or_else(|e| Err(OTelSdkError::InternalFailure(e.to_string())))
        }
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn set_resource(&mut self, resource: &Resource) {
        // Called while building the provider, before the exporter is shared.
        if let Some(inner) = Arc::get_mut(&mut self.inner) {
            inner.set_resource(resource);
        }
    }
}
