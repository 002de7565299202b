//! Messages that change security state (a token revocation) are signed by their authority,
//! because anyone who can publish to the broker could otherwise send them (DESIGN §9): a
//! detached Ed25519 signature over the message type and body, by a key of the auth service's
//! JWKS, in two headers. A consumer that requires signatures verifies them against its key
//! source before any handler runs; an unsigned or badly signed message is dead-lettered with
//! the reason and counted.

use std::sync::Arc;

use futures::future::{BoxFuture, FutureExt};
use opsconductor_platform::auth::KeySource;
use opsconductor_tokens::SigningKey;

use crate::broker::Broker;
use crate::handler::{Dispatch, Outcome, RawMessage};
use crate::message::{headers, OutgoingMessage};
use crate::metrics::Metrics;

/// Names what the signature is for: never valid as a token signature or for anything else.
const CONTEXT: &str = "opsconductor.message.v1";

fn payload(message_type: &str, body: &[u8]) -> Vec<u8> {
    let mut payload = Vec::with_capacity(message_type.len() + 1 + body.len());
    payload.extend_from_slice(message_type.as_bytes());
    payload.push(0);
    payload.extend_from_slice(body);
    payload
}

impl OutgoingMessage {
    /// Signs the message (its type and body) with `key`.
    pub fn signed(mut self, key: &SigningKey) -> OutgoingMessage {
        let signature = key.sign_detached(CONTEXT, &payload(&self.message_type, &self.body));
        self.headers
            .insert(headers::SIGNATURE_KID.into(), key.kid().to_string());
        self.headers.insert(headers::SIGNATURE.into(), signature);
        self
    }
}

/// Verifies signatures before handing deliveries to `inner`.
pub(crate) struct Signed {
    pub inner: Arc<dyn Dispatch>,
    pub keys: Arc<dyn KeySource>,
    pub broker: Broker,
}

impl Signed {
    /// `Ok` when signed by a known key; a key not known yet is looked up once.
    async fn check(keys: &dyn KeySource, message: &RawMessage) -> Result<(), String> {
        let header = |name| {
            message
                .meta
                .headers
                .get(name)
                .filter(|v: &&String| !v.is_empty())
        };
        let (Some(kid), Some(signature)) =
            (header(headers::SIGNATURE_KID), header(headers::SIGNATURE))
        else {
            return Err("the message is not signed".into());
        };
        let payload = payload(&message.meta.message_type, &message.body);
        let mut known = keys.keys();
        if !known.contains(kid) {
            let issued_at = message.meta.timestamp.unwrap_or(0);
            if let Err(error) = keys.refresh(kid, issued_at).await {
                tracing::debug!(%error, "cannot refresh the keys to check a signature");
            }
            known = keys.keys();
        }
        known
            .verify_detached(kid, CONTEXT, &payload, signature)
            .map_err(|e| format!("the signature is refused: {e}"))
    }
}

impl Dispatch for Signed {
    fn dispatch(&self, message: &RawMessage) -> BoxFuture<'static, Outcome> {
        let keys = self.keys.clone();
        let inner = self.inner.clone();
        let broker = self.broker.clone();
        let message = message.clone();
        async move {
            match Signed::check(keys.as_ref(), &message).await {
                Ok(()) => inner.dispatch(&message).await,
                Err(reason) => {
                    Metrics::add(&broker.counters().signatures_refused, 1);
                    tracing::warn!(
                        %reason,
                        message_type = %message.meta.message_type,
                        publisher = message.meta.user_id.as_deref().unwrap_or(""),
                        "message refused"
                    );
                    Outcome::DeadLetter(reason)
                }
            }
        }
        .boxed()
    }
}
