//! The broker goes away in the middle of a 10,000-message flow — `rabbitmqctl stop_app` /
//! `start_app`, and `rabbitmqctl close_all_connections` — and the flow finishes by itself: no
//! message lost, none with a second effect, publishers (the outbox relay) and consumers back
//! without a restart, health NOT_SERVING meanwhile and SERVING again after.
//!
//! A binary of its own: these tests disturb every connection to the broker, so they must not
//! share a run with other tests (cargo runs test binaries one after another) nor with each
//! other (a lock).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use opsconductor_api::audit::v1::AuditEvent;
use opsconductor_messaging::{
    Broker, Consumer, Exchange, HandleError, Handlers, Inbox, Outbox, OutgoingMessage, Received,
    RelayOptions, Topology, WorkQueue,
};
use opsconductor_platform::client::check_health;
use opsconductor_platform::config::ServerConfig;
use opsconductor_platform::health::ServingStatusPb;
use opsconductor_platform::server::ServiceServer;
use opsconductor_storage::testing::TestDatabase;
use opsconductor_storage::{Backend, Database};
use opsconductor_testkit::{rabbitmqctl, Running, TestBroker};

static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const MESSAGES: usize = 10_000;

async fn count(db: &Database, sql: &str) -> i64 {
    let (n,): (i64,) = sqlx::query_as(sql)
        .fetch_one(db.pool())
        .await
        .expect("count");
    n
}

