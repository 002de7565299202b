//! A RabbitMQ sandbox per test: the real broker at `OPSCONDUCTOR_TEST_AMQP_URL` (default
//! 127.0.0.1:5672, guest), a name prefix of the test's own, and on drop the deletion of every
//! queue and exchange declared under it.

use std::sync::{Mutex, PoisonError};

use lapin::options::{ExchangeDeleteOptions, QueueDeleteOptions};
use lapin::{Connection, ConnectionProperties};
use opsconductor_messaging::topology::platform;
use opsconductor_messaging::{
    Broadcast, BrokerConfig, Exchange, Names, WorkQueue, DEFAULT_AMQP_URL,
};

pub fn amqp_url() -> String {
    std::env::var("OPSCONDUCTOR_TEST_AMQP_URL").unwrap_or_else(|_| DEFAULT_AMQP_URL.to_string())
}

/// The notification service's retry delays in sandboxes: a quick first retry, then a tier long
/// enough for a test's Retry-After of two seconds. Two tiers only: every delay queue of the four
/// channels is a quorum queue in every sandbox, and RabbitMQ on two cores has limits.
pub const NOTIFICATION_RETRY_DELAYS_MS: &str = "200,3000";

/// The retry policy those delays make (its queue names depend on it).
pub fn notification_retry() -> opsconductor_messaging::topology::RetryPolicy {
    opsconductor_messaging::topology::RetryPolicy {
        delays: NOTIFICATION_RETRY_DELAYS_MS
            .split(',')
            .map(|ms| std::time::Duration::from_millis(ms.parse().unwrap_or_default()))
            .collect(),
        max_attempts: 6,
    }
}

/// A prefix of this test's own; what is declared under it is removed on drop.
pub struct TestBroker {
    pub prefix: String,
    queues: Mutex<Vec<WorkQueue>>,
    /// Other queues, by broker name (a broadcast's dead-letter queue).
    named: Mutex<Vec<String>>,
    exchanges: Mutex<Vec<Exchange>>,
}

impl Default for TestBroker {
    fn default() -> Self {
        Self::new()
    }
}

impl TestBroker {
    pub fn new() -> TestBroker {
        let id = uuid::Uuid::now_v7().simple().to_string();
        TestBroker {
            // The tail of a UUIDv7 is random: unique per test, short in the management UI.
            prefix: format!("test-{}", &id[id.len() - 12..]),
            queues: Mutex::new(Vec::new()),
            named: Mutex::new(Vec::new()),
            exchanges: Mutex::new(Vec::new()),
        }
    }

    /// A broker configuration for `service` under this prefix, reconnecting quickly.
    pub fn config(&self, service: &str) -> BrokerConfig {
        let mut config = BrokerConfig::new(&amqp_url(), &self.prefix, service)
            .unwrap_or_else(|e| panic!("test broker config: {e}"));
        config.reconnect_min = std::time::Duration::from_millis(50);
        config.reconnect_max = std::time::Duration::from_millis(500);
        config
    }

    pub fn names(&self) -> Names {
        Names::new(&self.prefix)
    }

    /// Removes `queue` (with its ladder and dead-letter queue) and its exchange on drop.
    pub fn track(&self, queue: &WorkQueue) {
        self.queues
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(queue.clone());
        self.track_exchange(&queue.exchange);
    }

    pub fn track_exchange(&self, exchange: &Exchange) {
        self.exchanges
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(exchange.clone());
    }

    /// Removes `broadcast`'s exchange and dead-letter queue on drop (its per-instance queues
    /// go away with their connections).
    pub fn track_broadcast(&self, broadcast: &Broadcast) {
        if broadcast.dead_letters {
            self.named
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push(self.names().broadcast_dead_letter_queue(broadcast));
        }
        self.track_exchange(&broadcast.exchange);
    }

