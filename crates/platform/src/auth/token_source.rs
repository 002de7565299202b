//! The client side: tokens for a service identity, fetched when needed, refreshed ahead of
//! expiry in the background, and never fetched twice at once — however many calls wait.
//!
//! Each source also holds a message-signing key made when it is created (its private half
//! never leaves this process). Every token fetch asks the auth service to certify it for the
//! identity, so what the service publishes to the broker can be traced to it (DESIGN §9).

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, RwLock, Weak};
use std::time::{Duration, SystemTime};

use futures::future::{BoxFuture, FutureExt};
use opsconductor_api::auth::v1::auth_service_client::AuthServiceClient;
use opsconductor_api::auth::v1::ExchangeServiceTokenRequest;
use opsconductor_tokens::{PublicKey, SigningKey};
use tokio::task::JoinHandle;
use tonic::transport::Channel;

use super::AuthError;

/// A token and when it stops being accepted.
#[derive(Clone)]
pub struct IssuedToken {
    pub token: String,
    pub expire_time: SystemTime,
    /// The issuer's certificate of the source's message key, valid as long as the token.
    pub message_certificate: Option<String>,
}

impl fmt::Debug for IssuedToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IssuedToken")
            .field("token", &"<redacted>")
            .field("expire_time", &self.expire_time)
            .field("message_certificate", &self.message_certificate.is_some())
            .finish()
    }
}

/// Where tokens come from: the auth service's client-credentials exchange, or (inside the
/// auth service) its own signing key. A fetcher that can certifies `message_key` with the
/// token.
pub trait TokenFetcher: Send + Sync + 'static {
    fn fetch<'a>(
        &'a self,
        message_key: &'a PublicKey,
    ) -> BoxFuture<'a, Result<IssuedToken, AuthError>>;
}

/// Exchanges `SERVICE_ID` and `SERVICE_SECRET` for a service token.
pub struct ServiceCredentials {
    client: AuthServiceClient<Channel>,
    service_id: String,
    secret: String,
}

impl ServiceCredentials {
    /// `channel` reaches the auth service (`ExchangeServiceToken` needs no token itself).
    pub fn new(channel: Channel, service_id: &str, secret: &str) -> ServiceCredentials {
        ServiceCredentials {
            client: AuthServiceClient::new(channel),
            service_id: service_id.to_string(),
            secret: secret.to_string(),
        }
    }
}

impl fmt::Debug for ServiceCredentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServiceCredentials")
            .field("service_id", &self.service_id)
            .finish_non_exhaustive()
    }
}

impl TokenFetcher for ServiceCredentials {
    fn fetch<'a>(
        &'a self,
        message_key: &'a PublicKey,
    ) -> BoxFuture<'a, Result<IssuedToken, AuthError>> {
        async move {
            let response = self
                .client
                .clone()
                .exchange_service_token(ExchangeServiceTokenRequest {
                    service_id: self.service_id.clone(),
                    service_secret: self.secret.clone(),
                    message_key: message_key.key.as_bytes().to_vec(),
                })
                .await
                .map_err(|status| {
                    AuthError::Fetch(format!("{:?}: {}", status.code(), status.message()))
                })?
                .into_inner();
            let expire_time = response
                .expire_time
                .and_then(|t| SystemTime::try_from(t).ok())
                .ok_or_else(|| AuthError::Fetch("the token came without an expiry".into()))?;
            Ok(IssuedToken {
                token: response.access_token,
                expire_time,
                message_certificate: (!response.message_key_certificate.is_empty())
                    .then_some(response.message_key_certificate),
            })
        }
        .boxed()
    }
}

/// Always the same token (tests, tools that were handed a token).
pub struct StaticToken(pub IssuedToken);

impl TokenFetcher for StaticToken {
    fn fetch<'a>(&'a self, _: &'a PublicKey) -> BoxFuture<'a, Result<IssuedToken, AuthError>> {
        futures::future::ready(Ok(self.0.clone())).boxed()
    }
}

struct Current {
    token: Arc<str>,
    certificate: Option<Arc<str>>,
    expire_time: SystemTime,
    refresh_time: SystemTime,
}

/// The key a service signs its messages with and the certificate that names it.
#[derive(Clone)]
pub struct MessageSigning {
    pub key: Arc<SigningKey>,
    pub certificate: Arc<str>,
}

struct Inner {
    fetcher: Box<dyn TokenFetcher>,
    message_key: Arc<SigningKey>,
    current: RwLock<Option<Current>>,
    /// Held while fetching: one fetch at a time.
    fetching: tokio::sync::Mutex<()>,
    fetches: AtomicU64,
    fetch_failures: AtomicU64,
    /// Calls answered from the cache, and calls that had to wait for a fetch.
    hits: AtomicU64,
    misses: AtomicU64,
}

/// Cached tokens of one identity. Cheap to clone.
#[derive(Clone)]
pub struct TokenSource {
    inner: Arc<Inner>,
}

/// A token this close to its expiry is not handed out: it could expire on the way (servers
/// allow 30 s of clock skew on top, so this only covers the trip).
const EXPIRY_MARGIN: Duration = Duration::from_secs(2);

impl TokenSource {
    pub fn new(fetcher: impl TokenFetcher) -> TokenSource {
        TokenSource {
            inner: Arc::new(Inner {
                fetcher: Box::new(fetcher),
                message_key: Arc::new(SigningKey::generate()),
                current: RwLock::new(None),
                fetching: tokio::sync::Mutex::new(()),
                fetches: AtomicU64::new(0),
                fetch_failures: AtomicU64::new(0),
                hits: AtomicU64::new(0),
                misses: AtomicU64::new(0),
            }),
        }
    }

