//! The services of the catalog started in this process on loopback ports, each over a fresh
//! database, under a broker prefix of their own, wired to each other as in a deployment:
//! every service has an identity and a secret, the auth service knows them, an administrator
//! is bootstrapped and signed in.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::ops::Deref;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use opsconductor_api::auth::v1::{ExchangeServiceTokenRequest, LoginRequest, LoginResponse};
use opsconductor_api::common::v1::Role;
use opsconductor_api::user::v1::{CreateUserRequest, User};
use opsconductor_auth::{AuthCounters, AuthHandle, KeyRing};
use opsconductor_catalog::SERVICES;
use opsconductor_platform::auth::{IssuedToken, StaticToken, TokenSource};
use opsconductor_platform::client::Clients;
use opsconductor_platform::config::Env;
use opsconductor_platform::ServiceKind;
use opsconductor_runtime::{SecretKind, ServiceModule};
use opsconductor_storage::testing::TestDatabase;
use opsconductor_storage::{Backend, Database};
use opsconductor_tokens::Claims;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::{free_port, TestBroker};

/// The password every sandbox user gets from [`Sandbox::user_with_role`].
pub const PASSWORD: &str = "correct horse battery staple";

/// With `OPSCONDUCTOR_TEST_LOG` set (an env filter such as `warn` or `opsconductor=debug`),
/// the services' logs go to stderr (shown for failing tests).
fn init_test_log() {
    if let Ok(filter) = std::env::var("OPSCONDUCTOR_TEST_LOG") {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
            .with_test_writer()
            .try_init();
    }
}

/// The account `.ci/run` creates for shell steps.
pub const STEP_USER: &str = "opsconductor-steps";

pub struct Sandbox {
    pub backend: Backend,
    pub broker: TestBroker,
    /// The auth service's signing keys: tests sign tokens with any claims they need.
    pub keys: Arc<KeyRing>,
    /// What the auth service counts (replays, throttled checks).
    pub auth_counters: Arc<AuthCounters>,
    /// The administrator's session.
    pub admin: LoginResponse,
    pub admin_password: String,
    /// Every service identity's secret (every service but auth, which mints its own token).
    pub secrets: BTreeMap<ServiceKind, String>,
    addrs: BTreeMap<ServiceKind, SocketAddr>,
    metrics_addrs: BTreeMap<ServiceKind, SocketAddr>,
    env: Env,
    clients: Clients,
    servers: BTreeMap<ServiceKind, (watch::Sender<bool>, JoinHandle<()>)>,
    databases: BTreeMap<ServiceKind, TestDatabase>,
}

fn random_secret() -> String {
    URL_SAFE_NO_PAD.encode(rand::random::<[u8; 32]>())
}

/// Clients acting as the administrator: `s.targets()`, `s.user()`, `s.client::<C>()`.
impl Deref for Sandbox {
    type Target = Clients;
    fn deref(&self) -> &Clients {
        &self.clients
    }
}

impl Sandbox {
    pub async fn start(backend: Backend) -> Sandbox {
        Sandbox::start_with(backend, &[]).await
    }

    /// With extra variables for every service (e.g. `AUTH_SERVICE_TOKEN_TTL_SECS`).
    pub async fn start_with(backend: Backend, extra: &[(&str, &str)]) -> Sandbox {
        Sandbox::start_configured(backend, TestBroker::new(), extra, &BTreeMap::new()).await
    }

