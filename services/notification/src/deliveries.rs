//! Deliveries in SQLite or PostgreSQL. A delivery is written with its content and destination,
//! and — when it may go now — its NotificationRequested staged in the same transaction, so a
//! delivery is never queued without a row nor stored without being queued. Workers claim a
//! delivery under a lease before sending and record each attempt conditionally on that claim.

use opsconductor_api::common::v1::{Actor, NotificationChannel};
use opsconductor_api::notification::v1::{
    AttemptOutcome, Delivery, DeliveryAttempt, DeliveryState, NotificationRequested,
};
use opsconductor_messaging::{AuditLog, Cause, Outbox, OutgoingMessage};
use opsconductor_platform::time::{from_duration, now_micros, to_timestamp};
use opsconductor_storage::{is_unique_violation, Database, Select};
use sqlx::AnyConnection;

use crate::writer::{GroupWriter, Write, Written};
use crate::NotificationError;

type Result<T> = std::result::Result<T, NotificationError>;

pub(crate) const COLUMNS: &str = "id, channel, destination, signing_credential_id, user_id, \
    subscription_id, event_type, subject, body, html_body, state, urgent, attempts, last_error, \
    next_attempt_time, deliver_time, requested_user_id, requested_service_id, request_hash, \
    create_time, update_time";

/// A stored delivery, with what only the service sees.
#[derive(sqlx::FromRow, Clone)]
pub struct DeliveryRow {
    pub id: String,
    pub channel: i64,
    pub destination: String,
    pub signing_credential_id: String,
    pub user_id: String,
    pub subscription_id: String,
    pub event_type: String,
    pub subject: String,
    pub body: String,
    pub html_body: String,
    pub state: i64,
    pub urgent: i64,
    pub attempts: i64,
    pub last_error: String,
    pub next_attempt_time: Option<i64>,
    pub deliver_time: Option<i64>,
    pub requested_user_id: String,
    pub requested_service_id: String,
    pub request_hash: String,
    pub create_time: i64,
    pub update_time: i64,
}

impl std::fmt::Debug for DeliveryRow {
    // The destination may embed a token; the content may quote anything.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeliveryRow")
            .field("id", &self.id)
            .field("channel", &self.channel)
            .field("state", &self.state)
            .field("attempts", &self.attempts)
            .finish_non_exhaustive()
    }
}

impl DeliveryRow {
    pub fn channel(&self) -> NotificationChannel {
        NotificationChannel::try_from(self.channel as i32)
            .unwrap_or(NotificationChannel::Unspecified)
    }

    /// The API's view, destination unmasked (the API masks it for the caller).
    pub fn into_delivery(self) -> Delivery {
        Delivery {
            id: self.id,
            channel: self.channel as i32,
            destination: self.destination,
            user_id: self.user_id,
            event_type: self.event_type,
            subject: self.subject,
            body: self.body,
            html_body: self.html_body,
            state: self.state as i32,
            attempts: self.attempts.clamp(0, u32::MAX as i64) as u32,
            last_error: self.last_error,
            next_attempt_time: self.next_attempt_time.map(to_timestamp),
            deliver_time: self.deliver_time.map(to_timestamp),
            requested_by: Some(Actor {
                user_id: self.requested_user_id,
                service_id: self.requested_service_id,
            }),
            create_time: Some(to_timestamp(self.create_time)),
            update_time: Some(to_timestamp(self.update_time)),
            urgent: self.urgent != 0,
            attempt_log: Vec::new(),
            subscription_id: self.subscription_id,
        }
    }
}

/// number, start_time, outcome, status, error, latency_us, retry_after_ms
type AttemptRow = (i64, i64, i64, i64, String, i64, Option<i64>);

/// A delivery to store.
#[derive(Clone, Default)]
pub struct NewDelivery {
    pub channel: i32,
    pub destination: String,
    pub signing_credential_id: String,
    pub user_id: String,
    pub subscription_id: String,
    pub event_type: String,
    pub subject: String,
    pub body: String,
    pub html_body: String,
    pub urgent: bool,
    /// Held until then (quiet hours), in Unix microseconds.
    pub defer_until: Option<i64>,
    pub requested_by: Actor,
    /// Idempotency: (caller, key) names one delivery; the hash tells a retry from a reuse.
    pub caller: String,
    pub idempotency_key: String,
    pub request_hash: String,
}

