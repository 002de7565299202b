//! Exchanges and queues, declared idempotently by the code that uses them, on every connection.
//!
//! A [`WorkQueue`] is a durable quorum queue that competing consumers share. It comes with a
//! ladder of delay queues (`<queue>.retry.<delay>`, each with a message TTL that dead-letters
//! back into the queue) and a dead-letter queue (`<queue>.dlq`). A [`Broadcast`] is one
//! exclusive queue per consumer instance, bound to an exchange: every instance gets every
//! message, and nothing is retried (its state is rebuilt on reconnect instead).
//!
//! Names here are unprefixed ("audit.events"); [`Names`] turns them into broker names
//! ("opsconductor.audit.events"), so each test can take a prefix of its own.

use std::time::Duration;

use lapin::options::{ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{Channel, ExchangeKind as LapinKind};

use crate::config::{DeadLetterStrategy, DeclareMode};
use crate::producer::Producers;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExchangeKind {
    Direct,
    Topic,
    Fanout,
}

/// An exchange, named without the prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exchange {
    pub name: String,
    pub kind: ExchangeKind,
}

impl Exchange {
    pub fn topic(name: &str) -> Exchange {
        Exchange {
            name: name.to_string(),
            kind: ExchangeKind::Topic,
        }
    }

    pub fn direct(name: &str) -> Exchange {
        Exchange {
            name: name.to_string(),
            kind: ExchangeKind::Direct,
        }
    }
}

/// How often a failing message is tried and how long it waits between tries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryPolicy {
    /// One delay queue per entry; the n-th failure waits `delays[min(n, len) - 1]`.
    pub delays: Vec<Duration>,
    /// Attempts in all, the first included; the last failure goes to the dead-letter queue.
    pub max_attempts: u32,
}

impl Default for RetryPolicy {
    /// 1 s, 10 s, 1 min, 10 min, then dead-lettered: five attempts over about 11 minutes.
    fn default() -> Self {
        RetryPolicy {
            delays: [1, 10, 60, 600].map(Duration::from_secs).to_vec(),
            max_attempts: 5,
        }
    }
}

impl RetryPolicy {
    /// The delay queue after failed attempt `attempt` (1-based): the attempt's own tier, or a
    /// later one when the handler asked to wait at least `at_least` (the last tier when none is
    /// that long).
    pub fn tier(&self, attempt: u32, at_least: Duration) -> usize {
        let last = self.delays.len().saturating_sub(1);
        let own = (attempt as usize).saturating_sub(1).min(last);
        let long_enough = self
            .delays
            .iter()
            .position(|d| *d >= at_least)
            .unwrap_or(last);
        own.max(long_enough)
    }

    /// How long the message waits after failed attempt `attempt`.
    pub fn delay(&self, attempt: u32, at_least: Duration) -> Duration {
        self.delays
            .get(self.tier(attempt, at_least))
            .copied()
            .unwrap_or_default()
    }
}

/// Deliveries after which the broker itself dead-letters a message that consumers keep failing
/// to acknowledge (a message that crashes its consumer never blocks the queue).
pub const DELIVERY_LIMIT: i64 = 20;

/// A durable queue with competing consumers, its retry ladder and its dead-letter queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkQueue {
    /// Unprefixed, e.g. "audit.events".
    pub name: String,
    pub exchange: Exchange,
    /// Routing keys (patterns for a topic exchange) bound to the queue.
    pub routing_keys: Vec<String>,
    pub retry: RetryPolicy,
    /// One consumer at a time gets the queue's messages (the others wait as standbys), so
    /// they are handled in the order they were published.
    pub single_active_consumer: bool,
    /// The services whose messages its consumers accept (checked when the broker has a
    /// [`crate::ProducerTrust`]).
    pub producers: Producers,
}

impl WorkQueue {
    pub fn new(name: &str, exchange: Exchange, routing_keys: &[&str]) -> WorkQueue {
        WorkQueue {
            name: name.to_string(),
            exchange,
            routing_keys: routing_keys.iter().map(|k| k.to_string()).collect(),
            retry: RetryPolicy::default(),
            single_active_consumer: false,
            producers: Producers::AnyService,
        }
    }

