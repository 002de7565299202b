//! The services this build can run. Services that later issues build are added here; until
//! then they are simply absent (never started as stubs).

use opsconductor_messaging::BrokerConfig;
use opsconductor_platform::config::ServerConfig;
use opsconductor_platform::server::ServiceServer;
use opsconductor_platform::ServiceKind;
use opsconductor_storage::{Database, StorageError};

/// Services with an implementation, in start-up order.
pub const IMPLEMENTED: [ServiceKind; 2] = [ServiceKind::User, ServiceKind::Targets];

pub fn is_implemented(kind: ServiceKind) -> bool {
    IMPLEMENTED.contains(&kind)
}

/// Migrates the service's database, connects it to the broker and builds its server.
pub async fn build(
    kind: ServiceKind,
    db: Database,
    config: ServerConfig,
    broker: BrokerConfig,
) -> Result<ServiceServer, BuildError> {
    match kind {
        ServiceKind::User => Ok(opsconductor_user::server(db, config, broker).await?),
        ServiceKind::Targets => Ok(opsconductor_targets::server(db, config, broker).await?),
        other => Err(BuildError::NotImplemented(other)),
    }
}

#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("the {0} service is not part of this build yet (implemented: user, targets)")]
    NotImplemented(ServiceKind),
    #[error(transparent)]
    Storage(#[from] StorageError),
}
