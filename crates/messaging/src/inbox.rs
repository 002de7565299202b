//! Deduplication for consumers: a message's id is recorded in the same transaction as the
//! handler's effect, so a redelivered message (a consumer died before its ack, a publisher
//! retried after a lost confirm) finds its id and has no second effect.

use std::time::Duration;

use opsconductor_platform::time::now_micros;
use opsconductor_storage::Database;
use sqlx::AnyConnection;

use crate::broker::Broker;
use crate::handler::HandleError;

/// The processed-message record of one consumer (several consumers may share a database).
#[derive(Clone)]
pub struct Inbox {
    consumer: String,
    broker: Option<Broker>,
}

impl Inbox {
    /// `consumer` names the handler whose effects the records stand for, e.g. "audit-writer".
    pub fn new(consumer: &str) -> Inbox {
        Inbox {
            consumer: consumer.to_string(),
            broker: None,
        }
    }

    /// Counts duplicates in `broker`'s metrics.
    pub fn counted_by(mut self, broker: &Broker) -> Inbox {
        self.broker = Some(broker.clone());
        self
    }

    /// Records `message_id` inside the handler's transaction. `Ok(true)`: first time — do the
    /// effect and commit. `Ok(false)`: done before — skip the effect and return `Ok` so the
    /// delivery is acknowledged. A concurrent duplicate waits for the first transaction.
    pub async fn record(
        &self,
        connection: &mut AnyConnection,
        message_id: &str,
    ) -> Result<bool, HandleError> {
        if message_id.is_empty() {
            return Err(HandleError::reject(
                "the message has no message_id to deduplicate on",
            ));
        }
        let inserted = sqlx::query(
            "INSERT INTO messaging_inbox (consumer, message_id, process_time) \
             VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
        )
        .bind(&self.consumer)
        .bind(message_id)
        .bind(now_micros())
        .execute(connection)
        .await?;
        let first = inserted.rows_affected() == 1;
        if !first {
            tracing::debug!(consumer = %self.consumer, message_id, "duplicate delivery skipped");
            if let Some(broker) = &self.broker {
                broker.counters().duplicate();
            }
        }
        Ok(first)
    }

    /// Forgets records older than `age`; redeliveries come within minutes, so days is plenty.
    pub async fn prune(&self, db: &Database, age: Duration) -> Result<u64, sqlx::Error> {
        let cutoff = now_micros() - age.as_micros().min(i64::MAX as u128) as i64;
        let done =
            sqlx::query("DELETE FROM messaging_inbox WHERE consumer = $1 AND process_time < $2")
                .bind(&self.consumer)
                .bind(cutoff)
                .execute(db.pool())
                .await?;
        Ok(done.rows_affected())
    }
}
