//! The `opsconductor` binary: `up` serves every implemented service with generated secrets
//! and keeps data across restarts; `serve` runs a service from a `secrets init` directory;
//! SIGTERM turns health NOT_SERVING, lets an in-flight call finish and exits 0; bad
//! configuration fails with the variable named; `healthcheck` exits by status.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use opsconductor_api::auth::v1::{LoginRequest, LoginResponse};
use opsconductor_api::credentials::v1::credentials_service_client::CredentialsServiceClient;
use opsconductor_api::credentials::v1::{
    CreateCredentialRequest, Credential, CredentialKind, RevealCredentialRequest,
    RotateCredentialRequest, RotateEncryptionKeyRequest,
};
use opsconductor_api::targets::v1::targets_service_client::TargetsServiceClient;
use opsconductor_api::targets::v1::{CreateTargetRequest, Target, TestTargetConnectivityRequest};
use opsconductor_api::user::v1::user_service_client::UserServiceClient;
use opsconductor_api::user::v1::{CreateUserRequest, GetUserRequest, ListUsersRequest, User};
use opsconductor_platform::client::check_health;
use opsconductor_platform::health::ServingStatusPb;
use opsconductor_testkit::{channel_as, free_port, free_port_base, TestBroker};

use crate::support::{password_secret, slow_target};

const BIN: &str = env!("CARGO_BIN_EXE_opsconductor");

/// A spawned `opsconductor`, with a broker prefix of its own (removed when it is dropped).
/// Its output is drained as it comes, so a chatty process never blocks on a full pipe.
pub(crate) struct Process {
    child: Child,
    stdout: Option<std::thread::JoinHandle<String>>,
    stderr: Option<std::thread::JoinHandle<String>>,
    _broker: TestBroker,
}

fn drain(
    pipe: Option<impl std::io::Read + Send + 'static>,
) -> Option<std::thread::JoinHandle<String>> {
    pipe.map(|mut pipe| {
        std::thread::spawn(move || {
            let mut bytes = Vec::new();
            let _ = pipe.read_to_end(&mut bytes);
            String::from_utf8_lossy(&bytes).into_owned()
        })
    })
}

