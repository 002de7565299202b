//! The user service: users and their roles, argon2id password hashes (never returned), the
//! password check behind login, and notification preferences.

mod api;
mod bootstrap;
mod error;
mod password;
mod preferences;
mod store;
mod validate;

use opsconductor_api::user::v1::user_service_server::UserServiceServer;
use opsconductor_messaging::{ServiceMessaging, Topology};
use opsconductor_platform::server::ServiceServer;
use opsconductor_platform::ServiceKind;
use opsconductor_runtime::{ServiceContext, StartError};
use opsconductor_storage::{Database, Migrations};
use tonic::service::Routes;

pub use api::UserApi;
pub use bootstrap::AdminBootstrap;
pub use error::UserError;
pub use store::UserStore;

/// The embedded schema, per backend.
pub fn migrations() -> Migrations {
    opsconductor_storage::embedded_migrations!()
}

/// Migrates `db`, connects to the broker and builds the server. Every change the service
/// makes publishes an audit event through its outbox.
/// `admin`, when given, is created unless a user of that name exists.
pub async fn server(
    db: Database,
    context: &ServiceContext,
    admin: Option<AdminBootstrap>,
) -> Result<ServiceServer, StartError> {
    db.migrate_all(&[&migrations(), &opsconductor_messaging::migrations()])
        .await?;
    let messaging = ServiceMessaging::start(context.broker.clone(), Topology::new(), &db);
    let config = context.server.clone();
    let store = UserStore::new(db.clone(), messaging.audit.clone());
    if let Some(admin) = admin {
        admin
            .apply(&store)
            .await
            .map_err(|e| StartError::Service(format!("creating the administrator failed: {e}")))?;
    }
    let api = UserServiceServer::new(UserApi::new(store, context.clients().clone()))
        .max_decoding_message_size(config.max_message_bytes)
        .max_encoding_message_size(config.max_message_bytes);
    let server = ServiceServer::new(
        ServiceKind::User.name(),
        config,
        Routes::new(api),
        [ServiceKind::User.grpc_name()],
    )
    .depends_on(db);
    Ok(context.finish(server, &messaging)?)
}
