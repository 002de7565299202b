//! Shell steps are contained (the executor runs as root here, as in CI and the compose file):
//! each attempt runs as a uid of its own in a 0700 directory of its own, so what it leaves
//! running — in its group, `setsid`, double-forked, `nohup` — dies when it ends, its directory
//! goes, another step cannot read its environment, directory or script, and the script (with
//! whatever a template put in it) is never a process argument, where any local user reads it.
//! `EXECUTOR_CAPACITY` bounds how many runs an executor holds at once.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::time::Duration;

use opsconductor_api::jobs::v1::*;
use opsconductor_testkit::{JobsExt, Sandbox, StorageBackend};

use super::credential_scope::{api_token, secret_param};
use crate::jobs::{job, shell, LIMIT};

/// The uids steps run as by default (`OPSCONDUCTOR_STEP_UIDS`).
const STEP_UIDS: std::ops::RangeInclusive<u32> = 2_000_000_000..=2_000_065_535;

/// Where steps' directories are, for an executor running as root.
const STEP_DIR: &str = "/tmp/opsconductor-steps-0/";

/// The step's log lines until it logs `text` (a live watch), panicking if it ends first.
async fn lines_until(s: &Sandbox, run_id: &str, text: &str) -> Vec<String> {
    let mut stream = s
        .jobs()
        .watch_run(WatchRunRequest {
            id: run_id.into(),
            include_logs: true,
            after_log_seq: 0,
        })
        .await
        .unwrap()
        .into_inner();
    let seen = async {
        let mut lines = Vec::new();
        while let Some(event) = stream.message().await.unwrap() {
            if let Some(watch_run_response::Event::LogLine(l)) = &event.event {
                lines.push(l.text.clone());
                if l.text == text {
                    return lines;
                }
            }
        }
        panic!("the run ended without logging {text:?}: {lines:?}");
    };
    tokio::time::timeout(LIMIT, seen)
        .await
        .expect("the line in time")
}

/// The value a step logged as `name=value`.
fn field<'a>(lines: &'a [String], name: &str) -> &'a str {
    let prefix = format!("{name}=");
    lines
        .iter()
        .find_map(|l| l.strip_prefix(&prefix))
        .unwrap_or_else(|| panic!("no {name}= in {lines:?}"))
}

/// Every live process's pid, uid and arguments.
fn processes() -> Vec<(u32, u32, Vec<String>)> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        if !crate::jobs::alive(&pid.to_string()) {
            continue;
        }
        let (Ok(meta), Ok(cmdline)) = (
            std::fs::metadata(entry.path().join("cmdline")),
            std::fs::read(entry.path().join("cmdline")),
        ) else {
            continue;
        };
        let args = cmdline
            .split(|b| *b == 0)
            .filter(|a| !a.is_empty())
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        found.push((pid, meta.uid(), args));
    }
    found
}

/// The markers (`sleep` arguments) some live process was started with.
fn running(markers: &[String]) -> Vec<String> {
    let all = processes();
    markers
        .iter()
        .filter(|m| all.iter().any(|(_, _, args)| args.contains(m)))
        .cloned()
        .collect()
}

