//! `opsconductor`: run the platform (`up`), one service (`serve`), or check health.

use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use opsconductor::UpOptions;
use opsconductor_platform::config::Env;
use opsconductor_platform::ServiceKind;

#[derive(Parser)]
#[command(
    name = "opsconductor",
    version,
    about = "IT-operations automation platform"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run every service in this process, with embedded storage in the data directory.
    Up {
        /// Where each service keeps its SQLite file [env: OPSCONDUCTOR_DATA_DIR, default ./data]
        #[arg(long)]
        data_dir: Option<String>,
        /// Address to bind [env: OPSCONDUCTOR_HOST, default 127.0.0.1]
        #[arg(long)]
        host: Option<String>,
        /// Ports are this plus 1 (auth) .. 9 (executor) [env: OPSCONDUCTOR_PORT_BASE, default 3000]
        #[arg(long)]
        port_base: Option<String>,
    },
    /// Run one service (configured by LISTEN_ADDR, DATABASE_URL, ...).
    Serve {
        /// auth, user, audit, credentials, targets, jobs, notification, scheduler or executor
        service: String,
    },
    /// Manage a deployment's secrets (for `serve` and containers; `up` keeps its own).
    Secrets {
        #[command(subcommand)]
        command: SecretsCommand,
    },
    /// Exit 0 when the server at ADDR reports SERVING (for container health checks).
    Healthcheck {
        /// host:port or http://host:port
        addr: String,
        /// A fully qualified service name; empty asks about the whole server.
        #[arg(default_value = "")]
        service: String,
        /// Give up after this many milliseconds.
        #[arg(long, default_value_t = 3000)]
        timeout_ms: u64,
    },
}

#[derive(Subcommand)]
enum SecretsCommand {
    /// Generate what is missing in DIR: a secret per service identity, the auth service's
    /// key-encryption key and identity list, and the administrator's password. Existing files
    /// are kept.
    Init {
        /// The directory (created owner-only); mount it where the services read their secrets.
        dir: String,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("opsconductor: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli.command)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("opsconductor: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(command: Command) -> anyhow::Result<ExitCode> {
    let mut env = Env::process();
    match command {
        Command::Up {
            data_dir,
            host,
            port_base,
        } => {
            // Flags win over the environment; both go through the same validation.
            for (var, value) in [
                ("OPSCONDUCTOR_DATA_DIR", data_dir),
                ("OPSCONDUCTOR_HOST", host),
                ("OPSCONDUCTOR_PORT_BASE", port_base),
            ] {
                if let Some(value) = value {
                    env = env.with(var, value);
                }
            }
            opsconductor_platform::telemetry::init(&env)?;
            let options = UpOptions::from_env(&env)?;
            opsconductor::up(options, env).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Serve { service } => {
            opsconductor_platform::telemetry::init(&env)?;
            let Some(kind) = ServiceKind::from_name(&service) else {
                anyhow::bail!(
                    "unknown service {service:?}; one of: {}",
                    ServiceKind::ALL.map(|k| k.name()).join(", ")
                );
            };
            opsconductor::serve(kind, env).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Secrets {
            command: SecretsCommand::Init { dir },
        } => {
            let dir = std::path::PathBuf::from(dir);
            let secrets = opsconductor::secrets::Secrets::ensure(&dir, true)?;
            println!("secrets in {}:", dir.display());
            println!(
                "  every service:  SERVICE_ID=<name>  SERVICE_SECRET_FILE={}",
                dir.join("service-<name>.secret").display()
            );
            println!(
                "  auth:           AUTH_KEY_ENCRYPTION_KEY_FILE={}  AUTH_SERVICE_IDENTITIES_FILE={}",
                dir.join(opsconductor::secrets::KEY_ENCRYPTION_KEY).display(),
                dir.join(opsconductor::secrets::IDENTITIES).display()
            );
            println!(
                "  user:           OPSCONDUCTOR_ADMIN_PASSWORD_FILE={}",
                dir.join(opsconductor::secrets::ADMIN_PASSWORD).display()
            );
            if let (true, Some(password)) =
                (secrets.admin_password_generated, &secrets.admin_password)
            {
                println!("administrator \"admin\", password \"{password}\" (shown once)");
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Healthcheck {
            addr,
            service,
            timeout_ms,
        } => {
            let serving =
                opsconductor::healthcheck(&addr, &service, Duration::from_millis(timeout_ms))
                    .await?;
            Ok(if serving {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
    }
}
