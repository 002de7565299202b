//! Containment of shell steps: each attempt gets a working directory of its own and, when the
//! executor runs as root, an identity of its own, so that when the attempt ends everything it
//! started is gone and no other step could read its environment, its directory or its script.
//!
//! - **Identity**: a uid leased from `OPSCONDUCTOR_STEP_UIDS` for one attempt at a time (the
//!   group is `OPSCONDUCTOR_STEP_USER`'s primary group, no supplementary groups). Numeric ids
//!   need no `/etc/passwd` entry; an id that has one is never used. A uid is leased host-wide
//!   with `flock` on a file under the step directory, so executors sharing a host (and the
//!   executors of one test process) never share one, and a crashed executor's leases free
//!   themselves. Before a uid is first used, and after every attempt, everything running as
//!   it is killed: `kill(-1, SIGKILL)` sent *as that uid* reaches exactly its processes
//!   (`setsid`, double forks and `nohup` included) and the kernel does it under the task list
//!   lock, so a fork cannot slip past it; `/proc` is then checked until none is left.
//! - **Directory**: `<OPSCONDUCTOR_STEP_DIR>/<uid>-<unique>`, 0700, owned by the attempt's
//!   identity; the step's cwd, `HOME` and `TMPDIR`; removed after the attempt.
//! - **Script**: written to a 0600 file in that directory and run as `/bin/sh FILE`: the
//!   rendered script (and whatever a template put into it) is never a process argument,
//!   which any local user could read in `/proc/*/cmdline`.
//!
//! An executor that is not root cannot switch users: its steps run as its own user, killed by
//! process group only, and readable by one another. It says so at start-up (a warning).

use std::collections::HashSet;
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::fcntl::{Flock, FlockArg};
use opsconductor_platform::config::{ConfigError, Env};
use tokio::process::Command;

use crate::shell::StepUser;

/// The uids steps run as unless configured: far above regular accounts (1000–60000), systemd's
/// dynamic users (61184–65519) and its container range (524288–1879048191), below 2^31.
pub(crate) const DEFAULT_UIDS: (u32, u32) = (2_000_000_000, 2_000_065_535);

/// The script's file name in the attempt's directory.
pub(crate) const SCRIPT: &str = ".opsconductor-step.sh";

/// How long leftovers may take to die after SIGKILL before a uid is put aside.
const KILL_PATIENCE: Duration = Duration::from_secs(5);

/// An identity a step runs as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Identity {
    pub uid: u32,
    pub gid: u32,
}

/// How steps are contained, fixed at start-up.
#[derive(Debug)]
pub struct Containment {
    base: PathBuf,
    mode: Mode,
}

#[derive(Debug)]
enum Mode {
    /// Root: a uid per attempt from `first..=last`.
    Uids {
        first: u32,
        last: u32,
        gid: u32,
        /// Leased uids not in use, each with its lock.
        free: Mutex<Vec<Lease>>,
    },
    /// Not root: steps run as the executor's own user.
    Shared,
}

/// A uid this executor holds (the lock is released when dropped, or when the process dies).
#[derive(Debug)]
struct Lease {
    uid: u32,
    _lock: Flock<File>,
}

