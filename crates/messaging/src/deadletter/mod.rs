//! Dead letters: drained from each consumed work queue's `<queue>.dlq` into the service's
//! database by a keeper, and administered through `DeadLetterService` on the service's port.

mod api;
mod json;
mod keeper;
mod store;

use std::sync::Arc;

use opsconductor_api::deadletters::v1::dead_letter_service_server::DeadLetterServiceServer;
use opsconductor_storage::Database;

pub use api::DeadLetterApi;

use crate::broker::Broker;
use crate::consumer::{Consumer, RunningConsumer};
use crate::topology::WorkQueue;
use keeper::Keeper;
use store::DeadLetterStore;

/// The dead letters of the work queues one service consumes.
pub struct DeadLetters {
    store: DeadLetterStore,
    broker: Broker,
    queues: Vec<WorkQueue>,
}

impl DeadLetters {
    /// `db` must carry the messaging migrations ([`crate::migrations`]).
    pub fn new(db: Database, broker: &Broker, queues: &[WorkQueue]) -> DeadLetters {
        DeadLetters {
            store: DeadLetterStore::new(db),
            broker: broker.clone(),
            queues: queues.to_vec(),
        }
    }

    /// One keeper per dead-letter queue, draining it into the database.
    pub fn start_keepers(&self) -> Vec<RunningConsumer> {
        let names = self.broker.names();
        self.queues
            .iter()
            .map(|queue| {
                let keeper = Keeper {
                    store: self.store.clone(),
                    queue: names.dead_letter_queue(queue),
                    work_queue: names.queue(queue),
                };
                Consumer::dead_letters(&self.broker, queue, Arc::new(keeper)).start()
            })
            .collect()
    }

    /// Exposes how many dead letters each queue keeps in `registry`; the returned task
    /// samples the database.
    pub fn register_metrics(
        &self,
        registry: &opsconductor_metrics::Registry,
    ) -> opsconductor_platform::server::Tasks {
        let names = self.broker.names();
        let queues = self
            .queues
            .iter()
            .map(|queue| names.dead_letter_queue(queue))
            .collect();
        crate::gauges::dead_letters(self.store.db().clone(), queues, registry)
    }

    /// The gRPC service for operators.
    pub fn service(&self) -> DeadLetterServiceServer<DeadLetterApi> {
        let names = self.broker.names();
        DeadLetterServiceServer::new(DeadLetterApi {
            store: self.store.clone(),
            broker: self.broker.clone(),
            queues: self
                .queues
                .iter()
                .map(|q| names.dead_letter_queue(q))
                .collect(),
        })
    }
}
