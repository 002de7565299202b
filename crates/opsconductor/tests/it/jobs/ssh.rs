//! SSH steps against a real OpenSSH server on a loopback port: key and password logins with
//! credentials revealed for the run, host keys checked against the target's pinned
//! fingerprint (an unpinned or changed key fails the step), the revealed secret masked in the
//! log, and a cancelled remote command gone.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use opsconductor_api::credentials::v1::secret_material::Material;
use opsconductor_api::credentials::v1::*;
use opsconductor_api::jobs::v1::*;
use opsconductor_api::targets::v1::{CreateTargetRequest, CredentialRef, Protocol, Target};
use opsconductor_testkit::{on_both_backends, CredentialsExt, JobsExt, Sandbox};

use super::{alive, job, string_param, unique_path, LIMIT};

/// The account `.ci/run` creates for SSH logins (its password is set by the test).
pub(crate) const SSH_USER: &str = "opsconductor-ssh";

pub(crate) struct Sshd {
    child: Child,
    pub(crate) port: u16,
    pub(crate) fingerprint: String,
    pub(crate) private_key: String,
    _dir: tempfile::TempDir,
}

impl Drop for Sshd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn keygen(path: &Path) {
    let status = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-f"])
        .arg(path)
        .status()
        .expect("ssh-keygen (openssh-client) is installed");
    assert!(status.success());
}

/// `SHA256:…` of a public key file, as `ssh-keygen -l` prints it.
fn fingerprint(public: &Path) -> String {
    let out = Command::new("ssh-keygen")
        .arg("-lf")
        .arg(public)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .nth(1)
        .unwrap()
        .to_string()
}

fn sshd_binary() -> PathBuf {
    let path = PathBuf::from("/usr/sbin/sshd");
    assert!(
        path.exists(),
        "openssh-server is not installed (.ci/run installs it)"
    );
    path
}