    /// Tracks every queue and exchange of the platform's topology.
    pub fn track_platform(&self) {
        self.track(&platform::audit_events());
        self.track(&platform::run_requests());
        self.track(&platform::run_finished_notifications());
        self.track(&platform::run_started_notifications());
        self.track(&platform::credential_expiring_notifications());
        self.track(&platform::scheduler_run_events());
        self.track(&platform::schedule_fire_failed_notifications());
        for channel in platform::NOTIFICATION_CHANNELS {
            self.track(&platform::notification_queue(channel).with_retry(notification_retry()));
        }
        self.track_broadcast(&platform::token_revocations());
        self.track_broadcast(&platform::run_cancellations());
        self.track_broadcast(&platform::run_progress());
    }

    /// Messages in a queue right now (`name` is the broker name).
    pub async fn message_count(&self, name: &str) -> u32 {
        let connection = connect().await;
        let channel = connection
            .create_channel()
            .await
            .unwrap_or_else(|e| panic!("channel: {e}"));
        let queue = channel
            .queue_declare(
                name.into(),
                lapin::options::QueueDeclareOptions {
                    passive: true,
                    ..Default::default()
                },
                lapin::types::FieldTable::default(),
            )
            .await
            .unwrap_or_else(|e| panic!("queue {name}: {e}"));
        let _ = connection.close(200, "done".into()).await;
        queue.message_count()
    }
}

impl TestBroker {
    /// The next message of a queue (`name` is the broker name), acknowledged: its routing key
    /// and body. Panics if none comes within `limit`.
    pub async fn next_message(&self, name: &str, limit: std::time::Duration) -> (String, Vec<u8>) {
        use futures::StreamExt;
        let connection = connect().await;
        let channel = connection
            .create_channel()
            .await
            .unwrap_or_else(|e| panic!("channel: {e}"));
        let mut consumer = channel
            .basic_consume(
                name.into(),
                "testkit".into(),
                lapin::options::BasicConsumeOptions::default(),
                lapin::types::FieldTable::default(),
            )
            .await
            .unwrap_or_else(|e| panic!("consume {name}: {e}"));
        let delivery = tokio::time::timeout(limit, consumer.next())
            .await
            .unwrap_or_else(|_| panic!("no message on {name} within {limit:?}"))
            .unwrap_or_else(|| panic!("the consumer of {name} ended"))
            .unwrap_or_else(|e| panic!("delivery on {name}: {e}"));
        delivery
            .ack(lapin::options::BasicAckOptions::default())
            .await
            .unwrap_or_else(|e| panic!("ack: {e}"));
        let key = delivery.routing_key.to_string();
        let _ = connection.close(200, "done".into()).await;
        (key, delivery.data)
    }
}

async fn connect() -> Connection {
    Connection::connect(&amqp_url(), ConnectionProperties::default())
        .await
        .unwrap_or_else(|e| panic!("cannot reach RabbitMQ at {}: {e}", amqp_url()))
}

impl Drop for TestBroker {
    fn drop(&mut self) {
        let names = self.names();
        let queues: Vec<String> = self
            .queues
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .flat_map(|q| names.all_queues(q))
            .chain(
                self.named
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .iter()
                    .cloned(),
            )
            .collect();
        let exchanges: Vec<String> = self
            .exchanges
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .map(|e| names.exchange(e))
            .collect();
        opsconductor_storage::testing::cleanup_on_own_runtime(async move {
            let Ok(connection) =
                Connection::connect(&amqp_url(), ConnectionProperties::default()).await
            else {
                return;
            };
            let Ok(channel) = connection.create_channel().await else {
                return;
            };
            for queue in queues {
                let _ = channel
                    .queue_delete(queue.into(), QueueDeleteOptions::default())
                    .await;
            }
            for exchange in exchanges {
                let _ = channel
                    .exchange_delete(exchange.into(), ExchangeDeleteOptions::default())
                    .await;
            }
            let _ = connection.close(200, "cleaned up".into()).await;
        });
    }
}
