//! The channel workers: each NotificationRequested names a delivery; the worker claims it,
//! sends it over its channel, records the attempt, and tells the consumer what to do with the
//! message — acknowledge, retry after a delay (at least the destination's Retry-After), or
//! dead-letter (a permanent failure, or the last attempt).

use std::sync::Arc;
use std::time::{Duration, Instant};

use opsconductor_api::common::v1::NotificationChannel;
use opsconductor_api::notification::v1::{AttemptOutcome, DeliveryState, NotificationRequested};
use opsconductor_messaging::topology::RetryPolicy;
use opsconductor_messaging::{HandleError, Received};
use opsconductor_notify_channels::{
    slack_payload, teams_payload, webhook_headers, Attempt, HttpSender, Mailer, Outcome,
    SigningKey, SmtpSettings,
};
use opsconductor_platform::time::now_micros;
use tokio::sync::Mutex;
use tracing::Instrument;

use crate::deliveries::{AttemptRecord, Claim, DeliveryRow, DeliveryStore};
use crate::limits::RateLimiter;
use crate::secrets::{SecretError, Secrets};

/// How email is sent: the relay, and the credential holding its password (if it wants one).
#[derive(Clone)]
pub struct EmailSettings {
    pub smtp: SmtpSettings,
    pub password_credential_id: Option<String>,
}

/// What one send needs besides the delivery's own fields.
pub struct Message<'a> {
    pub id: &'a str,
    pub channel: NotificationChannel,
    pub destination: &'a str,
    pub subject: &'a str,
    pub body: &'a str,
    pub html_body: &'a str,
    pub signing_credential_id: &'a str,
}

/// Sends over every channel; shared by the queue workers and TestChannel.
pub struct Senders {
    pub http: HttpSender,
    pub email: Option<EmailSettings>,
    pub secrets: Secrets,
    /// Signs webhooks whose delivery names no credential.
    pub default_signing_credential_id: Option<String>,
    /// Signs webhooks when neither the delivery nor the settings name a credential (the
    /// generated `NOTIFICATION_WEBHOOK_SIGNING_SECRET`); unsigned only when this is absent too,
    /// which takes `NOTIFICATION_ALLOW_UNSIGNED_WEBHOOKS=true`.
    pub default_signing_key: Option<SigningKey>,
    /// Rebuilt when the password's cache time passes, so a rotation takes effect.
    mailer: Mutex<Option<(Arc<Mailer>, Instant)>>,
    mailer_ttl: Duration,
}

impl Senders {
    pub fn new(
        http: HttpSender,
        email: Option<EmailSettings>,
        secrets: Secrets,
        default_signing_credential_id: Option<String>,
        default_signing_key: Option<SigningKey>,
        mailer_ttl: Duration,
    ) -> Senders {
        Senders {
            http,
            email,
            secrets,
            default_signing_credential_id,
            default_signing_key,
            mailer: Mutex::new(None),
            mailer_ttl,
        }
    }

    pub fn email_configured(&self) -> bool {
        self.email.is_some()
    }

    async fn mailer(&self) -> Result<Arc<Mailer>, SecretError> {
        let Some(email) = &self.email else {
            return Err(SecretError::Refused(
                "smtp".into(),
                "email is not configured (NOTIFICATION_SMTP_HOST)".into(),
            ));
        };
        let mut cached = self.mailer.lock().await;
        if let Some((mailer, built)) = cached.as_ref() {
            if built.elapsed() < self.mailer_ttl {
                return Ok(mailer.clone());
            }
        }
        let password = match &email.password_credential_id {
            Some(id) => Some(self.secrets.text(id).await?.to_string()),
            None => None,
        };
        let mailer = Mailer::new(email.smtp.clone(), password)
            .map(Arc::new)
            .map_err(|e| SecretError::Refused("smtp".into(), e.to_string()))?;
        *cached = Some((mailer.clone(), Instant::now()));
        Ok(mailer)
    }

