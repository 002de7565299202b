//! Audit ingest: events already waiting in the audit queue, consumed into the audit service's
//! hash chain (duplicate check, head lock, hash, every column, checkpoints; a batch per
//! transaction) against the same batched consumer writing the same events into a plain table
//! (a batch per transaction, nothing else), in alternating rounds, on SQLite and on PostgreSQL.

use std::sync::Arc;
use std::time::{Duration, Instant};

use opsconductor_api::audit::v1::AuditEvent;
use opsconductor_api::common::v1::Actor;
use opsconductor_audit::{AuditStore, Signer};
use opsconductor_messaging::topology::platform;
use opsconductor_messaging::{
    AuditLog, BatchHandler, Broker, BrokerConfig, Consumer, HandleError, Names, Outbox,
    OutgoingMessage, Received, RunningConsumer, Topology,
};
use opsconductor_platform::time::{now_micros, to_micros};
use opsconductor_storage::testing::TestDatabase;
use opsconductor_storage::{Backend, Database};
use opsconductor_tokens::SigningKey;

const BATCH: usize = 500;

fn event(i: usize) -> AuditEvent {
    AuditEvent {
        id: uuid::Uuid::now_v7().to_string(),
        actor: Some(Actor {
            user_id: "01900000-0000-7000-8000-00000000ad00".into(),
            service_id: String::new(),
        }),
        action: "target.update".into(),
        resource_type: "target".into(),
        resource_id: uuid::Uuid::now_v7().to_string(),
        occur_time: Some(prost_types::Timestamp::from(std::time::SystemTime::now())),
        outcome: 1,
        details: [
            ("name".to_string(), format!("web-{i:05}")),
            ("fields".to_string(), "address,tags".to_string()),
        ]
        .into_iter()
        .collect(),
        request_id: uuid::Uuid::now_v7().to_string(),
        source: "targets".into(),
        ..Default::default()
    }
}

/// The baseline of the chain: the same events into a table of the log's shape (its columns and indexes),
/// a hundred rows a statement as the log writes them, duplicates skipped by the unique id —
/// without the chain: no head lock, no duplicate lookup, no hashes, no checkpoints.
struct Plain {
    db: Database,
    next: std::sync::atomic::AtomicI64,
}

impl BatchHandler<AuditEvent> for Plain {
    async fn handle(&self, batch: Vec<Received<AuditEvent>>) -> Vec<Result<(), HandleError>> {
        let count = batch.len();
        let written = async {
            let mut tx = self.db.begin().await?;
            for chunk in batch.chunks(100) {
                let rows: Vec<String> = (0..chunk.len())
                    .map(|r| {
                        let params: Vec<String> =
                            (1..=16).map(|c| format!("${}", r * 16 + c)).collect();
                        format!("({})", params.join(", "))
                    })
                    .collect();
                let sql = format!(
                    "INSERT INTO plain_events (sequence, id, actor_user_id, actor_service_id, \
                     action, resource_type, resource_id, occur_time, outcome, details, \
                     request_id, prev_hash, hash, source, record_time, publisher) VALUES {} \
                     ON CONFLICT (id) DO NOTHING",
                    rows.join(", ")
                );
                let mut query = sqlx::query(&sql);
                for received in chunk {
                    let e = &received.message;
                    let actor = e.actor.clone().unwrap_or_default();
                    let details: std::collections::BTreeMap<_, _> = e.details.iter().collect();
                    query = query
                        .bind(self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed))
                        .bind(e.id.clone())
                        .bind(actor.user_id)
                        .bind(actor.service_id)
                        .bind(e.action.clone())
                        .bind(e.resource_type.clone())
                        .bind(e.resource_id.clone())
                        .bind(e.occur_time.as_ref().map(to_micros).unwrap_or(0))
                        .bind(i64::from(e.outcome))
                        .bind(serde_json::to_string(&details).unwrap_or_default())
                        .bind(e.request_id.clone())
                        .bind(Vec::<u8>::new())
                        .bind(Vec::<u8>::new())
                        .bind(e.source.clone())
                        .bind(now_micros())
                        .bind(received.meta.user_id.clone().unwrap_or_default());
                }
                query.execute(&mut *tx).await?;
            }
            tx.commit().await
        }
        .await;
        match written {
            Ok(()) => vec![Ok(()); count],
            Err(e) => vec![Err(HandleError::retry(e)); count],
        }
    }
}

