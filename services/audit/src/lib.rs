//! The audit service: consumes every service's audit events from RabbitMQ, appends them to an
//! append-only, hash-chained log (one chain across replicas, a batch per transaction), signs its
//! head at checkpoints with a key of its own, and answers queries, verification and export.
//! The canonical encoding the hashes cover is in [`chain`] and docs/audit.md.

mod api;
pub mod chain;
mod error;
mod store;
mod writer;

use std::sync::Arc;
use std::time::Duration;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use futures::future::{BoxFuture, FutureExt};
use opsconductor_api::audit::v1::audit_service_server::AuditServiceServer;
use opsconductor_messaging::topology::platform;
use opsconductor_messaging::{Broker, BrokerUse, Consumer, RunningConsumer};
use opsconductor_platform::config::{ConfigError, Env};
use opsconductor_platform::server::Tasks;
use opsconductor_platform::ServiceKind;
use opsconductor_runtime::{
    Built, SecretKind, SecretSpec, ServiceContext, ServiceModule, StartError,
};
use opsconductor_storage::{Database, Migrations};
use opsconductor_tokens::SigningKey;

pub use api::AuditApi;
pub use error::AuditError;
pub use store::{AuditStore, Signer};

/// The embedded schema, per backend.
pub fn migrations() -> Migrations {
    opsconductor_storage::embedded_migrations!()
}

fn signing_key() -> String {
    STANDARD.encode(rand::random::<[u8; 32]>())
}

const SECRETS: &[SecretSpec] = &[SecretSpec {
    var: "AUDIT_SIGNING_KEY",
    file: "signing-key",
    kind: SecretKind::Random(signing_key),
}];

/// How the audit service runs (docs/configuration.md).
struct Settings {
    key: Arc<SigningKey>,
    checkpoint_every: u64,
    checkpoint_interval: Duration,
    batch: usize,
    retention: Option<Duration>,
    prune_interval: Duration,
}

impl Settings {
    fn from_env(env: &Env) -> Result<Settings, ConfigError> {
        let text = env
            .secret("AUDIT_SIGNING_KEY")?
            .ok_or_else(|| ConfigError::Missing {
                var: "AUDIT_SIGNING_KEY".into(),
                hint: "32 random bytes, base64 (or AUDIT_SIGNING_KEY_FILE); \
                       `opsconductor secrets init` generates one"
                    .into(),
            })?;
        let key = STANDARD
            .decode(text.trim())
            .ok()
            .and_then(|bytes| SigningKey::from_secret_bytes(&bytes).ok())
            .ok_or_else(|| {
                ConfigError::invalid("AUDIT_SIGNING_KEY", "", "must be 32 bytes, base64-encoded")
            })?;
        let retention = env.bounded("AUDIT_RETENTION_SECS", 0, 0..=100 * 365 * 86_400)?;
        Ok(Settings {
            key: Arc::new(key),
            checkpoint_every: env.bounded("AUDIT_CHECKPOINT_EVERY", 1000, 1..=1_000_000)?,
            checkpoint_interval: env.positive_millis("AUDIT_CHECKPOINT_INTERVAL_MS", 10_000)?,
            batch: env.bounded("AUDIT_BATCH", 500, 1..=10_000)? as usize,
            retention: (retention > 0).then(|| Duration::from_secs(retention)),
            prune_interval: env.positive_millis("AUDIT_PRUNE_INTERVAL_MS", 3_600_000)?,
        })
    }
}

/// The audit service, as the catalog lists it.
pub struct Audit;

impl ServiceModule for Audit {
    fn kind(&self) -> ServiceKind {
        ServiceKind::Audit
    }

    fn secrets(&self) -> &'static [SecretSpec] {
        SECRETS
    }

    fn broker(&self) -> BrokerUse {
        BrokerUse {
            consumes: vec![platform::audit_events()],
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
            let store = AuditStore::new(
                db.clone(),
                store::Signer {
                    key: settings.key.clone(),
                    every: settings.checkpoint_every,
                },
                messaging.audit.clone(),
            );
            let queue = platform::audit_events();
            let consumer = start_ingest(store.clone(), &messaging.broker, settings.batch);
            let background = Tasks(vec![
                writer::spawn_checkpointer(store.clone(), settings.checkpoint_interval),
                spawn_pruner(store.clone(), settings.retention, settings.prune_interval),
            ]);
            let api = AuditApi {
                store,
                key: settings.key,
            };
            let server = context
                .serve(AuditServiceServer::new(api), db.clone(), &messaging)?
                .with_worker(consumer)
                .with_worker(background);
            let server = context.with_dead_letters(server, db, &messaging, &[queue]);
            Ok(Built::new(server, context))
        }
        .boxed()
    }
}

/// Consumes the audit queue into `store`'s chain, `batch` events at most per transaction (the
/// whole prefetch in flight, so a batch takes what is waiting).
pub fn start_ingest(store: AuditStore, broker: &Broker, batch: usize) -> RunningConsumer {
    Consumer::batched(
        broker,
        &platform::audit_events(),
        writer::Writer { store },
        batch,
    )
    .prefetch(batch.clamp(1, u16::MAX as usize) as u16)
    .concurrency(batch)
    .start()
}

/// Prunes events older than `retention` every `every`, up to a signed checkpoint.
fn spawn_pruner(
    store: AuditStore,
    retention: Option<Duration>,
    every: Duration,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let Some(retention) = retention else { return };
        let mut tick = tokio::time::interval(every);
        loop {
            tick.tick().await;
            let cutoff = opsconductor_platform::time::now_micros()
                - retention.as_micros().min(i64::MAX as u128) as i64;
            match store.prune(cutoff).await {
                Ok(Some((anchor, deleted))) => {
                    tracing::info!(anchor, deleted, "audit events pruned up to a checkpoint")
                }
                Ok(None) => {}
                Err(error) => tracing::warn!(%error, "pruning audit events failed"),
            }
        }
    })
}
