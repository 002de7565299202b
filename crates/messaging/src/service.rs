//! What a publishing service needs, assembled once: its broker connection (declaring what it
//! publishes to), its outbox and audit log, and their place in the server's lifecycle — health
//! follows the connection, and on shutdown the relay flushes before the connection closes.

use std::time::Duration;

use futures::future::{BoxFuture, FutureExt};
use opsconductor_platform::server::{ServiceServer, Worker};
use opsconductor_storage::Database;

use crate::audit::AuditLog;
use crate::broker::Broker;
use crate::config::BrokerConfig;
use crate::consumer::RunningConsumer;
use crate::outbox::{Outbox, RelayOptions, RunningRelay};
use crate::producer::ProducerTrust;
use crate::topology::{platform, Topology};

/// A service's messaging: one connection, one outbox in its database, its audit log.
#[derive(Clone)]
pub struct ServiceMessaging {
    pub broker: Broker,
    pub outbox: Outbox,
    pub audit: AuditLog,
}

impl ServiceMessaging {
    /// Connects for `config.service`, declaring `topology` and the audit queue (every service
    /// audits), over `db`, which must carry [`crate::migrations`]; signs what it publishes and
    /// checks the producers of what it consumes with `trust`.
    pub fn start(
        config: BrokerConfig,
        topology: Topology,
        db: &Database,
        trust: ProducerTrust,
    ) -> ServiceMessaging {
        let service = config.service.clone();
        let broker = Broker::start_trusted(config, topology.queue(platform::audit_events()), trust);
        let outbox = Outbox::new(db.clone());
        let audit = AuditLog::new(&outbox, broker.names(), &service);
        ServiceMessaging {
            broker,
            outbox,
            audit,
        }
    }

    /// Starts the outbox relay and hands the server what it must watch and stop: health
    /// follows the broker; on shutdown, after the server's own workers (consumers added
    /// before this call), the relay publishes what is left and the connection closes.
    pub fn attach(&self, server: ServiceServer) -> ServiceServer {
        let relay = self
            .outbox
            .start_relay(&self.broker, RelayOptions::default());
        server
            .depends_on(self.broker.health_check())
            .with_worker(relay)
            .with_worker(self.broker.clone())
    }
}

impl ServiceMessaging {
    /// Exposes the broker's counters and the outbox's depth and age in `registry`; the
    /// returned task samples the outbox.
    pub fn register_metrics(
        &self,
        registry: &opsconductor_metrics::Registry,
    ) -> opsconductor_platform::server::Tasks {
        self.broker.register_metrics(registry);
        crate::gauges::outbox(self.outbox.db().clone(), registry)
    }
}

impl Worker for RunningRelay {
    fn stop(self: Box<Self>, grace: Duration) -> BoxFuture<'static, ()> {
        self.shutdown(grace).boxed()
    }
}

impl Worker for RunningConsumer {
    fn stop(self: Box<Self>, grace: Duration) -> BoxFuture<'static, ()> {
        self.shutdown(grace).boxed()
    }
}

impl Worker for Broker {
    fn stop(self: Box<Self>, _grace: Duration) -> BoxFuture<'static, ()> {
        async move { self.close().await }.boxed()
    }
}
