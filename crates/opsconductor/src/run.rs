//! `up`, `serve` and `healthcheck`.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use opsconductor_messaging::BrokerConfig;
use opsconductor_platform::client::check_health;
use opsconductor_platform::config::{ConfigError, Env, ServerConfig};
use opsconductor_platform::server::{BoundServer, ServerError, TerminationSignal};
use opsconductor_platform::ServiceKind;
use opsconductor_storage::Database;
use tokio::sync::watch;

use crate::registry::{self, IMPLEMENTED};

/// How `opsconductor up` runs: every implemented service in this process, each on
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

/// Runs every implemented service until SIGTERM/SIGINT.
pub async fn up(options: UpOptions, env: Env) -> anyhow::Result<()> {
    let started = Instant::now();
    let signal = TerminationSignal::install();
    std::fs::create_dir_all(&options.data_dir).with_context(|| {
        format!(
            "cannot create data directory {}",
            options.data_dir.display()
        )
    })?;
    let mut bound = Vec::new();
    for kind in IMPLEMENTED {
        let listen = SocketAddr::new(options.host, options.port_base + kind.port_offset());
        let config = ServerConfig::from_env(&env, listen)?;
        let broker = BrokerConfig::from_env(&env, kind.name())?;
        let path = options.data_dir.join(format!("{}.db", kind.name()));
        let db = Database::open_sqlite_file(&path)
            .await
            .with_context(|| format!("{kind}: cannot open {}", path.display()))?;
        let server = registry::build(kind, db, config, broker)
            .await
            .with_context(|| format!("{kind}: cannot start"))?;
        let server = server
            .bind()
            .await
            .with_context(|| format!("{kind}: cannot start"))?;
        bound.push((kind, server));
    }
    for (kind, server) in &bound {
        tracing::info!(service = %kind, addr = %server.local_addr(), "listening");
    }
    let serving = bound.iter().all(|(_, s)| s.health().is_serving());
    tracing::info!(
        services = bound.len(),
        serving,
        elapsed_ms = started.elapsed().as_millis() as u64,
        data_dir = %options.data_dir.display(),
        "opsconductor up"
    );
    run_until_signal(bound, signal).await
}

/// Runs one service until SIGTERM/SIGINT. `LISTEN_ADDR` (default `127.0.0.1:<port>`) and
/// `DATABASE_URL` (default: a SQLite file `<service>.db` in `OPSCONDUCTOR_DATA_DIR`).
pub async fn serve(kind: ServiceKind, env: Env) -> anyhow::Result<()> {
    let signal = TerminationSignal::install();
    if !registry::is_implemented(kind) {
        bail!(registry::BuildError::NotImplemented(kind));
    }
    // Loopback by default: until service authentication lands, exposing a service is a choice
    // the operator makes explicitly (containers set LISTEN_ADDR=0.0.0.0:<port>).
    let default_listen = SocketAddr::from(([127, 0, 0, 1], kind.default_port()));
    let listen = env.parse("LISTEN_ADDR", default_listen)?;
    let config = ServerConfig::from_env(&env, listen)?;
    let broker = BrokerConfig::from_env(&env, kind.name())?;
    let db = match env.get("DATABASE_URL") {
        Some(url) => Database::connect(&url)
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
    let server = registry::build(kind, db, config, broker)
        .await?
        .bind()
        .await?;
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

/// Exits 0 only when the server at `addr` reports SERVING for `service` ("" = overall).
pub async fn healthcheck(addr: &str, service: &str, timeout: Duration) -> anyhow::Result<bool> {
    let url = if addr.contains("://") {
        addr.to_string()
    } else {
        format!("http://{addr}")
    };
    let status = check_health(&url, service, timeout).await?;
    println!("{}", status.as_str_name());
    Ok(status == tonic_health_status_serving())
}

fn tonic_health_status_serving() -> opsconductor_platform::health::ServingStatusPb {
    opsconductor_platform::health::ServingStatusPb::Serving
}