impl Containment {
    /// Reads `OPSCONDUCTOR_STEP_DIR`, `OPSCONDUCTOR_STEP_UIDS` and `OPSCONDUCTOR_STEP_USER`
    /// (docs/configuration.md), and prepares the step directory.
    pub fn from_env(env: &Env) -> Result<Containment, ConfigError> {
        let euid = nix::unistd::geteuid().as_raw();
        let root = euid == 0;
        let base = PathBuf::from(
            env.get("OPSCONDUCTOR_STEP_DIR")
                .unwrap_or_else(|| format!("/tmp/opsconductor-steps-{euid}")),
        );
        let mode = if root {
            let name = env.get("OPSCONDUCTOR_STEP_USER").unwrap_or("nobody".into());
            let user = StepUser::lookup(&name)
                .map_err(|e| ConfigError::invalid("OPSCONDUCTOR_STEP_USER", &name, e))?;
            let raw = env.get("OPSCONDUCTOR_STEP_UIDS");
            let (first, last) = match &raw {
                None => DEFAULT_UIDS,
                Some(raw) => parse_range(raw)
                    .map_err(|e| ConfigError::invalid("OPSCONDUCTOR_STEP_UIDS", raw, e))?,
            };
            let shown = raw.unwrap_or_else(|| format!("{first}-{last}"));
            check_range(first, last)
                .map_err(|e| ConfigError::invalid("OPSCONDUCTOR_STEP_UIDS", &shown, e))?;
            Mode::Uids {
                first,
                last,
                gid: user.gid,
                free: Mutex::new(Vec::new()),
            }
        } else {
            if let Some(name) = env.get("OPSCONDUCTOR_STEP_USER") {
                return Err(ConfigError::invalid(
                    "OPSCONDUCTOR_STEP_USER",
                    &name,
                    "switching users needs the executor to run as root; unset it to run steps as the executor's own user",
                ));
            }
            if let Some(raw) = env.get("OPSCONDUCTOR_STEP_UIDS") {
                return Err(ConfigError::invalid(
                    "OPSCONDUCTOR_STEP_UIDS",
                    &raw,
                    "a uid per step needs the executor to run as root",
                ));
            }
            Mode::Shared
        };
        prepare_base(&base, root).map_err(|e| {
            ConfigError::invalid("OPSCONDUCTOR_STEP_DIR", &base.display().to_string(), e)
        })?;
        Ok(Containment { base, mode })
    }

    /// Says, once at start-up, what isolation steps have: loudly when it is little.
    pub fn announce(&self) {
        match &self.mode {
            Mode::Uids {
                first, last, gid, ..
            } => tracing::info!(
                uids = %format!("{first}-{last}"),
                gid,
                dir = %self.base.display(),
                "shell steps are contained: a uid of their own per attempt, everything running as it killed when the attempt ends, a private working directory, the script in a 0600 file"
            ),
            Mode::Shared => tracing::warn!(
                uid = nix::unistd::geteuid().as_raw(),
                dir = %self.base.display(),
                "the executor is not root: shell steps run as its own user and are NOT contained — a step can read the environment (and secrets) of other steps and of the executor, and what it starts outside its process group outlives it; run the executor as root to contain steps"
            ),
        }
    }

    /// Prepares one attempt: an identity, its directory, and `script` in it.
    pub async fn enter(self: &Arc<Self>, script: &str) -> Result<Cell, String> {
        let lease = match &self.mode {
            Mode::Uids { .. } => Some(self.lease().await?),
            Mode::Shared => None,
        };
        let identity = lease.as_ref().map(|l| self.identity(l.uid));
        let name = format!(
            "{}-{}",
            identity.map(|i| i.uid).unwrap_or(0),
            uuid::Uuid::now_v7().simple()
        );
        let dir = self.base.join(name);
        let mut cell = Cell {
            containment: self.clone(),
            dir,
            lease,
            identity,
            left: false,
        };
        if let Err(e) = write_cell(&cell.dir, script, identity) {
            cell.leave().await;
            return Err(format!("the step's directory could not be prepared: {e}"));
        }
        Ok(cell)
    }

    fn identity(&self, uid: u32) -> Identity {
        match &self.mode {
            Mode::Uids { gid, .. } => Identity { uid, gid: *gid },
            Mode::Shared => Identity {
                uid: nix::unistd::geteuid().as_raw(),
                gid: nix::unistd::getegid().as_raw(),
            },
        }
    }

