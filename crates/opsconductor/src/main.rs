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
        /// A service: its short name (`user`) or gRPC name; empty asks about the whole server.
        #[arg(default_value = "")]
        service: String,
        /// Give up after this many milliseconds.
        #[arg(long, default_value_t = 3000)]
        timeout_ms: u64,
    },
    /// Internal: renders notification templates sent on stdin, with limited memory (the
    /// notification service starts these; see docs/security.md).
    #[command(hide = true)]
    RenderSandbox {
        #[arg(long)]
        memory_bytes: u64,
    },
}

#[derive(Subcommand)]
enum SecretsCommand {
    /// Generate what is missing in DIR, one subdirectory per service holding exactly what it
    /// reads (its identity, its own secrets, its broker password), and the broker's accounts
    /// and topology in DIR/rabbitmq/definitions.json. Existing files are kept.
    Init {
        /// The directory (created owner-only); mount each service's subdirectory into it.
        dir: String,
        /// The RabbitMQ virtual host the broker accounts are for.
        #[arg(long, default_value = "/")]
        vhost: String,
        /// With PostgreSQL at HOST:PORT: a role per service owning its database, its URL in
        /// DIR/<service>/database-url, and DIR/databases/roles.sql to create them.
        #[arg(long, value_name = "HOST:PORT")]
        database_host: Option<String>,
        /// Prefix of each service's role and database name.
        #[arg(long, default_value = "opsconductor_")]
        database_prefix: String,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // Before any runtime exists: the sandbox is one thread with a small, limited heap.
    if let Command::RenderSandbox { memory_bytes } = cli.command {
        return match opsconductor_notify_render::sandbox::serve(memory_bytes) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("opsconductor render-sandbox: {e}");
                ExitCode::FAILURE
            }
        };
    }
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
            // One process runs every service: one service.name for all of them.
            let tracing = opsconductor_platform::telemetry::init(&env, "opsconductor")?;
            let options = UpOptions::from_env(&env)?;
            let result = opsconductor::up(options, env).await;
            tracing.shutdown().await;
            result?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Serve { service } => {
            let Some(kind) = ServiceKind::from_name(&service) else {
                let names: Vec<&str> = opsconductor_catalog::implemented()
                    .map(ServiceKind::name)
                    .collect();
                anyhow::bail!("unknown service {service:?}; one of: {}", names.join(", "));
            };
            let tracing =
                opsconductor_platform::telemetry::init(&env, &format!("opsconductor-{kind}"))?;
            let result = opsconductor::serve(kind, env).await;
            tracing.shutdown().await;
            result?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Secrets {
            command:
                SecretsCommand::Init {
                    dir,
                    vhost,
                    database_host,
                    database_prefix,
                },
        } => {
            let database = database_host.map(|host| opsconductor::secrets::DatabaseOptions {
                host,
                prefix: database_prefix,
            });
            secrets_init(&env, std::path::PathBuf::from(dir), vhost, database)?;
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
        Command::RenderSandbox { .. } => Ok(ExitCode::FAILURE),
    }
}

/// `secrets init`: generates the deployment's secrets and says where each service finds its own.
fn secrets_init(
    env: &Env,
    dir: std::path::PathBuf,
    vhost: String,
    database: Option<opsconductor::secrets::DatabaseOptions>,
) -> anyhow::Result<()> {
    use opsconductor::secrets::{self, BrokerOptions, Options, Secrets};
    let broker = opsconductor_messaging::BrokerConfig::from_env(env, "secrets")?;
    let options = Options {
        provided: Vec::new(),
        broker: Some(BrokerOptions {
            prefix: broker.prefix.clone(),
            vhost,
            strategy: broker.dead_letter_strategy,
        }),
        database: database.clone(),
    };
    let generated = Secrets::ensure(&dir, opsconductor_catalog::SERVICES, &options)?;
    println!("secrets in {}, one directory per service:", dir.display());
    for module in opsconductor_catalog::SERVICES {
        let kind = module.kind();
        let mut vars: Vec<String> = Vec::new();
        if secrets::has_identity(kind) {
            vars.push(format!("SERVICE_ID={kind}"));
            vars.push(format!(
                "SERVICE_SECRET_FILE={}",
                generated.path(kind, secrets::SERVICE_SECRET).display()
            ));
        }
        for spec in module.secrets() {
            vars.push(format!(
                "{}_FILE={}",
                spec.var,
                generated.path(kind, spec.file).display()
            ));
        }
        vars.push(format!(
            "AMQP_PASSWORD_FILE={} (broker user \"{kind}\")",
            generated.path(kind, secrets::AMQP_PASSWORD).display()
        ));
        if let Some(database) = &database {
            vars.push(format!(
                "DATABASE_URL_FILE={} (role \"{}\")",
                generated.path(kind, secrets::DATABASE_URL).display(),
                secrets::database::role(database, kind)
            ));
        }
        println!("  {kind}:");
        for var in vars {
            println!("    {var}");
        }
    }
    println!(
        "  rabbitmq: load {} (definitions.import_backend = local_filesystem); run the services \
         with OPSCONDUCTOR_AMQP_DECLARE=verify",
        dir.join(secrets::BROKER_DIR)
            .join(secrets::BROKER_DEFINITIONS)
            .display()
    );
    if database.is_some() {
        println!(
            "  postgres: run {} with psql as the cluster's administrator",
            dir.join(secrets::DATABASES_DIR)
                .join(secrets::ROLES_SQL)
                .display()
        );
    }
    for (var, password) in &generated.shown_once {
        if var == "OPSCONDUCTOR_ADMIN_PASSWORD" {
            println!("administrator \"admin\", password \"{password}\" (shown once)");
        }
    }
    Ok(())
}
