//! The user service: users and their roles, argon2id password hashes (never returned), the
//! password check behind login, and notification preferences.

mod api;
mod bootstrap;
mod error;
mod password;
mod preferences;
mod store;
mod validate;

use std::sync::Arc;

use futures::future::{BoxFuture, FutureExt};
use opsconductor_api::user::v1::user_service_server::UserServiceServer;
use opsconductor_platform::config::Env;
use opsconductor_platform::rate_limit::CredentialThrottle;
use opsconductor_platform::ServiceKind;
use opsconductor_runtime::{
    Built, SecretKind, SecretSpec, ServiceContext, ServiceModule, StartError,
};
use opsconductor_storage::{Database, Migrations};

pub use api::UserApi;
pub use bootstrap::AdminBootstrap;
pub use error::UserError;
pub use store::UserStore;

/// The embedded schema, per backend.
pub fn migrations() -> Migrations {
    opsconductor_storage::embedded_migrations!()
}

/// The user service, as the catalog lists it. Every change it makes publishes an audit event
/// through its outbox. At start it creates the administrator (`OPSCONDUCTOR_ADMIN_USERNAME`,
/// password from `OPSCONDUCTOR_ADMIN_PASSWORD[_FILE]`) unless a user of that name exists.
pub struct User;

const SECRETS: &[SecretSpec] = &[SecretSpec {
    var: "OPSCONDUCTOR_ADMIN_PASSWORD",
    file: "admin-password",
    kind: SecretKind::Password,
}];

impl ServiceModule for User {
    fn kind(&self) -> ServiceKind {
        ServiceKind::User
    }

    fn secrets(&self) -> &'static [SecretSpec] {
        SECRETS
    }

    fn assemble<'a>(
        &'a self,
        db: Database,
        context: Arc<ServiceContext>,
        env: &'a Env,
    ) -> BoxFuture<'a, Result<Built, StartError>> {
        async move {
            let admin = AdminBootstrap::from_env(env)?;
            let throttle = CredentialThrottle::from_env(env)?;
            let topology = opsconductor_runtime::broker_use(self).topology;
            let messaging = context
                .start_messaging(&db, &migrations(), topology)
                .await?;
            let store = UserStore::new(db.clone(), messaging.audit.clone());
            if let Some(admin) = admin {
                admin.apply(&store).await.map_err(|e| {
                    StartError::Service(format!("creating the administrator failed: {e}"))
                })?;
            }
            let api = UserApi::new(store, context.clients().clone(), throttle);
            let server = context.serve(UserServiceServer::new(api), db, &messaging)?;
            Ok(Built::new(server, context))
        }
        .boxed()
    }
}