    /// A free uid: one this executor already holds, or a new lease from the range (cleared
    /// of whatever a crashed holder left behind before it is used).
    async fn lease(&self) -> Result<Lease, String> {
        let Mode::Uids {
            first, last, free, ..
        } = &self.mode
        else {
            return Err("no uids to lease".into());
        };
        if let Some(lease) = free.lock().unwrap_or_else(|p| p.into_inner()).pop() {
            return Ok(lease);
        }
        let locks = self.base.join(".uids");
        let span = u64::from(*last - *first) + 1;
        let start = (uuid::Uuid::now_v7().as_u128() as u64) % span;
        for i in 0..span {
            let uid = *first + ((start + i) % span) as u32;
            // An id with an account is someone's: never run steps as it.
            if matches!(nix::unistd::User::from_uid(uid.into()), Ok(Some(_))) {
                tracing::warn!(
                    uid,
                    "a uid of OPSCONDUCTOR_STEP_UIDS has an account; skipped"
                );
                continue;
            }
            let file = OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .mode(0o600)
                .open(locks.join(uid.to_string()))
                .map_err(|e| format!("opening the lease of uid {uid}: {e}"))?;
            let Ok(lock) = Flock::lock(file, FlockArg::LockExclusiveNonblock) else {
                continue;
            };
            let identity = self.identity(uid);
            kill_all(identity).await?;
            self.remove_stale(uid, identity).await;
            return Ok(Lease { uid, _lock: lock });
        }
        Err("every uid of OPSCONDUCTOR_STEP_UIDS is in use".into())
    }

    /// Directories a crashed holder of `uid` left behind.
    async fn remove_stale(&self, uid: u32, identity: Identity) {
        let prefix = format!("{uid}-");
        let Ok(entries) = fs::read_dir(&self.base) else {
            return;
        };
        for entry in entries.flatten() {
            if entry.file_name().to_string_lossy().starts_with(&prefix) {
                let _ = remove_dir(&entry.path(), Some(identity)).await;
            }
        }
    }
}

/// One attempt's containment. [`Cell::leave`] ends it; dropping it without does so in the
/// background.
#[derive(Debug)]
pub struct Cell {
    containment: Arc<Containment>,
    dir: PathBuf,
    lease: Option<Lease>,
    identity: Option<Identity>,
    left: bool,
}

impl Cell {
    /// The identity to switch to; `None` when the executor cannot switch.
    pub fn identity(&self) -> Option<Identity> {
        self.identity
    }

    /// The working directory (also `HOME` and `TMPDIR`).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Ends the attempt: kills everything running as its identity, removes its directory and
    /// gives the identity back. Returns what could not be done (for the run's log).
    pub async fn leave(&mut self) -> Option<String> {
        self.left = true;
        let mut problem = None;
        if let Some(identity) = self.identity.filter(|_| self.lease.is_some()) {
            if let Err(e) = kill_all(identity).await {
                // Never hand this uid to another step: keep its lease until the process ends.
                tracing::error!(uid = identity.uid, error = %e, "a step's processes survived; its uid is put aside");
                std::mem::forget(self.lease.take());
                problem = Some(e);
            }
        }
        if let Err(e) = remove_dir(&self.dir, self.identity.filter(|_| self.lease.is_some())).await
        {
            tracing::warn!(dir = %self.dir.display(), error = %e, "a step's directory could not be removed");
            problem.get_or_insert(format!("the step's directory could not be removed: {e}"));
        }
        if let (Some(lease), Mode::Uids { free, .. }) = (self.lease.take(), &self.containment.mode)
        {
            free.lock().unwrap_or_else(|p| p.into_inner()).push(lease);
        }
        problem
    }
}

impl Drop for Cell {
    fn drop(&mut self) {
        if self.left {
            return;
        }
        // The attempt was abandoned (its task dropped): clean up in the background. The moved
        // cell is marked left, so that if the runtime is shutting down and drops the task
        // unrun, dropping it does not spawn again (an endless recursion).
        let mut cell = Cell {
            containment: self.containment.clone(),
            dir: std::mem::take(&mut self.dir),
            lease: self.lease.take(),
            identity: self.identity,
            left: true,
        };
        self.left = true;
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                cell.leave().await;
            });
        }
    }
}

/// `first-last`, inclusive.
fn parse_range(raw: &str) -> Result<(u32, u32), String> {
    let (a, b) = raw
        .trim()
        .split_once('-')
        .ok_or("expected FIRST-LAST, e.g. 2000000000-2000065535")?;
    let first: u32 = a.trim().parse().map_err(|e| format!("{a:?}: {e}"))?;
    let last: u32 = b.trim().parse().map_err(|e| format!("{b:?}: {e}"))?;
    Ok((first, last))
}