fn nonce() -> u64 {
    100_000 + rand::random::<u64>() % 900_000
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_a_step_leaves_running_dies_with_it_and_its_directory_goes() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "the executor must be root (as in CI)"
    );
    let s = Sandbox::start(StorageBackend::Sqlite).await;
    // Each a `sleep` with an argument no other process has.
    let n = nonce();
    let markers: Vec<String> = (1..=5).map(|k| format!("98{n}{k}")).collect();
    let script = format!(
        "sleep {m1} &\n\
         setsid sleep {m2} &\n\
         sh -c 'sleep {m3} &'\n\
         nohup sleep {m4} > /dev/null 2>&1 &\n\
         setsid sh -c \"sh -c 'sleep {m5} < /dev/null > /dev/null 2>&1 &' &\"\n\
         echo uid=$(id -u)\n\
         echo dir=$PWD\n\
         echo home=$HOME\n\
         echo tmp=$TMPDIR\n\
         echo ready\n\
         sleep 1",
        m1 = markers[0],
        m2 = markers[1],
        m3 = markers[2],
        m4 = markers[3],
        m5 = markers[4],
    );
    let j = s
        .jobs()
        .create(job("leaves-things-running", vec![shell("plant", &script)]))
        .await
        .unwrap();
    let run = s.jobs().start(&j.id, &[]).await.unwrap();
    let lines = lines_until(&s, &run.id, "ready").await;

    // While it runs: all five are there, and so is its directory, private to its own uid.
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(
        running(&markers),
        markers,
        "the step's processes while it runs"
    );
    let uid: u32 = field(&lines, "uid").parse().unwrap();
    assert!(STEP_UIDS.contains(&uid), "uid {uid} is not a step uid");
    let dir = field(&lines, "dir").to_string();
    assert!(dir.starts_with(STEP_DIR), "{dir}");
    assert_eq!(field(&lines, "home"), dir);
    assert_eq!(field(&lines, "tmp"), dir);
    let meta = std::fs::metadata(&dir).unwrap();
    assert_eq!(meta.permissions().mode() & 0o7777, 0o700, "{dir}");
    assert_eq!(meta.uid(), uid);
    let script_file = std::fs::metadata(format!("{dir}/.opsconductor-step.sh")).unwrap();
    assert_eq!(script_file.permissions().mode() & 0o7777, 0o600);
    assert_eq!(script_file.uid(), uid);

    let (run, _) = s.jobs().finish(&run.id, LIMIT).await.unwrap();
    assert_eq!(
        RunState::try_from(run.state),
        Ok(RunState::Succeeded),
        "{}",
        run.error
    );
    // When the step ended: none of them, nothing else of its uid, and no directory.
    assert_eq!(running(&markers), Vec::<String>::new(), "outlived the step");
    let left: Vec<_> = processes().into_iter().filter(|p| p.1 == uid).collect();
    assert!(left.is_empty(), "processes of uid {uid} left: {left:?}");
    assert!(!std::path::Path::new(&dir).exists(), "{dir} is still there");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_step_cannot_read_another_running_steps_environment_directory_or_script() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "the executor must be root (as in CI)"
    );
    let s = Sandbox::start(StorageBackend::Sqlite).await;
    let value = format!("victim-secret-{}", uuid::Uuid::now_v7().simple());
    let credential = api_token(&s, "victims-token", &value).await;
    // The victim holds a secret (in its environment or its script, wherever the template puts
    // it) while it runs.
    let mut victim = job(
        "victim",
        vec![shell(
            "hold",
            "token={{ params.token }}\necho pid=$$\necho dir=$PWD\necho ready\nsleep 5\necho ${#token}",
        )],
    );
    victim.parameters = vec![secret_param("token", &[&credential.id])];
    let victim = s.jobs().create(victim).await.unwrap();
    let victim_run = s
        .jobs()
        .start(&victim.id, &[("token", &credential.id)])
        .await
        .unwrap();
    let lines = lines_until(&s, &victim_run.id, "ready").await;
    let pid = field(&lines, "pid").to_string();
    let dir = field(&lines, "dir").to_string();
    // The secret is really there for the taking (root can read it): the attacks below aim at
    // something real.
    let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap();
    let script = std::fs::read(format!("{dir}/.opsconductor-step.sh")).unwrap();
    let holds = |bytes: &[u8]| bytes.windows(value.len()).any(|w| w == value.as_bytes());
    assert!(
        holds(&environ) || holds(&script),
        "the victim holds no secret"
    );

    let probe = format!(
        "echo uid=$(id -u)\n\
         cat /proc/{pid}/environ && echo READ-ENVIRON\n\
         ls -a {dir} && echo LISTED-DIR\n\
         cat {dir}/.opsconductor-step.sh && echo READ-SCRIPT\n\
         head -c 1 /proc/{pid}/mem && echo READ-MEM\n\
         kill -0 {pid} && echo SIGNALLED\n\
         ls /proc/{pid}/cwd/ && echo LISTED-CWD\n\
         echo done"
    );
    let attacker = s
        .jobs()
        .create(job("attacker", vec![shell("probe", &probe)]))
        .await
        .unwrap();
    let attack = s.jobs().start(&attacker.id, &[]).await.unwrap();
    let (attack, _) = s.jobs().finish(&attack.id, LIMIT).await.unwrap();
    assert_eq!(RunState::try_from(attack.state), Ok(RunState::Succeeded));
    let probed = s.jobs().log_text(&attack.id).await.unwrap();
    assert!(probed.contains(&"done".to_string()), "{probed:?}");
    // The victim was still running throughout.
    assert!(
        crate::jobs::alive(&pid),
        "the victim ended before the probe did"
    );
    let attacker_uid = field(&probed, "uid");
    let victim_uid = std::fs::metadata(&dir).unwrap().uid().to_string();
    assert_ne!(attacker_uid, victim_uid, "both steps ran as one uid");
    let text = probed.join("\n");
    for marker in [
        "READ-ENVIRON",
        "LISTED-DIR",
        "READ-SCRIPT",
        "READ-MEM",
        "SIGNALLED",
        "LISTED-CWD",
        value.as_str(),
        "OPS_RUN_ID",
    ] {
        assert!(!text.contains(marker), "{marker} in:\n{text}");
    }
    let (victim_run, _) = s.jobs().finish(&victim_run.id, LIMIT).await.unwrap();
    assert_eq!(
        RunState::try_from(victim_run.state),
        Ok(RunState::Succeeded),
        "{}",
        victim_run.error
    );
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_runs_secret_is_never_in_any_process_arguments() {
    let s = Sandbox::start(StorageBackend::Sqlite).await;
    let value = format!("argv-secret-{}", uuid::Uuid::now_v7().simple());
    let credential = api_token(&s, "argv-token", &value).await;
    // Substituted into the script, used by commands, while the step runs a while.
    let mut j = job(
        "uses-a-secret",
        vec![shell(
            "use",
            "token={{ params.token }}\n\
             printf %s \"$token\" > /dev/null\n\
             echo uid=$(id -u)\n\
             echo dir=$PWD\n\
             echo ready\n\
             sleep 2\n\
             echo {{ params.token }} | wc -c",
        )],
    );
    j.parameters = vec![secret_param("token", &[&credential.id])];
    let j = s.jobs().create(j).await.unwrap();
    let run = s
        .jobs()
        .start(&j.id, &[("token", &credential.id)])
        .await
        .unwrap();
    let lines = lines_until(&s, &run.id, "ready").await;
    let uid: u32 = field(&lines, "uid").parse().unwrap();
    let dir = field(&lines, "dir").to_string();
    let holds = |bytes: &[u8]| bytes.windows(value.len()).any(|w| w == value.as_bytes());
    // Every process's arguments, while the step runs: never the secret.
    let all = processes();
    let step_processes: Vec<u32> = all.iter().filter(|p| p.1 == uid).map(|p| p.0).collect();
    assert!(!step_processes.is_empty(), "the step is not running");
    for (pid, _, args) in &all {
        assert!(
            !holds(args.join("\0").as_bytes()),
            "the secret is in the arguments of {pid}: {args:?}"
        );
    }
    // It is where it belongs, readable by root only: in the step's environment or its script.
    let in_environ = step_processes.iter().any(|pid| {
        std::fs::read(format!("/proc/{pid}/environ")).is_ok_and(|environ| holds(&environ))
    });
    let in_script =
        std::fs::read(format!("{dir}/.opsconductor-step.sh")).is_ok_and(|script| holds(&script));
    assert!(in_environ || in_script, "the step never got the secret");
    // And in no other process's environment.
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        if step_processes.contains(&pid) {
            continue;
        }
        if let Ok(environ) = std::fs::read(entry.path().join("environ")) {
            let owner = entry.metadata().map(|m| m.uid()).unwrap_or(0);
            assert!(
                !holds(&environ) || owner == uid,
                "the secret is in the environment of {pid}"
            );
        }
    }
    let (run, _) = s.jobs().finish(&run.id, LIMIT).await.unwrap();
    assert_eq!(
        RunState::try_from(run.state),
        Ok(RunState::Succeeded),
        "{}",
        run.error
    );
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn executor_capacity_bounds_the_runs_held_at_once() {
    let s = Sandbox::start_with(StorageBackend::Sqlite, &[("EXECUTOR_CAPACITY", "2")]).await;
    let j = s
        .jobs()
        .create(job("holds-a-slot", vec![shell("hold", "sleep 1")]))
        .await
        .unwrap();
    let mut runs = Vec::new();
    for _ in 0..5 {
        runs.push(s.jobs().start(&j.id, &[]).await.unwrap().id);
    }
    let mut spans = Vec::new();
    for id in &runs {
        let (run, _) = s.jobs().finish(id, LIMIT).await.unwrap();
        assert_eq!(
            RunState::try_from(run.state),
            Ok(RunState::Succeeded),
            "{}",
            run.error
        );
        let micros = |t: &prost_types::Timestamp| t.seconds * 1_000_000 + i64::from(t.nanos) / 1000;
        let step = &run.steps[0];
        spans.push((
            micros(step.start_time.as_ref().unwrap()),
            micros(step.end_time.as_ref().unwrap()),
        ));
    }
    // The most steps running at any one moment (a step's start is such a moment).
    let most = spans
        .iter()
        .map(|(start, _)| {
            spans
                .iter()
                .filter(|(a, b)| a <= start && start < b)
                .count()
        })
        .max()
        .unwrap();
    assert_eq!(most, 2, "steps at once with EXECUTOR_CAPACITY=2: {spans:?}");
    s.stop().await;
}
