//! What every OpsConductor service runs with besides its own domain, assembled once:
//! settings read from the environment, the service's identity and the token source that
//! speaks for it, the clients it calls other services with, the verifier behind the token
//! checks in front of it, and the listener that applies token revocations as the auth service
//! broadcasts them (catching up on reconnect with `ListRevocations`).
//!
//! A service crate builds its routes and store, then hands its server to
//! [`ServiceContext::finish`].

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use futures::future::{BoxFuture, FutureExt};
use opsconductor_api::auth::v1::{ListRevocationsRequest, TokenRevoked};
use opsconductor_messaging::topology::platform;
use opsconductor_messaging::{
    Broker, BrokerConfig, Consumer, HandleError, Handlers, Received, RunningConsumer,
    ServiceMessaging,
};
use opsconductor_platform::auth::{
    Authenticator, KeySource, RemoteJwks, ServiceCredentials, TokenFetcher, TokenSettings,
    TokenSource, Verifier,
};
use opsconductor_platform::client::Clients;
use opsconductor_platform::config::{ConfigError, Env, ServerConfig};
use opsconductor_platform::policy::PolicyError;
use opsconductor_platform::server::ServiceServer;
use opsconductor_platform::validate::is_slug;
use opsconductor_platform::ServiceKind;

/// Why a service could not be built.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Storage(#[from] opsconductor_storage::StorageError),
    #[error(transparent)]
    Policy(#[from] PolicyError),
    /// The service's own start-up step failed (e.g. creating the administrator).
    #[error("{0}")]
    Service(String),
}

/// Where a server catches up on revocations it may have missed while not listening.
pub trait RevocationSource: Send + Sync + 'static {
    fn list(&self) -> BoxFuture<'_, Result<Vec<TokenRevoked>, String>>;
}

/// `ListRevocations` on the auth service.
struct FromAuthService(Arc<Clients>);

impl RevocationSource for FromAuthService {
    fn list(&self) -> BoxFuture<'_, Result<Vec<TokenRevoked>, String>> {
        async move {
            self.0
                .auth()
                .list_revocations(ListRevocationsRequest {})
                .await
                .map(|r| r.into_inner().revocations)
                .map_err(|status| status.message().to_string())
        }
        .boxed()
    }
}

/// Everything a service is started with besides its database.
pub struct ServiceContext {
    pub kind: ServiceKind,
    pub server: ServerConfig,
    pub broker: BrokerConfig,
    pub tokens: TokenSettings,
    clients: Arc<Clients>,
    verifier: Arc<Verifier>,
    revocations: Arc<dyn RevocationSource>,
    refresher_started: AtomicBool,
}

impl ServiceContext {
    /// A service other than auth, from the environment: `SERVICE_ID` (default: the service's
    /// name) and `SERVICE_SECRET` (or `SERVICE_SECRET_FILE`) for its identity; the auth
    /// service's JWKS to verify tokens; `*_SERVICE_URL` for its clients.
    pub fn from_env(
        kind: ServiceKind,
        env: &Env,
        listen: SocketAddr,
    ) -> Result<ServiceContext, ConfigError> {
        let service_id = env
            .get("SERVICE_ID")
            .unwrap_or_else(|| kind.name().to_string());
        if !is_slug(&service_id, 1, 64, &['-', '_']) {
            return Err(ConfigError::invalid(
                "SERVICE_ID",
                &service_id,
                "must be 1-64 characters of a-z, 0-9, '-' and '_'",
            ));
        }
        let secret = env
            .secret("SERVICE_SECRET")?
            .ok_or_else(|| ConfigError::Missing {
                var: "SERVICE_SECRET".into(),
                hint:
                    "the secret the auth service knows this service by (or SERVICE_SECRET_FILE); \
                   `opsconductor secrets init` generates them"
                        .into(),
            })?;
        let tokens = TokenSettings::from_env(env)?;
        let clients = Clients::from_env(env)?;
        let auth = clients.raw_channel(ServiceKind::Auth);
        let source = TokenSource::new(ServiceCredentials::new(auth.clone(), &service_id, &secret));
        let clients = Arc::new(clients.with_tokens(source));
        let keys = Arc::new(RemoteJwks::new(auth, tokens.jwks_refetch_interval));
        let verifier = Arc::new(Verifier::new(tokens.clone(), keys));
        Ok(ServiceContext {
            kind,
            server: ServerConfig::from_env(env, listen)?,
            broker: BrokerConfig::from_env(env, kind.name())?,
            tokens,
            revocations: Arc::new(FromAuthService(clients.clone())),
            clients,
            verifier,
            refresher_started: AtomicBool::new(false),
        })
    }

    /// The auth service itself: it verifies with its own keys, mints its own service token
    /// and reads revocations from its own store.
    pub fn local(
        kind: ServiceKind,
        env: &Env,
        listen: SocketAddr,
        keys: Arc<dyn KeySource>,
        fetcher: impl TokenFetcher,
        revocations: Arc<dyn RevocationSource>,
    ) -> Result<ServiceContext, ConfigError> {
        let tokens = TokenSettings::from_env(env)?;
        let clients = Arc::new(Clients::from_env(env)?.with_tokens(TokenSource::new(fetcher)));
        Ok(ServiceContext {
            kind,
            server: ServerConfig::from_env(env, listen)?,
            broker: BrokerConfig::from_env(env, kind.name())?,
            verifier: Arc::new(Verifier::new(tokens.clone(), keys)),
            tokens,
            clients,
            revocations,
            refresher_started: AtomicBool::new(false),
        })
    }

    /// Every piece given (tests).
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        kind: ServiceKind,
        server: ServerConfig,
        broker: BrokerConfig,
        tokens: TokenSettings,
        clients: Arc<Clients>,
        verifier: Arc<Verifier>,
        revocations: Arc<dyn RevocationSource>,
    ) -> ServiceContext {
        ServiceContext {
            kind,
            server,
            broker,
            tokens,
            clients,
            verifier,
            revocations,
            refresher_started: AtomicBool::new(false),
        }
    }

    /// Clients of the other services, carrying this service's token.
    pub fn clients(&self) -> &Arc<Clients> {
        &self.clients
    }

    pub fn verifier(&self) -> &Arc<Verifier> {
        &self.verifier
    }

    /// Puts token checks in front of `server`, starts the revocation listener and the token
    /// refresher, and hands the messaging workers to the server (stopped after it drains:
    /// the listener, then the outbox relay, then the connection).
    pub fn finish(
        &self,
        server: ServiceServer,
        messaging: &ServiceMessaging,
    ) -> Result<ServiceServer, PolicyError> {
        let authenticator = Arc::new(Authenticator::new(self.verifier.clone())?);
        if !self.refresher_started.swap(true, Ordering::SeqCst) {
            if let Some(tokens) = self.clients.tokens() {
                tokens.spawn_refresher();
            }
        }
        let listener =
            revocation_listener(&messaging.broker, &self.verifier, self.revocations.clone());
        Ok(messaging.attach(server.authenticate(authenticator).with_worker(listener)))
    }
}

/// Applies every `TokenRevoked` broadcast to `verifier`; after each (re)subscription, catches
/// up from `source`, since broadcasts sent while disconnected are gone.
fn revocation_listener(
    broker: &Broker,
    verifier: &Arc<Verifier>,
    source: Arc<dyn RevocationSource>,
) -> RunningConsumer {
    let applying = verifier.clone();
    let handlers = Handlers::new().on(move |revoked: Received<TokenRevoked>| {
        let verifier = applying.clone();
        async move {
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
