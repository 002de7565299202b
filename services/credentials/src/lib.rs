//! The credentials service: secrets sealed with envelope encryption (a data key per secret
//! version, wrapped by a versioned key-encryption key, itself sealed by the deployment's master
//! key), re-wrapped in batches when the key rotates, revealed only to administrators and to the
//! executor for a run it holds, every reveal — allowed or refused — audited. The scheme is in
//! docs/credentials.md.

mod api;
mod checks;
mod error;
mod material;
mod store;
mod vault;

use std::sync::Arc;
use std::time::Duration;

use futures::future::{BoxFuture, FutureExt};
use opsconductor_api::credentials::v1::credentials_service_server::CredentialsServiceServer;
use opsconductor_messaging::topology::platform;
use opsconductor_messaging::{BrokerUse, Cause, Topology};
use opsconductor_platform::auth::{Refusal, RefusalAudit};
use opsconductor_platform::config::{ConfigError, Env};
use opsconductor_platform::server::Tasks;
use opsconductor_platform::ServiceKind;
use opsconductor_runtime::{
    Built, SecretKind, SecretSpec, ServiceContext, ServiceModule, StartError,
};
use opsconductor_seal::Key;
use opsconductor_storage::{Database, Migrations};
use tokio::sync::Semaphore;

pub use api::{rewrap_all, CredentialsApi, Rewrap};
pub use checks::{FromJobs, Refused, RunChecker, RunUse};
pub use error::CredentialsError;
pub use store::CredentialStore;
pub use vault::Vault;

pub use platform::CREDENTIAL_EXPIRING;

/// The embedded schema, per backend.
pub fn migrations() -> Migrations {
    opsconductor_storage::embedded_migrations!()
}

fn master_key() -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(Key::generate().as_bytes())
}

const SECRETS: &[SecretSpec] = &[SecretSpec {
    var: "CREDENTIALS_MASTER_KEY",
    file: "master-key",
    kind: SecretKind::Random(master_key),
}];

/// How the credentials service runs (docs/configuration.md).
struct Settings {
    master: Key,
    rewrap: Rewrap,
    warning: Duration,
    sweep: Duration,
}

impl Settings {
    fn from_env(env: &Env) -> Result<Settings, ConfigError> {
        let text = env
            .secret("CREDENTIALS_MASTER_KEY")?
            .ok_or_else(|| ConfigError::Missing {
                var: "CREDENTIALS_MASTER_KEY".into(),
                hint: "32 random bytes, base64 (or CREDENTIALS_MASTER_KEY_FILE); \
                       `opsconductor secrets init` generates one"
                    .into(),
            })?;
        let master = Key::from_base64(&text).ok_or_else(|| {
            ConfigError::invalid(
                "CREDENTIALS_MASTER_KEY",
                "",
                "must be 32 bytes, base64-encoded",
            )
        })?;
        Ok(Settings {
            master,
            rewrap: Rewrap {
                batch: env.bounded("CREDENTIALS_REWRAP_BATCH", 100, 1..=10_000)? as i64,
                pause: Duration::from_millis(env.bounded(
                    "CREDENTIALS_REWRAP_PAUSE_MS",
                    0,
                    0..=60_000,
                )?),
            },
            warning: Duration::from_secs(
                env.bounded("CREDENTIALS_EXPIRY_WARNING_DAYS", 14, 1..=365)? * 86_400,
            ),
            sweep: env.positive_millis("CREDENTIALS_EXPIRY_SWEEP_MS", 86_400_000)?,
        })
    }
}

/// The credentials service, as the catalog lists it. The executor's reveals are checked
/// against the jobs and targets services ([`FromJobs`]) unless another checker is given.
pub struct Credentials {
    checker: Option<Arc<dyn RunChecker>>,
}

impl Credentials {
    /// Checking the executor's reveals with the jobs and targets services.
    pub const fn production() -> Credentials {
        Credentials { checker: None }
    }

    /// With `checker` deciding the executor's reveals (tests use a double until the jobs
    /// service exists).
    pub fn with_checker(checker: Arc<dyn RunChecker>) -> Credentials {
        Credentials {
            checker: Some(checker),
        }
    }
}

impl ServiceModule for Credentials {
    fn kind(&self) -> ServiceKind {
        ServiceKind::Credentials
    }

