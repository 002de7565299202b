//! The auth service: signs short-lived Ed25519 JWTs for users (login with the password checked
//! by the user service, rotating refresh tokens with reuse detection, logout, revoke-all) and
//! for services (client credentials), publishes its public keys as a JWKS, rotates signing keys
//! with overlap, and broadcasts every revocation so each server drops the tokens at once.

mod api;
mod error;
mod keys;
mod seal;
mod settings;
mod store;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use futures::future::{BoxFuture, FutureExt};
use opsconductor_api::auth::v1::auth_service_server::AuthServiceServer;
use opsconductor_api::auth::v1::TokenRevoked;
use opsconductor_messaging::topology::platform;
use opsconductor_messaging::{ServiceMessaging, Topology};
use opsconductor_platform::config::{ConfigError, Env};
use opsconductor_platform::policy::PolicyError;
use opsconductor_platform::server::ServiceServer;
use opsconductor_platform::time::now_micros;
use opsconductor_platform::ServiceKind;
use opsconductor_runtime::{RevocationSource, ServiceContext};
use opsconductor_storage::{Database, Migrations, StorageError};
use tonic::service::Routes;

pub use api::AuthApi;
pub use error::AuthServiceError;
pub use keys::{KeyRing, LocalMint};
pub use settings::{parse_identities, AuthSettings};
pub use store::secret_digest;

/// The embedded schema, per backend.
pub fn migrations() -> Migrations {
    opsconductor_storage::embedded_migrations!()
}

#[derive(Debug, thiserror::Error)]
pub enum AuthStartError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error(transparent)]
    Service(#[from] AuthServiceError),
    #[error(transparent)]
    Policy(#[from] PolicyError),
}

/// A built auth service: its server, and its key ring (tests sign tokens with it in-process).
pub struct AuthServer {
    pub server: ServiceServer,
    pub keys: Arc<KeyRing>,
    pub context: Arc<ServiceContext>,
}

/// Revocations straight from the store: the auth service does not call itself.
struct LocalRevocations {
    store: store::AuthStore,
    keep: Duration,
}

impl RevocationSource for LocalRevocations {
    fn list(&self) -> BoxFuture<'_, Result<Vec<TokenRevoked>, String>> {
        async move {
            let since = now_micros() - self.keep.as_micros() as i64;
            self.store
                .revocations_since(since)
                .await
                .map_err(|e| e.to_string())
        }
        .boxed()
    }
}

/// Migrates `db`, opens the signing keys (creating the first), syncs the service identities,
/// connects to the broker and builds the server listening on `listen`. Configuration comes
/// from `env` (docs/configuration.md).
pub async fn server(
    db: Database,
    env: &Env,
    listen: SocketAddr,
) -> Result<AuthServer, AuthStartError> {
    let settings = Arc::new(AuthSettings::from_env(env)?);
    db.migrate_all(&[&migrations(), &opsconductor_messaging::migrations()])
        .await?;
    let overlap = settings.max_token_lifetime() + settings.tokens.leeway;
    let keys = KeyRing::open(db.clone(), settings.key_encryption_key, overlap).await?;
    keys.spawn_reloader(Duration::from_secs(10));
    let store = store::AuthStore::new(db.clone());
    if settings.identities.is_empty() {
        tracing::warn!("AUTH_SERVICE_IDENTITIES is empty: no service can obtain a token");
    } else {
        store.sync_identities(&settings.identities).await?;
    }
    let mint = LocalMint {
        keys: keys.clone(),
        issuer: settings.tokens.issuer.clone(),
        audience: settings.tokens.audience.clone(),
        ttl: settings.service_ttl,
    };
    let revocations = Arc::new(LocalRevocations {
        store: store.clone(),
        keep: settings.max_token_lifetime() + Duration::from_secs(60),
    });
    let context = Arc::new(ServiceContext::local(
        ServiceKind::Auth,
        env,
        listen,
        keys.clone(),
        mint,
        revocations,
    )?);
    let messaging = ServiceMessaging::start(
        context.broker.clone(),
        Topology::new().exchange(platform::auth_exchange()),
        &db,
    );
    let api = AuthApi {
        store,
        keys: keys.clone(),
        settings,
        clients: context.clients().clone(),
        verifier: context.verifier().clone(),
        audit: messaging.audit.clone(),
        outbox: messaging.outbox.clone(),
        revocations_exchange: messaging
            .broker
            .names()
            .exchange(&platform::auth_exchange()),
    };
    let grpc = AuthServiceServer::new(api)
        .max_decoding_message_size(context.server.max_message_bytes)
        .max_encoding_message_size(context.server.max_message_bytes);
    let server = ServiceServer::new(
        ServiceKind::Auth.name(),
        context.server.clone(),
        Routes::new(grpc),
        [ServiceKind::Auth.grpc_name()],
    )
    .depends_on(db);
    let server = context.finish(server, &messaging)?;
    Ok(AuthServer {
        server,
        keys,
        context,
    })
}
