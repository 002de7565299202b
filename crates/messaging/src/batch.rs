//! Handling deliveries in batches, in the order they were delivered: a consumer whose effect is
//! cheaper per message when written together (one transaction, one fsync) — the audit log
//! appending to its chain — takes whatever is waiting, up to a maximum, and settles each
//! delivery with its own outcome.

use std::future::Future;
use std::marker::PhantomData;
use std::sync::Arc;

use futures::future::{BoxFuture, FutureExt};
use tokio::sync::{mpsc, oneshot};

use crate::handler::{Dispatch, HandleError, Outcome, RawMessage, Received};

/// Handles a batch of messages of one type; returns one result per message, in order.
pub trait BatchHandler<M>: Send + Sync + 'static {
    fn handle(
        &self,
        batch: Vec<Received<M>>,
    ) -> impl Future<Output = Vec<Result<(), HandleError>>> + Send;
}

type Waiting<M> = (Received<M>, oneshot::Sender<Outcome>);

/// The dispatcher side: decodes each delivery and queues it, in delivery order, for the task
/// that runs the batches.
pub(crate) struct Batched<M> {
    queue: mpsc::UnboundedSender<Waiting<M>>,
    _message: PhantomData<fn() -> M>,
}

impl<M> Batched<M>
where
    M: prost::Message + prost::Name + Default + Send + 'static,
{
    /// Starts the task that runs `handler` over batches of at most `max` messages.
    pub(crate) fn start<H: BatchHandler<M>>(handler: H, max: usize) -> Batched<M> {
        let (queue, mut waiting) = mpsc::unbounded_channel::<Waiting<M>>();
        let handler = Arc::new(handler);
        let max = max.max(1);
        tokio::spawn(async move {
            while let Some(first) = waiting.recv().await {
                let mut batch = vec![first];
                while batch.len() < max {
                    match waiting.try_recv() {
                        Ok(next) => batch.push(next),
                        Err(_) => break,
                    }
                }
                let (messages, replies): (Vec<_>, Vec<_>) = batch.into_iter().unzip();
                let count = messages.len();
                let running = std::panic::AssertUnwindSafe(handler.handle(messages));
                let outcomes = match running.catch_unwind().await {
                    Ok(results) if results.len() == count => results
                        .into_iter()
                        .map(|r| match r {
                            Ok(()) => Outcome::Done,
                            Err(HandleError::Retry(e)) => Outcome::Retry(e),
                            Err(HandleError::RetryAfter(e, after)) => Outcome::RetryAfter(e, after),
                            Err(HandleError::Reject(e)) => Outcome::DeadLetter(e),
                        })
                        .collect(),
                    Ok(results) => vec![
                        Outcome::Retry(format!(
                            "the batch handler answered {} results for {count} messages",
                            results.len()
                        ));
                        count
                    ],
                    Err(_) => vec![Outcome::Retry("the batch handler panicked".into()); count],
                };
                for (reply, outcome) in replies.into_iter().zip(outcomes) {
                    let _ = reply.send(outcome);
                }
            }
        });
        Batched {
            queue,
            _message: PhantomData,
        }
    }
}

impl<M> Dispatch for Batched<M>
where
    M: prost::Message + prost::Name + Default + Send + 'static,
{
    fn dispatch(&self, message: &RawMessage) -> BoxFuture<'static, Outcome> {
        if message.meta.message_type != M::full_name() {
            let error = format!(
                "no handler for message type {:?}",
                message.meta.message_type
            );
            return futures::future::ready(Outcome::DeadLetter(error)).boxed();
        }
        let decoded = match M::decode(message.body.as_slice()) {
            Ok(decoded) => decoded,
            Err(e) => {
                let error = format!("the body does not decode as {}: {e}", M::full_name());
                return futures::future::ready(Outcome::DeadLetter(error)).boxed();
            }
        };
        let (reply, outcome) = oneshot::channel();
        let received = Received {
            message: decoded,
            meta: message.meta.clone(),
        };
        if self.queue.send((received, reply)).is_err() {
            return futures::future::ready(Outcome::Retry("the batch task has stopped".into()))
                .boxed();
        }
        async move {
            outcome
                .await
                .unwrap_or_else(|_| Outcome::Retry("the batch task has stopped".into()))
        }
        .boxed()
    }
}