    fn secrets(&self) -> &'static [SecretSpec] {
        SECRETS
    }

    fn broker(&self) -> BrokerUse {
        BrokerUse {
            topology: Topology::new().queue(platform::credential_expiring_notifications()),
            ..BrokerUse::default()
        }
    }

    fn assemble<'a>(
        &'a self,
        db: Database,
        context: Arc<ServiceContext>,
        env: &'a Env,
    ) -> BoxFuture<'a, Result<Built, StartError>> {
        async move {
            let settings = Settings::from_env(env)?;
            let topology = opsconductor_runtime::broker_use(self).topology;
            let messaging = context
                .start_messaging(&db, &migrations(), topology)
                .await?;
            let events = messaging
                .broker
                .names()
                .exchange(&platform::events_exchange());
            let store = CredentialStore::new(
                db.clone(),
                Arc::new(Vault::new(settings.master)),
                messaging.audit.clone(),
                messaging.outbox.clone(),
                events,
            );
            store
                .open_keys()
                .await
                .map_err(|e| StartError::Service(format!("the key-encryption keys: {e}")))?;
            let clients = context.clients().clone();
            let checker = self
                .checker
                .clone()
                .unwrap_or_else(|| Arc::new(FromJobs(clients.clone())));
            let background = Tasks(vec![
                spawn_resume(store.clone(), settings.rewrap),
                spawn_expiry_sweep(store.clone(), settings.warning, settings.sweep),
            ]);
            let refusals = Arc::new(AuditRefusals {
                store: store.clone(),
                in_flight: Arc::new(Semaphore::new(MAX_REFUSALS_IN_FLIGHT)),
            });
            let api = CredentialsApi {
                store,
                clients,
                checker,
                rewrap: settings.rewrap,
            };
            let server = context
                .serve_auditing_refusals(
                    CredentialsServiceServer::new(api),
                    db,
                    &messaging,
                    refusals,
                )?
                .with_worker(background);
            Ok(Built::new(server, context))
        }
        .boxed()
    }
}

/// Audit writes of refused callers in flight at once; beyond it a flood of refusals is logged
/// as dropped rather than queued without bound.
const MAX_REFUSALS_IN_FLIGHT: usize = 64;

/// Audits callers the policy refused before their request reached the service.
struct AuditRefusals {
    store: CredentialStore,
    in_flight: Arc<Semaphore>,
}

impl RefusalAudit for AuditRefusals {
    fn refused(&self, refusal: Refusal) {
        let Ok(permit) = self.in_flight.clone().try_acquire_owned() else {
            tracing::warn!(method = %refusal.method, "refusal not audited: too many in flight");
            return;
        };
        let store = self.store.clone();
        tokio::spawn(async move {
            let cause = Cause {
                actor: refusal.principal.actor(),
                request_id: refusal.request_id,
                trace: None,
            };
            let action = action_of(&refusal.method);
            let details = [
                ("method", refusal.method.clone()),
                ("refused", refusal.reason),
            ];
            // The request body is not read before the policy: the credential is unknown.
            if let Err(error) = store.audit_refused(&cause, &action, "", &details).await {
                tracing::warn!(%error, method = %refusal.method, "auditing a refusal failed");
            }
            drop(permit);
        });
    }
}

/// `/opsconductor.credentials.v1.CredentialsService/RevealCredential` → `credential.reveal`.
fn action_of(method: &str) -> String {
    let name = method.rsplit('/').next().unwrap_or_default();
    let verb = name.strip_suffix("Credential").unwrap_or(name);
    format!("credential.{}", verb.to_ascii_lowercase())
}

/// Finishes a key rotation a crash interrupted.
fn spawn_resume(store: CredentialStore, rewrap: Rewrap) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let active = match store.unfinished_rotation().await {
            Ok(Some(active)) => active,
            Ok(None) => return,
            Err(error) => {
                tracing::warn!(%error, "checking for an unfinished key rotation failed");
                return;
            }
        };
        tracing::info!(key_version = active, "resuming an interrupted key rotation");
        match rewrap_all(&store, active, rewrap).await {
            Ok(rewrapped) => {
                let retired = store.retire_unused(active).await;
                tracing::info!(
                    key_version = active,
                    rewrapped,
                    ?retired,
                    "key rotation resumed to its end"
                );
            }
            Err(error) => tracing::warn!(%error, "resuming the key rotation failed"),
        }
    })
}

/// Publishes `credential.expiring` for credentials expiring within `warning`, every `every`.
fn spawn_expiry_sweep(
    store: CredentialStore,
    warning: Duration,
    every: Duration,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        loop {
            tick.tick().await;
            let now = opsconductor_platform::time::now_micros();
            let horizon = now + warning.as_micros().min(i64::MAX as u128) as i64;
            match store.notify_expiring(now, horizon).await {
                Ok(0) => {}
                Ok(sent) => tracing::info!(sent, "credential expiry warnings published"),
                Err(error) => tracing::warn!(%error, "the credential expiry sweep failed"),
            }
        }
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn refused_methods_name_their_action() {
        assert_eq!(
            super::action_of("/opsconductor.credentials.v1.CredentialsService/RevealCredential"),
            "credential.reveal"
        );
        assert_eq!(
            super::action_of("/opsconductor.credentials.v1.CredentialsService/RotateEncryptionKey"),
            "credential.rotateencryptionkey"
        );
    }
}
