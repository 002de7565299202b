//! What travels: a protobuf body with its properties (message id, type, correlation id,
//! timestamp, producing service) and headers (W3C trace context, attempt count, and on the way
//! to a dead-letter queue, why it failed).

use std::collections::BTreeMap;

use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::BasicProperties;

/// Protobuf bodies, binary encoding.
pub const CONTENT_TYPE: &str = "application/protobuf";

/// Header names. Values are strings except `x-attempt`, a number.
pub mod headers {
    /// W3C trace context.
    pub const TRACEPARENT: &str = "traceparent";
    pub const TRACESTATE: &str = "tracestate";
    /// 1 for the first attempt; raised on each retry, reset by a replay.
    pub const ATTEMPT: &str = "x-attempt";
    /// The error of the last failed attempt.
    pub const LAST_ERROR: &str = "x-last-error";
    /// When the first attempt failed (RFC 3339).
    pub const FIRST_FAILURE_TIME: &str = "x-first-failure-time";
    /// Where the message was first published, kept across retries for replays.
    pub const ORIGINAL_EXCHANGE: &str = "x-original-exchange";
    pub const ORIGINAL_ROUTING_KEY: &str = "x-original-routing-key";
    /// The queue it failed in: where a replay sends it.
    pub const ORIGINAL_QUEUE: &str = "x-original-queue";
    /// Assigned when the message is dead-lettered; the dead letter's id.
    pub const DEAD_LETTER_ID: &str = "x-dead-letter-id";
    /// When it was dead-lettered (RFC 3339).
    pub const DEAD_LETTER_TIME: &str = "x-dead-letter-time";
    /// Added by RabbitMQ when it dead-letters a message itself (TTL, delivery limit).
    pub const X_DEATH: &str = "x-death";
    /// A detached Ed25519 signature of the message (type and body) by its authority, and the
    /// id of the key that made it (a key of the auth service's JWKS).
    pub const SIGNATURE: &str = "x-signature";
    pub const SIGNATURE_KID: &str = "x-signature-kid";
    /// The producing service's certificate and its signature of the message
    /// (`<signed at>.<signature>`), see [`crate::ProducerTrust`].
    pub const PRODUCER_CERTIFICATE: &str = "x-producer-certificate";
    pub const PRODUCER_SIGNATURE: &str = "x-producer-signature";
    /// On a dead letter: the broker account that published the original.
    pub const ORIGINAL_USER_ID: &str = "x-original-user-id";
}

/// A W3C `traceparent` (and optional `tracestate`), carried from a request to the messages it
/// causes and from a message to the work it causes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceContext {
    pub traceparent: String,
    pub tracestate: Option<String>,
}

impl TraceContext {
    /// A new trace: random trace id and span id, sampled.
    pub fn new_root() -> TraceContext {
        let trace: u128 = rand::random::<u128>().max(1);
        let span: u64 = rand::random::<u64>().max(1);
        TraceContext {
            traceparent: format!("00-{trace:032x}-{span:016x}-01"),
            tracestate: None,
        }
    }

    /// The current span's context, when traces are exported: a message published while
    /// serving a call (or handling a message) continues its trace.
    pub fn current() -> Option<TraceContext> {
        let (traceparent, tracestate) = opsconductor_platform::telemetry::propagation::current()?;
        TraceContext::parse(&traceparent, tracestate.as_deref())
    }

    /// Parses a `traceparent` value; malformed ones are ignored rather than propagated.
    pub fn parse(traceparent: &str, tracestate: Option<&str>) -> Option<TraceContext> {
        let parts: Vec<&str> = traceparent.trim().split('-').collect();
        let hex = |s: &str, len: usize| s.len() == len && s.chars().all(|c| c.is_ascii_hexdigit());
        let valid = parts.len() == 4
            && hex(parts[0], 2)
            && parts[0] != "ff"
            && hex(parts[1], 32)
            && parts[1] != "0".repeat(32)
            && hex(parts[2], 16)
            && parts[2] != "0".repeat(16)
            && hex(parts[3], 2);
        valid.then(|| TraceContext {
            traceparent: traceparent.trim().to_ascii_lowercase(),
            tracestate: tracestate
                .filter(|s| !s.is_empty() && s.len() <= 512)
                .map(str::to_string),
        })
    }

    /// The trace id, for log fields.
    pub fn trace_id(&self) -> &str {
        self.traceparent.split('-').nth(1).unwrap_or_default()
    }

    /// The same trace, a new span: what a message carries on from the one that caused it.
    pub fn child(&self) -> TraceContext {
        let span: u64 = rand::random::<u64>().max(1);
        let mut parts: Vec<String> = self.traceparent.split('-').map(str::to_string).collect();
        if parts.len() == 4 {
            parts[2] = format!("{span:016x}");
        }
        TraceContext {
            traceparent: parts.join("-"),
            tracestate: self.tracestate.clone(),
        }
    }
}

