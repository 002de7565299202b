//! A shell step is code on the executor's host, next to the executor's identity. It runs as
//! the unprivileged step user (the executor runs as root here, as in CI and in the compose
//! file), with a scrubbed environment: it cannot read the executor's secret files, its data
//! directory, or its process's environment and memory, where its token lives.

use std::os::unix::fs::PermissionsExt;

use opsconductor_api::jobs::v1::*;
use opsconductor_testkit::{JobsExt, Sandbox, StorageBackend};

use super::{job, shell, LIMIT};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shell_step_cannot_reach_the_executors_secrets() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "this test replays the attack against an executor running as root (as CI does)"
    );
    let s = Sandbox::start(StorageBackend::Sqlite).await;
    // The executor's secrets and data: a private directory (as `up` and `serve` create them)
    // holding a 0600 file.
    let home = tempfile::tempdir().unwrap();
    let private = home.path().join("state");
    opsconductor_storage::create_private_dir(&private).unwrap();
    let secret = private.join("service.secret");
    std::fs::write(&secret, "the-executor-secret").unwrap();
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).unwrap();
    let loose = home.path().join("loose.secret");
    std::fs::write(&loose, "the-executor-secret").unwrap();
    std::fs::set_permissions(&loose, std::fs::Permissions::from_mode(0o600)).unwrap();
    std::fs::set_permissions(home.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let pid = std::process::id();
    let script = format!(
        "echo uid=$(id -u) groups=$(id -G)\n\
         cat {secret} && echo READ-SECRET\n\
         cat {loose} && echo READ-LOOSE-SECRET\n\
         ls {private} && echo LISTED-DATA-DIR\n\
         cat /proc/{pid}/environ > /dev/null && echo READ-ENVIRON\n\
         head -c 1 /proc/{pid}/maps > /dev/null && echo READ-MAPS\n\
         kill -0 {pid} && echo SIGNALLED-EXECUTOR\n\
         echo env=$(env | cut -d= -f1 | sort | tr '\\n' ' ')\n\
         true",
        secret = secret.display(),
        loose = loose.display(),
        private = private.display(),
    );
    let j = s
        .jobs()
        .create(job("probe", vec![shell("probe", &script)]))
        .await
        .unwrap();
    let run = s.jobs().start(&j.id, &[]).await.unwrap();
    let (run, _) = s.jobs().finish(&run.id, LIMIT).await.unwrap();
    assert_eq!(
        RunState::try_from(run.state),
        Ok(RunState::Succeeded),
        "{}",
        run.error
    );
    let lines = s.jobs().log_text(&run.id).await.unwrap();
    let text = lines.join("\n");
    let ids = lines.iter().find_map(|l| l.strip_prefix("uid=")).unwrap();
    let (uid, groups) = ids.split_once(" groups=").unwrap();
    assert_ne!(uid, "0", "the step ran as root: {ids}");
    // Its own group only: no root group (wherever it is listed) and no supplementary groups
    // of the executor's.
    let groups: Vec<&str> = groups.split_whitespace().collect();
    assert_eq!(groups.len(), 1, "the step kept supplementary groups: {ids}");
    assert!(!groups.contains(&"0"), "the step kept root's group: {ids}");
    for marker in [
        "READ-SECRET",
        "READ-LOOSE-SECRET",
        "LISTED-DATA-DIR",
        "READ-ENVIRON",
        "READ-MAPS",
        "SIGNALLED-EXECUTOR",
        "the-executor-secret",
    ] {
        assert!(!text.contains(marker), "{marker} in:\n{text}");
    }
    let env = lines.iter().find_map(|l| l.strip_prefix("env=")).unwrap();
    for name in env.split_whitespace() {
        assert!(
            ["PATH", "LANG", "HOME", "TMPDIR", "PWD", "SHLVL", "OLDPWD", "_"].contains(&name)
                || name.starts_with("OPS_"),
            "{name} leaked into the step's environment: {env}"
        );
    }
    s.stop().await;
}
