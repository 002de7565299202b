//! The consumer side: audit events from the queue, appended to the chain a batch at a time
//! (whatever the prefetch has waiting, one transaction), and a timer that signs the head when
//! events have waited for a checkpoint long enough.

use std::time::Duration;

use opsconductor_api::audit::v1::AuditEvent;
use opsconductor_messaging::{BatchHandler, HandleError, Received};

use crate::store::{AuditStore, Incoming};

/// Appends batches of delivered events.
pub struct Writer {
    pub store: AuditStore,
}

impl BatchHandler<AuditEvent> for Writer {
    async fn handle(&self, batch: Vec<Received<AuditEvent>>) -> Vec<Result<(), HandleError>> {
        let count = batch.len();
        let mut results = vec![Ok(()); count];
        let mut incoming = Vec::with_capacity(count);
        let mut positions = Vec::with_capacity(count);
        for (i, received) in batch.into_iter().enumerate() {
            // The id is what makes a redelivery harmless: without one, an event cannot be
            // appended exactly once.
            if received.message.id.is_empty() || received.message.id.len() > 128 {
                results[i] = Err(HandleError::reject("the event has no usable id"));
                continue;
            }
            // Every service may audit, but only as itself: the source an event names is the
            // service whose signature it carries.
            if let Some(producer) = &received.meta.producer {
                if received.message.source != *producer {
                    results[i] = Err(HandleError::reject(format!(
                        "the event names source {:?} but was published by {producer:?}",
                        truncate(&received.message.source, 64)
                    )));
                    continue;
                }
            }
            positions.push(i);
            incoming.push(Incoming {
                publisher: received.meta.user_id.clone().unwrap_or_default(),
                event: received.message,
            });
        }
        if incoming.is_empty() {
            return results;
        }
        match self.store.append(incoming).await {
            Ok(appended) => {
                tracing::debug!(appended, batch = count, "audit events appended");
            }
            Err(error) => {
                tracing::warn!(%error, batch = count, "appending audit events failed; retrying");
                for i in positions {
                    results[i] = Err(HandleError::retry(&error));
                }
            }
        }
        results
    }
}

fn truncate(text: &str, max: usize) -> &str {
    let mut end = text.len().min(max);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

/// Signs the head every `every` when events were appended since the last checkpoint, until
/// the returned task is aborted.
pub fn spawn_checkpointer(store: AuditStore, every: Duration) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            tick.tick().await;
            match store.checkpoint_if_due().await {
                Ok(Some(sequence)) => tracing::debug!(sequence, "audit checkpoint signed"),
                Ok(None) => {}
                Err(error) => tracing::warn!(%error, "signing an audit checkpoint failed"),
            }
        }
    })
}