    async fn signing_key(&self, credential_id: &str) -> Result<Option<SigningKey>, SecretError> {
        let id = if credential_id.is_empty() {
            match &self.default_signing_credential_id {
                Some(id) => id.as_str(),
                None => return Ok(self.default_signing_key.clone()),
            }
        } else {
            credential_id
        };
        self.secrets.signing_key(id).await.map(Some)
    }

    /// One attempt; `Err` when a secret it needs could not be read now (nothing was sent).
    pub async fn send(&self, m: &Message<'_>) -> Result<Attempt, SecretError> {
        let refused = |e: SecretError| match e {
            SecretError::Refused(..) => Ok(Attempt {
                outcome: Outcome::Permanent,
                status: None,
                error: e.to_string(),
                latency: Duration::ZERO,
            }),
            e @ SecretError::Unavailable(..) => Err(e),
        };
        match m.channel {
            NotificationChannel::Email => {
                let mailer = match self.mailer().await {
                    Ok(mailer) => mailer,
                    Err(e) => return refused(e),
                };
                let html = (!m.html_body.is_empty()).then_some(m.html_body);
                Ok(mailer
                    .send(m.id, m.destination, m.subject, m.body, html)
                    .await)
            }
            NotificationChannel::Slack => Ok(self
                .http
                .post_json(
                    m.destination,
                    slack_payload(m.subject, m.body),
                    Default::default(),
                )
                .await),
            NotificationChannel::Teams => Ok(self
                .http
                .post_json(
                    m.destination,
                    teams_payload(m.subject, m.body),
                    Default::default(),
                )
                .await),
            NotificationChannel::Webhook => {
                let key = match self.signing_key(m.signing_credential_id).await {
                    Ok(key) => key,
                    Err(e) => return refused(e),
                };
                let body = bytes::Bytes::copy_from_slice(m.body.as_bytes());
                let timestamp = opsconductor_platform::time::now_secs() as i64;
                let mut headers = webhook_headers(m.id, timestamp, key.as_ref(), &body);
                // The receiver may continue the trace (W3C Trace Context over HTTP); only on
                // webhooks, which go to the operator's own systems, not to Slack or Teams.
                opsconductor_platform::telemetry::propagation::inject(
                    &tracing::Span::current(),
                    &mut headers,
                );
                Ok(self.http.post_json(m.destination, body, headers).await)
            }
            NotificationChannel::Unspecified => Ok(Attempt {
                outcome: Outcome::Permanent,
                status: None,
                error: "the delivery has no channel".into(),
                latency: Duration::ZERO,
            }),
        }
    }
}

pub struct Worker {
    pub deliveries: DeliveryStore,
    pub senders: Arc<Senders>,
    pub limiter: RateLimiter,
    pub retry: RetryPolicy,
    pub lease: Duration,
    /// Longest wait for the rate limit inside the handler; longer waits are DEFERRED.
    pub max_limit_wait: Duration,
    pub counters: crate::counters::DeliveryCounters,
}

fn limit_key(row: &DeliveryRow) -> String {
    use sha2::{Digest, Sha256};
    let digest = Sha256::new()
        .chain_update(row.channel.to_le_bytes())
        .chain_update(row.destination.as_bytes())
        .finalize();
    crate::deliveries::hex(&digest[..16])
}