    /// A token to send now: the cached one while it is valid, else a fresh one. Callers
    /// arriving while a fetch is under way wait for it instead of starting their own.
    pub async fn token(&self) -> Result<Arc<str>, AuthError> {
        if let Some(token) = self.valid() {
            self.inner.hits.fetch_add(1, Ordering::Relaxed);
            return Ok(token);
        }
        self.inner.misses.fetch_add(1, Ordering::Relaxed);
        let _fetching = self.inner.fetching.lock().await;
        if let Some(token) = self.valid() {
            return Ok(token);
        }
        self.fetch_now().await
    }

    /// The message key and its current certificate (fetching a token first if the current one
    /// is near its end, like [`TokenSource::token`]).
    pub async fn message_signing(&self) -> Result<MessageSigning, AuthError> {
        self.token().await?;
        let current = self
            .inner
            .current
            .read()
            .unwrap_or_else(PoisonError::into_inner);
        let certificate = current
            .as_ref()
            .and_then(|c| c.certificate.clone())
            .ok_or_else(|| {
                AuthError::Fetch("the token issuer did not certify the message key".into())
            })?;
        Ok(MessageSigning {
            key: self.inner.message_key.clone(),
            certificate,
        })
    }

    /// Tokens fetched so far.
    pub fn fetches(&self) -> u64 {
        self.inner.fetches.load(Ordering::SeqCst)
    }

    /// Exposes the cache's hits and misses and the fetches (failed ones apart) in `registry`.
    pub fn register_metrics(&self, registry: &opsconductor_metrics::Registry) {
        let read = |pick: fn(&Inner) -> &AtomicU64| {
            let inner = Arc::downgrade(&self.inner);
            move || {
                inner
                    .upgrade()
                    .map_or(0, |inner| pick(&inner).load(Ordering::Relaxed))
            }
        };
        registry.register_collector(
            opsconductor_metrics::CounterSet::new()
                .counter(
                    "opsconductor_token_cache_hits",
                    "Calls that found a valid service token in the cache.",
                    read(|i| &i.hits),
                )
                .counter(
                    "opsconductor_token_cache_misses",
                    "Calls that waited for a service token to be fetched.",
                    read(|i| &i.misses),
                )
                .counter(
                    "opsconductor_token_fetches",
                    "Service tokens requested from the auth service (refreshes included).",
                    read(|i| &i.fetches),
                )
                .counter(
                    "opsconductor_token_fetch_failures",
                    "Service token requests that failed.",
                    read(|i| &i.fetch_failures),
                ),
        );
    }

    fn valid(&self) -> Option<Arc<str>> {
        let current = self
            .inner
            .current
            .read()
            .unwrap_or_else(PoisonError::into_inner);
        let current = current.as_ref()?;
        (SystemTime::now() + EXPIRY_MARGIN < current.expire_time).then(|| current.token.clone())
    }

    fn needs_refresh(&self) -> bool {
        let current = self
            .inner
            .current
            .read()
            .unwrap_or_else(PoisonError::into_inner);
        current
            .as_ref()
            .is_none_or(|c| SystemTime::now() >= c.refresh_time)
    }

    /// When the background refresher should next look.
    fn next_refresh(&self) -> Duration {
        let current = self
            .inner
            .current
            .read()
            .unwrap_or_else(PoisonError::into_inner);
        match current.as_ref() {
            Some(c) => c
                .refresh_time
                .duration_since(SystemTime::now())
                .unwrap_or(Duration::ZERO),
            None => Duration::ZERO,
        }
    }

    async fn fetch_now(&self) -> Result<Arc<str>, AuthError> {
        self.inner.fetches.fetch_add(1, Ordering::SeqCst);
        let public = self.inner.message_key.public();
        let issued = self.inner.fetcher.fetch(&public).await.inspect_err(|_| {
            self.inner.fetch_failures.fetch_add(1, Ordering::Relaxed);
        })?;
        let now = SystemTime::now();
        let life = issued
            .expire_time
            .duration_since(now)
            .unwrap_or(Duration::ZERO);
        let token: Arc<str> = issued.token.into();
        // Nine tenths into its life, and at least a moment before the margin: the background
        // refresh lands before anyone has to wait, and a service fetches about one token per
        // token lifetime.
        let refresh_after = life
            .mul_f64(0.9)
            .min(life.saturating_sub(EXPIRY_MARGIN + Duration::from_secs(1)));
        *self
            .inner
            .current
            .write()
            .unwrap_or_else(PoisonError::into_inner) = Some(Current {
            token: token.clone(),
            certificate: issued.message_certificate.map(Arc::from),
            expire_time: issued.expire_time,
            refresh_time: now + refresh_after,
        });
        Ok(token)
    }

    /// Keeps the token fresh until every handle on this source is gone. While the auth service
    /// cannot be reached the current token stays in use and retries back off (up to 30 s).
    pub fn spawn_refresher(&self) -> JoinHandle<()> {
        let weak: Weak<Inner> = Arc::downgrade(&self.inner);
        tokio::spawn(async move {
            let mut backoff = Duration::from_millis(250);
            loop {
                let wait = match weak.upgrade() {
                    Some(inner) => TokenSource { inner }.next_refresh(),
                    None => return,
                };
                tokio::time::sleep(wait).await;
                let Some(inner) = weak.upgrade() else { return };
                let source = TokenSource { inner };
                let _fetching = source.inner.fetching.lock().await;
                if !source.needs_refresh() {
                    continue;
                }
                match source.fetch_now().await {
                    Ok(_) => backoff = Duration::from_millis(250),
                    Err(error) => {
                        tracing::debug!(%error, retry_in = ?backoff, "token refresh failed");
                        drop(_fetching);
                        drop(source);
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(Duration::from_secs(30));
                    }
                }
            }
        })
    }
}
