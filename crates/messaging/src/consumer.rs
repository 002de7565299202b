//! The consumer runtime: subscribes on every broker session, runs handlers with bounded
//! prefetch and concurrency, acknowledges only after a handler succeeded, moves failures along
//! the retry ladder to the dead-letter queue, and shuts down by finishing what is in flight.

use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use futures::StreamExt;
use lapin::message::Delivery;
use lapin::options::{
    BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicNackOptions, BasicQosOptions,
    QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::{FieldTable, ShortString};
use lapin::Channel;
use tokio::sync::{watch, Semaphore};
use tokio::task::{JoinHandle, JoinSet};
use tracing::Instrument;

use crate::broker::{Broker, Session};
use crate::handler::{Dispatch, Handlers, Outcome, RawMessage};
use crate::message::{headers, MessageMeta, OutgoingMessage};
use crate::metrics::Metrics;
use crate::topology::{self, Broadcast, WorkQueue};

/// How a consumer takes deliveries.
#[derive(Debug, Clone)]
pub struct ConsumerOptions {
    /// Unacknowledged deliveries the broker sends ahead.
    pub prefetch: u16,
    /// Handlers running at once.
    pub concurrency: usize,
    /// A handler running longer fails its attempt (and is retried like any failure).
    pub handler_timeout: Duration,
    /// Pause before a delivery goes back to its queue when it could not be moved along.
    pub failure_pause: Duration,
}

impl Default for ConsumerOptions {
    fn default() -> Self {
        ConsumerOptions {
            prefetch: 32,
            concurrency: 8,
            handler_timeout: Duration::from_secs(60),
            failure_pause: Duration::from_secs(1),
        }
    }
}

#[derive(Clone)]
enum Source {
    /// A work queue: failures climb the retry ladder, then dead-letter.
    Work(WorkQueue),
    /// A work queue's dead-letter queue, drained into a store: failures are requeued.
    DeadLetters(WorkQueue),
    /// An exclusive queue of this instance: failures are logged and dropped.
    Broadcast(Broadcast),
}

type OnConnect = Arc<dyn Fn() -> BoxFuture<'static, ()> + Send + Sync>;

/// A consumer, configured and not yet running.
pub struct Consumer {
    broker: Broker,
    source: Source,
    dispatch: Arc<dyn Dispatch>,
    options: ConsumerOptions,
    on_connect: Option<OnConnect>,
}

impl Consumer {
    /// Competing consumption of a work queue (declared, with its ladder, on every session).
    pub fn work(broker: &Broker, queue: &WorkQueue, handlers: Handlers) -> Consumer {
        Consumer::new(broker, Source::Work(queue.clone()), Arc::new(handlers))
    }

    /// Competing consumption of a work queue whose messages `handler` takes in batches of at
    /// most `max_batch`, in delivery order (raise the prefetch and concurrency to fill them).
    pub fn batched<M, H>(
        broker: &Broker,
        queue: &WorkQueue,
        handler: H,
        max_batch: usize,
    ) -> Consumer
    where
        M: prost::Message + prost::Name + Default + Send + 'static,
        H: crate::batch::BatchHandler<M>,
    {
        let dispatch = crate::batch::Batched::start(handler, max_batch);
        Consumer::new(broker, Source::Work(queue.clone()), Arc::new(dispatch))
    }

    /// Every message of `broadcast`, on a queue of this instance's own.
    pub fn broadcast(broker: &Broker, broadcast: &Broadcast, handlers: Handlers) -> Consumer {
        Consumer::new(
            broker,
            Source::Broadcast(broadcast.clone()),
            Arc::new(handlers),
        )
    }

    pub(crate) fn dead_letters(
        broker: &Broker,
        queue: &WorkQueue,
        keeper: Arc<dyn Dispatch>,
    ) -> Consumer {
        let mut consumer = Consumer::new(broker, Source::DeadLetters(queue.clone()), keeper);
        consumer.options.concurrency = 1;
        consumer.options.prefetch = 16;
        consumer
    }

    fn new(broker: &Broker, source: Source, dispatch: Arc<dyn Dispatch>) -> Consumer {
        Consumer {
            broker: broker.clone(),
            source,
            dispatch,
            options: ConsumerOptions::default(),
            on_connect: None,
        }
    }

    pub fn options(mut self, options: ConsumerOptions) -> Consumer {
        self.options = options;
        self
    }

    pub fn prefetch(mut self, prefetch: u16) -> Consumer {
        self.options.prefetch = prefetch.max(1);
        self
    }

    pub fn concurrency(mut self, concurrency: usize) -> Consumer {
        self.options.concurrency = concurrency.max(1);
        self
    }

    pub fn handler_timeout(mut self, timeout: Duration) -> Consumer {
        self.options.handler_timeout = timeout;
        self
    }

    /// Hands on only messages signed by a key of `keys` (see [`crate::OutgoingMessage::signed`]);
    /// the rest are dead-lettered (broadcasts: when they keep dead letters) and counted.
    pub fn signed_by(mut self, keys: Arc<dyn opsconductor_platform::auth::KeySource>) -> Consumer {
        self.dispatch = Arc::new(crate::signature::Signed {
            inner: self.dispatch,
            keys,
            broker: self.broker.clone(),
        });
        self
    }

    /// Runs after every (re)subscription, before the first delivery is handled: where a
    /// broadcast consumer rebuilds what it may have missed while disconnected.
    pub fn on_connect<F, Fut>(mut self, callback: F) -> Consumer
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = ()> + Send + 'static,
    {
        self.on_connect = Some(Arc::new(move || Box::pin(callback())));
        self
    }

    /// The queue this consumer reads, as the broker names it (broadcast queues get a unique
    /// name per subscription, so this is their prefix).
    pub fn queue_name(&self) -> String {
        let names = self.broker.names();
        match &self.source {
            Source::Work(q) => names.queue(q),
            Source::DeadLetters(q) => names.dead_letter_queue(q),
            Source::Broadcast(b) => names.broadcast_queue(b),
        }
    }

    pub fn start(mut self) -> RunningConsumer {
        // With a producer trust, no work or broadcast delivery reaches a handler before its
        // producer is proven (dead letters are only stored, and checked again when replayed).
        let producers = match &self.source {
            Source::Work(q) => Some(q.producers.clone()),
            Source::Broadcast(b) => Some(b.producers.clone()),
            Source::DeadLetters(_) => None,
        };
        if let (Some(trust), Some(producers)) = (self.broker.trust(), producers) {
            self.dispatch = Arc::new(crate::producer::Produced {
                inner: self.dispatch,
                trust: trust.clone(),
                producers,
                broker: self.broker.clone(),
            });
        }
        let (stop, stop_rx) = watch::channel(false);
        let (subscribed_tx, subscribed) = watch::channel(false);
        let name = self.queue_name();
        let task = tokio::spawn(run(Arc::new(self), stop_rx, subscribed_tx));
        RunningConsumer {
            name,
            stop,
            task,
            subscribed,
        }
    }
}

/// A consumer at work.
pub struct RunningConsumer {
    name: String,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
    subscribed: watch::Receiver<bool>,
}

impl RunningConsumer {
    pub fn queue(&self) -> &str {
        &self.name
    }

    /// Whether it is subscribed on a live connection right now.
    pub fn is_subscribed(&self) -> bool {
        *self.subscribed.borrow()
    }

    pub async fn wait_subscribed(&self, timeout: Duration) -> bool {
        let mut rx = self.subscribed.clone();
        let subscribed = matches!(
            tokio::time::timeout(timeout, rx.wait_for(|s| *s)).await,
            Ok(Ok(_))
        );
        subscribed
    }

    /// Stops taking deliveries, lets those in flight finish and be acknowledged (for at most
    /// `grace`), and closes the channel; anything not acknowledged goes back to the queue.
    pub async fn shutdown(mut self, grace: Duration) {
        let _ = self.stop.send(true);
        if tokio::time::timeout(grace, &mut self.task).await.is_err() {
            tracing::warn!(queue = %self.name, "deliveries still in flight after the grace period");
            self.task.abort();
        }
    }
}

enum Ended {
    Stopped,
    Lost(String),
}

async fn run(
    consumer: Arc<Consumer>,
    mut stop: watch::Receiver<bool>,
    subscribed: watch::Sender<bool>,
) {
    let mut sessions = consumer.broker.sessions();
    let mut failures = 0u32;
    loop {
        let session = tokio::select! {
            session = sessions.wait_for(|s| s.as_ref().is_some_and(|s| s.connection.status().connected())) => match session {
                Ok(session) => session.clone(),
                Err(_) => return,
            },
            _ = stop.wait_for(|s| *s) => return,
            _ = consumer.broker.stopped() => return,
        };
        let Some(session) = session else { continue };
        match consume(&consumer, &session, &mut stop, &subscribed).await {
            Ended::Stopped => return,
            Ended::Lost(reason) => {
                subscribed.send_replace(false);
                failures = failures.saturating_add(1);
                tracing::info!(queue = %consumer.queue_name(), %reason, "consumer lost its subscription; resubscribing");
                // Wait for the broker to move on (a new connection), or retry on this one after
                // a pause if only the channel failed.
                let pause = consumer.options.failure_pause * failures.min(10);
                let generation = session.generation;
                tokio::select! {
                    _ = sessions.wait_for(|s| s.as_ref().is_none_or(|s| s.generation != generation)) => {}
                    _ = tokio::time::sleep(pause) => {}
                    _ = stop.wait_for(|s| *s) => return,
                }
            }
        }
    }
}

/// Shared by the tasks handling deliveries of one subscription.
struct Context {
    consumer: Arc<Consumer>,
    queue: String,
}

async fn subscribe(
    consumer: &Consumer,
    channel: &Channel,
) -> lapin::Result<(String, lapin::Consumer)> {
    let names = consumer.broker.names();
    channel
        .basic_qos(consumer.options.prefetch, BasicQosOptions::default())
        .await?;
    let config = consumer.broker.config();
    let queue = match &consumer.source {
        Source::Work(q) | Source::DeadLetters(q) => {
            topology::declare_work_queue(
                channel,
                names,
                q,
                config.dead_letter_strategy,
                config.declare,
            )
            .await?;
            consumer.queue_name()
        }
        Source::Broadcast(b) => {
            topology::declare_exchange(channel, names, &b.exchange, config.declare).await?;
            if b.dead_letters {
                topology::declare_broadcast_dead_letters(channel, names, b, config.declare).await?;
            }
            let name = format!(
                "{}.{}",
                names.broadcast_queue(b),
                uuid::Uuid::now_v7().simple()
            );
            let options = QueueDeclareOptions {
                exclusive: true,
                auto_delete: true,
                ..QueueDeclareOptions::default()
            };
            channel
                .queue_declare(name.as_str().into(), options, FieldTable::default())
                .await?;
            for key in &b.routing_keys {
                channel
                    .queue_bind(
                        name.as_str().into(),
                        names.exchange(&b.exchange).into(),
                        key.as_str().into(),
                        QueueBindOptions::default(),
                        FieldTable::default(),
                    )
                    .await?;
            }
            name
        }
    };
    let tag = format!(
        "opsconductor-{}-{}",
        consumer.broker.config().service,
        uuid::Uuid::now_v7().simple()
    );
    let deliveries = channel
        .basic_consume(
            ShortString::from(queue.clone()),
            ShortString::from(tag),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    Ok((queue, deliveries))
}

/// How often a consumer reads its queue's depth for `opsconductor_consumer_lag_messages`.
const LAG_SAMPLE_EVERY: std::time::Duration = std::time::Duration::from_secs(5);

async fn consume(
    consumer: &Arc<Consumer>,
    session: &Session,
    stop: &mut watch::Receiver<bool>,
    subscribed: &watch::Sender<bool>,
) -> Ended {
    let channel = match session.connection.create_channel().await {
        Ok(channel) => channel,
        Err(error) => return Ended::Lost(error.to_string()),
    };
    let (queue, mut deliveries) = match subscribe(consumer, &channel).await {
        Ok(subscription) => subscription,
        Err(error) => return Ended::Lost(format!("cannot subscribe: {error}")),
    };
    if let Some(callback) = &consumer.on_connect {
        callback().await;
    }
    subscribed.send_replace(true);
    tracing::debug!(%queue, "consuming");
    // Lag of a work queue (a broadcast queue is this instance's own, named afresh each time:
    // no series for it). Read with a passive declare on this channel, stopped with it.
    let lag = matches!(consumer.source, Source::Work(_) | Source::DeadLetters(_)).then(|| {
        let (channel, gauge, name) = (channel.clone(), consumer.broker.lag(&queue), queue.clone());
        tokio::spawn(async move {
            let passive = QueueDeclareOptions {
                passive: true,
                ..QueueDeclareOptions::default()
            };
            loop {
                match channel
                    .queue_declare(name.as_str().into(), passive, FieldTable::default())
                    .await
                {
                    Ok(q) => {
                        gauge.set(i64::from(q.message_count()));
                    }
                    Err(_) => return,
                }
                tokio::time::sleep(LAG_SAMPLE_EVERY).await;
            }
        })
    });
    let context = Arc::new(Context {
        consumer: consumer.clone(),
        queue,
    });
    let permits = Arc::new(Semaphore::new(consumer.options.concurrency));
    let mut in_flight = JoinSet::new();
    let ended = loop {
        let permit = tokio::select! {
            permit = permits.clone().acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => break Ended::Lost("closed".into()),
            },
            _ = stop.wait_for(|s| *s) => break Ended::Stopped,
        };
        tokio::select! {
            next = deliveries.next() => match next {
                Some(Ok(delivery)) => {
                    // Handed to the handler here, in delivery order (a batching handler keeps
                    // it); the work then runs concurrently.
                    let (delivery, raw, span, handling) = dispatch(&context, delivery);
                    let context = context.clone();
                    in_flight.spawn(async move {
                        finish(&context, delivery, raw, handling).instrument(span).await;
                        drop(permit);
                    });
                }
                Some(Err(error)) => break Ended::Lost(error.to_string()),
                None => break Ended::Lost("the broker cancelled the subscription".into()),
            },
            _ = stop.wait_for(|s| *s) => break Ended::Stopped,
        }
        // Reap finished handlers so the set does not grow.
        while in_flight.try_join_next().is_some() {}
    };
    if matches!(ended, Ended::Stopped) {
        // No new deliveries; those in flight finish and are acknowledged on this channel.
        let _ = channel
            .basic_cancel(deliveries.tag(), BasicCancelOptions::default())
            .await;
        while in_flight.join_next().await.is_some() {}
    } else {
        // The channel is gone: acks can no longer land and the broker redelivers those
        // messages. Let the handlers finish in the background instead of delaying the
        // resubscription; inboxes absorb the redeliveries.
        in_flight.detach_all();
    }
    if let Some(lag) = lag {
        lag.abort();
    }
    // Prefetched deliveries nobody started go back to the queue with the channel.
    let _ = channel.close(200, "consumer done".into()).await;
    ended
}

/// Starts handling `delivery`: decodes what comes with it and hands it to the handler.
fn dispatch(
    context: &Context,
    mut delivery: Delivery,
) -> (
    Delivery,
    RawMessage,
    tracing::Span,
    BoxFuture<'static, Outcome>,
) {
    let consumer = &context.consumer;
    let metrics = consumer.broker.counters();
    Metrics::add(&metrics.consumed, 1);
    if delivery.redelivered {
        Metrics::add(&metrics.redelivered, 1);
    }
    let meta = MessageMeta::from_delivery(
        delivery.exchange.as_str(),
        delivery.routing_key.as_str(),
        delivery.redelivered,
        &delivery.properties,
    );
    let span = tracing::info_span!(
        "message",
        queue = %context.queue,
        message_type = %meta.message_type,
        message_id = %meta.message_id,
        attempt = meta.attempt,
        correlation_id = meta.correlation_id.as_deref().unwrap_or(""),
        trace_id = meta.trace.as_ref().map(|t| t.trace_id()).unwrap_or(""),
        otel.name = tracing::field::Empty,
        otel.kind = tracing::field::Empty,
        messaging.system = tracing::field::Empty,
        messaging.destination.name = tracing::field::Empty,
    );
    if opsconductor_platform::telemetry::tracing_enabled() {
        // The semantic conventions' consumer span, a child of the span that published.
        span.record("otel.name", format!("{} process", context.queue));
        span.record("otel.kind", "consumer");
        span.record("messaging.system", "rabbitmq");
        span.record("messaging.destination.name", context.queue.as_str());
        if let Some(trace) = &meta.trace {
            opsconductor_platform::telemetry::propagation::adopt_message(
                &span,
                &trace.traceparent,
                trace.tracestate.as_deref(),
            );
        }
    }
    // The delivery keeps only what acknowledging needs.
    let raw = RawMessage {
        body: std::mem::take(&mut delivery.data),
        meta,
        properties: std::mem::take(&mut delivery.properties),
    };
    let handling = span.in_scope(|| consumer.dispatch.dispatch(&raw));
    (delivery, raw, span, handling)
}

/// Waits for the handler (bounded by the handler timeout) and settles the delivery.
async fn finish(
    context: &Context,
    delivery: Delivery,
    raw: RawMessage,
    handling: BoxFuture<'static, Outcome>,
) {
    let timeout = context.consumer.options.handler_timeout;
    let outcome = match tokio::time::timeout(timeout, handling).await {
        Ok(outcome) => outcome,
        Err(_) => Outcome::Retry(format!("the handler did not finish within {timeout:?}")),
    };
    settle(context, &delivery, &raw, outcome).await;
}

async fn settle(context: &Context, delivery: &Delivery, raw: &RawMessage, outcome: Outcome) {
    let consumer = &context.consumer;
    let metrics = consumer.broker.counters();
    let error = match outcome {
        Outcome::Done => return ack(delivery, metrics).await,
        Outcome::Requeue(error) => {
            tracing::warn!(%error, "cannot take the message in; it goes back to the queue");
            return requeue(delivery, consumer.options.failure_pause).await;
        }
        Outcome::Retry(error) => (error, Some(Duration::ZERO)),
        Outcome::RetryAfter(error, after) => (error, Some(after)),
        Outcome::DeadLetter(error) => (error, None),
    };
    let (error, wait_at_least) = error;
    let retryable = wait_at_least.is_some();
    let queue = match &consumer.source {
        Source::Work(queue) => queue,
        Source::DeadLetters(_) => {
            tracing::warn!(%error, "dead letter not stored; it goes back to its queue");
            return requeue(delivery, consumer.options.failure_pause).await;
        }
        Source::Broadcast(broadcast) => {
            let names = consumer.broker.names();
            if retryable || !broadcast.dead_letters {
                // Nothing to retry into: broadcast state is rebuilt on reconnect instead.
                tracing::warn!(%error, "broadcast message failed; dropped");
                return ack(delivery, metrics).await;
            }
            let target = names.broadcast_dead_letter_queue(broadcast);
            let message = forward(
                raw,
                &target,
                raw.meta.attempt,
                &error,
                Some(names.broadcast_queue(broadcast)),
            );
            return dead_letter(consumer, delivery, &message, &error, &target).await;
        }
    };
    let names = consumer.broker.names();
    let attempt = raw.meta.attempt;
    let retry_queues = names.retry_queues(queue);
    let (target, next_attempt) = if retryable && attempt < queue.retry.max_attempts {
        let tier = queue.retry.tier(attempt, wait_at_least.unwrap_or_default());
        match retry_queues.get(tier) {
            Some(tier) => (tier.clone(), attempt + 1),
            None => (names.dead_letter_queue(queue), attempt),
        }
    } else {
        (names.dead_letter_queue(queue), attempt)
    };
    let dead = next_attempt == attempt;
    let message = forward(
        raw,
        &target,
        next_attempt,
        &error,
        dead.then(|| names.queue(queue)),
    );
    if dead {
        return dead_letter(consumer, delivery, &message, &error, &target).await;
    }
    match consumer.broker.forwarder().publish(&message).await {
        Ok(()) => {
            Metrics::add(&metrics.retried, 1);
            tracing::info!(%error, attempt, delay_queue = %target, "message failed; retrying later");
            ack(delivery, metrics).await;
        }
        Err(publish_error) => {
            tracing::warn!(%error, %publish_error, "cannot move the failed message on; it goes back to the queue");
            requeue(delivery, consumer.options.failure_pause).await;
        }
    }
}

/// Moves a failed delivery to `target`, its dead-letter queue, then acknowledges it.
async fn dead_letter(
    consumer: &Consumer,
    delivery: &Delivery,
    message: &OutgoingMessage,
    error: &str,
    target: &str,
) {
    let metrics = consumer.broker.counters();
    match consumer.broker.forwarder().publish(message).await {
        Ok(()) => {
            Metrics::add(&metrics.dead_lettered, 1);
            tracing::warn!(%error, attempt = message.attempt, dead_letter_queue = %target, "message dead-lettered");
            ack(delivery, metrics).await;
        }
        Err(publish_error) => {
            tracing::warn!(%error, %publish_error, "cannot move the failed message on; it goes back to the queue");
            requeue(delivery, consumer.options.failure_pause).await;
        }
    }
}

/// A copy of `raw` for a delay or dead-letter queue: same id, type, body and trace; failure
/// details in headers. RabbitMQ's own `x-death` history is left behind.
fn forward(
    raw: &RawMessage,
    queue: &str,
    attempt: u32,
    error: &str,
    dead_from: Option<String>,
) -> OutgoingMessage {
    let meta = &raw.meta;
    let mut carried = meta.headers.clone();
    for header in [
        headers::X_DEATH,
        headers::ATTEMPT,
        headers::TRACEPARENT,
        headers::TRACESTATE,
    ] {
        carried.remove(header);
    }
    let now = now_text();
    carried.insert(headers::LAST_ERROR.into(), truncate(error, 2000));
    carried
        .entry(headers::FIRST_FAILURE_TIME.into())
        .or_insert_with(|| now.clone());
    carried
        .entry(headers::ORIGINAL_EXCHANGE.into())
        .or_insert_with(|| meta.exchange.clone());
    carried
        .entry(headers::ORIGINAL_ROUTING_KEY.into())
        .or_insert_with(|| meta.routing_key.clone());
    if let Some(original_queue) = dead_from {
        carried.insert(headers::ORIGINAL_QUEUE.into(), original_queue);
        if let Some(user_id) = &meta.user_id {
            carried.insert(headers::ORIGINAL_USER_ID.into(), user_id.clone());
        }
        carried.insert(
            headers::DEAD_LETTER_ID.into(),
            uuid::Uuid::now_v7().to_string(),
        );
        carried.insert(headers::DEAD_LETTER_TIME.into(), now);
    }
    OutgoingMessage {
        exchange: String::new(),
        routing_key: queue.to_string(),
        message_type: meta.message_type.clone(),
        message_id: meta.message_id.clone(),
        correlation_id: meta.correlation_id.clone(),
        body: raw.body.clone(),
        timestamp: raw
            .properties
            .timestamp()
            .unwrap_or_else(opsconductor_platform::time::now_secs),
        trace: meta.trace.clone(),
        attempt,
        headers: carried,
        mandatory: true,
    }
}

pub(crate) fn now_text() -> String {
    prost_types::Timestamp::from(std::time::SystemTime::now()).to_string()
}

fn truncate(text: &str, max: usize) -> String {
    let mut end = text.len().min(max);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].to_string()
}

async fn ack(delivery: &Delivery, metrics: &Metrics) {
    match delivery.ack(BasicAckOptions::default()).await {
        Ok(_) => Metrics::add(&metrics.acked, 1),
        // The channel is gone: the broker redelivers, and inboxes absorb the repeat.
        Err(error) => tracing::debug!(%error, "ack failed; the message will be redelivered"),
    }
}

async fn requeue(delivery: &Delivery, pause: Duration) {
    tokio::time::sleep(pause).await;
    let _ = delivery
        .nack(BasicNackOptions {
            requeue: true,
            ..BasicNackOptions::default()
        })
        .await;
}
