//! Drills that restart the broker. A test binary of its own: cargo runs binaries one after the
//! other, so nothing else is connected when the broker goes away. Named to run after the
//! integration suite: a RabbitMQ on two cores that has just recovered a sandbox's worth of
//! quorum queues can be slow to declare new ones, and the suite declares thousands.
//!
//! Ten thousand audit events from two publishers — each its own outbox and broker connection,
//! committing fifty events a transaction — with RabbitMQ stopped and started in the middle and
//! five hundred of them published a second time: every event is in the audit chain exactly once,
//! each publisher's in the order it committed them, and the chain verifies.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use opsconductor_api::audit::v1::{AuditEvent, ListAuditEventsRequest, VerifyAuditChainRequest};
use opsconductor_messaging::topology::platform;
use opsconductor_messaging::{
    AuditLog, Broker, Cause, Outbox, OutgoingMessage, RelayOptions, Topology,
};
use opsconductor_storage::testing::TestDatabase;
use opsconductor_testkit::{rabbitmqctl, Sandbox, StorageBackend};

const PER_PUBLISHER: usize = 5_000;
const PER_TRANSACTION: usize = 50;

/// Every `action` event in the chain, oldest first.
async fn events(s: &Sandbox, action: &str) -> Vec<AuditEvent> {
    let mut all = Vec::new();
    let mut page_token = String::new();
    loop {
        let page = s
            .audit()
            .list_audit_events(ListAuditEventsRequest {
                action: action.into(),
                page_size: 500,
                page_token,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        all.extend(page.audit_events);
        if page.next_page_token.is_empty() {
            break;
        }
        page_token = page.next_page_token;
    }
    all.reverse();
    all
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_audit_events_arrive_once_in_commit_order_through_a_broker_restart() {
    let s = Sandbox::start(StorageBackend::Sqlite).await;
    let mut publishers = Vec::new();
    for p in 0..2 {
        let db = TestDatabase::new(StorageBackend::Sqlite).await.unwrap();
        db.db
            .migrate(&opsconductor_messaging::migrations())
            .await
            .unwrap();
        let name = format!("publisher-{p}");
        // Signed as a service of that name, certified by the sandbox's auth key: the audit
        // service appends only events whose source signed them.
        let broker = Broker::start_trusted(
            s.broker.config(&name),
            Topology::new().queue(platform::audit_events()),
            opsconductor_testkit::producer_trust(s.keys.active(), &name),
        );
        let outbox = Outbox::new(db.db.clone());
        let relay = outbox.start_relay(&broker, RelayOptions::default());
        let audit = AuditLog::new(&outbox, &s.broker.names(), &name);
        publishers.push((name, db, broker, outbox, relay, audit));
    }

    // Both commit their events as fast as they can; the broker goes away in the middle.
    let mut producers = Vec::new();
    for (name, db, _, _, _, audit) in &publishers {
        let (db, audit, name) = (db.db.clone(), audit.clone(), name.clone());
        producers.push(tokio::spawn(async move {
            let cause = Cause::service(&name);
            for batch in 0..PER_PUBLISHER / PER_TRANSACTION {
                let mut tx = db.begin().await.unwrap();
                for i in 0..PER_TRANSACTION {
                    let n = batch * PER_TRANSACTION + i;
                    audit
                        .record(
                            &mut tx,
                            &cause,
                            "drill.event",
                            ("drill", &name),
                            &[("n", n.to_string())],
                        )
                        .await
                        .unwrap();
                }
                audit.commit(tx).await.unwrap();
            }
        }));
    }
    let started = Instant::now();
    while events(&s, "drill.event").await.len() < 2_000 {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "events do not flow"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let restart = tokio::task::spawn_blocking(|| {
        rabbitmqctl(&["stop_app"]);
        std::thread::sleep(Duration::from_secs(1));
        rabbitmqctl(&["start_app"]);
    });
    restart.await.unwrap();
    for producer in producers {
        producer.await.unwrap();
    }
    for (name, _, _, outbox, _, _) in &publishers {
        let started = Instant::now();
        while outbox.pending().await.unwrap() > 0 {
            assert!(
                started.elapsed() < Duration::from_secs(120),
                "{name}'s outbox never emptied"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let expected = 2 * PER_PUBLISHER;
    let started = Instant::now();
    let appended = loop {
        let appended = events(&s, "drill.event").await;
        if appended.len() >= expected {
            break appended;
        }
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "{} of {expected} events appended",
            appended.len()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };

    // Five hundred of them again, as a publisher retrying after a lost confirm would send them.
    let exchange = s.broker.names().exchange(&platform::audit_exchange());
    for event in appended.iter().step_by(expected / 500) {
        let mut again = event.clone();
        again.sequence = 0;
        again.prev_hash.clear();
        again.hash.clear();
        again.record_time = None;
        again.publisher.clear();
        let (_, _, broker, _, _, _) = publishers
            .iter()
            .find(|(name, ..)| *name == event.source)
            .expect("the event's publisher");
        let mut message = OutgoingMessage::new(&exchange, "drill.event", &again);
        message.message_id = event.id.clone();
        broker.publisher().publish(&message).await.unwrap();
    }
    // A last event behind the duplicates: once it is in, they have all been through.
    let (_, db, _, _, _, audit) = &publishers[0];
    let mut tx = db.db.begin().await.unwrap();
    audit
        .record(
            &mut tx,
            &Cause::service("publisher-0"),
            "drill.last",
            ("drill", "publisher-0"),
            &[],
        )
        .await
        .unwrap();
    audit.commit(tx).await.unwrap();
    let started = Instant::now();
    while events(&s, "drill.last").await.is_empty() {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the last event never came"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Exactly once.
    let appended = events(&s, "drill.event").await;
    assert_eq!(appended.len(), expected, "no loss, no duplicate");
    let ids: BTreeSet<&str> = appended.iter().map(|e| e.id.as_str()).collect();
    assert_eq!(ids.len(), expected);
    // In each publisher's commit order.
    let mut seen: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
    for event in &appended {
        seen.entry(event.source.as_str())
            .or_default()
            .push(event.details["n"].parse().unwrap());
    }
    assert_eq!(seen.len(), 2);
    for (source, numbers) in &seen {
        let in_order: Vec<usize> = (0..PER_PUBLISHER).collect();
        assert_eq!(numbers, &in_order, "{source}'s events out of commit order");
    }
    let report = s
        .audit()
        .verify_audit_chain(VerifyAuditChainRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert!(report.ok, "{report:?}");
    assert!(report.checked_count as usize > expected);

    for (_, _, broker, _, relay, _) in publishers {
        relay.shutdown(Duration::from_secs(5)).await;
        broker.close().await;
    }
    s.stop().await;
}
