//! The targets service: the inventory of hosts that jobs run against, filtered by tag, OS or
//! name, and a TCP connectivity test.

mod api;
mod connectivity;
mod error;
mod store;
mod validate;

use std::sync::Arc;

use futures::future::{BoxFuture, FutureExt};
use opsconductor_api::targets::v1::targets_service_server::TargetsServiceServer;
use opsconductor_platform::config::Env;
use opsconductor_platform::ServiceKind;
use opsconductor_runtime::{Built, ServiceContext, ServiceModule, StartError};
use opsconductor_storage::{Database, Migrations};

pub use api::TargetsApi;
pub use error::TargetsError;
pub use store::TargetStore;

/// The embedded schema, per backend.
pub fn migrations() -> Migrations {
    opsconductor_storage::embedded_migrations!()
}

/// The targets service, as the catalog lists it. Every change it makes publishes an audit
/// event through its outbox.
pub struct Targets;

impl ServiceModule for Targets {
    fn kind(&self) -> ServiceKind {
        ServiceKind::Targets
    }

    fn assemble<'a>(
        &'a self,
        db: Database,
        context: Arc<ServiceContext>,
        _env: &'a Env,
    ) -> BoxFuture<'a, Result<Built, StartError>> {
        async move {
            let topology = opsconductor_runtime::broker_use(self).topology;
            let messaging = context
                .start_messaging(&db, &migrations(), topology)
                .await?;
            let store = TargetStore::new(db.clone(), messaging.audit.clone());
            let api = TargetsServiceServer::new(TargetsApi::new(store));
            let server = context.serve(api, db, &messaging)?;
            Ok(Built::new(server, context))
        }
        .boxed()
    }
}
