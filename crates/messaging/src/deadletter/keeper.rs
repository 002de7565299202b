//! Drains a dead-letter queue into the store. A dead letter arrives either from a consumer
//! (our headers say why and after how many attempts) or from the broker itself when consumers
//! kept failing to acknowledge it (`x-death` says so); both become one row.

use std::str::FromStr;

use futures::future::{BoxFuture, FutureExt};
use lapin::types::{AMQPValue, FieldTable};
use opsconductor_platform::time::now_micros;

use super::store::{DeadLetterRow, DeadLetterStore};
use crate::handler::{Dispatch, Outcome, RawMessage};
use crate::message::{as_u64, headers, value_text};

pub(crate) struct Keeper {
    pub store: DeadLetterStore,
    /// The dead-letter queue drained.
    pub queue: String,
    /// Its work queue: where a replay sends a dead letter that names no other.
    pub work_queue: String,
}

impl Dispatch for Keeper {
    fn dispatch(&self, message: &RawMessage) -> BoxFuture<'static, Outcome> {
        let row = self.row(message);
        let store = self.store.clone();
        async move {
            match store.insert(&row).await {
                Ok(()) => {
                    tracing::info!(dead_letter_id = %row.id, queue = %row.queue, "dead letter stored");
                    Outcome::Done
                }
                Err(error) => Outcome::Requeue(error.to_string()),
            }
        }
        .boxed()
    }
}

/// The most recent `x-death` entry RabbitMQ added.
#[derive(Default)]
struct Death {
    queue: Option<String>,
    exchange: Option<String>,
    routing_key: Option<String>,
    reason: Option<String>,
    count: Option<u64>,
    time: Option<u64>,
}

fn last_death(table: Option<&FieldTable>) -> Death {
    let Some(AMQPValue::FieldArray(deaths)) = table.and_then(|t| t.inner().get(headers::X_DEATH))
    else {
        return Death::default();
    };
    let Some(AMQPValue::FieldTable(entry)) = deaths.as_slice().first() else {
        return Death::default();
    };
    let text = |key: &str| entry.inner().get(key).map(value_text);
    let routing_key = match entry.inner().get("routing-keys") {
        Some(AMQPValue::FieldArray(keys)) => keys.as_slice().first().map(value_text),
        _ => None,
    };
    Death {
        queue: text("queue"),
        exchange: text("exchange"),
        routing_key,
        reason: text("reason"),
        count: entry.inner().get("count").and_then(as_u64),
        time: entry.inner().get("time").and_then(as_u64),
    }
}

fn micros(rfc3339: Option<&String>) -> Option<i64> {
    let ts = prost_types::Timestamp::from_str(rfc3339?).ok()?;
    Some(ts.seconds * 1_000_000 + i64::from(ts.nanos) / 1_000)
}

impl Keeper {
    fn row(&self, message: &RawMessage) -> DeadLetterRow {
        let meta = &message.meta;
        let h = &meta.headers;
        let death = last_death(message.properties.headers().as_ref());
        let now = now_micros();
        let id = h
            .get(headers::DEAD_LETTER_ID)
            .filter(|id| uuid::Uuid::try_parse(id).is_ok())
            .cloned()
            .unwrap_or_else(|| uuid::Uuid::now_v7().to_string());
        let (attempts, last_error) = match h.get(headers::LAST_ERROR) {
            Some(error) => (i64::from(meta.attempt), error.clone()),
            None => {
                let count = death.count.unwrap_or(1);
                let reason = death.reason.as_deref().unwrap_or("unknown");
                let error = if reason == "delivery_limit" {
                    format!(
                        "dead-lettered by the broker: delivered {count} times without an \
                         acknowledgement (its consumer crashed or timed out each time)"
                    )
                } else {
                    format!("dead-lettered by the broker ({reason})")
                };
                (count.min(i64::MAX as u64) as i64, error)
            }
        };
        let death_time = death
            .time
            .map(|t| (t.min(i64::MAX as u64 / 1_000_000) as i64) * 1_000_000);
        DeadLetterRow {
            message_id: if meta.message_id.is_empty() {
                id.clone()
            } else {
                meta.message_id.clone()
            },
            id,
            queue: self.queue.clone(),
            original_queue: h
                .get(headers::ORIGINAL_QUEUE)
                .cloned()
                .or(death.queue)
                .unwrap_or_else(|| self.work_queue.clone()),
            exchange: h
                .get(headers::ORIGINAL_EXCHANGE)
                .cloned()
                .or(death.exchange)
                .unwrap_or_else(|| meta.exchange.clone()),
            routing_key: h
                .get(headers::ORIGINAL_ROUTING_KEY)
                .cloned()
                .or(death.routing_key)
                .unwrap_or_else(|| meta.routing_key.clone()),
            message_type: meta.message_type.clone(),
            correlation_id: meta.correlation_id.clone().unwrap_or_default(),
            attempts,
            last_error,
            first_death_time: micros(h.get(headers::FIRST_FAILURE_TIME))
                .or(death_time)
                .unwrap_or(now),
            last_death_time: micros(h.get(headers::DEAD_LETTER_TIME))
                .or(death_time)
                .unwrap_or(now),
            headers: serde_json::to_string(h).unwrap_or_else(|_| "{}".to_string()),
            body: message.body.clone(),
        }
    }
}