impl Process {
    pub(crate) fn start(args: &[&str], envs: &[(&str, String)], dir: &Path) -> Process {
        let broker = TestBroker::new();
        broker.track_platform();
        let mut cmd = Command::new(BIN);
        cmd.args(args)
            .current_dir(dir)
            .env("OPSCONDUCTOR_LOG", "info")
            .env("OPSCONDUCTOR_AMQP_PREFIX", &broker.prefix)
            // The delay queues the broker's cleanup knows (and fewer of them).
            .env(
                "NOTIFICATION_RETRY_DELAYS_MS",
                opsconductor_testkit::NOTIFICATION_RETRY_DELAYS_MS,
            )
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (k, v) in envs {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("start opsconductor");
        let stdout = drain(child.stdout.take());
        let stderr = drain(child.stderr.take());
        Process {
            child,
            stdout,
            stderr,
            _broker: broker,
        }
    }

    /// SIGKILL: the process gets no chance to clean up.
    pub(crate) fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub(crate) fn sigterm(&self) {
        // kill(1) rather than kill(2): the workspace forbids unsafe code. The pid is ours and
        // not yet waited for, so it cannot have been reused.
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("kill runs");
        assert!(status.success(), "kill failed");
    }

    /// Everything the process wrote to stdout; waits for it to exit (signal it first).
    fn take_stdout(&mut self) -> String {
        self.stdout
            .take()
            .and_then(|reader| reader.join().ok())
            .unwrap_or_default()
    }

    /// Waits for exit, returning the exit code and what it logged.
    pub(crate) fn wait(mut self, limit: Duration) -> (Option<i32>, String) {
        let started = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                let log = self
                    .stderr
                    .take()
                    .and_then(|reader| reader.join().ok())
                    .unwrap_or_default();
                return (status.code(), log);
            }
            assert!(started.elapsed() < limit, "did not exit within {limit:?}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Signs in at the auth service behind `auth_url`.
pub(crate) async fn login(auth_url: &str, username: &str, password: &str) -> LoginResponse {
    let started = Instant::now();
    loop {
        let attempt = async {
            opsconductor_api::auth::v1::auth_service_client::AuthServiceClient::connect(
                auth_url.to_string(),
            )
            .await
            .map_err(|e| e.to_string())?
            .login(LoginRequest {
                username: username.into(),
                password: password.into(),
            })
            .await
            .map_err(|e| e.to_string())
        };
        match attempt.await {
            Ok(response) => return response.into_inner(),
            Err(error) => assert!(
                started.elapsed() < Duration::from_secs(30),
                "cannot sign in: {error}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn mode(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

/// The administrator's password `up` generated into the data directory.
pub(crate) fn admin_password(data_dir: &Path) -> String {
    std::fs::read_to_string(data_dir.join("secrets/user/admin-password"))
        .expect("the generated admin password")
        .trim()
        .to_string()
}

pub(crate) async fn wait_serving(url: &str) {
    let started = Instant::now();
    loop {
        if let Ok(ServingStatusPb::Serving) = check_health(url, "", Duration::from_secs(1)).await {
            return;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "{url} never became SERVING"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `up` with every service on ports from `base`, its data in `dir/state`.
pub(crate) fn up(dir: &Path, base: u16, extra: &[(&str, String)]) -> Process {
    let mut env = vec![("OPSCONDUCTOR_SHUTDOWN_DELAY_MS", "0".to_string())];
    env.extend(extra.iter().cloned());
    Process::start(
        &[
            "up",
            "--port-base",
            &base.to_string(),
            "--data-dir",
            "state",
        ],
        &env,
        dir,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn up_serves_every_implemented_service_and_keeps_data() {
    let dir = tempfile::tempdir().unwrap();
    let base = free_port_base();
    let auth_url = format!("http://127.0.0.1:{}", base + 1);
    let user_url = format!("http://127.0.0.1:{}", base + 2);
    let targets_url = format!("http://127.0.0.1:{}", base + 5);

    let mut first = up(dir.path(), base, &[]);
    wait_serving(&auth_url).await;
    wait_serving(&user_url).await;
    wait_serving(&targets_url).await;
    wait_serving(&format!("http://127.0.0.1:{}", base + 6)).await;
    wait_serving(&format!("http://127.0.0.1:{}", base + 9)).await;
    wait_serving(&format!("http://127.0.0.1:{}", base + 8)).await;
    wait_serving(&format!("http://127.0.0.1:{}", base + 7)).await;

    // The administrator's password was generated, written to the data dir and shown once.
    let password = admin_password(&dir.path().join("state"));
    let session = login(&auth_url, "admin", &password).await;
    let mut users = UserServiceClient::new(channel_as(&user_url, session.access_token.clone()));
    let user = users
        .create_user(CreateUserRequest {
            user: Some(User {
                username: "persisted".into(),
                email: "p@example.com".into(),
                role: 1,
                ..Default::default()
            }),
            password: String::new(),
        })
        .await
        .unwrap()
        .into_inner()
        .user
        .unwrap();
    let mut targets =
        TargetsServiceClient::new(channel_as(&targets_url, session.access_token.clone()));
    targets
        .create_target(CreateTargetRequest {
            target: Some(Target {
                name: "t1".into(),
                address: "127.0.0.1".into(),
                port: 22,
                ..Default::default()
            }),
        })
        .await
        .unwrap();

    // The healthcheck subcommand agrees.
    let status = Command::new(BIN)
        .args(["healthcheck", &format!("127.0.0.1:{}", base + 2)])
        .output()
        .unwrap();
    assert!(status.status.success());
    assert_eq!(String::from_utf8_lossy(&status.stdout).trim(), "SERVING");

    first.sigterm();
    let stdout = first.take_stdout();
    let (code, log) = first.wait(Duration::from_secs(30));
    assert_eq!(code, Some(0), "{log}");
    assert!(
        stdout.contains(&password),
        "the password is shown once: {stdout}"
    );
    assert!(!log.contains(&password), "and never logged");
    // The services it serves come from the catalog, each with its address.
    let serving = stdout
        .lines()
        .find(|l| l.starts_with("OpsConductor is serving:"))
        .unwrap_or_else(|| panic!("no serving line: {stdout}"));
    for (name, offset) in [
        ("auth", 1),
        ("user", 2),
        ("audit", 3),
        ("credentials", 4),
        ("targets", 5),
    ] {
        assert!(
            serving.contains(&format!("{name} 127.0.0.1:{}", base + offset)),
            "{serving}"
        );
    }
    // Nobody but the owner reads the data: the directory 0700, every database file (and its
    // WAL) and every secret 0600, each service's secrets in a directory of its own.
    let state = dir.path().join("state");
    assert_eq!(mode(&state), 0o700);
    for db in ["auth", "user", "audit", "credentials", "targets"] {
        assert!(state.join(format!("{db}.db")).exists());
    }
    let mut files = 0;
    for entry in std::fs::read_dir(&state).unwrap() {
        let path = entry.unwrap().path();
        if path.is_file() {
            assert_eq!(mode(&path), 0o600, "{}", path.display());
            files += 1;
        }
    }
    assert!(files >= 3, "the databases");
    for service in ["auth", "user", "audit", "credentials", "targets"] {
        let own = state.join("secrets").join(service);
        assert_eq!(mode(&own), 0o700, "{}", own.display());
        for entry in std::fs::read_dir(&own).unwrap() {
            let path = entry.unwrap().path();
            assert_eq!(mode(&path), 0o600, "{}", path.display());
        }
    }
    assert!(!state.join("secrets/targets/admin-password").exists());
    let status = Command::new(BIN)
        .args(["healthcheck", &format!("127.0.0.1:{}", base + 2)])
        .output()
        .unwrap();
    assert!(
        !status.status.success(),
        "healthcheck must fail when nothing serves"
    );

    // Restarted over the same data directory: same keys and password, the user is still there,
    // and the password is not shown again.
    let mut again = up(dir.path(), base, &[]);
    wait_serving(&user_url).await;
    let session = login(&auth_url, "admin", &password).await;
    let mut users = UserServiceClient::new(channel_as(&user_url, session.access_token));
    let read = users
        .get_user(GetUserRequest {
            id: user.id.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .user
        .unwrap();
    assert_eq!(read, user);
    again.sigterm();
    let stdout = again.take_stdout();
    assert_eq!(again.wait(Duration::from_secs(30)).0, Some(0));
    assert!(!stdout.contains(&password), "{stdout}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_runs_each_service_from_a_secrets_directory() {
    let dir = tempfile::tempdir().unwrap();
    let secrets = dir.path().join("secrets");
    let init = Command::new(BIN)
        .args(["secrets", "init", &secrets.display().to_string()])
        .output()
        .unwrap();
    assert!(
        init.status.success(),
        "{}",
        String::from_utf8_lossy(&init.stderr)
    );
    let password = std::fs::read_to_string(secrets.join("user/admin-password"))
        .unwrap()
        .trim()
        .to_string();
    assert!(String::from_utf8_lossy(&init.stdout).contains(&password));
    // Running it again keeps every secret.
    let again = Command::new(BIN)
        .args(["secrets", "init", &secrets.display().to_string()])
        .output()
        .unwrap();
    assert!(again.status.success());
    assert!(!String::from_utf8_lossy(&again.stdout).contains(&password));

    let (auth_port, user_port) = (free_port(), free_port());
    let auth_url = format!("http://127.0.0.1:{auth_port}");
    let user_url = format!("http://127.0.0.1:{user_port}");
    let file = |name: &str| secrets.join(name).display().to_string();
    let common = |service: &str, port: u16| {
        let mut env = vec![
            ("LISTEN_ADDR", format!("127.0.0.1:{port}")),
            ("OPSCONDUCTOR_DATA_DIR", dir.path().display().to_string()),
            ("SERVICE_ID", service.to_string()),
            ("AUTH_SERVICE_URL", auth_url.clone()),
            ("USER_SERVICE_URL", user_url.clone()),
            ("OPSCONDUCTOR_SHUTDOWN_DELAY_MS", "0".to_string()),
        ];
        if service != "auth" {
            env.push((
                "SERVICE_SECRET_FILE",
                file(&format!("{service}/service.secret")),
            ));
        }
        env
    };
    let mut auth_env = common("auth", auth_port);
    auth_env.push((
        "AUTH_KEY_ENCRYPTION_KEY_FILE",
        file("auth/key-encryption-key"),
    ));
    auth_env.push((
        "AUTH_SERVICE_IDENTITIES_FILE",
        file("auth/service-identities"),
    ));
    let auth = Process::start(&["serve", "auth"], &auth_env, dir.path());
    let mut user_env = common("user", user_port);
    user_env.push((
        "OPSCONDUCTOR_ADMIN_PASSWORD_FILE",
        file("user/admin-password"),
    ));
    let user = Process::start(&["serve", "user"], &user_env, dir.path());
    wait_serving(&auth_url).await;
    wait_serving(&user_url).await;

    // Login goes through the auth service, which checks the password with the user service
    // under its own identity; the user service then accepts the token it signed.
    let session = login(&auth_url, "admin", &password).await;
    let mut users = UserServiceClient::new(channel_as(&user_url, session.access_token));
    let listed = users
        .list_users(ListUsersRequest::default())
        .await
        .unwrap()
        .into_inner()
        .users;
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].username, "admin");
    user.sigterm();
    auth.sigterm();
    assert_eq!(user.wait(Duration::from_secs(30)).0, Some(0));
    assert_eq!(auth.wait(Duration::from_secs(30)).0, Some(0));
}

/// An `up` with a slow target ready, signed in as the administrator.
async fn up_with_a_slow_target(
    delay_ms: &str,
    grace_ms: &str,
) -> (
    Process,
    tempfile::TempDir,
    String,
    TargetsServiceClient<opsconductor_platform::auth::AuthChannel>,
    Target,
    impl Sized,
) {
    let dir = tempfile::tempdir().unwrap();
    let base = free_port_base();
    let process = up(
        dir.path(),
        base,
        &[
            ("OPSCONDUCTOR_SHUTDOWN_DELAY_MS", delay_ms.to_string()),
            ("OPSCONDUCTOR_SHUTDOWN_GRACE_MS", grace_ms.to_string()),
        ],
    );
    let url = format!("http://127.0.0.1:{}", base + 5);
    wait_serving(&url).await;
    let session = login(
        &format!("http://127.0.0.1:{}", base + 1),
        "admin",
        &admin_password(&dir.path().join("state")),
    )
    .await;
    let mut client = TargetsServiceClient::new(channel_as(&url, session.access_token));
    let (target, hole) = slow_target(&mut client).await;
    (process, dir, url, client, target, hole)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_turns_health_off_drains_the_call_in_flight_and_exits_zero() {
    let (serve, _dir, url, mut client, target, _hole) =
        up_with_a_slow_target("1500", "30000").await;

    let in_flight = tokio::spawn(async move {
        let started = Instant::now();
        let result = client
            .test_target_connectivity(TestTargetConnectivityRequest {
                id: target.id,
                port: 0,
                timeout: Some(prost_types::Duration {
                    seconds: 3,
                    nanos: 0,
                }),
            })
            .await;
        (result, started.elapsed())
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    serve.sigterm();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let status = check_health(&url, "", Duration::from_secs(1))
        .await
        .expect("health during the delay");
    assert_eq!(status, ServingStatusPb::NotServing);
    let status = check_health(
        &url,
        "opsconductor.targets.v1.TargetsService",
        Duration::from_secs(1),
    )
    .await
    .unwrap();
    assert_eq!(status, ServingStatusPb::NotServing);

    let (result, elapsed) = in_flight.await.unwrap();
    let response = result.expect("the in-flight call completes").into_inner();
    assert!(!response.reachable);
    assert!(response.error.contains("timed out"), "{}", response.error);
    assert!(elapsed >= Duration::from_secs(3), "{elapsed:?}");

    let (code, log) = serve.wait(Duration::from_secs(30));
    assert_eq!(code, Some(0), "{log}");
    assert!(
        log.contains("NOT_SERVING") && log.contains("draining"),
        "{log}"
    );
}

#[test]
fn bad_configuration_names_the_variable() {
    let dir = tempfile::tempdir().unwrap();
    let run = |args: &[&str], envs: &[(&str, &str)]| {
        let mut cmd = Command::new(BIN);
        cmd.args(args).current_dir(dir.path());
        for (k, v) in envs {
            cmd.env(k, v);
        }
        let out = cmd.output().unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stderr).to_string(),
        )
    };
    let (ok, err) = run(&["serve", "user"], &[("LISTEN_ADDR", "not-an-address")]);
    assert!(!ok);
    assert!(
        err.contains("LISTEN_ADDR") && err.contains("not-an-address"),
        "{err}"
    );
    let (ok, err) = run(
        &["serve", "user"],
        &[
            ("LISTEN_ADDR", "127.0.0.1:0"),
            ("OPSCONDUCTOR_SHUTDOWN_GRACE_MS", "soon"),
        ],
    );
    assert!(
        !ok && err.contains("OPSCONDUCTOR_SHUTDOWN_GRACE_MS"),
        "{err}"
    );
    let (ok, err) = run(
        &["serve", "user"],
        &[
            ("LISTEN_ADDR", "127.0.0.1:0"),
            ("DATABASE_URL", "mysql://u:hunter2@h/db"),
        ],
    );
    assert!(
        !ok && err.contains("DATABASE_URL") && !err.contains("hunter2"),
        "{err}"
    );
    let (ok, err) = run(
        &["serve", "user"],
        &[
            ("LISTEN_ADDR", "127.0.0.1:0"),
            ("AMQP_URL", "amqps://u:hunter2@h/v"),
        ],
    );
    assert!(
        !ok && err.contains("AMQP_URL") && !err.contains("hunter2"),
        "{err}"
    );
    // Traces go to a plain-gRPC collector only; the refusal hides the address's user info.
    let (ok, err) = run(
        &["serve", "user"],
        &[
            ("LISTEN_ADDR", "127.0.0.1:0"),
            (
                "OTEL_EXPORTER_OTLP_ENDPOINT",
                "https://u:hunter2@collector:4317",
            ),
        ],
    );
    assert!(
        !ok && err.contains("OTEL_EXPORTER_OTLP_ENDPOINT") && !err.contains("hunter2"),
        "{err}"
    );
    let (ok, err) = run(&["up", "--port-base", "99999"], &[]);
    assert!(!ok && err.contains("OPSCONDUCTOR_PORT_BASE"), "{err}");
    let (ok, err) = run(&["serve", "user"], &[("LISTEN_ADDR", "127.0.0.1:0")]);
    assert!(!ok && err.contains("SERVICE_SECRET"), "{err}");
    let (ok, err) = run(
        &["serve", "auth"],
        &[("LISTEN_ADDR", "127.0.0.1:0"), ("SERVICE_SECRET", "s")],
    );
    assert!(!ok && err.contains("AUTH_KEY_ENCRYPTION_KEY"), "{err}");
    let (ok, err) = run(
        &["serve", "user"],
        &[
            ("LISTEN_ADDR", "127.0.0.1:0"),
            ("SERVICE_SECRET", "s"),
            ("OPSCONDUCTOR_ADMIN_PASSWORD", "short"),
        ],
    );
    assert!(
        !ok && err.contains("OPSCONDUCTOR_ADMIN_PASSWORD") && !err.contains("short"),
        "{err}"
    );
    let (ok, err) = run(&["serve", "nonsense"], &[]);
    assert!(!ok && err.contains("unknown service"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_longer_than_the_grace_period_does_not_hold_shutdown() {
    let (serve, _dir, _url, mut client, target, _hole) = up_with_a_slow_target("0", "500").await;
    let in_flight = tokio::spawn(async move {
        client
            .test_target_connectivity(TestTargetConnectivityRequest {
                id: target.id,
                port: 0,
                timeout: Some(prost_types::Duration {
                    seconds: 30,
                    nanos: 0,
                }),
            })
            .await
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let signalled = Instant::now();
    serve.sigterm();
    let (code, log) = serve.wait(Duration::from_secs(10));
    assert_eq!(code, Some(0), "{log}");
    assert!(
        signalled.elapsed() < Duration::from_secs(5),
        "{:?}",
        signalled.elapsed()
    );
    assert!(log.contains("grace period"), "{log}");
    // The abandoned call fails on the client instead of hanging.
    assert!(in_flight.await.unwrap().is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_never_contain_passwords_secrets_or_tokens() {
    use opsconductor_api::auth::v1::auth_service_client::AuthServiceClient;
    use opsconductor_api::auth::v1::{
        ExchangeServiceTokenRequest, LogoutRequest, RefreshTokenRequest,
    };
    use opsconductor_api::user::v1::{ChangePasswordRequest, SetPasswordRequest};

    let dir = tempfile::tempdir().unwrap();
    let base = free_port_base();
    let url = |offset: u16| format!("http://127.0.0.1:{}", base + offset);
    // Everything at debug, every crate: the most a log will ever hold.
    let mut process = up(
        dir.path(),
        base,
        &[("OPSCONDUCTOR_LOG", "debug".to_string())],
    );
    wait_serving(&url(1)).await;
    wait_serving(&url(2)).await;
    wait_serving(&url(4)).await;
    wait_serving(&url(5)).await;
    let state = dir.path().join("state");
    let admin_password = admin_password(&state);
    let mut secrets = vec![admin_password.clone()];
    for service in std::fs::read_dir(state.join("secrets")).unwrap() {
        for entry in std::fs::read_dir(service.unwrap().path()).unwrap() {
            let path = entry.unwrap().path();
            let name = path.file_name().unwrap().to_string_lossy().to_string();
            if [
                "service.secret",
                "key-encryption-key",
                "signing-key",
                "master-key",
            ]
            .contains(&name.as_str())
            {
                secrets.push(std::fs::read_to_string(&path).unwrap().trim().to_string());
            }
        }
    }
    assert_eq!(
        secrets.len(),
        12,
        "the admin password, eight service secrets, the KEK, the audit signing key, \
         the credentials master key"
    );

    let admin = login(&url(1), "admin", &admin_password).await;
    let mut tokens = vec![admin.access_token.clone(), admin.refresh_token.clone()];
    let mut auth = AuthServiceClient::connect(url(1)).await.unwrap();
    // A wrong password, a service's exchange, a bad secret.
    let _ = auth
        .login(LoginRequest {
            username: "admin".into(),
            password: "a wrong password 123".into(),
        })
        .await
        .unwrap_err();
    secrets.push("a wrong password 123".into());
    let targets_secret = std::fs::read_to_string(state.join("secrets/targets/service.secret"))
        .unwrap()
        .trim()
        .to_string();
    let service = auth
        .exchange_service_token(ExchangeServiceTokenRequest {
            service_id: "targets".into(),
            service_secret: targets_secret,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    tokens.push(service.access_token);
    let _ = auth
        .exchange_service_token(ExchangeServiceTokenRequest {
            service_id: "targets".into(),
            service_secret: "not the targets secret at all".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    secrets.push("not the targets secret at all".into());

    // A user with a password, changed and reset; refresh, reuse, logout.
    let mut users = UserServiceClient::new(channel_as(&url(2), admin.access_token.clone()));
    let user = users
        .create_user(CreateUserRequest {
            user: Some(User {
                username: "logcheck".into(),
                email: "l@example.com".into(),
                role: 2,
                ..Default::default()
            }),
            password: "first secret password".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .user
        .unwrap();
    let session = login(&url(1), "logcheck", "first secret password").await;
    tokens.extend([session.access_token.clone(), session.refresh_token.clone()]);
    let refreshed = auth
        .refresh_token(RefreshTokenRequest {
            refresh_token: session.refresh_token.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    tokens.extend([
        refreshed.access_token.clone(),
        refreshed.refresh_token.clone(),
    ]);
    let _ = auth
        .refresh_token(RefreshTokenRequest {
            refresh_token: session.refresh_token.clone(),
        })
        .await
        .unwrap_err();
    let second = login(&url(1), "logcheck", "first secret password").await;
    tokens.extend([second.access_token.clone(), second.refresh_token.clone()]);
    UserServiceClient::new(channel_as(&url(2), second.access_token.clone()))
        .change_password(ChangePasswordRequest {
            user_id: user.id.clone(),
            current_password: "first secret password".into(),
            new_password: "second secret password".into(),
        })
        .await
        .unwrap();
    users
        .set_password(SetPasswordRequest {
            user_id: user.id.clone(),
            new_password: "third secret password".into(),
        })
        .await
        .unwrap();
    let third = login(&url(1), "logcheck", "third secret password").await;
    tokens.extend([third.access_token.clone(), third.refresh_token.clone()]);
    opsconductor_api::auth::v1::auth_service_client::AuthServiceClient::new(channel_as(
        &url(1),
        third.access_token.clone(),
    ))
    .logout(LogoutRequest {
        refresh_token: third.refresh_token.clone(),
    })
    .await
    .unwrap();
    // Revoked and garbage tokens presented to a service.
    for token in [third.access_token.as_str(), "garbage.token.here"] {
        let _ = TargetsServiceClient::new(channel_as(&url(5), token.to_string()))
            .list_targets(opsconductor_api::targets::v1::ListTargetsRequest::default())
            .await;
    }
    // A credential created, rotated and revealed: its material is in none of the lines.
    let mut vault = CredentialsServiceClient::new(channel_as(&url(4), admin.access_token.clone()));
    let created = vault
        .create_credential(CreateCredentialRequest {
            credential: Some(Credential {
                name: "logcheck".into(),
                kind: CredentialKind::Password as i32,
                username: "deploy".into(),
                ..Default::default()
            }),
            secret: Some(password_secret("vault password one")),
        })
        .await
        .unwrap()
        .into_inner()
        .credential
        .unwrap();
    vault
        .rotate_credential(RotateCredentialRequest {
            id: created.id.clone(),
            secret: Some(password_secret("vault password two")),
            ..Default::default()
        })
        .await
        .unwrap();
    let revealed = vault
        .reveal_credential(RevealCredentialRequest {
            id: created.id.clone(),
            reason: "log check".into(),
            idempotency_key: "log-check-1".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(revealed.secret, Some(password_secret("vault password two")));
    vault
        .rotate_encryption_key(RotateEncryptionKeyRequest::default())
        .await
        .unwrap();
    secrets.extend([
        "vault password one".into(),
        "vault password two".into(),
        "first secret password".into(),
        "second secret password".into(),
        "third secret password".into(),
    ]);

    process.sigterm();
    let _ = process.take_stdout();
    let (code, log) = process.wait(Duration::from_secs(30));
    assert_eq!(code, Some(0));
    assert!(
        log.len() > 10_000,
        "debug logs were written: {} bytes",
        log.len()
    );
    assert!(log.contains("signed in"), "the flows were logged");
    for secret in &secrets {
        assert!(!log.contains(secret.as_str()), "a secret is in the log");
    }
    for token in &tokens {
        // The whole token, and its signature alone.
        let signature = token.rsplit('.').next().unwrap();
        assert!(!log.contains(token.as_str()), "a token is in the log");
        assert!(
            !log.contains(signature),
            "a token's signature is in the log"
        );
    }
}