impl Worker {
    pub async fn handle(
        &self,
        received: Received<NotificationRequested>,
    ) -> Result<(), HandleError> {
        let id = received.message.delivery_id;
        let (row, claim_id) = match self
            .deliveries
            .claim(&id, self.lease)
            .await
            .map_err(HandleError::retry)?
        {
            Claim::Claimed(row, claim_id) => (row, claim_id),
            // A duplicate (the broker redelivered, or a replay of a delivered one): done.
            Claim::Settled(state) => {
                tracing::debug!(delivery_id = %id, state = state.as_str_name(), "nothing to send");
                return Ok(());
            }
            Claim::Held(until) => {
                let left = Duration::from_micros((until - now_micros()).max(0) as u64);
                return Err(HandleError::RetryAfter(
                    "another worker is sending it".into(),
                    left,
                ));
            }
            Claim::Missing => {
                return Err(HandleError::reject(format!("delivery {id} does not exist")))
            }
        };
        let key = limit_key(&row);
        let wait = self.limiter.reserve(&key);
        if wait > self.max_limit_wait {
            // Held in the database rather than retried through the queue: waiting for a rate
            // limit must not use up the delivery's attempts.
            self.limiter.refund(&key);
            let until = now_micros() + wait.as_micros().min(i64::MAX as u128) as i64;
            self.deliveries
                .defer(
                    &row.id,
                    &claim_id,
                    until,
                    "the destination's rate limit is reached",
                )
                .await
                .map_err(HandleError::retry)?;
            return Ok(());
        }
        tokio::time::sleep(wait).await;
        let started = now_micros();
        let message = Message {
            id: &row.id,
            channel: row.channel(),
            destination: &row.destination,
            subject: &row.subject,
            body: &row.body,
            html_body: &row.html_body,
            signing_credential_id: &row.signing_credential_id,
        };
        // The send on its own span (a client span: it leaves the platform).
        let span = tracing::info_span!(
            "send",
            otel.name = %format!(
                "send {}",
                message
                    .channel
                    .as_str_name()
                    .trim_start_matches("NOTIFICATION_CHANNEL_")
                    .to_ascii_lowercase()
            ),
            otel.kind = "client",
            delivery_id = %id,
        );
        let attempt = match self.senders.send(&message).instrument(span).await {
            Ok(attempt) => attempt,
            Err(e) => {
                self.limiter.refund(&key);
                self.deliveries
                    .release(&row.id, &claim_id, &e.to_string())
                    .await
                    .map_err(HandleError::retry)?;
                return Err(HandleError::retry(e));
            }
        };
        self.settle(&row, &claim_id, started, attempt, received.meta.attempt)
            .await
    }

    async fn settle(
        &self,
        row: &DeliveryRow,
        claim_id: &str,
        started: i64,
        attempt: Attempt,
        queue_attempt: u32,
    ) -> Result<(), HandleError> {
        let last = queue_attempt >= self.retry.max_attempts;
        let (outcome, state, retry_after) = match &attempt.outcome {
            Outcome::Delivered => (AttemptOutcome::Delivered, DeliveryState::Delivered, None),
            Outcome::Permanent => (AttemptOutcome::Permanent, DeliveryState::Failed, None),
            Outcome::Retry { after } if last => {
                (AttemptOutcome::Retry, DeliveryState::DeadLettered, *after)
            }
            Outcome::Retry { after } => (AttemptOutcome::Retry, DeliveryState::Pending, *after),
        };
        let wait = self
            .retry
            .delay(queue_attempt, retry_after.unwrap_or_default());
        let next_attempt_time = (state == DeliveryState::Pending)
            .then(|| now_micros() + wait.as_micros().min(i64::MAX as u128) as i64);
        let record = AttemptRecord {
            start_time: started,
            outcome,
            status: attempt.status.map(u32::from).unwrap_or(0),
            error: attempt.error.clone(),
            latency: attempt.latency,
            retry_after,
            state,
            next_attempt_time,
        };
        if !self
            .deliveries
            .record(row, claim_id, record)
            .await
            .map_err(HandleError::retry)?
        {
            // The lease ran out and another worker took the delivery over; it records.
            tracing::warn!(delivery_id = %row.id, "the delivery was taken over while sending");
            return Ok(());
        }
        self.counters.attempt(row.channel, state);
        match state {
            DeliveryState::Delivered => {
                tracing::debug!(delivery_id = %row.id, "delivered");
                Ok(())
            }
            DeliveryState::Pending => {
                tracing::info!(delivery_id = %row.id, error = %attempt.error, "delivery failed; retrying");
                Err(match retry_after {
                    Some(after) => HandleError::RetryAfter(attempt.error, after),
                    None => HandleError::Retry(attempt.error),
                })
            }
            _ => {
                tracing::warn!(delivery_id = %row.id, error = %attempt.error, state = state.as_str_name(), "delivery failed for good");
                Err(HandleError::reject(attempt.error))
            }
        }
    }
}