    /// Accepts messages from these services only.
    pub fn produced_by(mut self, services: &[&str]) -> WorkQueue {
        self.producers = Producers::only(services);
        self
    }

    /// Delivers to one consumer at a time, in order; replicas take over when it goes.
    pub fn with_single_active_consumer(mut self) -> WorkQueue {
        self.single_active_consumer = true;
        self
    }

    pub fn with_retry(mut self, retry: RetryPolicy) -> WorkQueue {
        self.retry = retry;
        self
    }
}

/// An exchange and the keys each consumer instance binds its own exclusive queue with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Broadcast {
    /// What the instance queues are called, e.g. "auth.revocations" (a unique suffix is added).
    pub name: String,
    pub exchange: Exchange,
    pub routing_keys: Vec<String>,
    /// Whether messages refused by a consumer are kept in `<name>.dlq` (shared by every
    /// instance) instead of dropped.
    pub dead_letters: bool,
    /// The services whose messages its consumers accept.
    pub producers: Producers,
}

impl Broadcast {
    pub fn new(name: &str, exchange: Exchange, routing_keys: &[&str]) -> Broadcast {
        Broadcast {
            name: name.to_string(),
            exchange,
            routing_keys: routing_keys.iter().map(|k| k.to_string()).collect(),
            dead_letters: false,
            producers: Producers::AnyService,
        }
    }

    /// Accepts messages from these services only.
    pub fn produced_by(mut self, services: &[&str]) -> Broadcast {
        self.producers = Producers::only(services);
        self
    }

    /// Keeps refused messages in a durable dead-letter queue, with the reason.
    pub fn with_dead_letters(mut self) -> Broadcast {
        self.dead_letters = true;
        self
    }
}

/// What a broker connection declares on every (re)connect before anything else uses it.
#[derive(Debug, Clone, Default)]
pub struct Topology {
    pub exchanges: Vec<Exchange>,
    pub queues: Vec<WorkQueue>,
}

impl Topology {
    pub fn new() -> Topology {
        Topology::default()
    }

    /// Adds a work queue (and its exchange) to declare: publishers declare the queues they
    /// publish to, so a message is kept even before its consumer first starts.
    pub fn queue(mut self, queue: WorkQueue) -> Topology {
        self = self.exchange(queue.exchange.clone());
        if !self.queues.contains(&queue) {
            self.queues.push(queue);
        }
        self
    }

    pub fn exchange(mut self, exchange: Exchange) -> Topology {
        if !self.exchanges.contains(&exchange) {
            self.exchanges.push(exchange);
        }
        self
    }
}

/// Turns unprefixed names into broker names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Names {
    prefix: String,
}

impl Names {
    pub fn new(prefix: &str) -> Names {
        Names {
            prefix: prefix.to_string(),
        }
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    pub fn exchange(&self, exchange: &Exchange) -> String {
        format!("{}.{}", self.prefix, exchange.name)
    }

    pub fn queue(&self, queue: &WorkQueue) -> String {
        format!("{}.{}", self.prefix, queue.name)
    }

    /// The dead-letter queue of `queue`.
    pub fn dead_letter_queue(&self, queue: &WorkQueue) -> String {
        format!("{}.dlq", self.queue(queue))
    }

    /// The delay queue of each retry tier, in order.
    pub fn retry_queues(&self, queue: &WorkQueue) -> Vec<String> {
        queue
            .retry
            .delays
            .iter()
            .map(|d| format!("{}.retry.{}", self.queue(queue), delay_label(*d)))
            .collect()
    }

    /// What the per-instance queues of `broadcast` are called, before their unique suffix.
    pub fn broadcast_queue(&self, broadcast: &Broadcast) -> String {
        format!("{}.{}", self.prefix, broadcast.name)
    }

    /// Where the consumers of `broadcast` put what they refuse.
    pub fn broadcast_dead_letter_queue(&self, broadcast: &Broadcast) -> String {
        format!("{}.dlq", self.broadcast_queue(broadcast))
    }

    /// Every queue a work queue brings: itself, its delay queues, its dead-letter queue.
    pub fn all_queues(&self, queue: &WorkQueue) -> Vec<String> {
        let mut names = vec![self.queue(queue)];
        names.extend(self.retry_queues(queue));
        names.push(self.dead_letter_queue(queue));
        names
    }
}

/// "1s", "10s", "1m", "10m", "250ms": short and sortable enough for an operator's eye.
fn delay_label(delay: Duration) -> String {
    let ms = delay.as_millis();
    if ms.is_multiple_of(60_000) && ms > 0 {
        format!("{}m", ms / 60_000)
    } else if ms.is_multiple_of(1000) && ms > 0 {
        format!("{}s", ms / 1000)
    } else {
        format!("{ms}ms")
    }
}

fn quorum_args() -> FieldTable {
    let mut args = FieldTable::default();
    args.insert("x-queue-type".into(), string("quorum"));
    args
}

/// Dead-letters into `routing_key` through the default exchange. At-least-once (quorum queues,
/// RabbitMQ 3.11+) moves a message only once its target has it.
fn dead_letter_to(args: &mut FieldTable, routing_key: &str, strategy: DeadLetterStrategy) {
    args.insert("x-dead-letter-exchange".into(), string(""));
    args.insert("x-dead-letter-routing-key".into(), string(routing_key));
    if strategy == DeadLetterStrategy::AtLeastOnce {
        args.insert("x-dead-letter-strategy".into(), string("at-least-once"));
        args.insert("x-overflow".into(), string("reject-publish"));
    }
}

fn string(value: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(value.as_bytes().to_vec()))
}

