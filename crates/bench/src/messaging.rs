//! Messaging throughput and latency: the platform's publisher and consumer against raw lapin
//! with the same settings — persistent messages, publisher confirms pipelined within a window
//! of 1024, a quorum queue, manual acks, prefetch 256, 256-byte bodies — in alternating rounds
//! of the same run. Then the latency from an outbox commit to the consumer's handler.

use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use anyhow::Context;
use futures::stream::FuturesUnordered;
use futures::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::{BasicProperties, Confirmation, Connection, ConnectionProperties};
use opsconductor_api::audit::v1::AuditEvent;
use opsconductor_messaging::{
    Broker, BrokerConfig, Consumer, Exchange, HandleError, Handlers, Outbox, OutgoingMessage,
    Received, RelayOptions, Topology, WorkQueue,
};
use opsconductor_storage::Database;
use prost::Message;
use tokio::sync::mpsc;

use crate::stats::ms;

const WINDOW: usize = 1024;
const PREFETCH: u16 = 256;

fn clock() -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    START.get_or_init(Instant::now).elapsed().as_nanos() as u64
}

/// A 256-byte body that carries its send time.
fn body(sent: u64) -> Vec<u8> {
    let mut event = AuditEvent {
        id: "01900000-0000-7000-8000-000000000000".into(),
        sequence: sent,
        action: "bench.message".into(),
        ..Default::default()
    };
    // The pad's own framing takes a few bytes: grow it until the body is 256 bytes.
    let mut pad = 0;
    loop {
        event.details.insert("pad".into(), "x".repeat(pad));
        if event.encoded_len() >= 256 {
            return event.encode_to_vec();
        }
        pad += 1;
    }
}

/// Throughput and latency of one round.
struct Figures {
    per_second: f64,
    p50: Duration,
    p99: Duration,
}

fn figures(count: usize, elapsed: Duration, mut latencies: Vec<u64>) -> Figures {
    latencies.sort_unstable();
    let at = |q: f64| {
        let i = ((latencies.len() as f64 * q) as usize).min(latencies.len().saturating_sub(1));
        Duration::from_nanos(latencies.get(i).copied().unwrap_or(0))
    };
    Figures {
        per_second: count as f64 / elapsed.as_secs_f64(),
        p50: at(0.50),
        p99: at(0.99),
    }
}

pub async fn run(messages: usize, rounds: usize) -> anyhow::Result<()> {
    let url = std::env::var("AMQP_URL")
        .unwrap_or_else(|_| opsconductor_messaging::DEFAULT_AMQP_URL.to_string());
    let id = uuid::Uuid::now_v7().simple().to_string();
    let prefix = format!("bench-{}", &id[id.len() - 8..]);
    println!(
        "{messages} messages of {} bytes per round, window {WINDOW}, prefetch {PREFETCH}",
        body(0).len()
    );
    let queue = WorkQueue::new("bench.platform", Exchange::topic("bench"), &["#"]);
    let mut ratios = Vec::new();
    for round in 1..=rounds {
        let raw = raw_round(&url, &format!("{prefix}.raw"), messages).await?;
        let platform = platform_round(&url, &prefix, &queue, messages).await?;
        let ratio = platform.per_second / raw.per_second;
        println!(
            "round {round}: raw lapin {:.0} msg/s (p50 {:.1} ms, p99 {:.1} ms) | platform {:.0} msg/s \
             (p50 {:.1} ms, p99 {:.1} ms) | ratio {ratio:.3}",
            raw.per_second,
            ms(raw.p50),
            ms(raw.p99),
            platform.per_second,
            ms(platform.p50),
            ms(platform.p99),
        );
        ratios.push(ratio);
    }
    ratios.sort_by(f64::total_cmp);
    println!(
        "publish + consume: median ratio {:.3} (platform / raw lapin) over {rounds} rounds",
        ratios[rounds / 2]
    );
    let outbox = outbox_latency(&url, &prefix, &queue, 500).await?;
    println!(
        "outbox commit -> consumer handler, one message at a time: p50 {:.1} ms, p99 {:.1} ms",
        ms(outbox.p50),
        ms(outbox.p99)
    );
    cleanup(&url, &prefix, &queue).await
}

