//! A service as a value: what the binary (`up`, `serve`, `secrets init`, the broker
//! definitions) and the test sandbox need to know about it and to start it, so that adding a
//! service is its crate and one row in the catalog.

use std::any::Any;
use std::net::SocketAddr;
use std::sync::Arc;

use futures::future::{BoxFuture, FutureExt};
use opsconductor_messaging::topology::platform;
use opsconductor_messaging::{BrokerUse, Topology};
use opsconductor_platform::config::Env;
use opsconductor_platform::server::ServiceServer;
use opsconductor_platform::ServiceKind;
use opsconductor_storage::Database;

use crate::{ServiceContext, StartError};

/// One of the platform's services.
pub trait ServiceModule: Send + Sync + 'static {
    fn kind(&self) -> ServiceKind;

    /// Secrets it reads besides its identity (`SERVICE_SECRET`), which `secrets init` and
    /// `up` generate into its directory of secrets.
    fn secrets(&self) -> &'static [SecretSpec] {
        &[]
    }

    /// What it does on the broker besides what every service does (publishing audit events,
    /// listening to token revocations).
    fn broker(&self) -> BrokerUse {
        BrokerUse::default()
    }

    /// Its server over `db`, configured by `env`, to listen on `listen`.
    fn build<'a>(
        &'a self,
        db: Database,
        env: &'a Env,
        listen: SocketAddr,
    ) -> BoxFuture<'a, Result<Built, StartError>> {
        async move {
            let context = Arc::new(ServiceContext::from_env(self.kind(), env, listen)?);
            self.assemble(db, context, env).await
        }
        .boxed()
    }

    /// Its server with a context given (tests give one whose tokens they sign themselves).
    fn assemble<'a>(
        &'a self,
        db: Database,
        context: Arc<ServiceContext>,
        env: &'a Env,
    ) -> BoxFuture<'a, Result<Built, StartError>>;
}

/// A built service: its server, the context it runs with, and whatever else its crate hands
/// out (the auth service's key ring, which tests sign tokens with).
pub struct Built {
    pub server: ServiceServer,
    pub context: Arc<ServiceContext>,
    pub extra: Option<Arc<dyn Any + Send + Sync>>,
}

impl Built {
    pub fn new(server: ServiceServer, context: Arc<ServiceContext>) -> Built {
        Built {
            server,
            context,
            extra: None,
        }
    }
}

/// A secret a service reads from `var` (or from the file `<var>_FILE` names).
#[derive(Debug, Clone, Copy)]
pub struct SecretSpec {
    pub var: &'static str,
    /// Its file in the service's directory of secrets.
    pub file: &'static str,
    pub kind: SecretKind,
}

/// How a secret comes to be.
#[derive(Debug, Clone, Copy)]
pub enum SecretKind {
    /// Random, generated once and kept.
    Random(fn() -> String),
    /// A person's password: generated once and shown once, unless the variable is set.
    Password,
    /// Written afresh each time from every service's identity secret (the auth service's
    /// list of identities).
    Identities(fn(&[(ServiceKind, String)]) -> String),
}

/// Everything `module` does on the broker: its own use plus what every service does.
pub fn broker_use(module: &dyn ServiceModule) -> BrokerUse {
    BrokerUse {
        topology: Topology::new().queue(platform::audit_events()),
        listens: vec![platform::token_revocations()],
        ..BrokerUse::default()
    }
    .merge(module.broker())
}
