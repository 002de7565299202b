//! The `opsconductor` binary: `up` serves every implemented service and keeps data across
//! restarts; SIGTERM turns health NOT_SERVING, lets an in-flight call finish and exits 0;
//! bad configuration fails with the variable named; `healthcheck` exits by status.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use opsconductor_api::targets::v1::targets_service_client::TargetsServiceClient;
use opsconductor_api::targets::v1::{CreateTargetRequest, Target, TestTargetConnectivityRequest};
use opsconductor_api::user::v1::user_service_client::UserServiceClient;
use opsconductor_api::user::v1::{CreateUserRequest, GetUserRequest, User};
use opsconductor_platform::client::check_health;
use opsconductor_platform::health::ServingStatusPb;
use opsconductor_testkit::{free_port_base, TestBroker};

use crate::support::slow_target;

const BIN: &str = env!("CARGO_BIN_EXE_opsconductor");

/// A spawned `opsconductor`, with a broker prefix of its own (removed when it is dropped).
struct Process {
    child: Child,
    _broker: TestBroker,
}

impl Process {
    fn start(args: &[&str], envs: &[(&str, String)], dir: &Path) -> Process {
        let broker = TestBroker::new();
        broker.track_platform();
        let mut cmd = Command::new(BIN);
        cmd.args(args)
            .current_dir(dir)
            .env("OPSCONDUCTOR_LOG", "info")
            .env("OPSCONDUCTOR_AMQP_PREFIX", &broker.prefix)
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        for (k, v) in envs {
            cmd.env(k, v);
        }
        Process {
            child: cmd.spawn().expect("start opsconductor"),
            _broker: broker,
        }
    }

    fn sigterm(&self) {
        // SAFETY: kill(2) with a pid we spawned and still own (not yet waited for).
        let rc = unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM) };
        assert_eq!(rc, 0, "kill failed");
    }

    /// Waits for exit, returning the exit code and what it logged.
    fn wait(mut self, limit: Duration) -> (Option<i32>, String) {
        let started = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                let mut log = String::new();
                if let Some(mut err) = self.child.stderr.take() {
                    use std::io::Read;
                    let _ = err.read_to_string(&mut log);
                }
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

async fn wait_serving(url: &str) {
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn up_serves_every_implemented_service_and_keeps_data() {
    let dir = tempfile::tempdir().unwrap();
    let base = free_port_base();
    let user_url = format!("http://127.0.0.1:{}", base + 2);
    let targets_url = format!("http://127.0.0.1:{}", base + 5);
    let args = [
        "up",
        "--port-base",
        &base.to_string(),
        "--data-dir",
        "state",
    ];
    let env = [("OPSCONDUCTOR_SHUTDOWN_DELAY_MS", "0".to_string())];

    let up = Process::start(&args, &env, dir.path());
    wait_serving(&user_url).await;
    wait_serving(&targets_url).await;
    // Only implemented services listen: nothing answers on the auth port yet.
    assert!(check_health(
        &format!("http://127.0.0.1:{}", base + 1),
        "",
        Duration::from_millis(500)
    )
    .await
    .is_err());

    let mut users = UserServiceClient::connect(user_url.clone()).await.unwrap();
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
    let mut targets = TargetsServiceClient::connect(targets_url.clone())
        .await
        .unwrap();
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

    up.sigterm();
    let (code, log) = up.wait(Duration::from_secs(30));
    assert_eq!(code, Some(0), "{log}");
    assert!(
        dir.path().join("state/user.db").exists() && dir.path().join("state/targets.db").exists()
    );
    let status = Command::new(BIN)
        .args(["healthcheck", &format!("127.0.0.1:{}", base + 2)])
        .output()
        .unwrap();
    assert!(
        !status.status.success(),
        "healthcheck must fail when nothing serves"
    );

    // Restarted over the same data directory, the user is still there.
    let again = Process::start(&args, &env, dir.path());
    wait_serving(&user_url).await;
    let mut users = UserServiceClient::connect(user_url.clone()).await.unwrap();
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
    assert_eq!(again.wait(Duration::from_secs(30)).0, Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_turns_health_off_drains_the_call_in_flight_and_exits_zero() {
    let dir = tempfile::tempdir().unwrap();
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let url = format!("http://127.0.0.1:{port}");
    let serve = Process::start(
        &["serve", "targets"],
        &[
            ("LISTEN_ADDR", format!("127.0.0.1:{port}")),
            ("OPSCONDUCTOR_DATA_DIR", dir.path().display().to_string()),
            ("OPSCONDUCTOR_SHUTDOWN_DELAY_MS", "1500".to_string()),
        ],
        dir.path(),
    );
    wait_serving(&url).await;
    let mut client = TargetsServiceClient::connect(url.clone()).await.unwrap();
    let (target, _hole) = slow_target(&mut client).await;

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
    let (ok, err) = run(&["up", "--port-base", "99999"], &[]);
    assert!(!ok && err.contains("OPSCONDUCTOR_PORT_BASE"), "{err}");
    let (ok, err) = run(&["serve", "jobs"], &[]);
    assert!(!ok && err.contains("not part of this build"), "{err}");
    let (ok, err) = run(&["serve", "nonsense"], &[]);
    assert!(!ok && err.contains("unknown service"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_longer_than_the_grace_period_does_not_hold_shutdown() {
    let dir = tempfile::tempdir().unwrap();
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let url = format!("http://127.0.0.1:{port}");
    let serve = Process::start(
        &["serve", "targets"],
        &[
            ("LISTEN_ADDR", format!("127.0.0.1:{port}")),
            ("OPSCONDUCTOR_DATA_DIR", dir.path().display().to_string()),
            ("OPSCONDUCTOR_SHUTDOWN_DELAY_MS", "0".to_string()),
            ("OPSCONDUCTOR_SHUTDOWN_GRACE_MS", "500".to_string()),
        ],
        dir.path(),
    );
    wait_serving(&url).await;
    let mut client = TargetsServiceClient::connect(url.clone()).await.unwrap();
    let (target, _hole) = slow_target(&mut client).await;
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