/// A range steps can run as: not root, not the executor, inside this user namespace's map, and
/// not overlapping the host's subordinate ids (rootless containers' users).
fn check_range(first: u32, last: u32) -> Result<(), String> {
    if first == 0 || last < first || last >= i32::MAX as u32 {
        return Err("must be FIRST-LAST with 0 < FIRST <= LAST < 2147483647".into());
    }
    if let Ok(map) = fs::read_to_string("/proc/self/uid_map") {
        let inside = map.lines().any(|line| {
            let f: Vec<u64> = line
                .split_whitespace()
                .filter_map(|n| n.parse().ok())
                .collect();
            f.len() == 3 && f[0] <= u64::from(first) && u64::from(last) < f[0] + f[2]
        });
        if !inside {
            return Err(format!(
                "not inside this user namespace's uid map ({}); pick a range it maps",
                map.split_whitespace().collect::<Vec<_>>().join(" ")
            ));
        }
    }
    for file in ["/etc/subuid", "/etc/subgid"] {
        for line in fs::read_to_string(file).unwrap_or_default().lines() {
            let f: Vec<&str> = line.split(':').collect();
            if let [owner, start, count] = f[..] {
                if let (Ok(s), Ok(c)) = (start.parse::<u64>(), count.parse::<u64>()) {
                    if s <= u64::from(last) && u64::from(first) < s + c {
                        return Err(format!(
                            "overlaps {owner}'s subordinate ids in {file} ({s}+{c})"
                        ));
                    }
                }
            }
        }
    }
    for uid in [first, last] {
        if let Ok(Some(user)) = nix::unistd::User::from_uid(uid.into()) {
            return Err(format!("uid {uid} is the account {:?}", user.name));
        }
    }
    Ok(())
}

/// The step directory: ours, not a symlink, writable by us only; traversable by step uids
/// (root) so each reaches its own 0700 directory inside, but not listable.
fn prepare_base(base: &Path, root: bool) -> Result<(), String> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(base)
        .map_err(|e| format!("creating it: {e}"))?;
    let meta = fs::symlink_metadata(base).map_err(|e| e.to_string())?;
    use std::os::unix::fs::MetadataExt;
    if !meta.is_dir() || meta.uid() != nix::unistd::geteuid().as_raw() {
        return Err("exists and is not a directory the executor owns".into());
    }
    let mode = if root { 0o711 } else { 0o700 };
    fs::set_permissions(base, fs::Permissions::from_mode(mode)).map_err(|e| e.to_string())?;
    let locks = base.join(".uids");
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&locks)
        .map_err(|e| format!("creating {}: {e}", locks.display()))?;
    Ok(())
}

/// The attempt's directory (0700) and script (0600), then both handed to its identity.
fn write_cell(dir: &Path, script: &str, identity: Option<Identity>) -> std::io::Result<()> {
    fs::DirBuilder::new().mode(0o700).create(dir)?;
    fs::set_permissions(dir, fs::Permissions::from_mode(0o700))?;
    let mut file = OpenOptions::new()
        .create_new(true)
        .write(true)
        .mode(0o600)
        .open(dir.join(SCRIPT))?;
    file.write_all(script.as_bytes())?;
    if let Some(id) = identity {
        std::os::unix::fs::fchown(&file, Some(id.uid), Some(id.gid))?;
        std::os::unix::fs::chown(dir, Some(id.uid), Some(id.gid))?;
    }
    Ok(())
}

/// Removes an attempt's directory once nothing runs as its owner: directly when the executor
/// may (root with `CAP_DAC_OVERRIDE`, or its own user), else its contents as its owner.
async fn remove_dir(dir: &Path, owner: Option<Identity>) -> Result<(), String> {
    if dir.as_os_str().is_empty() {
        return Ok(());
    }
    match fs::remove_dir_all(dir) {
        Ok(()) => return Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) if owner.is_none() => return Err(e.to_string()),
        Err(_) => {}
    }
    if let Some(owner) = owner {
        let _ = as_identity(
            owner,
            "chmod -R u+rwx -- \"$1\" 2>/dev/null; rm -rf -- \"$1\"/* \"$1\"/.[!.]* \"$1\"/..?*",
            Some(dir),
        )
        .await;
    }
    fs::remove_dir(dir).map_err(|e| e.to_string())
}