    /// Under `broker`'s prefix, with `extra` variables for every service and `per_service`
    /// variables for some (e.g. each its own broker account).
    pub async fn start_configured(
        backend: Backend,
        broker: TestBroker,
        extra: &[(&str, &str)],
        per_service: &BTreeMap<ServiceKind, Vec<(String, String)>>,
    ) -> Sandbox {
        init_test_log();
        broker.track_platform();
        let addrs: BTreeMap<ServiceKind, SocketAddr> = SERVICES
            .iter()
            .map(|m| (m.kind(), SocketAddr::from(([127, 0, 0, 1], free_port()))))
            .collect();
        let secrets: BTreeMap<ServiceKind, String> = ServiceKind::ALL
            .iter()
            .filter(|k| **k != ServiceKind::Auth)
            .map(|k| (*k, random_secret()))
            .collect();
        let admin_password = random_secret();
        let mut env = Env::isolated([
            ("AMQP_URL", crate::amqp_url()),
            ("OPSCONDUCTOR_AMQP_PREFIX", broker.prefix.clone()),
            ("OPSCONDUCTOR_AMQP_RECONNECT_MIN_MS", "50".into()),
            ("OPSCONDUCTOR_AMQP_RECONNECT_MAX_MS", "500".into()),
            ("OPSCONDUCTOR_SHUTDOWN_DELAY_MS", "0".into()),
            // Every service's /metrics on an ephemeral port (Sandbox::metrics_url).
            ("METRICS_ADDR", "127.0.0.1:0".into()),
            ("OPSCONDUCTOR_SHUTDOWN_GRACE_MS", "5000".into()),
            // Checkpoints every few events, so a test's handful of events has several.
            ("AUDIT_CHECKPOINT_EVERY", "4".into()),
            // Test sinks listen on loopback over plain HTTP; retries come quickly.
            ("NOTIFICATION_ALLOW_PLAIN_HTTP", "true".into()),
            ("NOTIFICATION_ALLOW_PRIVATE_ADDRESSES", "true".into()),
            // http steps call test servers on loopback (attacks::http_egress turns this off).
            ("EXECUTOR_HTTP_ALLOW_NETWORKS", "127.0.0.0/8,::1".into()),
            (
                "NOTIFICATION_RETRY_DELAYS_MS",
                crate::broker::NOTIFICATION_RETRY_DELAYS_MS.into(),
            ),
        ]);
        // Notification templates render in `opsconductor render-sandbox` children; a test binary
        // is not that program, the `opsconductor` binary cargo built beside it is.
        if let Some(program) = opsconductor_binary() {
            env = env.with("NOTIFICATION_RENDER_PROGRAM", program.display().to_string());
        }
        // The unprivileged account shell steps run as (.ci/run creates it); `nobody` otherwise.
        if nix::unistd::geteuid().is_root()
            && nix::unistd::User::from_name(STEP_USER)
                .ok()
                .flatten()
                .is_some()
        {
            env = env.with("OPSCONDUCTOR_STEP_USER", STEP_USER);
        }
        // Every service's own secrets, as the catalog declares them.
        let kinds_with_secrets: Vec<(ServiceKind, String)> =
            secrets.iter().map(|(k, s)| (*k, s.clone())).collect();
        for module in SERVICES {
            for spec in module.secrets() {
                let value = match spec.kind {
                    SecretKind::Random(generate) => generate(),
                    SecretKind::Password => admin_password.clone(),
                    SecretKind::Identities(render) => render(&kinds_with_secrets),
                };
                env = env.with(spec.var, value);
            }
        }
        for kind in ServiceKind::ALL {
            let url = match addrs.get(&kind) {
                Some(addr) => format!("http://{addr}"),
                // Not part of this build: nothing listens there.
                None => format!("http://127.0.0.1:{}", free_port()),
            };
            env = env.with(kind.url_var(), url);
        }
        for (var, value) in extra {
            env = env.with(*var, *value);
        }

        let mut servers = BTreeMap::new();
        let mut metrics_addrs = BTreeMap::new();
        let mut databases = BTreeMap::new();
        let mut auth = None;
        for module in SERVICES {
            let kind = module.kind();
            let test_db = TestDatabase::new(backend)
                .await
                .unwrap_or_else(|e| panic!("{backend:?} test database: {e}"));
            let mut own_env = service_env(&env, &secrets, kind);
            for (var, value) in per_service.get(&kind).into_iter().flatten() {
                own_env = own_env.with(var.clone(), value.clone());
            }
            let built = module
                .build(test_db.db.clone(), &own_env, addrs[&kind])
                .await
                .unwrap_or_else(|e| panic!("{kind}: {e}"));
            if let Some(handle) = built
                .extra
                .and_then(|extra| extra.downcast::<AuthHandle>().ok())
            {
                auth = Some(handle);
            }
            let server = built
                .server
                .bind()
                .await
                .unwrap_or_else(|e| panic!("{kind} bind: {e}"));
            metrics_addrs.extend(server.metrics_addr().map(|addr| (kind, addr)));
            servers.insert(kind, serve(server));
            databases.insert(kind, test_db);
        }
        let auth = auth.unwrap_or_else(|| panic!("the catalog has no auth service"));
        let anonymous = Clients::from_env(&env).unwrap_or_else(|e| panic!("clients: {e}"));
        let admin = login(&anonymous, "admin", &admin_password).await;
        let clients = Clients::from_env(&env)
            .unwrap_or_else(|e| panic!("clients: {e}"))
            .with_tokens(session_source(&admin));
        Sandbox {
            backend,
            broker,
            keys: auth.keys.clone(),
            auth_counters: auth.counters.clone(),
            admin,
            admin_password,
            secrets,
            addrs,
            metrics_addrs,
            env,
            clients,
            servers,
            databases,
        }
    }

