//! The transactional outbox: a service writes the messages a change causes in the same
//! transaction as the change, so either both happen or neither does — no lost message when the
//! broker is down, no phantom message when the transaction rolls back. A relay publishes what
//! was committed, in commit order, with confirms, and deletes each row once the broker holds it.
//!
//! A crash between publish and delete publishes that row again after restart: consumers
//! deduplicate by message id. With several replicas over one database, an expiring lease in
//! the database lets one relay publish at a time, which also keeps per-aggregate order.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use opsconductor_platform::time::now_micros;
use opsconductor_storage::Database;
use sqlx::{Any, AnyConnection, Transaction};
use tokio::sync::{watch, Notify};
use tokio::task::JoinHandle;

use crate::broker::Broker;
use crate::error::MessagingError;
use crate::message::{OutgoingMessage, TraceContext};

/// The outbox of one service's database.
#[derive(Clone)]
pub struct Outbox {
    db: Database,
    wake: Arc<Notify>,
}

/// How the relay works.
#[derive(Debug, Clone)]
pub struct RelayOptions {
    /// Rows published per round, pipelined.
    pub batch: usize,
    /// How often the relay looks without being woken (commits through [`Outbox::commit`] wake
    /// it at once; other replicas' commits are seen at the next poll).
    pub poll_interval: Duration,
    /// How long a relay's claim to publish lasts without renewal.
    pub lease: Duration,
}

impl Default for RelayOptions {
    fn default() -> Self {
        RelayOptions {
            batch: 500,
            poll_interval: Duration::from_millis(500),
            lease: Duration::from_secs(15),
        }
    }
}

#[derive(sqlx::FromRow)]
struct Row {
    seq: i64,
    message_id: String,
    exchange: String,
    routing_key: String,
    message_type: String,
    correlation_id: Option<String>,
    traceparent: Option<String>,
    tracestate: Option<String>,
    headers: String,
    body: Vec<u8>,
    create_time: i64,
    attempts: i64,
    mandatory: i64,
}

impl Outbox {
    pub fn new(db: Database) -> Outbox {
        Outbox {
            db,
            wake: Arc::new(Notify::new()),
        }
    }

    /// Writes `message` inside the caller's transaction; it is published once that commits.
    pub async fn stage(
        &self,
        connection: &mut AnyConnection,
        message: &OutgoingMessage,
    ) -> Result<(), MessagingError> {
        let headers = serde_json::to_string(&message.headers)
            .map_err(|e| MessagingError::Corrupt(message.message_id.clone(), e.to_string()))?;
        sqlx::query(
            "INSERT INTO messaging_outbox (message_id, exchange, routing_key, message_type, \
             correlation_id, traceparent, tracestate, headers, body, create_time, mandatory) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
        )
        .bind(&message.message_id)
        .bind(&message.exchange)
        .bind(&message.routing_key)
        .bind(&message.message_type)
        .bind(message.correlation_id.clone())
        .bind(message.trace.as_ref().map(|t| t.traceparent.clone()))
        .bind(message.trace.as_ref().and_then(|t| t.tracestate.clone()))
        .bind(headers)
        .bind(message.body.clone())
        .bind(now_micros())
        .bind(i64::from(message.mandatory))
        .execute(connection)
        .await?;
        Ok(())
    }

    /// Commits `tx` and wakes the relay, so staged messages go out without waiting for a poll.
    pub async fn commit(&self, tx: Transaction<'_, Any>) -> Result<(), sqlx::Error> {
        tx.commit().await?;
        self.wake();
        Ok(())
    }

    /// Tells the relay that rows were committed.
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    pub(crate) fn db(&self) -> &Database {
        &self.db
    }

    /// Rows not yet confirmed by the broker.
    pub async fn pending(&self) -> Result<u64, MessagingError> {
        let (count,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM messaging_outbox")
            .fetch_one(self.db.pool())
            .await?;
        Ok(count.max(0) as u64)
    }

    /// Starts publishing committed rows through `broker` until shut down.
    pub fn start_relay(&self, broker: &Broker, options: RelayOptions) -> RunningRelay {
        let (stop, stop_rx) = watch::channel(false);
        let relay = Relay {
            outbox: self.clone(),
            broker: broker.clone(),
            options,
            holder: uuid::Uuid::now_v7().to_string(),
            renewed: std::sync::Mutex::new(None),
        };
        RunningRelay {
            stop,
            task: tokio::spawn(relay.run(stop_rx)),
        }
    }
}

/// A relay at work.
pub struct RunningRelay {
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl RunningRelay {
    /// Publishes what is pending one last time (within `grace`), then stops and gives up its
    /// lease so another replica can take over at once.
    pub async fn shutdown(mut self, grace: Duration) {
        let _ = self.stop.send(true);
        if tokio::time::timeout(grace, &mut self.task).await.is_err() {
            self.task.abort();
        }
    }
}

struct Relay {
    outbox: Outbox,
    broker: Broker,
    options: RelayOptions,
    holder: String,
    /// When this relay last took or renewed the lease (not renewed on every round: a write per
    /// publish would sit on the path of every message).
    renewed: std::sync::Mutex<Option<std::time::Instant>>,
}

impl Relay {
    async fn run(self, mut stop: watch::Receiver<bool>) {
        loop {
            let full = match self.round().await {
                Ok(published) => published >= self.options.batch,
                Err(error) => {
                    tracing::warn!(%error, "outbox relay round failed");
                    false
                }
            };
            if full {
                continue;
            }
            tokio::select! {
                _ = self.outbox.wake.notified() => {}
                _ = tokio::time::sleep(self.options.poll_interval) => {}
                _ = stop.wait_for(|s| *s) => break,
            }
        }
        if let Err(error) = self.round().await {
            tracing::warn!(%error, "last outbox relay round failed; rows stay for the next start");
        }
        let _ = sqlx::query(
            "UPDATE messaging_outbox_lease SET expire_time = 0 WHERE name = 'relay' AND holder = $1",
        )
        .bind(&self.holder)
        .execute(self.outbox.db.pool())
        .await;
    }

