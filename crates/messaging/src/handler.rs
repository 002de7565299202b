//! Typed handlers: a consumer decodes each delivery by its `type` property and hands it to the
//! handler registered for that protobuf message. A type nobody handles, or a body that does not
//! decode, cannot succeed on a later attempt, so it goes straight to the dead-letter queue.

use std::collections::HashMap;
use std::fmt::Display;
use std::future::Future;
use std::marker::PhantomData;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;

use futures::future::{BoxFuture, FutureExt};
use lapin::BasicProperties;

use crate::message::MessageMeta;

/// A decoded message and what came with it.
#[derive(Debug, Clone)]
pub struct Received<M> {
    pub message: M,
    pub meta: MessageMeta,
}

/// Why a handler did not finish. A handler returns `Ok` only once its effect is durable: the
/// delivery is acknowledged after that, never before.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HandleError {
    /// May pass (a database or upstream hiccup): try again after the next delay.
    Retry(String),
    /// May pass, but not before the given time (an upstream's Retry-After): try again after the
    /// first delay tier at least that long (or the last tier), and never sooner than `Retry`.
    RetryAfter(String, std::time::Duration),
    /// Will never succeed (invalid content): dead-letter it now.
    Reject(String),
}

impl HandleError {
    pub fn retry(error: impl Display) -> HandleError {
        HandleError::Retry(error.to_string())
    }

    pub fn reject(error: impl Display) -> HandleError {
        HandleError::Reject(error.to_string())
    }
}

impl Display for HandleError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HandleError::Retry(e) | HandleError::RetryAfter(e, _) => write!(f, "{e}"),
            HandleError::Reject(e) => write!(f, "rejected: {e}"),
        }
    }
}

/// Database trouble is worth another attempt.
impl From<sqlx::Error> for HandleError {
    fn from(error: sqlx::Error) -> Self {
        HandleError::retry(error)
    }
}

impl From<opsconductor_storage::StorageError> for HandleError {
    fn from(error: opsconductor_storage::StorageError) -> Self {
        HandleError::retry(error)
    }
}

/// Handles one message type. Closures `Fn(Received<M>) -> impl Future<Output = Result<(),
/// HandleError>>` are handlers too.
pub trait Handler<M>: Send + Sync + 'static {
    fn handle(&self, received: Received<M>)
        -> impl Future<Output = Result<(), HandleError>> + Send;
}

impl<M, F, Fut> Handler<M> for F
where
    M: Send + 'static,
    F: Fn(Received<M>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), HandleError>> + Send,
{
    fn handle(
        &self,
        received: Received<M>,
    ) -> impl Future<Output = Result<(), HandleError>> + Send {
        self(received)
    }
}

/// A delivery before decoding.
#[derive(Clone)]
pub(crate) struct RawMessage {
    pub body: Vec<u8>,
    pub meta: MessageMeta,
    pub properties: BasicProperties,
}

/// What became of a delivery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// Handled: acknowledge.
    Done,
    /// Failed, may pass: the next delay tier, or the dead-letter queue after the last attempt.
    Retry(String),
    /// As `Retry`, waiting at least this long.
    RetryAfter(String, std::time::Duration),
    /// Failed for good: the dead-letter queue now.
    DeadLetter(String),
    /// Could not be taken in (the dead-letter store is down): back to the queue after a pause.
    Requeue(String),
}

/// Turns a delivery into an outcome; typed [`Handlers`] are one, the dead-letter keeper another.
pub(crate) trait Dispatch: Send + Sync + 'static {
    fn dispatch(&self, message: &RawMessage) -> BoxFuture<'static, Outcome>;
}

trait Erased: Send + Sync {
    fn call(
        &self,
        body: &[u8],
        meta: MessageMeta,
    ) -> Result<BoxFuture<'static, Result<(), HandleError>>, String>;
}

struct Typed<M, H> {
    handler: Arc<H>,
    _message: PhantomData<fn() -> M>,
}

impl<M, H> Erased for Typed<M, H>
where
    M: prost::Message + prost::Name + Default + Send + 'static,
    H: Handler<M>,
{
    fn call(
        &self,
        body: &[u8],
        meta: MessageMeta,
    ) -> Result<BoxFuture<'static, Result<(), HandleError>>, String> {
        let message = M::decode(body)
            .map_err(|e| format!("the body does not decode as {}: {e}", M::full_name()))?;
        let handler = self.handler.clone();
        Ok(async move { handler.handle(Received { message, meta }).await }.boxed())
    }
}

/// The handlers of one consumer, by message type.
#[derive(Default, Clone)]
pub struct Handlers {
    by_type: HashMap<String, Arc<dyn Erased>>,
}

impl Handlers {
    pub fn new() -> Handlers {
        Handlers::default()
    }

    /// Handles messages whose `type` is `M`'s full protobuf name.
    pub fn on<M, H>(mut self, handler: H) -> Handlers
    where
        M: prost::Message + prost::Name + Default + Send + 'static,
        H: Handler<M>,
    {
        self.by_type.insert(
            M::full_name(),
            Arc::new(Typed::<M, H> {
                handler: Arc::new(handler),
                _message: PhantomData,
            }),
        );
        self
    }

    pub fn types(&self) -> impl Iterator<Item = &str> {
        self.by_type.keys().map(String::as_str)
    }
}

impl Dispatch for Handlers {
    fn dispatch(&self, message: &RawMessage) -> BoxFuture<'static, Outcome> {
        let kind = &message.meta.message_type;
        let Some(handler) = self.by_type.get(kind) else {
            let error = format!("no handler for message type {kind:?}");
            return futures::future::ready(Outcome::DeadLetter(error)).boxed();
        };
        match handler.call(&message.body, message.meta.clone()) {
            Err(error) => futures::future::ready(Outcome::DeadLetter(error)).boxed(),
            Ok(handling) => async move {
                // A panicking handler must not leave its delivery unacknowledged forever.
                match AssertUnwindSafe(handling).catch_unwind().await {
                    Ok(Ok(())) => Outcome::Done,
                    Ok(Err(HandleError::Retry(e))) => Outcome::Retry(e),
                    Ok(Err(HandleError::RetryAfter(e, after))) => Outcome::RetryAfter(e, after),
                    Ok(Err(HandleError::Reject(e))) => Outcome::DeadLetter(e),
                    Err(_) => Outcome::Retry("the handler panicked".to_string()),
                }
            }
            .boxed(),
        }
    }
}
