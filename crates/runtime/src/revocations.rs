//! Token revocations reaching a server: broadcast by the auth service, signed with its signing
//! key and verified here against the JWKS before they are applied (anyone who can publish to
//! the broker could otherwise lock everyone out); after every (re)subscription, a catch-up from
//! `ListRevocations`, page by page, since broadcasts sent while disconnected are gone.

use std::sync::{Arc, Weak};
use std::time::Duration;

use futures::future::{BoxFuture, FutureExt};
use opsconductor_api::auth::v1::{ListRevocationsRequest, TokenRevoked};
use opsconductor_messaging::topology::platform;
use opsconductor_messaging::{Broker, Consumer, HandleError, Handlers, Received, RunningConsumer};
use opsconductor_platform::auth::{Revocations, Verifier};
use opsconductor_platform::client::Clients;
use opsconductor_platform::ApiError;

/// Where a server catches up on revocations it may have missed while not listening.
pub trait RevocationSource: Send + Sync + 'static {
    /// Every revocation that may still matter (within the longest token lifetime).
    fn list(&self) -> BoxFuture<'_, Result<Vec<TokenRevoked>, ApiError>>;
}

/// More pages than this is a broken server, not a long list.
const MAX_PAGES: usize = 10_000;

/// `ListRevocations` on the auth service, every page.
pub(crate) struct FromAuthService(pub Arc<Clients>);

impl RevocationSource for FromAuthService {
    fn list(&self) -> BoxFuture<'_, Result<Vec<TokenRevoked>, ApiError>> {
        async move {
            let mut all = Vec::new();
            let mut page_token = String::new();
            for _ in 0..MAX_PAGES {
                let page = self
                    .0
                    .auth()
                    .list_revocations(ListRevocationsRequest {
                        page_size: 0,
                        page_token,
                    })
                    .await
                    .map_err(|status| ApiError::from_status(&status))?
                    .into_inner();
                all.extend(page.revocations);
                if page.next_page_token.is_empty() {
                    return Ok(all);
                }
                page_token = page.next_page_token;
            }
            Err(ApiError::internal(
                "ListRevocations never reached its last page",
            ))
        }
        .boxed()
    }
}

/// Applies every signed `TokenRevoked` broadcast to `verifier`; refuses (dead-letters) the
/// unsigned, the badly signed and the invalid; after each (re)subscription, catches up from
/// `source`.
pub(crate) fn listener(
    broker: &Broker,
    verifier: &Arc<Verifier>,
    source: Arc<dyn RevocationSource>,
) -> RunningConsumer {
    let applying = verifier.clone();
    let handlers = Handlers::new().on(move |revoked: Received<TokenRevoked>| {
        let verifier = applying.clone();
        async move {
            let now = opsconductor_platform::time::now_secs();
            Revocations::validate(&revoked.message, now).map_err(HandleError::reject)?;
            let dropped = verifier.revoke(&revoked.message);
            tracing::info!(
                dropped_cached_tokens = dropped,
                reason = revoked.message.reason,
                "token revocation applied"
            );
            Ok::<(), HandleError>(())
        }
    });
    let weak = Arc::downgrade(verifier);
    Consumer::broadcast(broker, &platform::token_revocations(), handlers)
        .signed_by(verifier.keys().clone())
        .on_connect(move || {
            tokio::spawn(catch_up(weak.clone(), source.clone()));
            futures::future::ready(())
        })
        .start()
}

async fn catch_up(verifier: Weak<Verifier>, source: Arc<dyn RevocationSource>) {
    let mut backoff = Duration::from_millis(200);
    loop {
        match source.list().await {
            Ok(revocations) => {
                let Some(verifier) = verifier.upgrade() else {
                    return;
                };
                for revocation in &revocations {
                    verifier.revoke(revocation);
                }
                // Tokens verified before may have been revoked meanwhile: check them afresh.
                verifier.forget_verified();
                tracing::debug!(revocations = revocations.len(), "caught up on revocations");
                return;
            }
            Err(error) => {
                if verifier.strong_count() == 0 {
                    return;
                }
                tracing::debug!(%error, retry_in = ?backoff, "cannot list revocations yet");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(30));
            }
        }
    }
}
