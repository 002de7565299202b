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
    /// Called when a token names an unknown key: look again (the source may decline if it
    /// looked very recently).
    fn refresh(&self) -> BoxFuture<'_, Result<(), String>>;
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

    fn refresh(&self) -> BoxFuture<'_, Result<(), String>> {
        futures::future::ready(Ok(())).boxed()
    }
}

/// The auth service's JWKS over gRPC (`GetJwks`, which needs no token).
pub struct RemoteJwks {
    client: AuthServiceClient<Channel>,
    keys: RwLock<Arc<KeySet>>,
    last_fetch: tokio::sync::Mutex<Option<Instant>>,
    min_interval: Duration,
}

impl RemoteJwks {
    pub fn new(channel: Channel, min_interval: Duration) -> RemoteJwks {
        RemoteJwks {
            client: AuthServiceClient::new(channel),
            keys: RwLock::new(Arc::new(KeySet::default())),
            last_fetch: tokio::sync::Mutex::new(None),
            min_interval,
        }
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

    fn refresh(&self) -> BoxFuture<'_, Result<(), String>> {
        async move {
            let asked = Instant::now();
            // One fetch at a time; callers that waited see its result.
            let mut last = self.last_fetch.lock().await;
            if let Some(at) = *last {
                if at >= asked {
                    return Ok(());
                }
                // Fetches are spaced out (forged key ids cannot turn into a flood of them),
                // but a new key after a rotation is waited for, not refused.
                let since = at.elapsed();
                if since < self.min_interval {
                    tokio::time::sleep(self.min_interval - since).await;
                }
            }
            *last = Some(Instant::now());
            self.fetch().await
        }
        .boxed()
    }
}
