//! `up`, `serve` and `healthcheck`.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use opsconductor_catalog::SERVICES;
use opsconductor_messaging::BrokerConfig;
use opsconductor_platform::client::check_health;
use opsconductor_platform::config::{ConfigError, Env, ServerConfig};
use opsconductor_platform::server::{BoundServer, ServerError, TerminationSignal};
use opsconductor_platform::ServiceKind;
use opsconductor_storage::Database;
use tokio::sync::watch;

use crate::secrets::{self, Secrets};

/// How `opsconductor up` runs: every service of the catalog in this process, each on
/// `host:port_base+offset`, each with its own SQLite file in `data_dir`.
#[derive(Debug, Clone)]
pub struct UpOptions {
    pub data_dir: PathBuf,
    pub host: IpAddr,
    pub port_base: u16,
}

impl UpOptions {
    /// `OPSCONDUCTOR_DATA_DIR` (./data), `OPSCONDUCTOR_HOST` (127.0.0.1),
    /// `OPSCONDUCTOR_PORT_BASE` (3000).
    pub fn from_env(env: &Env) -> Result<Self, ConfigError> {
        let port_base: u16 = env.parse("OPSCONDUCTOR_PORT_BASE", 3000)?;
        if port_base > u16::MAX - 10 {
            return Err(ConfigError::invalid(
                "OPSCONDUCTOR_PORT_BASE",
                &port_base.to_string(),
                "must leave room for nine ports",
            ));
        }
        Ok(UpOptions {
            data_dir: PathBuf::from(
                env.get("OPSCONDUCTOR_DATA_DIR")
                    .unwrap_or_else(|| "./data".to_string()),
            ),
            host: env.parse("OPSCONDUCTOR_HOST", IpAddr::from([127, 0, 0, 1]))?,
            port_base,
        })
    }
}

/// Runs every service of the catalog until SIGTERM/SIGINT. The deployment's secrets (service
/// identities, the key-encryption key, the administrator's password unless
/// `OPSCONDUCTOR_ADMIN_PASSWORD` is set) are generated once into `<data dir>/secrets`.
pub async fn up(options: UpOptions, env: Env) -> anyhow::Result<()> {
    let started = Instant::now();
    let signal = TerminationSignal::install();
    // The data directory holds every service's database and secrets: its owner's alone.
    opsconductor_storage::create_private_dir(&options.data_dir)
        .and_then(|()| restrict(&options.data_dir))
        .with_context(|| {
            format!(
                "cannot create data directory {}",
                options.data_dir.display()
            )
        })?;
    let mut provided = Vec::new();
    for module in SERVICES {
        for spec in module.secrets() {
            if env.secret(spec.var)?.is_some() {
                provided.push(spec.var.to_string());
            }
        }
    }
    let secrets_dir = options.data_dir.join("secrets");
    let secrets = Secrets::ensure(
        &secrets_dir,
        SERVICES,
        &secrets::Options {
            provided,
            broker: None,
            database: None,
        },
    )
    .with_context(|| format!("cannot prepare secrets in {}", secrets_dir.display()))?;
    show_generated_passwords(&secrets, &env);
    let mut bound = Vec::new();
    for module in SERVICES {
        let kind = module.kind();
        let listen = SocketAddr::new(options.host, options.port_base + kind.port_offset());
        let service_env = service_env(&env, &secrets, kind, listen);
        let path = options.data_dir.join(format!("{}.db", kind.name()));
        let db = Database::open_sqlite_file(&path)
            .await
            .with_context(|| format!("{kind}: cannot open {}", path.display()))?;
        let built = module
            .build(db, &service_env, listen)
            .await
            .with_context(|| format!("{kind}: cannot start"))?;
        let server = built
            .server
            .bind()
            .await
            .with_context(|| format!("{kind}: cannot start"))?;
        bound.push((kind, server));
    }
    let serving: Vec<String> = bound
        .iter()
        .map(|(kind, server)| match server.metrics_addr() {
            Some(metrics) => format!("{kind} {} (metrics {metrics})", server.local_addr()),
            None => format!("{kind} {}", server.local_addr()),
        })
        .collect();
    println!("OpsConductor is serving: {}", serving.join(", "));
    let all_serving = bound.iter().all(|(_, s)| s.health().is_serving());
    tracing::info!(
        services = bound.len(),
        serving = all_serving,
        elapsed_ms = started.elapsed().as_millis() as u64,
        data_dir = %options.data_dir.display(),
        "opsconductor up"
    );
    run_until_signal(bound, signal).await
}

/// Passwords generated just now are shown once, on the terminal, never in the logs.
fn show_generated_passwords(secrets: &Secrets, env: &Env) {
    for (var, password) in &secrets.shown_once {
        if var == "OPSCONDUCTOR_ADMIN_PASSWORD" {
            println!(
                "OpsConductor administrator: username \"{}\", password \"{password}\"\n\
                 (generated once and kept in {}; it is not shown again)",
                env.get("OPSCONDUCTOR_ADMIN_USERNAME")
                    .unwrap_or_else(|| "admin".into()),
                secrets.path(ServiceKind::User, "admin-password").display()
            );
        }
    }
}