/// The smallest write of the stream: (id, body) into a table with only its primary key.
struct Minimal {
    db: Database,
}

impl BatchHandler<AuditEvent> for Minimal {
    async fn handle(&self, batch: Vec<Received<AuditEvent>>) -> Vec<Result<(), HandleError>> {
        let count = batch.len();
        let written = async {
            let mut tx = self.db.begin().await?;
            for chunk in batch.chunks(100) {
                let rows: Vec<String> = (0..chunk.len())
                    .map(|r| format!("(${}, ${})", 2 * r + 1, 2 * r + 2))
                    .collect();
                let sql = format!(
                    "INSERT INTO minimal_events (id, body) VALUES {} ON CONFLICT (id) DO NOTHING",
                    rows.join(", ")
                );
                let mut query = sqlx::query(&sql);
                for received in chunk {
                    query = query
                        .bind(received.message.id.clone())
                        .bind(prost::Message::encode_to_vec(&received.message));
                }
                query.execute(&mut *tx).await?;
            }
            tx.commit().await
        }
        .await;
        match written {
            Ok(()) => vec![Ok(()); count],
            Err(e) => vec![Err(HandleError::retry(e)); count],
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Variant {
    Minimal,
    Shaped,
    Chain,
}

/// The log's table and indexes, as the audit service's migration creates them, named
/// `plain_events`.
async fn create_plain_table(db: &Database) -> anyhow::Result<()> {
    let ddl = match db.backend() {
        Backend::Sqlite => include_str!("../../../services/audit/migrations/sqlite/1_audit.sql"),
        Backend::Postgres => {
            include_str!("../../../services/audit/migrations/postgres/1_audit.sql")
        }
    };
    for statement in ddl.split(';') {
        let statement: String = statement
            .lines()
            .filter(|l| !l.trim_start().starts_with("--"))
            .collect::<Vec<_>>()
            .join("\n");
        if statement.contains("audit_events") {
            sqlx::query(&statement.replace("audit_events", "plain_events"))
                .execute(db.pool())
                .await?;
        }
    }
    Ok(())
}

async fn count(db: &Database, table: &str) -> anyhow::Result<i64> {
    let (n,): (i64,) = sqlx::query_as(&format!("SELECT COUNT(*) FROM {table}"))
        .fetch_one(db.pool())
        .await?;
    Ok(n)
}

/// Puts `events` in a fresh audit queue under `prefix`.
async fn fill(url: &str, prefix: &str, events: usize) -> anyhow::Result<Broker> {
    let broker = Broker::start(
        BrokerConfig::new(url, prefix, "bench")?,
        Topology::new().queue(platform::audit_events()),
    );
    anyhow::ensure!(
        broker.wait_connected(Duration::from_secs(10)).await,
        "no broker"
    );
    let exchange = broker.names().exchange(&platform::audit_exchange());
    for chunk in (0..events).collect::<Vec<_>>().chunks(2000) {
        let messages: Vec<OutgoingMessage> = chunk
            .iter()
            .map(|i| {
                let e = event(*i);
                let mut m = OutgoingMessage::new(exchange.clone(), &e.action, &e);
                m.message_id = e.id;
                m
            })
            .collect();
        for result in broker.publisher().publish_all(&messages).await {
            result?;
        }
    }
    Ok(broker)
}

/// One timed run: fill the queue, consume it into `backend` as `variant` writes. Events/s.
async fn round(
    url: &str,
    backend: Backend,
    events: usize,
    variant: Variant,
) -> anyhow::Result<f64> {
    let id = uuid::Uuid::now_v7().simple().to_string();
    let prefix = format!("bench-{}", &id[id.len() - 10..]);
    let test_db = TestDatabase::new(backend).await?;
    let db = test_db.db.clone();
    db.migrate_all(&[
        &opsconductor_audit::migrations(),
        &opsconductor_messaging::migrations(),
    ])
    .await?;
    create_plain_table(&db).await?;
    sqlx::query("CREATE TABLE minimal_events (id TEXT PRIMARY KEY, body BYTEA NOT NULL)")
        .execute(db.pool())
        .await?;
    let broker = fill(url, &prefix, events).await?;
    let started = Instant::now();
    let queue = platform::audit_events();
    let batched = |consumer: Consumer| consumer.prefetch(BATCH as u16).concurrency(BATCH).start();
    let (consumer, table): (RunningConsumer, &str) = match variant {
        Variant::Chain => {
            let audit = AuditLog::new(&Outbox::new(db.clone()), &Names::new(&prefix), "audit");
            let store = AuditStore::new(
                db.clone(),
                Signer {
                    key: Arc::new(SigningKey::generate()),
                    every: 1000,
                },
                audit,
            );
            let consumer = opsconductor_audit::start_ingest(store, &broker, BATCH);
            (consumer, "audit_events")
        }
        Variant::Shaped => {
            let plain = Plain {
                db: db.clone(),
                next: std::sync::atomic::AtomicI64::new(1),
            };
            let consumer = batched(Consumer::batched(&broker, &queue, plain, BATCH));
            (consumer, "plain_events")
        }
        Variant::Minimal => {
            let minimal = Minimal { db: db.clone() };
            let consumer = batched(Consumer::batched(&broker, &queue, minimal, BATCH));
            (consumer, "minimal_events")
        }
    };
    while (count(&db, table).await? as usize) < events {
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(600),
            "ingest stalled"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let elapsed = started.elapsed();
    consumer.shutdown(Duration::from_secs(5)).await;
    // Remove the queue's ladder: the bench leaves nothing behind.
    let names = broker.names().clone();
    let connection =
        lapin::Connection::connect(url, lapin::ConnectionProperties::default()).await?;
    let channel = connection.create_channel().await?;
    for queue in names.all_queues(&platform::audit_events()) {
        let _ = channel
            .queue_delete(queue.as_str().into(), Default::default())
            .await;
    }
    let _ = channel
        .exchange_delete(
            names.exchange(&platform::audit_exchange()).as_str().into(),
            Default::default(),
        )
        .await;
    let _ = connection.close(200, "bench done".into()).await;
    broker.close().await;
    Ok(events as f64 / elapsed.as_secs_f64())
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

pub async fn run(events: usize, rounds: usize) -> anyhow::Result<()> {
    let url = std::env::var("AMQP_URL")
        .unwrap_or_else(|_| opsconductor_messaging::DEFAULT_AMQP_URL.to_string());
    println!("{events} audit events waiting in the queue per round, batches of {BATCH}");
    for backend in [Backend::Sqlite, Backend::Postgres] {
        let mut rates: Vec<[f64; 3]> = Vec::new();
        for r in 1..=rounds {
            let minimal = round(&url, backend, events, Variant::Minimal).await?;
            let shaped = round(&url, backend, events, Variant::Shaped).await?;
            let chain = round(&url, backend, events, Variant::Chain).await?;
            println!(
                "{backend:?} round {r}: (id, body) table {minimal:.0}/s | the log's table, no chain \
                 {shaped:.0}/s | hash chain {chain:.0}/s (chain / log's table {:.3}, chain / (id, body) {:.3})",
                chain / shaped,
                chain / minimal
            );
            rates.push([minimal, shaped, chain]);
        }
        let med = |f: &dyn Fn(&[f64; 3]) -> f64| median(rates.iter().map(f).collect());
        println!(
            "{backend:?}: medians (id, body) {:.0}/s, log's table {:.0}/s, chain {:.0}/s; \
             chain / log's table {:.3}, chain / (id, body) {:.3} over {rounds} rounds",
            med(&|r| r[0]),
            med(&|r| r[1]),
            med(&|r| r[2]),
            med(&|r| r[2] / r[1]),
            med(&|r| r[2] / r[0]),
        );
    }
    Ok(())
}
