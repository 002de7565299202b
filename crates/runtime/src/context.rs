//! The context a service is started with: its settings, identity, clients and verifier, and
//! the assembly every service shares (migrations, broker, server, token checks, workers).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use opsconductor_messaging::{
    BrokerConfig, DeadLetters, MessageSigner, ProducerTrust, ServiceMessaging, Topology, WorkQueue,
};
use opsconductor_metrics::Registry;
use opsconductor_platform::auth::{
    Authenticator, KeySource, RefusalAudit, RemoteJwks, ServiceCredentials, TokenFetcher,
    TokenSettings, TokenSource, Verifier,
};
use opsconductor_platform::client::Clients;
use opsconductor_platform::config::{ConfigError, Env, ServerConfig};
use opsconductor_platform::server::{GrpcService, ServiceServer};
use opsconductor_platform::validate::is_slug;
use opsconductor_platform::ServiceKind;
use opsconductor_storage::{Database, Migrations};

use crate::revocations::{self, FromAuthService, RevocationSource};
use crate::StartError;

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
    metrics: Registry,
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
        let metrics = Registry::new();
        let clients = Arc::new(clients.with_tokens(source).with_metrics(&metrics));
        let keys = Arc::new(RemoteJwks::new(
            auth,
            tokens.jwks_refetch_interval,
            tokens.leeway,
        ));
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
            metrics,
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
        let metrics = Registry::new();
        let clients = Arc::new(
            Clients::from_env(env)?
                .with_tokens(TokenSource::new(fetcher))
                .with_metrics(&metrics),
        );
        Ok(ServiceContext {
            kind,
            server: ServerConfig::from_env(env, listen)?,
            broker: BrokerConfig::from_env(env, kind.name())?,
            verifier: Arc::new(Verifier::new(tokens.clone(), keys)),
            tokens,
            clients,
            revocations,
            refresher_started: AtomicBool::new(false),
            metrics,
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
            metrics: Registry::new(),
        }
    }

    /// Clients of the other services, carrying this service's token.
    pub fn clients(&self) -> &Arc<Clients> {
        &self.clients
    }

    pub fn verifier(&self) -> &Arc<Verifier> {
        &self.verifier
    }

    /// What the service exposes at `/metrics`; a service registers its own series here.
    pub fn metrics(&self) -> &Registry {
        &self.metrics
    }

    /// Migrates `db` — the service's own schema and the messaging tables (outbox, inbox,
    /// dead letters) — and connects to the broker, declaring `topology` and the audit queue.
    pub async fn start_messaging(
        &self,
        db: &Database,
        migrations: &Migrations,
        topology: Topology,
    ) -> Result<ServiceMessaging, StartError> {
        db.migrate_all(&[migrations, &opsconductor_messaging::migrations()])
            .await?;
        Ok(ServiceMessaging::start(
            self.broker.clone(),
            topology,
            db,
            self.producer_trust()?,
        ))
    }

    /// What this service signs its messages with (its token source's message key and
    /// certificate) and checks others' against (the auth service's keys).
    pub fn producer_trust(&self) -> Result<ProducerTrust, StartError> {
        let tokens = self.clients.tokens().ok_or_else(|| {
            StartError::Service(
                "the service has no identity to sign its broker messages with".into(),
            )
        })?;
        let signer: Arc<dyn MessageSigner> = Arc::new(tokens.clone());
        Ok(ProducerTrust::new(signer, self.verifier.keys().clone()))
    }

    /// Serves `service` as this service: limited to the configured message size, health
    /// following `db` and the broker, token checks and caller policies in front, the
    /// revocation listener, token refresher and outbox relay running beside it.
    pub fn serve<S: GrpcService>(
        &self,
        service: S,
        db: Database,
        messaging: &ServiceMessaging,
    ) -> Result<ServiceServer, StartError> {
        let server =
            ServiceServer::grpc(self.kind.name(), self.server.clone(), service).depends_on(db);
        self.finish(server, messaging)
    }

    /// [`ServiceContext::serve`], with callers refused by a policy that says
    /// `audit_refusals` handed to `refusals`.
    pub fn serve_auditing_refusals<S: GrpcService>(
        &self,
        service: S,
        db: Database,
        messaging: &ServiceMessaging,
        refusals: Arc<dyn RefusalAudit>,
    ) -> Result<ServiceServer, StartError> {
        let server =
            ServiceServer::grpc(self.kind.name(), self.server.clone(), service).depends_on(db);
        self.finish_with(server, messaging, Some(refusals))
    }

    /// `server` with `DeadLetterService` for the work `queues` it consumes beside it, and the
    /// keepers that move expired retries of those queues into their dead-letter queues.
    pub fn with_dead_letters(
        &self,
        server: ServiceServer,
        db: Database,
        messaging: &ServiceMessaging,
        queues: &[WorkQueue],
    ) -> ServiceServer {
        let dead_letters = DeadLetters::new(db, &messaging.broker, queues);
        let mut server = server
            .also_serve(dead_letters.service())
            .with_worker(dead_letters.register_metrics(&self.metrics));
        for keeper in dead_letters.start_keepers() {
            server = server.with_worker(keeper);
        }
        server
    }

    /// Puts token checks in front of `server`, starts the revocation listener and the token
    /// refresher, and hands the messaging workers to the server (stopped after it drains:
    /// the listener, then the outbox relay, then the connection).
    pub fn finish(
        &self,
        server: ServiceServer,
        messaging: &ServiceMessaging,
    ) -> Result<ServiceServer, StartError> {
        self.finish_with(server, messaging, None)
    }

    fn finish_with(
        &self,
        server: ServiceServer,
        messaging: &ServiceMessaging,
        refusals: Option<Arc<dyn RefusalAudit>>,
    ) -> Result<ServiceServer, StartError> {
        let mut authenticator = Authenticator::new(self.verifier.clone())?;
        if let Some(refusals) = refusals {
            authenticator = authenticator.with_refusal_audit(refusals);
        }
        let authenticator = Arc::new(authenticator);
        if !self.refresher_started.swap(true, Ordering::SeqCst) {
            if let Some(tokens) = self.clients.tokens() {
                tokens.spawn_refresher();
            }
        }
        let listener =
            revocations::listener(&messaging.broker, &self.verifier, self.revocations.clone());
        let gauges = messaging.register_metrics(&self.metrics);
        Ok(messaging.attach(
            server
                .authenticate(authenticator)
                .with_metrics(self.metrics.clone())
                .with_worker(listener)
                .with_worker(gauges),
        ))
    }
}
