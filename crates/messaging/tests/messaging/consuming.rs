//! Consuming: acks after the effect, the retry ladder, duplicates, a consumer that dies with a
//! message in hand, broadcasts, graceful shutdown.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use opsconductor_api::audit::v1::AuditEvent;
use opsconductor_messaging::{
    Broadcast, Broker, Consumer, Exchange, HandleError, Handlers, Inbox, Received, Topology,
};
use opsconductor_storage::Backend;
use opsconductor_testkit::TestBroker;
use tokio::sync::{mpsc, Notify};

use crate::support::{eventually, item, work_queue, Effects, WAIT};

fn recording(effects: &Effects, inbox: &Inbox) -> Handlers {
    let db = effects.db().clone();
    let inbox = inbox.clone();
    Handlers::new().on(move |received: Received<AuditEvent>| {
        let (db, inbox) = (db.clone(), inbox.clone());
        async move { Effects::apply(&db, &inbox, &received).await }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_message_has_one_effect_and_duplicates_none() {
    let tb = TestBroker::new();
    let queue = work_queue(&tb);
    let effects = Effects::new(Backend::Sqlite).await;
    let broker = Broker::start(tb.config("worker"), Topology::new().queue(queue.clone()));
    let inbox = Inbox::new("worker").counted_by(&broker);
    let consumer = Consumer::work(&broker, &queue, recording(&effects, &inbox))
        .concurrency(8)
        .start();
    assert!(consumer.wait_subscribed(WAIT).await);

    let messages: Vec<_> = (0..500).map(|i| item(&tb, &format!("m{i}"))).collect();
    let publisher = broker.publisher();
    assert!(publisher
        .publish_all(&messages)
        .await
        .iter()
        .all(Result::is_ok));
    // The same messages again, as a publisher retrying after lost confirms would.
    let again = &messages[..50];
    assert!(publisher.publish_all(again).await.iter().all(Result::is_ok));

    eventually("500 effects and 50 duplicates seen", WAIT, || async {
        effects.total().await == 500 && broker.metrics().duplicates == 50
    })
    .await;
    assert_eq!(effects.distinct().await, 500);
    let metrics = broker.metrics();
    assert_eq!(metrics.consumed, 550);
    assert_eq!(metrics.retried + metrics.dead_lettered, 0);
    eventually("every delivery acknowledged", WAIT, || async {
        broker.metrics().acked == 550
    })
    .await;
    assert_eq!(tb.message_count(&tb.names().queue(&queue)).await, 0);
    consumer.shutdown(Duration::from_secs(5)).await;
    broker.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_message_climbs_the_delay_ladder_until_it_succeeds() {
    let tb = TestBroker::new();
    let queue = work_queue(&tb);
    let broker = Broker::start(tb.config("worker"), Topology::new().queue(queue.clone()));
    let seen: Arc<Mutex<Vec<(u32, Instant)>>> = Arc::default();
    let handlers = {
        let seen = seen.clone();
        Handlers::new().on(move |received: Received<AuditEvent>| {
            let seen = seen.clone();
            async move {
                let attempt = received.meta.attempt;
                seen.lock().unwrap().push((attempt, Instant::now()));
                if attempt < 3 {
                    Err(HandleError::retry(format!("flaky on attempt {attempt}")))
                } else {
                    Ok(())
                }
            }
        })
    };
    let consumer = Consumer::work(&broker, &queue, handlers).start();
    assert!(consumer.wait_subscribed(WAIT).await);
    broker
        .publisher()
        .publish(&item(&tb, "flaky"))
        .await
        .unwrap();

    eventually("three attempts", WAIT, || async {
        seen.lock().unwrap().len() == 3
    })
    .await;
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.iter().map(|(a, _)| *a).collect::<Vec<_>>(), [1, 2, 3]);
    // Each wait is at least its tier's TTL: 100 ms, then 200 ms.
    assert!(seen[1].1 - seen[0].1 >= Duration::from_millis(100));
    assert!(seen[2].1 - seen[1].1 >= Duration::from_millis(200));
    let metrics = broker.metrics();
    assert_eq!(metrics.retried, 2);
    assert_eq!(metrics.dead_lettered, 0);
    assert_eq!(
        tb.message_count(&tb.names().dead_letter_queue(&queue))
            .await,
        0
    );
    consumer.shutdown(Duration::from_secs(5)).await;
    broker.close().await;
}

/// Whether the first consumer dies before or after committing its effect, the message is
/// redelivered to another consumer and has exactly one effect.
async fn killed_consumer(commit_before_dying: bool) {
    let tb = TestBroker::new();
    let queue = work_queue(&tb);
    let effects = Effects::new(Backend::Postgres).await;
    let first = Broker::start(tb.config("worker-a"), Topology::new().queue(queue.clone()));
    let inbox = Inbox::new("worker");
    let (entered_tx, mut entered) = mpsc::unbounded_channel();
    let release = Arc::new(Notify::new());
    let doomed = {
        let (db, inbox, release) = (effects.db().clone(), inbox.clone(), release.clone());
        Handlers::new().on(move |received: Received<AuditEvent>| {
            let (db, inbox, release) = (db.clone(), inbox.clone(), release.clone());
            let entered_tx = entered_tx.clone();
            async move {
                if commit_before_dying {
                    Effects::apply(&db, &inbox, &received).await?;
                }
                let _ = entered_tx.send(());
                // Stuck here when its process "dies"; released only at the end of the test.
                release.notified().await;
                Effects::apply(&db, &inbox, &received).await
            }
        })
    };
    let a = Consumer::work(&first, &queue, doomed).start();
    assert!(a.wait_subscribed(WAIT).await);
    first.publisher().publish(&item(&tb, "once")).await.unwrap();
    tokio::time::timeout(WAIT, entered.recv())
        .await
        .expect("the first consumer took the message");

    // The first consumer's connection goes away with the message unacknowledged.
    first.close().await;

    let second = Broker::start(tb.config("worker-b"), Topology::new().queue(queue.clone()));
    let redelivered = Arc::new(AtomicU32::new(0));
    let handlers = {
        let (db, inbox, redelivered) = (effects.db().clone(), inbox.clone(), redelivered.clone());
        Handlers::new().on(move |received: Received<AuditEvent>| {
            let (db, inbox, redelivered) = (db.clone(), inbox.clone(), redelivered.clone());
            async move {
                if received.meta.redelivered {
                    redelivered.fetch_add(1, Ordering::SeqCst);
                }
                Effects::apply(&db, &inbox, &received).await
            }
        })
    };
    let b = Consumer::work(&second, &queue, handlers).start();
    eventually("the second consumer got the redelivery", WAIT, || async {
        redelivered.load(Ordering::SeqCst) == 1
    })
    .await;
    eventually("acknowledged by the second consumer", WAIT, || async {
        second.metrics().acked == 1
    })
    .await;
    // The stuck handler wakes up and finishes too: still one effect.
    release.notify_waiters();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(effects.of("once").await, 1);
    assert_eq!(effects.total().await, 1);
    assert_eq!(tb.message_count(&tb.names().queue(&queue)).await, 0);
    b.shutdown(Duration::from_secs(5)).await;
    a.shutdown(Duration::from_millis(100)).await;
    second.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_killed_before_its_commit_leaves_the_message_to_another() {
    killed_consumer(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_killed_after_its_commit_causes_no_second_effect() {
    killed_consumer(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broadcasts_reach_every_instance_and_failures_are_not_retried() {
    let tb = TestBroker::new();
    let exchange = Exchange::topic("fanout-test");
    tb.track_exchange(&exchange);
    let broadcast = Broadcast::new("fanout-test.instances", exchange.clone(), &["news.#"]);
    let broker = Broker::start(
        tb.config("instances"),
        Topology::new().exchange(exchange.clone()),
    );
    let mut instances = Vec::new();
    let mut counters = Vec::new();
    for _ in 0..2 {
        let count = Arc::new(AtomicU32::new(0));
        let seen = count.clone();
        let handlers = Handlers::new().on(move |received: Received<AuditEvent>| {
            let seen = seen.clone();
            async move {
                seen.fetch_add(1, Ordering::SeqCst);
                if received.message.resource_id == "bad" {
                    return Err(HandleError::retry("broadcast handler failed"));
                }
                Ok(())
            }
        });
        let consumer = Consumer::broadcast(&broker, &broadcast, handlers).start();
        assert!(consumer.wait_subscribed(WAIT).await);
        instances.push(consumer);
        counters.push(count);
    }
    let publisher = broker.publisher();
    for key in ["good", "bad", "good"] {
        let mut message = item(&tb, key);
        message.exchange = tb.names().exchange(&exchange);
        message.routing_key = "news.today".into();
        publisher.publish(&message).await.unwrap();
    }
    eventually("each instance saw all three, once", WAIT, || async {
        counters.iter().all(|c| c.load(Ordering::SeqCst) == 3)
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        counters.iter().all(|c| c.load(Ordering::SeqCst) == 3),
        "no retries"
    );
    assert_eq!(broker.metrics().retried + broker.metrics().dead_lettered, 0);
    for consumer in instances {
        consumer.shutdown(Duration::from_secs(5)).await;
    }
    broker.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_lets_in_flight_messages_finish_and_be_acknowledged() {
    let tb = TestBroker::new();
    let queue = work_queue(&tb);
    let effects = Effects::new(Backend::Sqlite).await;
    let broker = Broker::start(tb.config("worker"), Topology::new().queue(queue.clone()));
    let inbox = Inbox::new("worker");
    let (started_tx, mut started) = mpsc::unbounded_channel();
    let handlers = {
        let (db, inbox) = (effects.db().clone(), inbox.clone());
        Handlers::new().on(move |received: Received<AuditEvent>| {
            let (db, inbox, started_tx) = (db.clone(), inbox.clone(), started_tx.clone());
            async move {
                let _ = started_tx.send(());
                tokio::time::sleep(Duration::from_millis(500)).await;
                Effects::apply(&db, &inbox, &received).await
            }
        })
    };
    let consumer = Consumer::work(&broker, &queue, handlers)
        .concurrency(4)
        .prefetch(4)
        .start();
    assert!(consumer.wait_subscribed(WAIT).await);
    let messages: Vec<_> = (0..4).map(|i| item(&tb, &format!("slow{i}"))).collect();
    assert!(broker
        .publisher()
        .publish_all(&messages)
        .await
        .iter()
        .all(Result::is_ok));
    for _ in 0..4 {
        tokio::time::timeout(WAIT, started.recv()).await.unwrap();
    }
    consumer.shutdown(Duration::from_secs(10)).await;
    assert_eq!(effects.total().await, 4, "in-flight handlers finished");
    assert_eq!(broker.metrics().acked, 4, "and were acknowledged");
    assert_eq!(tb.message_count(&tb.names().queue(&queue)).await, 0);
    broker.close().await;
}
