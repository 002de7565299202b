//! A test work queue with a fast retry ladder, a database that records each handled message as
//! an "effect" (with an inbox, so a duplicate shows up as a count above one), and waiting.

use std::future::Future;
use std::time::{Duration, Instant};

use opsconductor_api::audit::v1::AuditEvent;
use opsconductor_messaging::{
    Exchange, HandleError, Inbox, OutgoingMessage, Received, RetryPolicy, WorkQueue,
};
use opsconductor_storage::testing::TestDatabase;
use opsconductor_storage::{Backend, Database};
use opsconductor_testkit::TestBroker;

/// A topic exchange "work" and a queue "work.items" bound to everything, retried after 100 ms
/// and 200 ms, dead-lettered on the third failure.
pub fn work_queue(tb: &TestBroker) -> WorkQueue {
    let queue =
        WorkQueue::new("work.items", Exchange::topic("work"), &["#"]).with_retry(RetryPolicy {
            delays: vec![Duration::from_millis(100), Duration::from_millis(200)],
            max_attempts: 3,
        });
    tb.track(&queue);
    queue
}

/// A message for the work queue; `key` travels as the event's resource id.
pub fn item(tb: &TestBroker, key: &str) -> OutgoingMessage {
    let event = AuditEvent {
        id: uuid::Uuid::now_v7().to_string(),
        action: "item.test".into(),
        resource_id: key.into(),
        ..Default::default()
    };
    OutgoingMessage::new(
        tb.names().exchange(&Exchange::topic("work")),
        "item.test",
        &event,
    )
}

/// A database with the messaging tables and an `effects` table.
pub struct Effects {
    pub test_db: TestDatabase,
}

impl Effects {
    pub async fn new(backend: Backend) -> Effects {
        let test_db = TestDatabase::new(backend).await.expect("test database");
        test_db
            .db
            .migrate(&opsconductor_messaging::migrations())
            .await
            .expect("messaging migrations");
        sqlx::query("CREATE TABLE effects (message_id TEXT NOT NULL, item TEXT NOT NULL)")
            .execute(test_db.db.pool())
            .await
            .expect("effects table");
        Effects { test_db }
    }

    pub fn db(&self) -> &Database {
        &self.test_db.db
    }

    /// The handler's work: in one transaction, the inbox record and the effect.
    pub async fn apply(
        db: &Database,
        inbox: &Inbox,
        received: &Received<AuditEvent>,
    ) -> Result<(), HandleError> {
        let mut tx = db.pool().begin().await?;
        if inbox.record(&mut tx, &received.meta.message_id).await? {
            sqlx::query("INSERT INTO effects (message_id, item) VALUES ($1, $2)")
                .bind(&received.meta.message_id)
                .bind(&received.message.resource_id)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    pub async fn total(&self) -> i64 {
        self.scalar("SELECT COUNT(*) FROM effects").await
    }

    pub async fn distinct(&self) -> i64 {
        self.scalar("SELECT COUNT(DISTINCT message_id) FROM effects")
            .await
    }

    pub async fn of(&self, item: &str) -> i64 {
        let (n,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM effects WHERE item = $1")
            .bind(item)
            .fetch_one(self.db().pool())
            .await
            .expect("count");
        n
    }

    async fn scalar(&self, sql: &str) -> i64 {
        let (n,): (i64,) = sqlx::query_as(sql)
            .fetch_one(self.db().pool())
            .await
            .expect("count");
        n
    }
}

/// Polls `check` until it holds, failing the test after `limit`.
pub async fn eventually<F, Fut>(what: &str, limit: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let started = Instant::now();
    while !check().await {
        assert!(
            started.elapsed() < limit,
            "timed out after {limit:?} waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

pub const WAIT: Duration = Duration::from_secs(20);
