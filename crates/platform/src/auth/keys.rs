//! Where verifiers get public keys: the auth service's JWKS, fetched at start and again when a
//! token names a key not seen before (at most once per interval), kept while the auth service
//! is down; or, inside the auth service, its own key store.

use std::sync::{Arc, PoisonError, RwLock};
use std::time::{Duration, Instant};

use futures::future::{BoxFuture, FutureExt};
use opsconductor_api::auth::v1::auth_service_client::AuthServiceClient;
use opsconductor_api::auth::v1::GetJwksRequest;
use opsconductor_tokens::{Jwk, KeySet};
use tonic::transport::Channel;

/// Public keys to verify tokens with.
pub trait KeySource: Send + Sync + 'static {
    /// The keys known now.
    fn keys(&self) -> Arc<KeySet>;
    /// Called when a token (or a signed message) that claims to be issued at `issued_at`
    /// (Unix seconds, unverified) names key `kid`, not in [`KeySource::keys`]: look again,
    /// unless the key has arrived meanwhile, or a recent look already began after the token
    /// was issued — then the key does not exist, and the source answers at once instead of
    /// fetching for a forgery.
    fn refresh<'a>(&'a self, kid: &'a str, issued_at: u64) -> BoxFuture<'a, Result<(), String>>;
}

/// A fixed key set, or one its owner replaces (the auth service's own keys; tests).
#[derive(Default)]
pub struct StaticKeys {
    keys: RwLock<Arc<KeySet>>,
}

impl StaticKeys {
    pub fn new(keys: KeySet) -> StaticKeys {
        StaticKeys {
            keys: RwLock::new(Arc::new(keys)),
        }
    }

    pub fn replace(&self, keys: KeySet) {
        *self.keys.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(keys);
    }
}

/// The key set a lock holds now.
fn current(keys: &RwLock<Arc<KeySet>>) -> Arc<KeySet> {
    keys.read().unwrap_or_else(PoisonError::into_inner).clone()
}

impl KeySource for StaticKeys {
    fn keys(&self) -> Arc<KeySet> {
        current(&self.keys)
    }

    fn refresh<'a>(&'a self, _kid: &'a str, _issued_at: u64) -> BoxFuture<'a, Result<(), String>> {
        futures::future::ready(Ok(())).boxed()
    }
}

/// When the last fetch began, by both clocks.
#[derive(Clone, Copy)]
struct Fetched {
    at: Instant,
    unix_secs: u64,
}

/// The auth service's JWKS over gRPC (`GetJwks`, which needs no token).
pub struct RemoteJwks {
    client: AuthServiceClient<Channel>,
    keys: RwLock<Arc<KeySet>>,
    /// The last fetch that completed (successfully or not).
    last: std::sync::Mutex<Option<Fetched>>,
    /// One fetch at a time; callers that waited see its result.
    fetching: tokio::sync::Mutex<()>,
    min_interval: Duration,
    skew: Duration,
}

impl RemoteJwks {
    /// Fetches at most once per `min_interval`; `skew` is the clock difference tolerated
    /// between the auth service and this server.
    pub fn new(channel: Channel, min_interval: Duration, skew: Duration) -> RemoteJwks {
        RemoteJwks {
            client: AuthServiceClient::new(channel),
            keys: RwLock::new(Arc::new(KeySet::default())),
            last: std::sync::Mutex::new(None),
            fetching: tokio::sync::Mutex::new(()),
            min_interval,
            skew,
        }
    }

    fn last(&self) -> Option<Fetched> {
        *self.last.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A fetch within the interval that began after `issued_at` (give or take the skew) saw
    /// the key set of a time the token already existed: its key was not in it.
    fn known_missing(&self, issued_at: u64) -> bool {
        self.last().is_some_and(|last| {
            last.at.elapsed() < self.min_interval
                && last.unix_secs > issued_at.saturating_add(self.skew.as_secs())
        })
    }

    async fn fetch(&self) -> Result<(), String> {
        let response = self
            .client
            .clone()
            .get_jwks(GetJwksRequest {})
            .await
            .map_err(|status| format!("GetJwks: {}", status.message()))?
            .into_inner();
        let jwks: Vec<Jwk> = response
            .keys
            .into_iter()
            .map(|k| Jwk {
                kty: k.kty,
                crv: k.crv,
                x: k.x,
                kid: k.kid,
                alg: k.alg,
                use_: k.r#use,
            })
            .collect();
        let keys = KeySet::from_jwks(&jwks);
        tracing::debug!(keys = keys.len(), "fetched the JWKS");
        *self.keys.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(keys);
        Ok(())
    }
}

impl KeySource for RemoteJwks {
    fn keys(&self) -> Arc<KeySet> {
        current(&self.keys)
    }

    fn refresh<'a>(&'a self, kid: &'a str, issued_at: u64) -> BoxFuture<'a, Result<(), String>> {
        async move {
            if self.known_missing(issued_at) {
                return Ok(());
            }
            let seen = self.last().map(|last| last.at);
            let _one_at_a_time = self.fetching.lock().await;
            // A fetch that finished while this call waited for its turn is as good as one of
            // its own: many calls with one unknown key cause one fetch, not one each.
            let fetched_meanwhile = self.last().map(|last| last.at) != seen;
            if fetched_meanwhile || self.keys().contains(kid) || self.known_missing(issued_at) {
                return Ok(());
            }
            // Fetches are spaced out, so forged key ids cannot become a flood of them; a
            // token newer than the last fetch waits for the next one.
            if let Some(last) = self.last() {
                let since = last.at.elapsed();
                if since < self.min_interval {
                    tokio::time::sleep(self.min_interval - since).await;
                }
            }
            let started = Fetched {
                at: Instant::now(),
                unix_secs: crate::time::now_secs(),
            };
            let fetched = self.fetch().await;
            *self.last.lock().unwrap_or_else(PoisonError::into_inner) = Some(started);
            fetched
        }
        .boxed()
    }
}