/// Runs the flow and calls `disrupt` once a fifth of the messages had their effect.
async fn flow_survives(disrupt: fn(), disrupt_takes_seconds: bool) {
    let _serial = SERIAL.lock().await;
    let tb = TestBroker::new();
    let queue = WorkQueue::new("chaos.items", Exchange::topic("chaos"), &["#"]);
    tb.track(&queue);

    // The producing service: its database with the outbox, its own connection and relay.
    let producer = TestDatabase::new(Backend::Sqlite)
        .await
        .expect("producer db");
    producer
        .db
        .migrate(&opsconductor_messaging::migrations())
        .await
        .expect("migrations");
    let outbox = Outbox::new(producer.db.clone());
    let producer_broker =
        Broker::start(tb.config("producer"), Topology::new().queue(queue.clone()));
    let relay = outbox.start_relay(&producer_broker, RelayOptions::default());

    // The consuming service: PostgreSQL with an inbox, its own connection, a health endpoint.
    let consumer_db = TestDatabase::new(Backend::Postgres)
        .await
        .expect("consumer db");
    consumer_db
        .db
        .migrate(&opsconductor_messaging::migrations())
        .await
        .expect("migrations");
    sqlx::query("CREATE TABLE effects (message_id TEXT NOT NULL)")
        .execute(consumer_db.db.pool())
        .await
        .unwrap();
    let consumer_broker =
        Broker::start(tb.config("consumer"), Topology::new().queue(queue.clone()));
    let inbox = Inbox::new("chaos").counted_by(&consumer_broker);
    let handlers = {
        let db = consumer_db.db.clone();
        Handlers::new().on(move |received: Received<AuditEvent>| {
            let (db, inbox) = (db.clone(), inbox.clone());
            async move {
                let mut tx = db.pool().begin().await?;
                if inbox.record(&mut tx, &received.meta.message_id).await? {
                    sqlx::query("INSERT INTO effects (message_id) VALUES ($1)")
                        .bind(&received.meta.message_id)
                        .execute(&mut *tx)
                        .await?;
                }
                tx.commit().await?;
                Ok::<(), HandleError>(())
            }
        })
    };
    let consumer = Consumer::work(&consumer_broker, &queue, handlers)
        .concurrency(16)
        .prefetch(64)
        .start();
    let mut config = ServerConfig::local("127.0.0.1:0".parse().unwrap());
    config.health_interval = Duration::from_millis(100);
    let server = ServiceServer::new(
        "consumer",
        config,
        tonic::service::Routes::default(),
        Vec::<String>::new(),
    )
    .depends_on(consumer_broker.health_check())
    .bind()
    .await
    .expect("bind");
    let health = server.health().clone();
    let server = Running::start(server);
    assert!(consumer.wait_subscribed(Duration::from_secs(30)).await);

    // Watch health the way an orchestrator would.
    let saw_not_serving = Arc::new(AtomicBool::new(false));
    let watching = Arc::new(AtomicBool::new(true));
    let watcher = {
        let (url, saw, watching) = (
            server.url.clone(),
            saw_not_serving.clone(),
            watching.clone(),
        );
        tokio::spawn(async move {
            while watching.load(Ordering::SeqCst) {
                if let Ok(ServingStatusPb::NotServing) =
                    check_health(&url, "", Duration::from_secs(1)).await
                {
                    saw.store(true, Ordering::SeqCst);
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
    };

    // The writer: 10,000 messages in transactions of 50, paced, whatever the broker does.
    let exchange = tb.names().exchange(&queue.exchange);
    let writer = {
        let (db, outbox) = (producer.db.clone(), outbox.clone());
        tokio::spawn(async move {
            for batch in 0..MESSAGES / 50 {
                let mut tx = db.pool().begin().await.expect("begin");
                for i in 0..50 {
                    let event = AuditEvent {
                        id: uuid::Uuid::now_v7().to_string(),
                        resource_id: format!("{batch}-{i}"),
                        ..Default::default()
                    };
                    let message = OutgoingMessage::new(exchange.clone(), "item.chaos", &event);
                    outbox.stage(&mut tx, &message).await.expect("stage");
                }
                outbox.commit(tx).await.expect("commit");
                tokio::time::sleep(Duration::from_millis(15)).await;
            }
        })
    };

    let started = Instant::now();
    while count(&consumer_db.db, "SELECT COUNT(*) FROM effects").await < (MESSAGES / 5) as i64 {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the flow never got going"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::task::spawn_blocking(disrupt).await.expect("disrupt");

    writer.await.expect("the writer finished");
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        let total = count(&consumer_db.db, "SELECT COUNT(*) FROM effects").await;
        if total >= MESSAGES as i64 && outbox.pending().await.unwrap() == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "stuck at {total} effects, {} pending in the outbox",
            outbox.pending().await.unwrap()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Late redeliveries must not add effects either.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let total = count(&consumer_db.db, "SELECT COUNT(*) FROM effects").await;
    let distinct = count(
        &consumer_db.db,
        "SELECT COUNT(DISTINCT message_id) FROM effects",
    )
    .await;
    assert_eq!(distinct, MESSAGES as i64, "no message lost");
    assert_eq!(total, MESSAGES as i64, "no message had a second effect");

    assert!(
        producer_broker.metrics().connections >= 2,
        "the publisher reconnected"
    );
    assert!(
        consumer_broker.metrics().connections >= 2,
        "the consumer reconnected"
    );
    assert!(consumer.is_subscribed());
    // A probe may poll between a short outage's start and end; the server counts them all.
    assert!(health.outages() >= 1, "health went NOT_SERVING");
    if disrupt_takes_seconds {
        assert!(
            saw_not_serving.load(Ordering::SeqCst),
            "a probe saw NOT_SERVING"
        );
    }
    let recovered = Instant::now();
    loop {
        if let Ok(ServingStatusPb::Serving) =
            check_health(&server.url, "", Duration::from_secs(1)).await
        {
            break;
        }
        assert!(
            recovered.elapsed() < Duration::from_secs(10),
            "health never came back"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    watching.store(false, Ordering::SeqCst);
    let _ = watcher.await;
    eprintln!(
        "flow done in {:?}: producer {:?}, consumer {:?}",
        started.elapsed(),
        producer_broker.metrics(),
        consumer_broker.metrics()
    );

    relay.shutdown(Duration::from_secs(5)).await;
    consumer.shutdown(Duration::from_secs(5)).await;
    server.stop().await.expect("server stops");
    producer_broker.close().await;
    consumer_broker.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_restart_mid_flow_loses_nothing_and_doubles_nothing() {
    flow_survives(
        || {
            rabbitmqctl(&["stop_app"]);
            std::thread::sleep(Duration::from_secs(1));
            rabbitmqctl(&["start_app"]);
        },
        true,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closed_connections_mid_flow_lose_nothing_and_double_nothing() {
    flow_survives(
        || {
            rabbitmqctl(&["close_all_connections", "chaos drill"]);
        },
        false,
    )
    .await;
}

/// The notification service through a broker restart: 300 webhook deliveries under way when
/// RabbitMQ stops for two seconds. The sends keep being accepted (their deliveries wait in the
/// outbox); every delivery reaches the receiver, and no webhook-id arrives twice (a redelivered
/// message finds its delivery delivered, or held by the worker still sending it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notifications_survive_a_broker_restart_without_duplicates() {
    use std::collections::HashSet;

    use opsconductor_api::common::v1::NotificationChannel;
    use opsconductor_api::notification::v1::send_notification_request::{Content, Recipient};
    use opsconductor_api::notification::v1::{LiteralContent, SendNotificationRequest};
    use opsconductor_testkit::{HttpSink, Reply, Sandbox, StorageBackend};

    const N: usize = 300;
    let _serial = SERIAL.lock().await;
    let s = Sandbox::start_with(
        StorageBackend::Postgres,
        &[("NOTIFICATION_RATE_PER_MINUTE", "0")],
    )
    .await;
    let sink = HttpSink::start().await;
    sink.script(
        "/restart",
        vec![Reply::status(200).delay(Duration::from_millis(10)); N],
    );
    let url = sink.url("/restart");
    let clients = s.clients_as(&s.admin.access_token);
    let sender = tokio::spawn(async move {
        for i in 0..N {
            let request = SendNotificationRequest {
                idempotency_key: format!("restart-{i}"),
                channel: NotificationChannel::Webhook as i32,
                recipient: Some(Recipient::Destination(url.clone())),
                event_type: "test".into(),
                content: Some(Content::Literal(LiteralContent {
                    subject: String::new(),
                    body: format!(r#"{{"i": {i}}}"#),
                })),
                ..Default::default()
            };
            // A call that fails while the broker is away is retried under its key, for as long
            // as a restart may take.
            let until = Instant::now() + Duration::from_secs(180);
            loop {
                assert!(
                    Instant::now() < until,
                    "a notification was refused for 3 minutes"
                );
                match clients
                    .notification()
                    .send_notification(request.clone())
                    .await
                {
                    Ok(_) => break,
                    Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                }
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    });
    sink.wait_for("/restart", N / 5, Duration::from_secs(60))
        .await;
    rabbitmqctl(&["stop_app"]);
    tokio::time::sleep(Duration::from_secs(2)).await;
    rabbitmqctl(&["start_app"]);
    sender.await.expect("sender");
    let got = sink.wait_for("/restart", N, Duration::from_secs(180)).await;
    let ids: Vec<String> = got
        .iter()
        .map(|r| r.headers["webhook-id"].to_str().unwrap().to_string())
        .collect();
    assert_eq!(
        ids.iter().collect::<HashSet<_>>().len(),
        N,
        "every delivery arrived"
    );
    assert_eq!(ids.len(), N, "none twice");
    // Redelivered copies settle without sending.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(sink.received("/restart").len(), N);
    s.stop().await;
}