/// Sets an existing directory to 0700.
fn restrict(dir: &std::path::Path) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    }
    Ok(())
}

/// What one service of `up` is configured with: the process environment plus its identity
/// and its own secrets (each `<VAR>_FILE` cleared, the value given).
/// One service's variables in `up`: its identity and secrets, and its metrics beside its gRPC
/// port (one `METRICS_ADDR` cannot serve nine services; `off` still turns them all off).
fn service_env(env: &Env, secrets: &Secrets, kind: ServiceKind, listen: SocketAddr) -> Env {
    let mut service = env.clone().with("SERVICE_ID", kind.name());
    if env.get("METRICS_ADDR").as_deref() != Some("off") {
        if let Some(addr) = opsconductor_platform::config::default_metrics_addr(listen) {
            service = service.with("METRICS_ADDR", addr.to_string());
        }
    }
    for (var, value) in secrets.vars(kind) {
        service = service.with(var, value).with(format!("{var}_FILE"), "");
    }
    service
}

/// Runs one service until SIGTERM/SIGINT. `LISTEN_ADDR` (default `127.0.0.1:<port>`),
/// `DATABASE_URL` (default: a SQLite file `<service>.db` in `OPSCONDUCTOR_DATA_DIR`), and its
/// identity and secrets from the environment (docs/configuration.md).
pub async fn serve(kind: ServiceKind, env: Env) -> anyhow::Result<()> {
    let signal = TerminationSignal::install();
    let Some(module) = opsconductor_catalog::module(kind) else {
        bail!(opsconductor_catalog::not_implemented(kind));
    };
    let default_listen = SocketAddr::from(([127, 0, 0, 1], kind.default_port()));
    let listen = env.parse("LISTEN_ADDR", default_listen)?;
    // Fail on configuration before touching the database.
    ServerConfig::from_env(&env, listen)?;
    BrokerConfig::from_env(&env, kind.name())?;
    let db = match env.secret("DATABASE_URL")? {
        Some(url) => Database::connect_with(
            &url,
            env.bounded(
                "OPSCONDUCTOR_DB_MAX_CONNECTIONS",
                opsconductor_storage::DEFAULT_POSTGRES_POOL as u64,
                1..=1_000,
            )? as u32,
        )
        .await
        .context("DATABASE_URL: cannot open the database")?,
        None => {
            let dir = PathBuf::from(
                env.get("OPSCONDUCTOR_DATA_DIR")
                    .unwrap_or_else(|| "./data".to_string()),
            );
            let path = dir.join(format!("{}.db", kind.name()));
            Database::open_sqlite_file(&path)
                .await
                .with_context(|| format!("cannot open {}", path.display()))?
        }
    };
    let server = module.build(db, &env, listen).await?.server.bind().await?;
    run_until_signal(vec![(kind, server)], signal).await
}

async fn run_until_signal(
    servers: Vec<(ServiceKind, BoundServer)>,
    mut signal: TerminationSignal,
) -> anyhow::Result<()> {
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut tasks = tokio::task::JoinSet::new();
    for (kind, server) in servers {
        let mut stop = stop_rx.clone();
        tasks.spawn(async move {
            let result = server
                .serve(async move {
                    let _ = stop.wait_for(|s| *s).await;
                })
                .await;
            (kind, result)
        });
    }
    let mut failed = Vec::new();
    tokio::select! {
        _ = signal.recv() => tracing::info!("termination signal received"),
        // A server that stops by itself has failed: bring the others down too, as one unit.
        Some(first) = tasks.join_next() => {
            record(first, &mut failed);
            tracing::error!(errors = ?failed, "a server stopped; shutting down the others");
        }
    }
    let _ = stop_tx.send(true);
    while let Some(joined) = tasks.join_next().await {
        record(joined, &mut failed);
    }
    if failed.is_empty() {
        Ok(())
    } else {
        bail!(failed.join("; "))
    }
}

fn record(
    joined: Result<(ServiceKind, Result<(), ServerError>), tokio::task::JoinError>,
    failed: &mut Vec<String>,
) {
    match joined {
        Ok((_, Ok(()))) => {}
        Ok((kind, Err(e))) => failed.push(format!("{kind}: {e}")),
        Err(e) => failed.push(format!("a server task failed: {e}")),
    }
}

/// Exits 0 only when the server at `addr` reports SERVING for `service` ("" = overall; a
/// service's short name, e.g. `user`, stands for its gRPC name).
pub async fn healthcheck(addr: &str, service: &str, timeout: Duration) -> anyhow::Result<bool> {
    let url = if addr.contains("://") {
        addr.to_string()
    } else {
        format!("http://{addr}")
    };
    let service = match ServiceKind::from_name(service) {
        Some(kind) => kind.grpc_name(),
        None => service,
    };
    let status = check_health(&url, service, timeout).await?;
    println!("{}", status.as_str_name());
    Ok(status == opsconductor_platform::health::ServingStatusPb::Serving)
}