/// Kills every process running as `identity.uid` and waits until `/proc` shows none.
pub async fn kill_all(identity: Identity) -> Result<(), String> {
    // Usually the step's own group took everything with it: with nothing of the uid in `/proc`
    // (a process forking is there as its parent), the clean-up process — two execs, most of
    // what containment cost a step — is not needed.
    if processes_of(identity.uid).is_empty() {
        return Ok(());
    }
    let started = Instant::now();
    loop {
        // As the uid itself: kill(-1) then reaches exactly its processes (never the caller).
        as_identity(identity, "kill -KILL -1 2>/dev/null; exit 0", None).await?;
        let mut wait = Duration::from_millis(1);
        loop {
            if processes_of(identity.uid).is_empty() {
                return Ok(());
            }
            if started.elapsed() > KILL_PATIENCE {
                return Err(format!(
                    "processes of uid {} survived SIGKILL: {:?}",
                    identity.uid,
                    processes_of(identity.uid)
                ));
            }
            tokio::time::sleep(wait).await;
            wait = (wait * 2).min(Duration::from_millis(50));
            if wait == Duration::from_millis(50) {
                // Still there: something forked or was between states; send it again.
                break;
            }
        }
    }
}

/// Runs `/bin/sh -c script` as `identity`, with `dir` as `$1`.
async fn as_identity(identity: Identity, script: &str, dir: Option<&Path>) -> Result<(), String> {
    let mut cmd = Command::new("setpriv");
    cmd.arg("--no-new-privs")
        .arg(format!("--reuid={}", identity.uid))
        .arg(format!("--regid={}", identity.gid))
        .arg("--clear-groups")
        .arg("--")
        .arg("/bin/sh")
        .arg("-c")
        .arg(script)
        .arg("opsconductor-cleanup");
    if let Some(dir) = dir {
        cmd.arg(dir);
    }
    let status = cmd
        .env_clear()
        .env("PATH", crate::shell::PATH)
        .current_dir("/")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .status()
        .await
        .map_err(|e| format!("setpriv did not start: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!(
            "cleaning up as uid {} failed: {status}",
            identity.uid
        ))
    }
}

