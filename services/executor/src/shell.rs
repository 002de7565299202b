//! Shell steps: `/bin/sh` running the step's script file in a process group of its own, with a
//! scrubbed environment, contained as [`crate::contain`] says (a uid and a directory of its own
//! when the executor runs as root), killed if the executor dies. A timeout or a stop kills the
//! whole group (TERM, then KILL), and so does the end of the command; then everything running
//! as the attempt's uid is killed, so nothing it started in the background outlives the step.

use std::process::Stdio;
use std::time::Duration;

use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use opsconductor_api::jobs::v1::LogStream;
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::process::Command;
use tokio::sync::watch;

use crate::contain::{Containment, SCRIPT};
use crate::instance::Stop;
use crate::logs::{Origin, RunLog};

/// The only variables a step inherits besides its own (`OPS_*` and the step's `env`).
pub const PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Enters the attempt's directory `$1`, runs its script file with `/bin/sh` and exits with its
/// status; on SIGHUP (the executor died) kills the process group. The script is never an
/// argument: any local user can read every process's arguments.
const GUARD: &str = "cd \"$1\" || exit 125; trap 'kill -KILL 0' HUP; /bin/sh \"$2\" & wait $!";

/// The user steps run as (uid, gid, home), when the executor runs as root.
#[derive(Debug, Clone)]
pub struct StepUser {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
    pub home: String,
}

impl StepUser {
    pub fn lookup(name: &str) -> Result<StepUser, String> {
        match nix::unistd::User::from_name(name) {
            Ok(Some(user)) if user.uid.is_root() => Err(format!("{name} is root")),
            Ok(Some(user)) => Ok(StepUser {
                name: name.to_string(),
                uid: user.uid.as_raw(),
                gid: user.gid.as_raw(),
                home: user.dir.display().to_string(),
            }),
            Ok(None) => Err(format!("there is no user {name:?}")),
            Err(e) => Err(format!("looking up {name:?}: {e}")),
        }
    }
}

/// How a command ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Exit {
    Code(i32),
    /// Killed by a signal it did not ask for (not by us).
    Signal(i32),
    TimedOut,
    Stopped(Stop),
}

pub struct ShellCommand<'a> {
    pub script: &'a str,
    pub env: Vec<(String, String)>,
    pub timeout: Duration,
    pub contain: &'a std::sync::Arc<Containment>,
}

pub async fn run(
    command: ShellCommand<'_>,
    log: &RunLog,
    origin: &Origin,
    stop: &mut watch::Receiver<Stop>,
) -> Result<Exit, String> {
    // setpriv (util-linux) prepares the process before it execs the shell, with no unsafe
    // pre_exec here: the step user with no supplementary groups (when the executor is root),
    // no_new_privs so setuid binaries cannot raise privileges again, and a signal when the
    // executor dies so a step never runs on without it.
    // The attempt's identity and directory, the script in a 0600 file there (contain.rs).
    let mut cell = command.contain.enter(command.script).await?;
    let mut cmd = Command::new("setpriv");
    cmd.arg("--pdeathsig=HUP").arg("--no-new-privs");
    if let Some(id) = cell.identity() {
        cmd.arg(format!("--reuid={}", id.uid))
            .arg(format!("--regid={}", id.gid))
            .arg("--clear-groups");
    }
    cmd.arg("--").arg("/bin/sh");
    // The step's shell runs under a small parent that, on the death signal, kills the whole
    // process group: what the step started in the background dies with the executor too.
    cmd.arg("-c").arg(GUARD).arg("opsconductor-step");
    cmd.arg(cell.dir())
        .arg(format!("./{SCRIPT}"))
        .env_clear()
        .env("PATH", PATH)
        .env("LANG", "C.UTF-8")
        .env("HOME", cell.dir())
        .env("TMPDIR", cell.dir())
        .envs(command.env)
        // The guard enters the directory once it is the attempt's identity.
        .current_dir("/")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    let mut child = match cmd.spawn() {
        Ok(child) => child,
        Err(e) => {
            cell.leave().await;
            return Err(format!("the shell did not start: {e}"));
        }
    };
    let group = child.id().map(|id| Pid::from_raw(id as i32));
    let readers = [
        child
            .stdout
            .take()
            .map(|out| spawn_reader(out, log.clone(), origin.clone(), LogStream::Stdout)),
        child
            .stderr
            .take()
            .map(|err| spawn_reader(err, log.clone(), origin.clone(), LogStream::Stderr)),
    ];
    let exit = tokio::select! {
        status = child.wait() => {
            let status = status.map_err(|e| format!("waiting for the shell: {e}"))?;
            match status.code() {
                Some(code) => Exit::Code(code),
                None => Exit::Signal(std::os::unix::process::ExitStatusExt::signal(&status).unwrap_or(0)),
            }
        }
        _ = tokio::time::sleep(command.timeout) => Exit::TimedOut,
        why = stopped(stop) => Exit::Stopped(why),
    };
    if let Some(group) = group {
        if !matches!(exit, Exit::Code(_) | Exit::Signal(_)) {
            // Ask politely first: a step may clean up on TERM.
            let _ = killpg(group, Signal::SIGTERM);
            if tokio::time::timeout(Duration::from_millis(500), child.wait())
                .await
                .is_err()
            {
                let _ = killpg(group, Signal::SIGKILL);
            }
        }
        // Whatever the command left running in its group goes with it.
        let _ = killpg(group, Signal::SIGKILL);
    }
    let _ = child.wait().await;
    // And whatever it left running anywhere else, as its uid; then its directory.
    if let Some(problem) = cell.leave().await {
        log.system(origin, problem);
    }
    for mut reader in readers.into_iter().flatten() {
        // A process that left the group may hold the pipe open: do not wait for it forever,
        // nor read on for it.
        if tokio::time::timeout(Duration::from_secs(1), &mut reader)
            .await
            .is_err()
        {
            reader.abort();
            log.system(
                origin,
                "output still open after the step ended; no longer read",
            );
        }
    }
    Ok(exit)
}