/// A message to publish: where, what, and the properties that travel with it.
#[derive(Debug, Clone, PartialEq)]
pub struct OutgoingMessage {
    /// The broker name of the exchange ("" is the default exchange, which routes by queue name).
    pub exchange: String,
    pub routing_key: String,
    /// The full protobuf name of the body, e.g. "opsconductor.audit.v1.AuditEvent".
    pub message_type: String,
    /// A UUIDv7: consumers deduplicate on it.
    pub message_id: String,
    pub correlation_id: Option<String>,
    pub body: Vec<u8>,
    /// Unix seconds.
    pub timestamp: u64,
    pub trace: Option<TraceContext>,
    pub attempt: u32,
    /// Further string headers (failure details, original route).
    pub headers: BTreeMap<String, String>,
    /// An unroutable message is an error (the default). Only broadcasts that nobody may be
    /// listening to, and whose listeners catch up another way, turn this off.
    pub mandatory: bool,
}

impl OutgoingMessage {
    /// `message` encoded, with a new message id, attempt 1, the current time and the current
    /// span's trace context.
    pub fn new<M: prost::Message + prost::Name>(
        exchange: impl Into<String>,
        routing_key: impl Into<String>,
        message: &M,
    ) -> OutgoingMessage {
        OutgoingMessage {
            exchange: exchange.into(),
            routing_key: routing_key.into(),
            message_type: M::full_name(),
            message_id: uuid::Uuid::now_v7().to_string(),
            correlation_id: None,
            body: message.encode_to_vec(),
            timestamp: opsconductor_platform::time::now_secs(),
            trace: TraceContext::current(),
            attempt: 1,
            headers: BTreeMap::new(),
            mandatory: true,
        }
    }

    /// A broadcast that may have no listener right now: dropped rather than refused then.
    pub fn broadcast(mut self) -> Self {
        self.mandatory = false;
        self
    }

    pub fn with_correlation_id(mut self, id: impl Into<String>) -> Self {
        let id = id.into();
        self.correlation_id = (!id.is_empty()).then_some(id);
        self
    }

    pub fn with_trace(mut self, trace: TraceContext) -> Self {
        self.trace = Some(trace);
        self
    }

    /// AMQP properties and headers. `app_id` is the producing service, `user_id` the broker
    /// account it publishes as (RabbitMQ refuses a `user_id` that is not the connection's, so
    /// consumers can trust it).
    pub(crate) fn properties(
        &self,
        app_id: &str,
        user_id: &str,
        signature: Option<[(&str, String); 2]>,
    ) -> BasicProperties {
        let mut table = FieldTable::default();
        for (key, value) in &self.headers {
            if let Ok(key) = ShortString::try_new(key.as_str()) {
                table.insert(key, long_string(value));
            }
        }
        for (key, value) in signature.iter().flatten() {
            table.insert((*key).into(), long_string(value));
        }
        table.insert(
            headers::ATTEMPT.into(),
            AMQPValue::LongLongInt(i64::from(self.attempt)),
        );
        if let Some(trace) = &self.trace {
            table.insert(headers::TRACEPARENT.into(), long_string(&trace.traceparent));
            if let Some(state) = &trace.tracestate {
                table.insert(headers::TRACESTATE.into(), long_string(state));
            }
        }
        let mut properties = BasicProperties::default()
            .with_delivery_mode(2)
            .with_content_type(CONTENT_TYPE.into())
            .with_message_id(short(&self.message_id))
            .with_type(short(&self.message_type))
            .with_timestamp(self.timestamp)
            .with_app_id(short(app_id))
            .with_headers(table);
        if let Some(id) = &self.correlation_id {
            properties = properties.with_correlation_id(short(id));
        }
        if !user_id.is_empty() {
            properties = properties.with_user_id(short(user_id));
        }
        properties
    }
}

/// What a consumer learns about a delivery besides its body.
#[derive(Debug, Clone, PartialEq)]
pub struct MessageMeta {
    pub message_id: String,
    pub message_type: String,
    pub correlation_id: Option<String>,
    /// 1 for the first attempt.
    pub attempt: u32,
    /// The broker delivered it before (a consumer died or a channel closed before the ack).
    pub redelivered: bool,
    pub exchange: String,
    pub routing_key: String,
    /// The producing service, as it says.
    pub app_id: Option<String>,
    /// The broker account that published it, as RabbitMQ validated it.
    pub user_id: Option<String>,
    /// The service that published it, as its signature proved (consumers of a broker with
    /// [`crate::ProducerTrust`]); `None` where nothing was checked.
    pub producer: Option<String>,
    pub timestamp: Option<u64>,
    pub trace: Option<TraceContext>,
    /// Every header, as text (`x-death` summarized).
    pub headers: BTreeMap<String, String>,
}

