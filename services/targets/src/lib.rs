//! The targets service: the inventory of hosts that jobs run against, filtered by tag, OS or
//! name, and a TCP connectivity test.

mod api;
mod connectivity;
mod error;
mod store;
mod validate;

use opsconductor_api::targets::v1::targets_service_server::TargetsServiceServer;
use opsconductor_messaging::{ServiceMessaging, Topology};
use opsconductor_platform::server::ServiceServer;
use opsconductor_platform::ServiceKind;
use opsconductor_runtime::{ServiceContext, StartError};
use opsconductor_storage::{Database, Migrations};
use tonic::service::Routes;

pub use api::TargetsApi;
pub use error::TargetsError;
pub use store::TargetStore;

/// The embedded schema, per backend.
pub fn migrations() -> Migrations {
    opsconductor_storage::embedded_migrations!()
}

/// Migrates `db`, connects to the broker and builds the server. Every change the service
/// makes publishes an audit event through its outbox.
pub async fn server(db: Database, context: &ServiceContext) -> Result<ServiceServer, StartError> {
    db.migrate_all(&[&migrations(), &opsconductor_messaging::migrations()])
        .await?;
    let messaging = ServiceMessaging::start(context.broker.clone(), Topology::new(), &db);
    let config = context.server.clone();
    let store = TargetStore::new(db.clone(), messaging.audit.clone());
    let api = TargetsServiceServer::new(TargetsApi::new(store))
        .max_decoding_message_size(config.max_message_bytes)
        .max_encoding_message_size(config.max_message_bytes);
    let server = ServiceServer::new(
        ServiceKind::Targets.name(),
        config,
        Routes::new(api),
        [ServiceKind::Targets.grpc_name()],
    )
    .depends_on(db);
    Ok(context.finish(server, &messaging)?)
}
