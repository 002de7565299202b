//! The outbox: what was committed is published, what was rolled back never is, a crash between
//! commit and publish (or between publish and delete) loses nothing and doubles no effect, and
//! the relay lease lets one relay publish at a time across replicas.

use std::collections::BTreeSet;
use std::time::Duration;

use opsconductor_api::audit::v1::AuditEvent;
use opsconductor_messaging::{
    Broker, Consumer, Handlers, Inbox, Outbox, Received, RelayOptions, Topology,
};
use opsconductor_storage::testing::TestDatabase;
use opsconductor_storage::Backend;
use opsconductor_testkit::TestBroker;

use crate::support::{eventually, item, work_queue, Effects, WAIT};

async fn producer_db(backend: Backend) -> TestDatabase {
    let db = TestDatabase::new(backend).await.expect("database");
    db.db
        .migrate(&opsconductor_messaging::migrations())
        .await
        .expect("migrations");
    db
}

fn recording(effects: &Effects, inbox: &Inbox) -> Handlers {
    let (db, inbox) = (effects.db().clone(), inbox.clone());
    Handlers::new().on(move |received: Received<AuditEvent>| {
        let (db, inbox) = (db.clone(), inbox.clone());
        async move { Effects::apply(&db, &inbox, &received).await }
    })
}

async fn crash_between_commit_and_publish(backend: Backend) {
    let tb = TestBroker::new();
    let queue = work_queue(&tb);
    let producer = producer_db(backend).await;
    let outbox = Outbox::new(producer.db.clone());

    // 30 transactions of 10 messages; every third one rolls back.
    let mut committed = Vec::new();
    for t in 0..30 {
        let mut tx = producer.db.pool().begin().await.unwrap();
        let mut staged = Vec::new();
        for i in 0..10 {
            let message = item(&tb, &format!("t{t}-m{i}"));
            outbox.stage(&mut tx, &message).await.unwrap();
            staged.push(message);
        }
        if t % 3 == 2 {
            tx.rollback().await.unwrap();
        } else {
            tx.commit().await.unwrap();
            committed.extend(staged);
        }
    }
    assert_eq!(outbox.pending().await.unwrap(), 200);

    // The process "crashed" after its relay had published the first 20 rows but before it
    // could delete them: publish those by hand, leave the rows.
    let broker = Broker::start(tb.config("producer"), Topology::new().queue(queue.clone()));
    let results = broker.publisher().publish_all(&committed[..20]).await;
    assert!(results.iter().all(Result::is_ok));

    // The restarted process: a consumer, and a relay over the surviving outbox.
    let effects = Effects::new(Backend::Sqlite).await;
    let inbox = Inbox::new("worker").counted_by(&broker);
    let consumer = Consumer::work(&broker, &queue, recording(&effects, &inbox)).start();
    let relay = outbox.start_relay(&broker, RelayOptions::default());

    eventually("every committed message had its effect", WAIT, || async {
        effects.total().await == 200
    })
    .await;
    eventually("the outbox is empty", WAIT, || async {
        outbox.pending().await.unwrap() == 0
    })
    .await;
    eventually("the 20 republished ones were recognised", WAIT, || async {
        broker.metrics().duplicates == 20
    })
    .await;
    assert_eq!(effects.distinct().await, 200);
    let (keys,): (String,) = sqlx::query_as(match backend {
        Backend::Sqlite => "SELECT group_concat(item, ',') FROM effects",
        Backend::Postgres => "SELECT string_agg(item, ',') FROM effects",
    })
    .fetch_one(effects.db().pool())
    .await
    .unwrap();
    let got: BTreeSet<&str> = keys.split(',').collect();
    let want: BTreeSet<String> = committed
        .iter()
        .map(|m| {
            let event: AuditEvent = prost::Message::decode(m.body.as_slice()).unwrap();
            event.resource_id
        })
        .collect();
    assert_eq!(
        got,
        want.iter().map(String::as_str).collect(),
        "exactly the committed rows"
    );
    relay.shutdown(Duration::from_secs(5)).await;
    consumer.shutdown(Duration::from_secs(5)).await;
    broker.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_between_commit_and_publish_publishes_exactly_the_committed_rows_sqlite() {
    crash_between_commit_and_publish(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_between_commit_and_publish_publishes_exactly_the_committed_rows_postgres() {
    crash_between_commit_and_publish(Backend::Postgres).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_relay_publishes_at_a_time_and_another_takes_over() {
    let tb = TestBroker::new();
    let queue = work_queue(&tb);
    let producer = producer_db(Backend::Postgres).await;
    let outbox = Outbox::new(producer.db.clone());
    let broker = Broker::start(tb.config("producer"), Topology::new().queue(queue.clone()));
    let effects = Effects::new(Backend::Sqlite).await;
    let inbox = Inbox::new("worker").counted_by(&broker);
    let consumer = Consumer::work(&broker, &queue, recording(&effects, &inbox)).start();

    // Two replicas' relays over one database.
    let options = RelayOptions {
        poll_interval: Duration::from_millis(20),
        ..RelayOptions::default()
    };
    let first = outbox.start_relay(&broker, options.clone());
    let second = outbox.start_relay(&broker, options);
    for batch in 0..10 {
        let mut tx = producer.db.pool().begin().await.unwrap();
        for i in 0..50 {
            outbox
                .stage(&mut tx, &item(&tb, &format!("b{batch}-{i}")))
                .await
                .unwrap();
        }
        outbox.commit(tx).await.unwrap();
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    eventually("500 effects", WAIT, || async {
        effects.total().await == 500
    })
    .await;
    assert_eq!(broker.metrics().duplicates, 0, "no row was published twice");

    // The lease holder stops; the other relay carries on with what comes next.
    first.shutdown(Duration::from_secs(5)).await;
    let mut tx = producer.db.pool().begin().await.unwrap();
    for i in 0..50 {
        outbox
            .stage(&mut tx, &item(&tb, &format!("late-{i}")))
            .await
            .unwrap();
    }
    tx.commit().await.unwrap();
    eventually("the remaining relay published the rest", WAIT, || async {
        effects.total().await == 550
    })
    .await;
    assert_eq!(broker.metrics().duplicates, 0);
    second.shutdown(Duration::from_secs(5)).await;
    consumer.shutdown(Duration::from_secs(5)).await;
    broker.close().await;
}