    /// Where `kind` listens.
    pub fn addr(&self, kind: ServiceKind) -> SocketAddr {
        self.addrs[&kind]
    }

    /// `http://…/metrics` of `kind`.
    pub fn metrics_url(&self, kind: ServiceKind) -> String {
        format!("http://{}/metrics", self.metrics_addrs[&kind])
    }

    /// `http://` and where `kind` listens.
    pub fn url(&self, kind: ServiceKind) -> String {
        format!("http://{}", self.addr(kind))
    }

    /// Stops one service (the others keep running) and waits for it to drain.
    pub async fn stop_service(&mut self, kind: ServiceKind) {
        if let Some((stop, task)) = self.servers.remove(&kind) {
            let _ = stop.send(true);
            let _ = task.await;
        }
    }

    /// Starts `kind` again, after [`Sandbox::stop_service`], on its address and database: to
    /// its clients it was down for a while.
    pub async fn start_service(&mut self, kind: ServiceKind) {
        let module = opsconductor_catalog::module(kind)
            .unwrap_or_else(|| panic!("{}", opsconductor_catalog::not_implemented(kind)));
        let db = self.databases[&kind].db.clone();
        let built = module
            .build(db, &self.service_env(kind), self.addrs[&kind])
            .await
            .unwrap_or_else(|e| panic!("{kind}: {e}"));
        let server = built
            .server
            .bind()
            .await
            .unwrap_or_else(|e| panic!("{kind} bind: {e}"));
        self.metrics_addrs
            .extend(server.metrics_addr().map(|addr| (kind, addr)));
        self.servers.insert(kind, serve(server));
    }

    /// Another replica of `kind` over a fresh database, with the sandbox's identities and
    /// broker: it knows only what it learns after it starts.
    pub async fn start_replica(&self, kind: ServiceKind) -> (crate::Running, TestDatabase) {
        let test_db = TestDatabase::new(self.backend)
            .await
            .unwrap_or_else(|e| panic!("test database: {e}"));
        let module = opsconductor_catalog::module(kind)
            .unwrap_or_else(|| panic!("{}", opsconductor_catalog::not_implemented(kind)));
        let running = self.start_module(module, test_db.db.clone(), &[]).await;
        (running, test_db)
    }

    /// `module` (a catalog row, or one built with a test double) over `db` on an ephemeral
    /// port, with the sandbox's identities and broker, and `extra` variables.
    pub async fn start_module(
        &self,
        module: &dyn ServiceModule,
        db: Database,
        extra: &[(&str, &str)],
    ) -> crate::Running {
        let kind = module.kind();
        let mut env = self.service_env(kind);
        for (var, value) in extra {
            env = env.with(*var, *value);
        }
        let listen = SocketAddr::from(([127, 0, 0, 1], 0));
        let built = module
            .build(db, &env, listen)
            .await
            .unwrap_or_else(|e| panic!("{kind}: {e}"));
        let bound = built
            .server
            .bind()
            .await
            .unwrap_or_else(|e| panic!("bind: {e}"));
        crate::Running::start(bound)
    }

    /// The variables `kind` runs with here: the sandbox's, its identity and secret.
    pub fn service_env(&self, kind: ServiceKind) -> Env {
        service_env(&self.env, &self.secrets, kind)
    }

    /// Where `kind`'s database is (a `sqlite://` file or a `postgres://` database).
    pub fn database_url(&self, kind: ServiceKind) -> &str {
        &self.databases[&kind].url
    }

    /// The variables the services were started with (URLs, broker prefix...).
    pub fn env(&self) -> &Env {
        &self.env
    }

    pub fn db(&self, kind: ServiceKind) -> &Database {
        &self.databases[&kind].db
    }

    /// Clients acting as the administrator (also what the sandbox derefs to).
    pub fn clients(&self) -> &Clients {
        &self.clients
    }

    /// Clients sending `token` on every call.
    pub fn clients_as(&self, token: &str) -> Clients {
        Clients::from_env(&self.env)
            .unwrap_or_else(|e| panic!("clients: {e}"))
            .with_tokens(crate::auth::static_source(token.to_string()))
    }

    /// Clients sending no token at all.
    pub fn anonymous(&self) -> Clients {
        Clients::from_env(&self.env).unwrap_or_else(|e| panic!("clients: {e}"))
    }

    pub async fn login(&self, username: &str, password: &str) -> LoginResponse {
        login(&self.anonymous(), username, password).await
    }