/// Live processes whose real, effective, saved or filesystem uid is `uid` (zombies are dead:
/// they only wait for their parent to reap them).
pub fn processes_of(uid: u32) -> Vec<u32> {
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    let wanted = uid.to_string();
    let mut found = Vec::new();
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(status) = fs::read_to_string(entry.path().join("status")) else {
            continue;
        };
        let mut dead = false;
        let mut ids = HashSet::new();
        for line in status.lines() {
            if let Some(state) = line.strip_prefix("State:") {
                dead = matches!(state.trim_start().chars().next(), Some('Z' | 'X'));
            } else if let Some(uids) = line.strip_prefix("Uid:") {
                ids.extend(uids.split_whitespace().map(str::to_string));
                break;
            }
        }
        if !dead && ids.contains(&wanted) {
            found.push(pid);
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_parse_and_bad_ones_are_refused() {
        assert_eq!(
            parse_range("2000000000-2000000009"),
            Ok((2_000_000_000, 2_000_000_009))
        );
        assert_eq!(parse_range(" 5 - 6 "), Ok((5, 6)));
        for bad in ["", "5", "a-b", "5-", "-5", "1-99999999999"] {
            assert!(parse_range(bad).is_err(), "{bad}");
        }
        for (first, last) in [(0, 10), (10, 9), (5, u32::MAX), (1, i32::MAX as u32)] {
            assert!(check_range(first, last).is_err(), "{first}-{last}");
        }
        assert_eq!(check_range(DEFAULT_UIDS.0, DEFAULT_UIDS.1), Ok(()));
        // A range holding an account's uid is someone's.
        if let Ok(Some(nobody)) = nix::unistd::User::from_name("nobody") {
            let uid = nobody.uid.as_raw();
            assert!(check_range(uid, uid).is_err());
        }
    }

    /// A step abandoned while the runtime shuts down: its cell's clean-up task is dropped unrun,
    /// and dropping it must not spawn another (it used to, endlessly, until the stack overflowed).
    #[test]
    fn a_cell_dropped_as_the_runtime_shuts_down_does_not_recurse() {
        let base = format!(
            "/tmp/opsconductor-contain-test-{}",
            uuid::Uuid::now_v7().simple()
        );
        let env = Env::isolated([("OPSCONDUCTOR_STEP_DIR", base.as_str())]);
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            let contain = Arc::new(Containment::from_env(&env).unwrap());
            let cell = contain.enter("true").await.unwrap();
            // Held by a task that never ends, so the runtime's shutdown drops it.
            tokio::spawn(async move {
                let _cell = cell;
                std::future::pending::<()>().await;
            });
            tokio::task::yield_now().await;
        });
        drop(runtime);
        let _ = std::fs::remove_dir_all(&base);
    }

    /// Real processes through `shell::run`, as the runner calls it: as root, the uid mode
    /// (leftovers killed); otherwise (development) the executor's own uid, its directory
    /// private and removed all the same.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_contained_step_leaves_nothing_behind() {
        let root = nix::unistd::geteuid().is_root();
        let base = format!(
            "/tmp/opsconductor-contain-test-{}",
            uuid::Uuid::now_v7().simple()
        );
        let mut env = Env::isolated([("OPSCONDUCTOR_STEP_DIR", base.as_str())]);
        if root {
            env = env.with("OPSCONDUCTOR_STEP_UIDS", "2000100000-2000100999");
        }
        let contain = Arc::new(Containment::from_env(&env).unwrap());
        let log = crate::logs::RunLog::new(1, crate::logs::Limits::default());
        let origin = crate::logs::Origin {
            step_name: "contained".into(),
            ..Default::default()
        };
        let (_tx, mut stop) = tokio::sync::watch::channel(crate::instance::Stop::No);
        let n = uuid::Uuid::now_v7().as_u128() % 1_000_000;
        let script = if root {
            format!(
                "setsid sleep 97{n}1 &\nsh -c 'sleep 97{n}2 &'\nnohup sleep 97{n}3 >/dev/null 2>&1 &\n\
                 echo $(id -u) $PWD $(stat -c %a $PWD)"
            )
        } else {
            "echo $(id -u) $PWD $(stat -c %a $PWD)".to_string()
        };
        let started = Instant::now();
        let exit = crate::shell::run(
            crate::shell::ShellCommand {
                script: &script,
                env: Vec::new(),
                timeout: Duration::from_secs(10),
                contain: &contain,
            },
            &log,
            &origin,
            &mut stop,
        )
        .await
        .unwrap();
        let took = started.elapsed();
        assert_eq!(exit, crate::shell::Exit::Code(0));
        let output = log.take_output(&origin);
        let fields: Vec<&str> = output.split_whitespace().collect();
        let [uid, dir, mode] = fields[..] else {
            panic!("{output:?}")
        };
        let uid: u32 = uid.parse().unwrap();
        assert_eq!(mode, "700");
        assert!(dir.starts_with(&base), "{dir}");
        assert!(!Path::new(dir).exists(), "{dir} was not removed");
        if !root {
            assert_eq!(uid, nix::unistd::geteuid().as_raw());
            let _ = fs::remove_dir_all(&base);
            return;
        }
        assert!((2_000_100_000..=2_000_100_999).contains(&uid), "{uid}");
        assert_eq!(processes_of(uid), Vec::<u32>::new(), "left running");
        // The uid goes back to the pool for the next attempt.
        let Mode::Uids { free, .. } = &contain.mode else {
            panic!("not root")
        };
        assert_eq!(free.lock().unwrap().len(), 1);
        eprintln!("a contained `sh` step with three leftovers took {took:?}");
        let _ = fs::remove_dir_all(&base);
    }

    #[test]
    fn this_process_is_found_by_its_uid_and_an_unused_uid_has_none() {
        let me = nix::unistd::geteuid().as_raw();
        assert!(processes_of(me).contains(&std::process::id()));
        assert!(processes_of(DEFAULT_UIDS.1 - 7).is_empty());
    }
}