    /// Publishes one batch of due rows; returns how many it took.
    async fn round(&self) -> Result<usize, MessagingError> {
        if !self.broker.is_connected() || !self.claim().await? {
            return Ok(0);
        }
        let now = now_micros();
        let rows: Vec<Row> = sqlx::query_as(
            "SELECT seq, message_id, exchange, routing_key, message_type, correlation_id, \
             traceparent, tracestate, headers, body, create_time, attempts, mandatory \
             FROM messaging_outbox WHERE next_attempt_time <= $1 ORDER BY seq LIMIT $2",
        )
        .bind(now)
        .bind(self.options.batch as i64)
        .fetch_all(self.outbox.db.pool())
        .await?;
        if rows.is_empty() {
            return Ok(0);
        }
        let messages: Vec<OutgoingMessage> = rows.iter().map(to_message).collect();
        let results = self.broker.publisher().publish_all(&messages).await;
        let mut sent = Vec::new();
        let mut failed = 0usize;
        let mut interrupted = false;
        for (row, result) in rows.iter().zip(results) {
            match result {
                Ok(()) => sent.push(row.seq),
                // The connection went: not the row's fault, it goes out first after reconnecting.
                Err(error) if error.is_transient() => {
                    if !interrupted {
                        tracing::info!(%error, "outbox publishing interrupted; rows kept");
                    }
                    interrupted = true;
                }
                // Refused by the broker (unroutable): back off this row, others go on.
                Err(error) => {
                    failed += 1;
                    if failed == 1 {
                        tracing::warn!(message_id = %row.message_id, %error, "outbox row not published; retrying later");
                    }
                    let attempts = row.attempts + 1;
                    let delay = Duration::from_millis(500)
                        .saturating_mul(2u32.saturating_pow(attempts.min(7) as u32))
                        .min(Duration::from_secs(60));
                    sqlx::query(
                        "UPDATE messaging_outbox SET attempts = $1, last_error = $2, \
                         next_attempt_time = $3 WHERE seq = $4",
                    )
                    .bind(attempts)
                    .bind(error.to_string())
                    .bind(now_micros() + delay.as_micros() as i64)
                    .bind(row.seq)
                    .execute(self.outbox.db.pool())
                    .await?;
                }
            }
        }
        for chunk in sent.chunks(500) {
            let placeholders: Vec<String> = (1..=chunk.len()).map(|i| format!("${i}")).collect();
            let sql = format!(
                "DELETE FROM messaging_outbox WHERE seq IN ({})",
                placeholders.join(", ")
            );
            let mut query = sqlx::query(&sql);
            for seq in chunk {
                query = query.bind(*seq);
            }
            query.execute(self.outbox.db.pool()).await?;
        }
        if failed > 0 {
            tracing::warn!(
                failed,
                published = sent.len(),
                "outbox rows left for a later round"
            );
        }
        // After an interruption, wait for the next poll rather than spin on a dead connection.
        Ok(if interrupted { 0 } else { rows.len() })
    }

    /// Takes or renews the relay lease; false while another relay holds it.
    async fn claim(&self) -> Result<bool, MessagingError> {
        // Renewed within a third of the lease: still ours, with two thirds to spare.
        let fresh = self
            .renewed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_some_and(|at| at.elapsed() < self.options.lease / 3);
        if fresh {
            return Ok(true);
        }
        let asked = std::time::Instant::now();
        let now = now_micros();
        let done = sqlx::query(
            "INSERT INTO messaging_outbox_lease (name, holder, expire_time) VALUES ('relay', $1, $2) \
             ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, expire_time = excluded.expire_time \
             WHERE messaging_outbox_lease.holder = excluded.holder \
             OR messaging_outbox_lease.expire_time < $3",
        )
        .bind(&self.holder)
        .bind(now + self.options.lease.as_micros() as i64)
        .bind(now)
        .execute(self.outbox.db.pool())
        .await?;
        let held = done.rows_affected() == 1;
        *self.renewed.lock().unwrap_or_else(|p| p.into_inner()) = held.then_some(asked);
        Ok(held)
    }
}

fn to_message(row: &Row) -> OutgoingMessage {
    let headers: BTreeMap<String, String> = serde_json::from_str(&row.headers).unwrap_or_default();
    OutgoingMessage {
        exchange: row.exchange.clone(),
        routing_key: row.routing_key.clone(),
        message_type: row.message_type.clone(),
        message_id: row.message_id.clone(),
        correlation_id: row.correlation_id.clone(),
        body: row.body.clone(),
        timestamp: (row.create_time / 1_000_000).max(0) as u64,
        trace: row
            .traceparent
            .as_deref()
            .and_then(|tp| TraceContext::parse(tp, row.tracestate.as_deref())),
        attempt: 1,
        headers,
        mandatory: row.mandatory != 0,
    }
}
