//! W3C trace context across process boundaries: gRPC metadata (client → server) and message
//! headers (publisher → consumer). Without a collector configured the propagator is a no-op,
//! spans carry no OpenTelemetry context, and every function here does nothing.

use opentelemetry::propagation::{Extractor, Injector};
use opentelemetry::trace::{SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState};
use tracing::Span;
use tracing_opentelemetry::OpenTelemetrySpanExt;

const TRACEPARENT: &str = "traceparent";
const TRACESTATE: &str = "tracestate";

/// Writes `span`'s context into outgoing request headers.
pub fn inject(span: &Span, headers: &mut http::HeaderMap) {
    let context = span.context();
    opentelemetry::global::get_text_map_propagator(|propagator| {
        propagator.inject_context(&context, &mut HeaderInjector(headers))
    });
}

/// Marks a call as not sampled (W3C `traceparent` flags 00), so the server does not start a
/// trace for it either: for calls made outside any traced work. Nothing when traces are off.
pub fn inject_unsampled(headers: &mut http::HeaderMap) {
    if !super::tracing_enabled() {
        return;
    }
    let unsampled = SpanContext::new(
        TraceId::from(rand::random::<u128>().max(1)),
        SpanId::from(rand::random::<u64>().max(1)),
        TraceFlags::default(),
        true,
        TraceState::default(),
    );
    let context = opentelemetry::Context::new().with_remote_span_context(unsampled);
    opentelemetry::global::get_text_map_propagator(|propagator| {
        propagator.inject_context(&context, &mut HeaderInjector(headers))
    });
}

/// Makes `span` a child of the caller's span named in incoming request headers, if any.
pub fn adopt(span: &Span, headers: &http::HeaderMap) {
    if !headers.contains_key(TRACEPARENT) {
        return;
    }
    let parent = opentelemetry::global::get_text_map_propagator(|propagator| {
        propagator.extract(&HeaderExtractor(headers))
    });
    // Refused only when the span is disabled: then there is nothing to link.
    let _ = span.set_parent(parent);
}

/// The current span's `traceparent` and `tracestate`, for a message it publishes.
pub fn current() -> Option<(String, Option<String>)> {
    // Asked for every message built: nothing to look up when traces are off.
    if !super::tracing_enabled() {
        return None;
    }
    let context = Span::current().context();
    let mut fields = Fields::default();
    opentelemetry::global::get_text_map_propagator(|propagator| {
        propagator.inject_context(&context, &mut fields)
    });
    fields.traceparent.map(|tp| (tp, fields.tracestate))
}

/// Makes `span` a child of the span that published a message (its trace headers).
pub fn adopt_message(span: &Span, traceparent: &str, tracestate: Option<&str>) {
    let fields = Fields {
        traceparent: Some(traceparent.to_string()),
        tracestate: tracestate.map(str::to_string),
    };
    let parent =
        opentelemetry::global::get_text_map_propagator(|propagator| propagator.extract(&fields));
    let _ = span.set_parent(parent);
}

struct HeaderInjector<'a>(&'a mut http::HeaderMap);

impl Injector for HeaderInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(name), Ok(value)) = (
            http::HeaderName::from_bytes(key.as_bytes()),
            http::HeaderValue::from_str(&value),
        ) {
            self.0.insert(name, value);
        }
    }
}

struct HeaderExtractor<'a>(&'a http::HeaderMap);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(http::HeaderName::as_str).collect()
    }
}

/// The two W3C fields, for message headers.
#[derive(Default)]
struct Fields {
    traceparent: Option<String>,
    tracestate: Option<String>,
}

impl Injector for Fields {
    fn set(&mut self, key: &str, value: String) {
        match key {
            TRACEPARENT => self.traceparent = Some(value),
            TRACESTATE if !value.is_empty() => self.tracestate = Some(value),
            _ => {}
        }
    }
}

impl Extractor for Fields {
    fn get(&self, key: &str) -> Option<&str> {
        match key {
            TRACEPARENT => self.traceparent.as_deref(),
            TRACESTATE => self.tracestate.as_deref(),
            _ => None,
        }
    }

    fn keys(&self) -> Vec<&str> {
        vec![TRACEPARENT, TRACESTATE]
    }
}