impl MessageMeta {
    pub(crate) fn from_delivery(
        exchange: &str,
        routing_key: &str,
        redelivered: bool,
        properties: &BasicProperties,
    ) -> MessageMeta {
        let headers = properties
            .headers()
            .as_ref()
            .map(header_strings)
            .unwrap_or_default();
        let attempt = properties
            .headers()
            .as_ref()
            .and_then(|h| h.inner().get(headers::ATTEMPT))
            .and_then(as_u64)
            .map(|n| n.clamp(1, u64::from(u32::MAX)) as u32)
            .unwrap_or(1);
        let trace = headers.get(headers::TRACEPARENT).and_then(|tp| {
            TraceContext::parse(tp, headers.get(headers::TRACESTATE).map(|s| s.as_str()))
        });
        MessageMeta {
            message_id: properties
                .message_id()
                .as_ref()
                .map(|s| s.to_string())
                .unwrap_or_default(),
            message_type: properties
                .kind()
                .as_ref()
                .map(|s| s.to_string())
                .unwrap_or_default(),
            correlation_id: properties.correlation_id().as_ref().map(|s| s.to_string()),
            attempt,
            redelivered,
            exchange: exchange.to_string(),
            routing_key: routing_key.to_string(),
            app_id: properties.app_id().as_ref().map(|s| s.to_string()),
            user_id: properties.user_id().as_ref().map(|s| s.to_string()),
            producer: None,
            timestamp: *properties.timestamp(),
            trace,
            headers,
        }
    }
}

/// Headers as text; nested values are rendered compactly.
pub(crate) fn header_strings(table: &FieldTable) -> BTreeMap<String, String> {
    table
        .inner()
        .iter()
        .map(|(k, v)| (k.to_string(), value_text(v)))
        .collect()
}

pub(crate) fn value_text(value: &AMQPValue) -> String {
    match value {
        AMQPValue::LongString(s) => String::from_utf8_lossy(s.as_bytes()).into_owned(),
        AMQPValue::ShortString(s) => s.to_string(),
        AMQPValue::Boolean(b) => b.to_string(),
        AMQPValue::Timestamp(t) => t.to_string(),
        AMQPValue::FieldArray(items) => format!(
            "[{}]",
            items
                .as_slice()
                .iter()
                .map(value_text)
                .collect::<Vec<_>>()
                .join(", ")
        ),
        AMQPValue::FieldTable(table) => format!(
            "{{{}}}",
            table
                .inner()
                .iter()
                .map(|(k, v)| format!("{k}: {}", value_text(v)))
                .collect::<Vec<_>>()
                .join(", ")
        ),
        AMQPValue::ByteArray(bytes) => format!("<{} bytes>", bytes.as_slice().len()),
        AMQPValue::Void => String::new(),
        other => as_u64(other)
            .map(|n| n.to_string())
            .unwrap_or_else(|| format!("{other:?}")),
    }
}

pub(crate) fn as_u64(value: &AMQPValue) -> Option<u64> {
    match value {
        AMQPValue::ShortShortUInt(n) => Some(u64::from(*n)),
        AMQPValue::ShortUInt(n) => Some(u64::from(*n)),
        AMQPValue::LongUInt(n) => Some(u64::from(*n)),
        AMQPValue::Timestamp(n) => Some(*n),
        AMQPValue::ShortShortInt(n) => u64::try_from(*n).ok(),
        AMQPValue::ShortInt(n) => u64::try_from(*n).ok(),
        AMQPValue::LongInt(n) => u64::try_from(*n).ok(),
        AMQPValue::LongLongInt(n) => u64::try_from(*n).ok(),
        AMQPValue::LongString(s) => std::str::from_utf8(s.as_bytes()).ok()?.parse().ok(),
        _ => None,
    }
}

pub(crate) fn long_string(value: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(value.as_bytes().to_vec()))
}

/// A short string property, cut at 255 bytes (on a character boundary) instead of panicking.
pub(crate) fn short(value: &str) -> ShortString {
    let mut end = value.len().min(255);
    while !value.is_char_boundary(end) {
        end -= 1;
    }
    ShortString::try_new(&value[..end]).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trace_context_round_trips_and_rejects_garbage() {
        let root = TraceContext::new_root();
        let parsed = TraceContext::parse(&root.traceparent, None).unwrap();
        assert_eq!(parsed, root);
        let child = root.child();
        assert_eq!(child.trace_id(), root.trace_id());
        assert_ne!(child.traceparent, root.traceparent);
        for bad in [
            "",
            "00-abc-def-01",
            "ff-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            "00-00000000000000000000000000000000-b7ad6b7169203331-01",
        ] {
            assert!(TraceContext::parse(bad, None).is_none(), "{bad}");
        }
    }

    #[test]
    fn long_values_are_cut_not_panicking() {
        let long = "é".repeat(300);
        assert!(short(&long).as_str().len() <= 255);
    }
}