/// Raw lapin: one connection publishing pipelined, another consuming with manual acks.
async fn raw_round(url: &str, queue: &str, count: usize) -> anyhow::Result<Figures> {
    let publisher = Connection::connect(url, ConnectionProperties::default()).await?;
    let consumer = Connection::connect(url, ConnectionProperties::default()).await?;
    let channel = publisher.create_channel().await?;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    let mut args = FieldTable::default();
    args.insert(
        "x-queue-type".into(),
        AMQPValue::LongString(LongString::from(b"quorum".to_vec())),
    );
    let durable = QueueDeclareOptions {
        durable: true,
        ..QueueDeclareOptions::default()
    };
    channel.queue_declare(queue.into(), durable, args).await?;

    let consume = consumer.create_channel().await?;
    consume
        .basic_qos(PREFETCH, BasicQosOptions::default())
        .await?;
    let mut deliveries = consume
        .basic_consume(
            queue.into(),
            "bench-raw".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    let receiver = tokio::spawn(async move {
        let mut latencies = Vec::with_capacity(count);
        while latencies.len() < count {
            let Some(Ok(delivery)) = deliveries.next().await else {
                break;
            };
            if let Ok(event) = AuditEvent::decode(delivery.data.as_slice()) {
                latencies.push(clock().saturating_sub(event.sequence));
            }
            let _ = delivery.ack(BasicAckOptions::default()).await;
        }
        latencies
    });

    let started = Instant::now();
    let mut in_flight = FuturesUnordered::new();
    for _ in 0..count {
        while in_flight.len() >= WINDOW {
            in_flight.next().await;
        }
        let mut headers = FieldTable::default();
        headers.insert("x-attempt".into(), AMQPValue::LongLongInt(1));
        let properties = BasicProperties::default()
            .with_delivery_mode(2)
            .with_content_type("application/protobuf".into())
            .with_message_id(uuid::Uuid::now_v7().to_string().into())
            .with_type("opsconductor.audit.v1.AuditEvent".into())
            .with_headers(headers);
        let confirm = channel
            .basic_publish(
                "".into(),
                queue.into(),
                BasicPublishOptions {
                    mandatory: true,
                    ..BasicPublishOptions::default()
                },
                &body(clock()),
                properties,
            )
            .await?;
        in_flight.push(async move { matches!(confirm.await, Ok(Confirmation::Ack(None))) });
    }
    while in_flight.next().await.is_some() {}
    let latencies = receiver.await?;
    let elapsed = started.elapsed();
    anyhow::ensure!(latencies.len() == count, "raw round lost messages");
    publisher.close(200, "done".into()).await?;
    consumer.close(200, "done".into()).await?;
    Ok(figures(count, elapsed, latencies))
}

/// The platform as services run it: a Broker per side, each message signed by its producer
/// and checked by the consumer, `publish_each`, a `Consumer` with a typed handler.
async fn platform_round(
    url: &str,
    prefix: &str,
    queue: &WorkQueue,
    count: usize,
) -> anyhow::Result<Figures> {
    let mut config = BrokerConfig::new(url, prefix, "bench")?;
    config.confirm_window = WINDOW;
    let auth = opsconductor_testkit::TestAuth::new();
    let topology = Topology::new().queue(queue.clone());
    let publisher = Broker::start_trusted(
        config.clone(),
        topology.clone(),
        auth.producer_trust("bench"),
    );
    // For the cost breakdown in docs/benchmarks.md: the consumer skips the producer checks.
    let consumer_broker = if std::env::var("OPSCONDUCTOR_BENCH_UNCHECKED_CONSUMER").is_ok() {
        Broker::start(config, topology)
    } else {
        Broker::start_trusted(config, topology, auth.producer_trust("consumer"))
    };
    anyhow::ensure!(
        publisher.wait_connected(Duration::from_secs(10)).await,
        "no broker"
    );
    let latencies = Arc::new(Mutex::new(Vec::with_capacity(count)));
    let (done_tx, mut done) = mpsc::unbounded_channel();
    let handlers = {
        let latencies = latencies.clone();
        Handlers::new().on(move |received: Received<AuditEvent>| {
            let latencies = latencies.clone();
            let done_tx = done_tx.clone();
            async move {
                let mut all = latencies.lock().unwrap_or_else(|e| e.into_inner());
                all.push(clock().saturating_sub(received.message.sequence));
                if all.len() == count {
                    let _ = done_tx.send(());
                }
                Ok::<(), HandleError>(())
            }
        })
    };
    let consumer = Consumer::work(&consumer_broker, queue, handlers)
        .prefetch(PREFETCH)
        .concurrency(64)
        .start();
    anyhow::ensure!(
        consumer.wait_subscribed(Duration::from_secs(10)).await,
        "consumer did not subscribe"
    );
    let template = OutgoingMessage::new(
        publisher.names().exchange(&queue.exchange),
        "bench.message",
        &AuditEvent::default(),
    );
    let started = Instant::now();
    // One pipelined stream, like the raw side's single sliding window; each message is built
    // and stamped only when the window has room for it.
    let results = publisher
        .publisher()
        .publish_each((0..count).map(|_| {
            let mut message = template.clone();
            message.message_id = uuid::Uuid::now_v7().to_string();
            message.body = body(clock());
            message
        }))
        .await;
    anyhow::ensure!(results.iter().all(Result::is_ok), "platform publish failed");
    tokio::time::timeout(Duration::from_secs(120), done.recv())
        .await
        .context("platform round did not finish")?;
    let elapsed = started.elapsed();
    anyhow::ensure!(
        consumer_broker.metrics().forgeries_refused == 0,
        "the consumer refused the producer's signatures"
    );
    consumer.shutdown(Duration::from_secs(5)).await;
    publisher.close().await;
    consumer_broker.close().await;
    let latencies = std::mem::take(&mut *latencies.lock().unwrap_or_else(|e| e.into_inner()));
    Ok(figures(count, elapsed, latencies))
}

/// One message at a time: stage in a SQLite transaction, commit (which wakes the relay), and
/// wait for the consumer's handler.
async fn outbox_latency(
    url: &str,
    prefix: &str,
    queue: &WorkQueue,
    samples: usize,
) -> anyhow::Result<Figures> {
    let dir = tempfile::tempdir()?;
    let db = Database::open_sqlite_file(&dir.path().join("outbox.db")).await?;
    db.migrate(&opsconductor_messaging::migrations()).await?;
    let outbox = Outbox::new(db.clone());
    let broker = Broker::start(
        BrokerConfig::new(url, prefix, "bench")?,
        Topology::new().queue(queue.clone()),
    );
    anyhow::ensure!(
        broker.wait_connected(Duration::from_secs(10)).await,
        "no broker"
    );
    let relay = outbox.start_relay(&broker, RelayOptions::default());
    let (seen_tx, mut seen) = mpsc::unbounded_channel();
    let handlers = Handlers::new().on(move |received: Received<AuditEvent>| {
        let seen_tx = seen_tx.clone();
        async move {
            let _ = seen_tx.send(clock().saturating_sub(received.message.sequence));
            Ok::<(), HandleError>(())
        }
    });
    let consumer = Consumer::work(&broker, queue, handlers).start();
    anyhow::ensure!(
        consumer.wait_subscribed(Duration::from_secs(10)).await,
        "no consumer"
    );
    let exchange = broker.names().exchange(&queue.exchange);
    let mut latencies = Vec::with_capacity(samples);
    let started = Instant::now();
    for _ in 0..samples {
        let event = AuditEvent {
            sequence: clock(),
            ..Default::default()
        };
        let mut tx = db.begin().await?;
        outbox
            .stage(
                &mut tx,
                &OutgoingMessage::new(exchange.clone(), "bench.outbox", &event),
            )
            .await?;
        outbox.commit(tx).await?;
        let latency = tokio::time::timeout(Duration::from_secs(10), seen.recv())
            .await
            .context("an outbox message never arrived")?
            .context("consumer stopped")?;
        latencies.push(latency);
    }
    let elapsed = started.elapsed();
    relay.shutdown(Duration::from_secs(5)).await;
    consumer.shutdown(Duration::from_secs(5)).await;
    broker.close().await;
    Ok(figures(samples, elapsed, latencies))
}

/// Deletes the queues of `queue` under `prefix`, its exchange and the auth exchange.
pub async fn cleanup(url: &str, prefix: &str, queue: &WorkQueue) -> anyhow::Result<()> {
    let connection = Connection::connect(url, ConnectionProperties::default()).await?;
    let channel = connection.create_channel().await?;
    let names = opsconductor_messaging::Names::new(prefix);
    let mut queues = names.all_queues(queue);
    queues.push(format!("{prefix}.raw"));
    for name in queues {
        channel
            .queue_delete(name.into(), QueueDeleteOptions::default())
            .await?;
    }
    for exchange in [
        queue.exchange.clone(),
        opsconductor_messaging::topology::platform::auth_exchange(),
    ] {
        channel
            .exchange_delete(
                names.exchange(&exchange).into(),
                lapin::options::ExchangeDeleteOptions::default(),
            )
            .await?;
    }
    connection.close(200, "done".into()).await?;
    Ok(())
}