    /// A new user with `role` and the password [`PASSWORD`], signed in.
    pub async fn user_with_role(&self, username: &str, role: Role) -> (User, LoginResponse) {
        let user = self
            .user()
            .create_user(CreateUserRequest {
                user: Some(User {
                    username: username.into(),
                    email: format!("{username}@example.com"),
                    role: role as i32,
                    ..Default::default()
                }),
                password: PASSWORD.into(),
            })
            .await
            .unwrap_or_else(|e| panic!("create {username}: {e:?}"))
            .into_inner()
            .user
            .unwrap_or_else(|| panic!("no user in the response"));
        let session = self.login(username, PASSWORD).await;
        (user, session)
    }

    /// A service token for `kind`, exchanged with its secret like the service itself does
    /// (the auth service has no secret: its token is signed, as it signs its own).
    pub async fn service_token(&self, kind: ServiceKind) -> String {
        if kind == ServiceKind::Auth {
            return self.mint(&Claims::service(
                "opsconductor",
                "opsconductor",
                "auth",
                crate::now_secs(),
                600,
            ));
        }
        self.anonymous()
            .auth()
            .exchange_service_token(ExchangeServiceTokenRequest {
                service_id: kind.name().into(),
                service_secret: self.secrets[&kind].clone(),
                ..Default::default()
            })
            .await
            .unwrap_or_else(|e| panic!("service token for {kind}: {e:?}"))
            .into_inner()
            .access_token
    }

    /// Publishes as `kind` does: its message key certified by the auth service's active key.
    pub fn producer_trust(&self, kind: ServiceKind) -> opsconductor_messaging::ProducerTrust {
        crate::auth::producer_trust(self.keys.active(), kind.name())
    }

    /// A token with exactly `claims`, signed by the auth service's active key.
    pub fn mint(&self, claims: &Claims) -> String {
        self.keys
            .sign(claims)
            .unwrap_or_else(|e| panic!("sign: {e}"))
    }

    /// Stops the servers and waits for them to drain.
    pub async fn stop(mut self) {
        for (stop, _) in self.servers.values() {
            let _ = stop.send(true);
        }
        for (_, (_, task)) in std::mem::take(&mut self.servers) {
            let _ = task.await;
        }
    }
}

/// What `kind` is started with: the sandbox's variables plus its identity.
/// Serves `server` until its sender says stop.
fn serve(
    server: opsconductor_platform::server::BoundServer,
) -> (watch::Sender<bool>, JoinHandle<()>) {
    let (stop, mut stop_rx) = watch::channel(false);
    let task = tokio::spawn(async move {
        let _ = server
            .serve(async move {
                let _ = stop_rx.wait_for(|s| *s).await;
            })
            .await;
    });
    (stop, task)
}

fn service_env(env: &Env, secrets: &BTreeMap<ServiceKind, String>, kind: ServiceKind) -> Env {
    let env = env.clone().with("SERVICE_ID", kind.name());
    match secrets.get(&kind) {
        Some(secret) => env.with("SERVICE_SECRET", secret.clone()),
        None => env,
    }
}

async fn login(clients: &Clients, username: &str, password: &str) -> LoginResponse {
    clients
        .auth()
        .login(LoginRequest {
            username: username.into(),
            password: password.into(),
        })
        .await
        .unwrap_or_else(|e| panic!("login {username}: {e:?}"))
        .into_inner()
}

/// A token source over a session's access token.
pub fn session_source(session: &LoginResponse) -> TokenSource {
    let expire_time = session
        .access_token_expire_time
        .and_then(|t| SystemTime::try_from(t).ok())
        .unwrap_or_else(|| SystemTime::now() + Duration::from_secs(600));
    TokenSource::new(StaticToken(IssuedToken {
        token: session.access_token.clone(),
        expire_time,
        message_certificate: None,
    }))
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

/// A role's user in the authorization matrix and elsewhere.
pub fn role_label(role: Role) -> &'static str {
    opsconductor_platform::principal::role_name(role)
}

/// The `opsconductor` binary of this build, when cargo built it: beside this program (a bench
/// binary in `target/<profile>/`) or one directory up (a test binary in `target/<profile>/deps/`).
pub fn opsconductor_binary() -> Option<std::path::PathBuf> {
    let exe = std::env::current_exe().ok()?;
    let dir = exe.parent()?;
    let found = [Some(dir), dir.parent()]
        .into_iter()
        .flatten()
        .map(|d| d.join("opsconductor"))
        .find(|bin| bin.is_file());
    found
}
