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
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, BufReader};
use tokio::process::Command;
use tokio::sync::watch;

use crate::contain::{Containment, SCRIPT};
use crate::instance::Stop;
use crate::logs::{Origin, RunLog, MAX_LINE_BYTES};

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
    for reader in readers.into_iter().flatten() {
        // A process that left the group may hold the pipe open: do not wait for it forever.
        if tokio::time::timeout(Duration::from_secs(1), reader)
            .await
            .is_err()
        {
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
    pipe: impl AsyncRead + Unpin + Send + 'static,
    log: RunLog,
    origin: Origin,
    stream: LogStream,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut reader = BufReader::with_capacity(64 * 1024, pipe);
        let mut line = Vec::new();
        loop {
            line.clear();
            // At most a line's worth at a time: a command without newlines cannot fill memory.
            let mut limited = (&mut reader).take(MAX_LINE_BYTES as u64);
            match limited.read_until(b'\n', &mut line).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {
                    while matches!(line.last(), Some(b'\n' | b'\r')) {
                        line.pop();
                    }
                    log.write(&origin, stream, &String::from_utf8_lossy(&line));
                }
            }
        }
    })
}