/// Resolves when the run must stop, with why.
pub async fn stopped(stop: &mut watch::Receiver<Stop>) -> Stop {
    loop {
        let current = stop.borrow_and_update().clone();
        if current != Stop::No {
            return current;
        }
        if stop.changed().await.is_err() {
            // Nobody can stop us any more: never resolve.
            std::future::pending::<()>().await;
        }
    }
}

fn spawn_reader(
    mut pipe: impl AsyncRead + Unpin + Send + 'static,
    log: RunLog,
    origin: Origin,
    stream: LogStream,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut lines = log.lines(&origin, stream);
        // One read's worth at a time, and only while the log has room: a command that writes
        // faster than its log is sent waits on its pipe, and one without newlines cannot fill
        // memory (`Lines` keeps at most a line's worth).
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            log.room().await;
            match pipe.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => lines.push(&buf[..n]),
            }
        }
        lines.finish();
    })
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::logs::Limits;

    fn peak_rss_kib() -> u64 {
        std::fs::read_to_string("/proc/self/status")
            .unwrap()
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap()
    }

    /// The executor's side of 300 MB floods — the pipe, the line splitter, the masker, the
    /// pending lines — against a stand-in jobs service that takes every batch at once: its
    /// peak memory stays within a few MiB of where it started. A measurement (docs/benchmarks.md),
    /// run alone so that no other test shares the process:
    /// `cargo test -p opsconductor-executor --lib -- --ignored --nocapture a_flood_keeps`.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    #[ignore = "a measurement of the process's peak memory: run it alone"]
    async fn a_flood_keeps_the_executor_small() {
        let log = RunLog::new(1, Limits::default());
        log.add_secret("a-secret-to-mask");
        let sent = {
            let log = log.clone();
            tokio::spawn(async move {
                let mut sent = 0;
                loop {
                    sent += log.drain_for_test();
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    if sent > usize::MAX / 2 {
                        return sent;
                    }
                }
            })
        };
        let base = format!(
            "/tmp/opsconductor-flood-test-{}",
            uuid::Uuid::now_v7().simple()
        );
        let env = opsconductor_platform::config::Env::isolated([(
            "OPSCONDUCTOR_STEP_DIR",
            base.as_str(),
        )]);
        let contain = std::sync::Arc::new(Containment::from_env(&env).unwrap());
        let before = peak_rss_kib();
        let (_tx, mut stop) = watch::channel(Stop::No);
        for script in [
            "head -c 300000000 /dev/zero | tr '\\0' x",
            "yes xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx \
             | head -c 300000000",
            "yes \"$(head -c 20000 /dev/zero | tr '\\0' w)\" | head -c 300000000",
        ] {
            let started = std::time::Instant::now();
            let origin = Origin {
                step_name: "flood".into(),
                target_id: String::new(),
                attempt: 1,
            };
            let command = ShellCommand {
                script,
                env: Vec::new(),
                timeout: Duration::from_secs(300),
                contain: &contain,
            };
            let exit = run(command, &log, &origin, &mut stop).await.unwrap();
            assert_eq!(exit, Exit::Code(0));
            let output = log.take_output(&origin);
            assert!(output.len() <= crate::logs::MAX_OUTPUT_BYTES);
            eprintln!(
                "{script}: {:?}, peak RSS {} KiB (started at {before} KiB)",
                started.elapsed(),
                peak_rss_kib()
            );
        }
        assert!(log.finish());
        sent.abort();
        let grown = peak_rss_kib() - before;
        assert!(grown < 32 * 1024, "the peak grew by {grown} KiB");
    }
}