/// Which copies count as "the same notification" for the dedupe window.
fn dedupe_key(new: &NewDelivery) -> String {
    use sha2::{Digest, Sha256};
    let mut hash = Sha256::new();
    for part in [
        new.channel.to_string().as_str(),
        &new.destination,
        &new.subject,
        &new.body,
        &new.html_body,
    ] {
        hash.update((part.len() as u64).to_le_bytes());
        hash.update(part.as_bytes());
    }
    hex(&hash.finalize())
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The worker's hold on a delivery it is sending.
#[derive(Debug)]
pub enum Claim {
    Claimed(Box<DeliveryRow>, String),
    /// Nothing to do: delivered, suppressed, or waiting for quiet hours to end.
    Settled(DeliveryState),
    /// Another worker holds it until this time (Unix microseconds).
    Held(i64),
    Missing,
}

/// What the worker records after an attempt.
#[derive(Debug)]
pub struct AttemptRecord {
    pub start_time: i64,
    pub outcome: AttemptOutcome,
    pub status: u32,
    pub error: String,
    pub latency: std::time::Duration,
    pub retry_after: Option<std::time::Duration>,
    /// The state the delivery moves to.
    pub state: DeliveryState,
    /// When the next attempt is expected (PENDING after a failure).
    pub next_attempt_time: Option<i64>,
}

#[derive(Clone)]
pub struct DeliveryStore {
    db: Database,
    writer: GroupWriter,
    outbox: Outbox,
    audit: AuditLog,
    exchange: String,
    dedupe_window_us: i64,
}

#[derive(Default)]
pub struct DeliveryFilter {
    pub channel: Option<i32>,
    pub state: Option<i32>,
    pub user_id: Option<String>,
    pub event_type: Option<String>,
    pub subscription_id: Option<String>,
}

impl DeliveryStore {
    pub fn new(
        db: Database,
        outbox: Outbox,
        audit: AuditLog,
        exchange: String,
        dedupe_window: std::time::Duration,
    ) -> DeliveryStore {
        DeliveryStore {
            writer: GroupWriter::start(db.clone()),
            db,
            outbox,
            audit,
            exchange,
            dedupe_window_us: dedupe_window.as_micros().min(i64::MAX as u128) as i64,
        }
    }

    /// Stores `new` and queues it (unless deferred or suppressed); with a (caller, key) seen
    /// before, returns that delivery instead — or `KeyReused` for a different request.
    pub async fn create(&self, new: &NewDelivery) -> Result<Delivery> {
        for _ in 0..3 {
            if let Some(existing) = self.by_key(&new.caller, &new.idempotency_key).await? {
                if existing.request_hash != new.request_hash {
                    return Err(NotificationError::KeyReused);
                }
                return Ok(existing.into_delivery());
            }
            // None: the same key committed concurrently; read it.
            if let Some(id) = self.insert(new).await? {
                return self.get(&id).await.map(DeliveryRow::into_delivery);
            }
        }
        Err(NotificationError::Corrupt(
            "delivery",
            "the idempotency key kept colliding".into(),
        ))
    }

    async fn insert(&self, new: &NewDelivery) -> Result<Option<String>> {
        let id = uuid::Uuid::now_v7().to_string();
        let now = now_micros();
        let dedupe = dedupe_key(new);
        let mut tx = self.db.begin().await?;
        let earlier: Option<(String,)> = if self.dedupe_window_us > 0 {
            sqlx::query_as(
                "SELECT id FROM deliveries WHERE dedupe_key = $1 AND create_time >= $2 \
                 AND state IN ($3, $4, $5, $6) LIMIT 1",
            )
            .bind(&dedupe)
            .bind(now - self.dedupe_window_us)
            .bind(DeliveryState::Pending as i64)
            .bind(DeliveryState::Sending as i64)
            .bind(DeliveryState::Delivered as i64)
            .bind(DeliveryState::Deferred as i64)
            .fetch_optional(&mut *tx)
            .await?
        } else {
            None
        };
        let (state, last_error, next) = match (&earlier, new.defer_until) {
            (Some((same,)), _) => (
                DeliveryState::Suppressed,
                format!("the same content went to this destination in delivery {same}"),
                None,
            ),
            (None, Some(until)) if until > now => {
                (DeliveryState::Deferred, String::new(), Some(until))
            }
            _ => (DeliveryState::Pending, String::new(), None),
        };
        let inserted = sqlx::query(
            "INSERT INTO deliveries (id, channel, destination, signing_credential_id, user_id, \
             subscription_id, event_type, subject, body, html_body, state, urgent, attempts, \
             last_error, next_attempt_time, requested_user_id, requested_service_id, caller, \
             idempotency_key, request_hash, dedupe_key, create_time, update_time) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, 0, $13, $14, $15, $16, \
             $17, $18, $19, $20, $21, $21)",
        )
        .bind(&id)
        .bind(i64::from(new.channel))
        .bind(&new.destination)
        .bind(&new.signing_credential_id)
        .bind(&new.user_id)
        .bind(&new.subscription_id)
        .bind(&new.event_type)
        .bind(&new.subject)
        .bind(&new.body)
        .bind(&new.html_body)
        .bind(state as i64)
        .bind(i64::from(new.urgent))
        .bind(&last_error)
        .bind(next)
        .bind(&new.requested_by.user_id)
        .bind(&new.requested_by.service_id)
        .bind(&new.caller)
        .bind(&new.idempotency_key)
        .bind(&new.request_hash)
        .bind(&dedupe)
        .bind(now)
        .execute(&mut *tx)
        .await;
        match inserted {
            Ok(_) => {}
            Err(e) if is_unique_violation(&e) => return Ok(None),
            Err(e) => return Err(e.into()),
        }
        if state == DeliveryState::Pending {
            self.stage(&mut tx, &id, new.channel, &new.event_type)
                .await?;
        }
        self.outbox.commit(tx).await?;
        Ok(Some(id))
    }

    async fn stage(
        &self,
        connection: &mut AnyConnection,
        id: &str,
        channel: i32,
        event_type: &str,
    ) -> Result<()> {
        let message = OutgoingMessage::new(
            &self.exchange,
            crate::channel_key(channel),
            &NotificationRequested {
                delivery_id: id.to_string(),
                channel,
                event_type: event_type.to_string(),
            },
        )
        .with_correlation_id(id);
        self.outbox.stage(connection, &message).await?;
        Ok(())
    }

    async fn by_key(&self, caller: &str, key: &str) -> Result<Option<DeliveryRow>> {
        Ok(sqlx::query_as::<_, DeliveryRow>(&format!(
            "SELECT {COLUMNS} FROM deliveries WHERE caller = $1 AND idempotency_key = $2"
        ))
        .bind(caller)
        .bind(key)
        .fetch_optional(self.db.pool())
        .await?)
    }

    pub async fn get(&self, id: &str) -> Result<DeliveryRow> {
        sqlx::query_as::<_, DeliveryRow>(&format!("SELECT {COLUMNS} FROM deliveries WHERE id = $1"))
            .bind(id)
            .fetch_optional(self.db.pool())
            .await?
            .ok_or_else(|| NotificationError::NotFound("delivery", id.to_string()))
    }

    pub async fn attempts(&self, id: &str) -> Result<Vec<DeliveryAttempt>> {
        let rows: Vec<AttemptRow> = sqlx::query_as(
            "SELECT number, start_time, outcome, status, error, latency_us, retry_after_ms \
             FROM delivery_attempts WHERE delivery_id = $1 ORDER BY number",
        )
        .bind(id)
        .fetch_all(self.db.pool())
        .await?;
        Ok(rows
            .into_iter()
            .map(
                |(number, start, outcome, status, error, latency, after)| DeliveryAttempt {
                    number: number.clamp(0, u32::MAX as i64) as u32,
                    start_time: Some(to_timestamp(start)),
                    outcome: outcome as i32,
                    status: status.clamp(0, u32::MAX as i64) as u32,
                    error,
                    latency: Some(from_duration(std::time::Duration::from_micros(
                        latency.max(0) as u64,
                    ))),
                    retry_after: after.map(|ms| {
                        from_duration(std::time::Duration::from_millis(ms.max(0) as u64))
                    }),
                },
            )
            .collect())
    }

    /// Newest first.
    pub async fn list(
        &self,
        filter: &DeliveryFilter,
        size: i64,
        before: Option<&str>,
    ) -> Result<Vec<DeliveryRow>> {
        let mut q = Select::new(format!("SELECT {COLUMNS} FROM deliveries WHERE 1 = 1"));
        if let Some(c) = filter.channel {
            q.and("channel = {}", i64::from(c));
        }
        if let Some(s) = filter.state {
            q.and("state = {}", i64::from(s));
        }
        if let Some(u) = &filter.user_id {
            q.and("user_id = {}", u.as_str());
        }
        if let Some(e) = &filter.event_type {
            q.and("event_type = {}", e.as_str());
        }
        if let Some(s) = &filter.subscription_id {
            q.and("subscription_id = {}", s.as_str());
        }
        if let Some(b) = before {
            q.and("id < {}", b);
        }
        q.push(" ORDER BY id DESC").limit(size);
        Ok(q.fetch_all(self.db.pool()).await?)
    }

    /// Takes a delivery for sending until `lease_until`.
    pub async fn claim(&self, id: &str, lease: std::time::Duration) -> Result<Claim> {
        let now = now_micros();
        let claim_id = uuid::Uuid::now_v7().to_string();
        let until = now + lease.as_micros().min(i64::MAX as u128) as i64;
        let claimed = self
            .writer
            .write(Write::Claim {
                id: id.to_string(),
                claim_id: claim_id.clone(),
                until,
                now,
            })
            .await?;
        if let Written::Claimed(Some(row)) = claimed {
            return Ok(Claim::Claimed(row, claim_id));
        }
        let current: Option<(i64, Option<i64>)> =
            sqlx::query_as("SELECT state, lease_until FROM deliveries WHERE id = $1")
                .bind(id)
                .fetch_optional(self.db.pool())
                .await?;
        Ok(match current {
            None => Claim::Missing,
            Some((state, lease)) if state == DeliveryState::Sending as i64 => {
                Claim::Held(lease.unwrap_or(now))
            }
            Some((state, _)) => Claim::Settled(
                DeliveryState::try_from(state as i32).unwrap_or(DeliveryState::Unspecified),
            ),
        })
    }

    /// Records an attempt and the state it leads to, if `claim_id` still holds the delivery.
    /// False when another worker took it over (the lease ran out).
    pub async fn record(
        &self,
        row: &DeliveryRow,
        claim_id: &str,
        a: AttemptRecord,
    ) -> Result<bool> {
        let written = self
            .writer
            .write(Write::Record {
                id: row.id.clone(),
                number: row.attempts + 1,
                claim_id: claim_id.to_string(),
                attempt: a,
            })
            .await?;
        Ok(matches!(written, Written::Recorded(true)))
    }

    /// Gives a claimed delivery back untouched (the worker could not try: a secret was not
    /// available), so the next copy of its message can claim it at once.
    pub async fn release(&self, id: &str, claim_id: &str, error: &str) -> Result<()> {
        let mut tx = self.db.begin().await?;
        sqlx::query(
            "UPDATE deliveries SET state = $1, claim_id = NULL, lease_until = NULL, \
             last_error = $2, update_time = $3 WHERE id = $4 AND claim_id = $5",
        )
        .bind(DeliveryState::Pending as i64)
        .bind(error)
        .bind(now_micros())
        .bind(id)
        .bind(claim_id)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Holds a claimed delivery until `until` (the releaser queues it then), with the reason.
    pub async fn defer(&self, id: &str, claim_id: &str, until: i64, reason: &str) -> Result<()> {
        let mut tx = self.db.begin().await?;
        sqlx::query(
            "UPDATE deliveries SET state = $1, next_attempt_time = $2, last_error = $3, \
             claim_id = NULL, lease_until = NULL, update_time = $4 WHERE id = $5 AND claim_id = $6",
        )
        .bind(DeliveryState::Deferred as i64)
        .bind(until)
        .bind(reason)
        .bind(now_micros())
        .bind(id)
        .bind(claim_id)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Queues a FAILED or DEAD_LETTERED delivery again.
    pub async fn resend(&self, id: &str, cause: &Cause) -> Result<Delivery> {
        let row = self.get(id).await?;
        let now = now_micros();
        let mut tx = self.db.begin().await?;
        let updated = sqlx::query(
            "UPDATE deliveries SET state = $1, last_error = '', next_attempt_time = NULL, \
             update_time = $2 WHERE id = $3 AND state IN ($4, $5)",
        )
        .bind(DeliveryState::Pending as i64)
        .bind(now)
        .bind(id)
        .bind(DeliveryState::Failed as i64)
        .bind(DeliveryState::DeadLettered as i64)
        .execute(&mut *tx)
        .await?;
        if updated.rows_affected() == 0 {
            let state = DeliveryState::try_from(row.state as i32)
                .unwrap_or(DeliveryState::Unspecified)
                .as_str_name();
            return Err(NotificationError::NotResendable(id.to_string(), state));
        }
        self.stage(&mut tx, id, row.channel as i32, &row.event_type)
            .await?;
        self.audit
            .record(
                &mut tx,
                cause,
                "delivery.resend",
                ("delivery", id),
                &[("attempts", row.attempts.to_string())],
            )
            .await?;
        self.audit.commit(tx).await?;
        self.outbox.wake();
        // What the resend made of it; read again, a fast worker may already have sent it.
        let mut row = row;
        row.state = DeliveryState::Pending as i64;
        row.last_error.clear();
        row.next_attempt_time = None;
        row.update_time = now;
        Ok(row.into_delivery())
    }

    /// Queues deferred deliveries whose time has come; how many.
    pub async fn release_due(&self, limit: i64) -> Result<usize> {
        let now = now_micros();
        let due: Vec<(String, i64, String)> = sqlx::query_as(
            "SELECT id, channel, event_type FROM deliveries WHERE state = $1 \
             AND next_attempt_time <= $2 ORDER BY next_attempt_time LIMIT $3",
        )
        .bind(DeliveryState::Deferred as i64)
        .bind(now)
        .bind(limit)
        .fetch_all(self.db.pool())
        .await?;
        let mut released = 0;
        for (id, channel, event_type) in due {
            let mut tx = self.db.begin().await?;
            // Conditional: of two replicas releasing the same row, one queues it.
            let updated = sqlx::query(
                "UPDATE deliveries SET state = $1, next_attempt_time = NULL, update_time = $2 \
                 WHERE id = $3 AND state = $4",
            )
            .bind(DeliveryState::Pending as i64)
            .bind(now)
            .bind(&id)
            .bind(DeliveryState::Deferred as i64)
            .execute(&mut *tx)
            .await?;
            if updated.rows_affected() == 1 {
                self.stage(&mut tx, &id, channel as i32, &event_type)
                    .await?;
                self.outbox.commit(tx).await?;
                released += 1;
            }
        }
        Ok(released)
    }

    /// The earliest time a deferred delivery is due, to sleep until then.
    pub async fn next_release(&self) -> Result<Option<i64>> {
        let next: Option<(Option<i64>,)> =
            sqlx::query_as("SELECT MIN(next_attempt_time) FROM deliveries WHERE state = $1")
                .bind(DeliveryState::Deferred as i64)
                .fetch_optional(self.db.pool())
                .await?;
        Ok(next.and_then(|(t,)| t))
    }
}