impl Sshd {
    pub(crate) async fn start() -> Sshd {
        // `useradd` leaves the account locked ("!"), and without PAM sshd refuses even a key
        // for a locked account: giving it a password unlocks it.
        set_password();
        let dir = tempfile::tempdir().unwrap();
        let host = dir.path().join("host_ed25519");
        let user = dir.path().join("user_ed25519");
        keygen(&host);
        keygen(&user);
        std::fs::copy(
            user.with_extension("pub"),
            dir.path().join("authorized_keys"),
        )
        .unwrap();
        std::fs::create_dir_all("/run/sshd").unwrap();
        let port = opsconductor_testkit::free_port();
        let config = dir.path().join("sshd_config");
        std::fs::write(
            &config,
            format!(
                "Port {port}\nListenAddress 127.0.0.1\nHostKey {host}\nPidFile {dir}/sshd.pid\n\
                 AuthorizedKeysFile {dir}/authorized_keys\nStrictModes no\nUsePAM no\n\
                 PasswordAuthentication yes\nKbdInteractiveAuthentication no\n\
                 PermitRootLogin no\nAllowUsers {SSH_USER}\nLogLevel ERROR\n",
                host = host.display(),
                dir = dir.path().display(),
            ),
        )
        .unwrap();
        let child = Command::new(sshd_binary())
            .args(["-D", "-e", "-f"])
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        for _ in 0..100 {
            if tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .is_ok()
            {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Sshd {
            child,
            port,
            fingerprint: fingerprint(&host.with_extension("pub")),
            private_key: std::fs::read_to_string(&user).unwrap(),
            _dir: dir,
        }
    }
}

/// A random password for the SSH account, set once per test process (the tests of both
/// backends run at once and must not change it under each other).
fn set_password() -> String {
    static PASSWORD: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    PASSWORD.get_or_init(change_password).clone()
}

fn change_password() -> String {
    let password = format!("pw-{}", uuid::Uuid::now_v7().simple());
    let mut child = Command::new("chpasswd")
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(format!("{SSH_USER}:{password}\n").as_bytes())
        .unwrap();
    assert!(
        child.wait().unwrap().success(),
        "chpasswd failed: does {SSH_USER} exist?"
    );
    password
}

pub(crate) async fn credential(s: &Sandbox, name: &str, material: Material) -> Credential {
    let credential = Credential {
        name: name.into(),
        kind: match material {
            Material::Password(_) => CredentialKind::Password,
            _ => CredentialKind::SshKey,
        } as i32,
        username: SSH_USER.into(),
        ..Default::default()
    };
    s.credentials()
        .create(
            credential,
            SecretMaterial {
                material: Some(material),
            },
        )
        .await
        .unwrap()
}

pub(crate) async fn target(
    s: &Sandbox,
    name: &str,
    port: u16,
    fingerprint: &str,
    credential_id: &str,
) -> Target {
    s.targets()
        .create_target(CreateTargetRequest {
            target: Some(Target {
                name: name.into(),
                address: "127.0.0.1".into(),
                port: u32::from(port),
                ssh_host_key_fingerprint: fingerprint.into(),
                credential_refs: vec![CredentialRef {
                    protocol: Protocol::Ssh as i32,
                    credential_id: credential_id.into(),
                }],
                ..Default::default()
            }),
        })
        .await
        .unwrap()
        .into_inner()
        .target
        .unwrap()
}

/// A test sshd and a target `name` on it that logs in with the sshd's key (a credential
/// `<name>-key`): the set-up of every test that runs steps over SSH. Keep the sshd alive.
pub(crate) async fn sshd_target(s: &Sandbox, name: &str) -> (Sshd, Target) {
    let sshd = Sshd::start().await;
    let key = credential(
        s,
        &format!("{name}-key"),
        Material::SshKey(SshKeySecret {
            private_key: sshd.private_key.clone(),
            passphrase: String::new(),
        }),
    )
    .await;
    let target = target(s, name, sshd.port, &sshd.fingerprint, &key.id).await;
    (sshd, target)
}

pub(crate) fn ssh_job(name: &str, command: &str, targets: &[&str]) -> Job {
    let mut j = job(
        name,
        vec![Step {
            name: "remote".into(),
            action: Some(step::Action::Ssh(SshStep {
                command: command.into(),
                credential_id: String::new(),
            })),
            ..Default::default()
        }],
    );
    j.targets = Some(TargetSelector {
        names: targets.iter().map(|t| t.to_string()).collect(),
        ..Default::default()
    });
    j
}

async fn ssh_steps_log_in_verify_host_keys_and_stop_on_cancel(s: &Sandbox) {
    let sshd = Sshd::start().await;
    let password = set_password();
    let by_key = credential(
        s,
        "ssh-key",
        Material::SshKey(SshKeySecret {
            private_key: sshd.private_key.clone(),
            passphrase: String::new(),
        }),
    )
    .await;
    let by_password = credential(
        s,
        "ssh-password",
        Material::Password(PasswordSecret {
            password: password.clone(),
        }),
    )
    .await;
    target(s, "by-key", sshd.port, &sshd.fingerprint, &by_key.id).await;
    target(
        s,
        "by-password",
        sshd.port,
        &sshd.fingerprint,
        &by_password.id,
    )
    .await;
    // A pinned fingerprint of some other key: what a man in the middle would present.
    let other = tempfile::tempdir().unwrap();
    keygen(&other.path().join("k"));
    let wrong = fingerprint(&other.path().join("k.pub"));
    target(s, "changed-key", sshd.port, &wrong, &by_key.id).await;
    target(s, "unpinned", sshd.port, "", &by_key.id).await;

    // Both logins; the parameter stays a literal; the revealed password, echoed, is masked.
    let pwned = unique_path("ssh-pwned");
    let mut j = ssh_job(
        "remote-hello",
        "echo user=$(id -un) value={{ params.x }}; echo secret={{ params.leak }}",
        &["by-key", "by-password"],
    );
    j.parameters = vec![string_param("x"), string_param("leak")];
    let j = s.jobs().create(j).await.unwrap();
    let value = format!("$(touch {pwned})'; touch {pwned}; '");
    let run = s
        .jobs()
        .start(&j.id, &[("x", &value), ("leak", &password)])
        .await
        .unwrap();
    let (run, _) = s.jobs().finish(&run.id, LIMIT).await.unwrap();
    assert_eq!(
        RunState::try_from(run.state),
        Ok(RunState::Succeeded),
        "{} {:?}",
        run.error,
        run.steps
    );
    assert_eq!(run.steps.len(), 2);
    assert!(run.steps.iter().all(|st| st.exit_code == Some(0)));
    let lines = s.jobs().log_text(&run.id).await.unwrap();
    let hello = format!("user={SSH_USER} value={value}");
    assert_eq!(
        lines.iter().filter(|l| **l == hello).count(),
        2,
        "{lines:?}"
    );
    assert!(
        !lines.iter().any(|l| l.contains(&password)),
        "the revealed password leaked: {lines:?}"
    );
    assert!(lines.iter().any(|l| l == "secret=****"), "{lines:?}");
    assert!(!Path::new(&pwned).exists());
    let revealed = s.credentials().get(&by_password.id).await.unwrap();
    assert!(
        revealed.last_reveal_time.is_some(),
        "the reveal is recorded"
    );

    // A changed host key and an unpinned one fail the step, with the reason.
    for (name, reason) in [
        ("changed-key", "not the pinned"),
        ("unpinned", "no ssh_host_key_fingerprint"),
    ] {
        let j = s
            .jobs()
            .create(ssh_job(&format!("to-{name}"), "echo never", &[name]))
            .await
            .unwrap();
        let run = s.jobs().start(&j.id, &[]).await.unwrap();
        let (run, _) = s.jobs().finish(&run.id, LIMIT).await.unwrap();
        assert_eq!(RunState::try_from(run.state), Ok(RunState::Failed));
        assert!(
            run.steps[0].error.contains(reason),
            "{name}: {}",
            run.steps[0].error
        );
        let lines = s.jobs().log_text(&run.id).await.unwrap();
        assert!(!lines.iter().any(|l| l == "never"));
    }

    // Cancelled mid-command: the remote process is gone.
    let pids = unique_path("ssh-pids");
    let j = s
        .jobs()
        .create(ssh_job(
            "remote-sleep",
            &format!("sleep 300 & echo $! > {pids}; echo started; wait"),
            &["by-key"],
        ))
        .await
        .unwrap();
    let run = s.jobs().start(&j.id, &[]).await.unwrap();
    super::leases::wait_for_line(s, &run.id, "started").await;
    s.jobs()
        .cancel_run(CancelRunRequest {
            id: run.id.clone(),
            reason: "stop".into(),
        })
        .await
        .unwrap();
    let (run, _) = s.jobs().finish(&run.id, LIMIT).await.unwrap();
    assert_eq!(RunState::try_from(run.state), Ok(RunState::Cancelled));
    let pid = std::fs::read_to_string(&pids).unwrap();
    let _ = std::fs::remove_file(&pids);
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while alive(pid.trim()) {
        assert!(
            std::time::Instant::now() < deadline,
            "the remote sleep {pid} outlived the step"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
on_both_backends!(ssh_steps_log_in_verify_host_keys_and_stop_on_cancel);
