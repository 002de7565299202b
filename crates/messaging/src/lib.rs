//! Reliable asynchronous messaging over RabbitMQ for OpsConductor services (DESIGN §5).
//!
//! - [`Broker`]: one supervised connection per service that reconnects by itself and declares
//!   the [`Topology`] each time; its [`BrokerHealth`] turns the service NOT_SERVING meanwhile.
//! - [`Publisher`]: persistent, `mandatory`, pipelined publisher confirms.
//! - [`Outbox`]: messages written in the transaction of the change that causes them, published
//!   by a relay after commit; [`AuditLog`] stages audit events through it.
//! - [`Consumer`]: typed [`Handlers`], manual acks after the effect, bounded prefetch and
//!   concurrency, a delay ladder of retries, then a dead-letter queue; [`Inbox`] makes
//!   redeliveries harmless.
//! - [`DeadLetters`]: drained into the service's database and served as `DeadLetterService`.
//!
//! ```no_run
//! use opsconductor_messaging::{topology::platform, Broker, BrokerConfig, Consumer, Handlers,
//!     HandleError, Received, Topology};
//! use opsconductor_api::audit::v1::AuditEvent;
//! # async fn f() -> Result<(), Box<dyn std::error::Error>> {
//! let config = BrokerConfig::new("amqp://guest:guest@127.0.0.1:5672/%2f", "opsconductor", "audit")?;
//! let broker = Broker::start(config, Topology::new().queue(platform::audit_events()));
//! let handlers = Handlers::new().on(|event: Received<AuditEvent>| async move {
//!     println!("{}", event.message.action);
//!     Ok::<(), HandleError>(())
//! });
//! let consumer = Consumer::work(&broker, &platform::audit_events(), handlers).start();
//! # Ok(()) }
//! ```

mod access;
mod audit;
mod batch;
mod broker;
mod config;
mod consumer;
mod deadletter;
mod error;
mod gauges;
mod handler;
mod inbox;
mod message;
mod metrics;
mod outbox;
mod producer;
mod publisher;
mod service;
mod signature;
pub mod topology;

pub use access::{definitions, password_hash, Account, BrokerUse, Permissions};
pub use audit::{AuditLog, Cause};
pub use batch::BatchHandler;
pub use broker::{Broker, BrokerHealth};
pub use config::{BrokerConfig, DeadLetterStrategy, DeclareMode, DEFAULT_AMQP_URL, DEFAULT_PREFIX};
pub use consumer::{Consumer, ConsumerOptions, RunningConsumer};
pub use deadletter::{DeadLetterApi, DeadLetters};
pub use error::{MessagingError, PublishError};
pub use handler::{HandleError, Handler, Handlers, Received};
pub use inbox::Inbox;
pub use message::{headers, MessageMeta, OutgoingMessage, TraceContext, CONTENT_TYPE};
pub use metrics::{Metrics, MetricsSnapshot};
pub use outbox::{Outbox, RelayOptions, RunningRelay};
pub use producer::{MessageSigner, ProducerTrust, Producers};
pub use publisher::Publisher;
pub use service::ServiceMessaging;
pub use topology::{Broadcast, Exchange, ExchangeKind, Names, RetryPolicy, Topology, WorkQueue};

use opsconductor_storage::Migrations;

/// The messaging tables (outbox, inbox, dead letters), applied with a service's own
/// migrations through `Database::migrate_all`.
pub fn migrations() -> Migrations {
    opsconductor_storage::embedded_migrations!()
}