fn durable() -> QueueDeclareOptions {
    QueueDeclareOptions {
        durable: true,
        ..QueueDeclareOptions::default()
    }
}

fn passive() -> QueueDeclareOptions {
    QueueDeclareOptions {
        passive: true,
        ..QueueDeclareOptions::default()
    }
}

/// Declares `name` (durable, quorum, with `args`), or in [`DeclareMode::Verify`] checks that
/// it exists (a passive declare needs no `configure` permission).
async fn declare_queue(
    channel: &Channel,
    name: &str,
    args: FieldTable,
    mode: DeclareMode,
) -> lapin::Result<()> {
    let (options, args) = match mode {
        DeclareMode::Declare => (durable(), args),
        DeclareMode::Verify => (passive(), FieldTable::default()),
    };
    channel
        .queue_declare(ShortString::from(name), options, args)
        .await
        .map(|_| ())
}

pub(crate) async fn declare_exchange(
    channel: &Channel,
    names: &Names,
    exchange: &Exchange,
    mode: DeclareMode,
) -> lapin::Result<()> {
    let kind = match exchange.kind {
        ExchangeKind::Direct => LapinKind::Direct,
        ExchangeKind::Topic => LapinKind::Topic,
        ExchangeKind::Fanout => LapinKind::Fanout,
    };
    channel
        .exchange_declare(
            ShortString::from(names.exchange(exchange)),
            kind,
            ExchangeDeclareOptions {
                durable: true,
                passive: mode == DeclareMode::Verify,
                ..ExchangeDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await
}

/// The arguments of each queue a work queue brings, by broker name: the queue itself (its
/// dead-letter queue, delivery limit), its delay queues (TTL back into it), its dead-letter
/// queue. What [`declare_work_queue`] declares, and what a definitions file must declare alike.
pub fn work_queue_arguments(
    names: &Names,
    queue: &WorkQueue,
    strategy: DeadLetterStrategy,
) -> Vec<(String, FieldTable)> {
    let main = names.queue(queue);
    let dlq = names.dead_letter_queue(queue);
    let mut all = vec![(dlq.clone(), quorum_args())];
    let mut args = quorum_args();
    dead_letter_to(&mut args, &dlq, strategy);
    args.insert(
        "x-delivery-limit".into(),
        AMQPValue::LongLongInt(DELIVERY_LIMIT),
    );
    if queue.single_active_consumer {
        args.insert("x-single-active-consumer".into(), AMQPValue::Boolean(true));
    }
    all.push((main.clone(), args));
    for (name, delay) in names
        .retry_queues(queue)
        .into_iter()
        .zip(&queue.retry.delays)
    {
        let mut args = quorum_args();
        dead_letter_to(&mut args, &main, strategy);
        args.insert(
            "x-message-ttl".into(),
            AMQPValue::LongLongInt(delay.as_millis().min(i64::MAX as u128) as i64),
        );
        all.push((name, args));
    }
    all
}

/// Declares a work queue with its exchange, bindings, delay ladder and dead-letter queue (in
/// [`DeclareMode::Verify`], checks they exist).
pub(crate) async fn declare_work_queue(
    channel: &Channel,
    names: &Names,
    queue: &WorkQueue,
    strategy: DeadLetterStrategy,
    mode: DeclareMode,
) -> lapin::Result<()> {
    declare_exchange(channel, names, &queue.exchange, mode).await?;
    for (name, args) in work_queue_arguments(names, queue, strategy) {
        declare_queue(channel, &name, args, mode).await?;
    }
    if mode == DeclareMode::Verify {
        return Ok(());
    }
    for key in &queue.routing_keys {
        channel
            .queue_bind(
                ShortString::from(names.queue(queue)),
                ShortString::from(names.exchange(&queue.exchange)),
                ShortString::from(key.as_str()),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await?;
    }
    Ok(())
}

/// The dead-letter queue of a broadcast (durable, quorum), declared or checked.
pub(crate) async fn declare_broadcast_dead_letters(
    channel: &Channel,
    names: &Names,
    broadcast: &Broadcast,
    mode: DeclareMode,
) -> lapin::Result<()> {
    declare_queue(
        channel,
        &names.broadcast_dead_letter_queue(broadcast),
        quorum_args(),
        mode,
    )
    .await
}

pub(crate) async fn declare(
    channel: &Channel,
    names: &Names,
    topology: &Topology,
    strategy: DeadLetterStrategy,
    mode: DeclareMode,
) -> lapin::Result<()> {
    for exchange in &topology.exchanges {
        declare_exchange(channel, names, exchange, mode).await?;
    }
    for queue in &topology.queues {
        declare_work_queue(channel, names, queue, strategy, mode).await?;
    }
    Ok(())
}

/// The platform's own exchanges and queues, as the contracts describe them (docs/api.md,
/// "Messages over RabbitMQ"). Producers and consumers both declare what they use from here.
pub mod platform {
    use super::*;

    /// Audit events: every service publishes, the audit service consumes.
    pub fn audit_exchange() -> Exchange {
        Exchange::topic("audit")
    }

    /// One active consumer: the audit service appends events to its chain in the order each
    /// publisher committed them, with replicas standing by.
    pub fn audit_events() -> WorkQueue {
        WorkQueue::new("audit.events", audit_exchange(), &["#"]).with_single_active_consumer()
    }

    /// Token revocations from the auth service, to every server instance.
    pub fn auth_exchange() -> Exchange {
        Exchange::topic("auth")
    }

    pub const TOKEN_REVOKED: &str = "token.revoked";

    /// Revocations a server refuses (unsigned, badly signed, dated in the future) are kept
    /// in `auth.revocations.dlq` for an operator to see.
    pub fn token_revocations() -> Broadcast {
        Broadcast::new("auth.revocations", auth_exchange(), &[TOKEN_REVOKED])
            .with_dead_letters()
            .produced_by(&["auth"])
    }

    /// Run requests and cancellations from the jobs service to executors.
    pub fn jobs_exchange() -> Exchange {
        Exchange::topic("jobs")
    }

    pub const RUN_REQUESTED: &str = "run.requested";
    pub const RUN_CANCEL_REQUESTED: &str = "run.cancel_requested";

    pub fn run_requests() -> WorkQueue {
        WorkQueue::new("executor.run-requested", jobs_exchange(), &[RUN_REQUESTED])
            .produced_by(&["jobs"])
    }

    pub fn run_cancellations() -> Broadcast {
        Broadcast::new(
            "executor.run-cancel",
            jobs_exchange(),
            &[RUN_CANCEL_REQUESTED],
        )
        .with_dead_letters()
        .produced_by(&["jobs"])
    }

    pub const RUN_PROGRESS: &str = "run.progress";

    /// What executors report to one jobs replica, fanned out to the others' watchers.
    pub fn run_progress() -> Broadcast {
        Broadcast::new("jobs.run-progress", jobs_exchange(), &[RUN_PROGRESS])
            .with_dead_letters()
            .produced_by(&["jobs"])
    }

    /// Domain events, e.g. a run that finished.
    pub fn events_exchange() -> Exchange {
        Exchange::topic("events")
    }

    pub const RUN_FINISHED: &str = "run.finished";

    pub fn run_finished_notifications() -> WorkQueue {
        WorkQueue::new(
            "notification.run-finished",
            events_exchange(),
            &[RUN_FINISHED],
        )
        .produced_by(&["jobs"])
    }

    pub const RUN_STARTED: &str = "run.started";

    /// Runs an executor claimed, for the notification service ("run started" messages).
    pub fn run_started_notifications() -> WorkQueue {
        WorkQueue::new(
            "notification.run-started",
            events_exchange(),
            &[RUN_STARTED],
        )
        .produced_by(&["jobs"])
    }

    pub const CREDENTIAL_EXPIRING: &str = "credential.expiring";

    /// Credentials nearing their expiry, published by the credentials service's daily sweep;
    /// declared by their publisher so they wait for the notification service.
    pub fn credential_expiring_notifications() -> WorkQueue {
        WorkQueue::new(
            "notification.credential-expiring",
            events_exchange(),
            &[CREDENTIAL_EXPIRING],
        )
        .produced_by(&["credentials"])
    }

    /// The runs a schedule started, as they start and finish: the scheduler's overlap policies
    /// know what is running from these, not by polling the jobs service.
    pub fn scheduler_run_events() -> WorkQueue {
        WorkQueue::new(
            "scheduler.run-events",
            events_exchange(),
            &[RUN_STARTED, RUN_FINISHED],
        )
        .produced_by(&["jobs"])
    }

    pub const SCHEDULE_FIRE_FAILED: &str = "schedule.fire_failed";

    /// Fires that failed for good (e.g. the owner was disabled), for the notification service
    /// to tell the schedule's owner; declared by the scheduler so they wait for it.
    pub fn schedule_fire_failed_notifications() -> WorkQueue {
        WorkQueue::new(
            "notification.schedule-fire-failed",
            events_exchange(),
            &[SCHEDULE_FIRE_FAILED],
        )
        .produced_by(&["scheduler"])
    }

    /// Notifications, one queue per channel so a slow SMTP server never holds back webhooks.
    pub fn notification_exchange() -> Exchange {
        Exchange::direct("notification")
    }

    /// The channels, by routing key: "email", "slack", "teams", "webhook".
    pub const NOTIFICATION_CHANNELS: [&str; 4] = ["email", "slack", "teams", "webhook"];

    pub fn notification_queue(channel: &str) -> WorkQueue {
        WorkQueue::new(
            &format!("notification.{channel}"),
            notification_exchange(),
            &[channel],
        )
        .produced_by(&["notification"])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_requested_wait_moves_to_the_first_tier_long_enough() {
        let policy = RetryPolicy::default();
        // Without a request, attempt n waits tier n (the last tier after that).
        assert_eq!(policy.tier(1, Duration::ZERO), 0);
        assert_eq!(policy.tier(3, Duration::ZERO), 2);
        assert_eq!(policy.tier(9, Duration::ZERO), 3);
        // Retry-After: 5 s after the first attempt waits 10 s, never less than its own tier.
        assert_eq!(
            policy.delay(1, Duration::from_secs(5)),
            Duration::from_secs(10)
        );
        assert_eq!(policy.tier(3, Duration::from_secs(5)), 2);
        // Longer than every tier: the last one.
        assert_eq!(
            policy.delay(1, Duration::from_secs(7200)),
            Duration::from_secs(600)
        );
    }

    #[test]
    fn names_are_prefixed_and_labelled() {
        let names = Names::new("t1");
        let queue = platform::audit_events();
        assert_eq!(names.queue(&queue), "t1.audit.events");
        assert_eq!(names.dead_letter_queue(&queue), "t1.audit.events.dlq");
        assert_eq!(
            names.retry_queues(&queue),
            [
                "t1.audit.events.retry.1s",
                "t1.audit.events.retry.10s",
                "t1.audit.events.retry.1m",
                "t1.audit.events.retry.10m"
            ]
        );
        assert_eq!(delay_label(Duration::from_millis(250)), "250ms");
        assert_eq!(names.all_queues(&queue).len(), 6);
    }
}
