//! The services this build can run, and how each is started from its environment. Services
//! that later issues build are added here; until then they are simply absent (never started
//! as stubs).

use std::net::SocketAddr;

use opsconductor_platform::config::{ConfigError, Env};
use opsconductor_platform::server::ServiceServer;
use opsconductor_platform::ServiceKind;
use opsconductor_runtime::ServiceContext;
use opsconductor_storage::{Database, StorageError};

/// Services with an implementation, in start-up order (auth first: the others fetch its keys
/// and tokens).
pub const IMPLEMENTED: [ServiceKind; 3] =
    [ServiceKind::Auth, ServiceKind::User, ServiceKind::Targets];

pub fn is_implemented(kind: ServiceKind) -> bool {
    IMPLEMENTED.contains(&kind)
}

/// Migrates the service's database, connects it to the broker, puts token checks in front of
/// it and builds its server listening on `listen`, all configured by `env`.
pub async fn build(
    kind: ServiceKind,
    db: Database,
    env: &Env,
    listen: SocketAddr,
) -> Result<ServiceServer, BuildError> {
    match kind {
        ServiceKind::Auth => Ok(opsconductor_auth::server(db, env, listen).await?.server),
        ServiceKind::User => {
            let context = ServiceContext::from_env(kind, env, listen)?;
            let admin = opsconductor_user::AdminBootstrap::from_env(env)?;
            Ok(opsconductor_user::server(db, &context, admin).await?)
        }
        ServiceKind::Targets => {
            let context = ServiceContext::from_env(kind, env, listen)?;
            Ok(opsconductor_targets::server(db, &context).await?)
        }
        other => Err(BuildError::NotImplemented(other)),
    }
}

#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("the {0} service is not part of this build yet (implemented: auth, user, targets)")]
    NotImplemented(ServiceKind),
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error(transparent)]
    Auth(#[from] opsconductor_auth::AuthStartError),
    #[error(transparent)]
    Service(#[from] opsconductor_runtime::StartError),
}
