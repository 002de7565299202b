//! Publishing: pipelined confirms, `mandatory` returns as errors, a missing exchange as an
//! error that does not break later publishes.

use opsconductor_messaging::{Broker, Exchange, PublishError, Topology};
use opsconductor_testkit::TestBroker;

use crate::support::{item, work_queue, WAIT};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn confirms_are_pipelined_and_unroutable_messages_are_errors() {
    let tb = TestBroker::new();
    let queue = work_queue(&tb);
    let nowhere = Exchange::direct("nowhere");
    tb.track_exchange(&nowhere);
    let broker = Broker::start(
        tb.config("publisher"),
        Topology::new()
            .queue(queue.clone())
            .exchange(nowhere.clone()),
    );
    assert!(
        broker.wait_connected(WAIT).await,
        "{:?}",
        broker.last_error()
    );
    let publisher = broker.publisher();

    let messages: Vec<_> = (0..2000).map(|i| item(&tb, &format!("m{i}"))).collect();
    let results = publisher.publish_all(&messages).await;
    assert_eq!(results.len(), 2000);
    assert!(
        results.iter().all(Result::is_ok),
        "{:?}",
        results.iter().find(|r| r.is_err())
    );
    let metrics = broker.metrics();
    assert_eq!(metrics.confirmed, 2000);
    assert_eq!(metrics.returned, 0);
    assert_eq!(tb.message_count(&tb.names().queue(&queue)).await, 2000);

    // An exchange with no queue bound for the key: mandatory makes that an error.
    let mut lost = item(&tb, "lost");
    lost.exchange = tb.names().exchange(&nowhere);
    match publisher.publish(&lost).await {
        Err(PublishError::Unroutable { routing_key, .. }) => assert_eq!(routing_key, "item.test"),
        other => panic!("expected Unroutable, got {other:?}"),
    }
    assert_eq!(broker.metrics().returned, 1);
    // In a batch, only the unroutable message fails.
    let batch = vec![item(&tb, "a"), lost.clone(), item(&tb, "b")];
    let results = publisher.publish_all(&batch).await;
    assert!(results[0].is_ok() && results[2].is_ok(), "{results:?}");
    assert!(matches!(results[1], Err(PublishError::Unroutable { .. })));

    // An exchange that does not exist closes the channel; the next publish gets a new one.
    let mut missing = item(&tb, "missing");
    missing.exchange = format!("{}.does-not-exist", tb.prefix);
    let err = publisher.publish(&missing).await.unwrap_err();
    assert!(matches!(err, PublishError::NoSuchExchange(_)), "{err:?}");
    assert!(!err.is_transient());
    publisher
        .publish(&item(&tb, "after"))
        .await
        .expect("publishing works again");
    assert_eq!(
        broker.metrics().connections,
        1,
        "a channel error is not a lost connection"
    );
    assert_eq!(tb.message_count(&tb.names().queue(&queue)).await, 2003);
    broker.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_broker_publishing_fails_fast_and_health_says_why() {
    use opsconductor_platform::health::DependencyCheck;
    let tb = TestBroker::new();
    let mut config = tb.config("publisher");
    // A port nothing listens on.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    config = opsconductor_messaging::BrokerConfig::new(
        &format!("amqp://guest:guest@127.0.0.1:{port}/%2f"),
        &config.prefix,
        "publisher",
    )
    .unwrap();
    config.publish_timeout = std::time::Duration::from_millis(300);
    let broker = Broker::start(config, Topology::new());
    assert!(
        !broker
            .wait_connected(std::time::Duration::from_millis(500))
            .await
    );
    let err = broker
        .publisher()
        .publish(&item(&tb, "x"))
        .await
        .unwrap_err();
    assert!(matches!(err, PublishError::Unavailable(_)), "{err:?}");
    assert!(err.is_transient());
    let health = broker.health_check();
    let reason = health.check().await.unwrap_err();
    assert!(!reason.is_empty());
    assert!(
        !reason.contains("guest:guest"),
        "no credentials in {reason}"
    );
    broker.close().await;
}
