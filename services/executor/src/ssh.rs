//! SSH steps with russh: the target's host key checked against its pinned `SHA256:`
//! fingerprint (never trusted on first use), password or key authentication with a credential
//! revealed for this run and target, the command's output streamed, and a wrapper on the remote
//! side so the command cannot outlive the step: it runs in a process group of its own, and a
//! watcher kills that group as soon as the channel's input closes — which is what a timeout, a
//! cancel or a lost connection does.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use opsconductor_api::jobs::v1::LogStream;
use opsconductor_template::shell_quote;
use russh::keys::{HashAlg, PrivateKey, PrivateKeyWithHashAlg, PublicKey};
use russh::{client, ChannelMsg, Disconnect, Sig};
use tokio::sync::watch;
use zeroize::Zeroizing;

use crate::instance::Stop;
use crate::logs::{Origin, RunLog};
use crate::shell::stopped;

/// How the executor logs in.
pub enum Login {
    Password(Zeroizing<String>),
    Key(Arc<PrivateKey>),
}

/// Why secret material does not turn into a login (the credential kind is wrong, or the key
/// does not decode).
pub fn key_login(pem: &str, passphrase: &str) -> Result<Login, String> {
    let passphrase = (!passphrase.is_empty()).then_some(passphrase);
    russh::keys::decode_secret_key(pem, passphrase)
        .map(|key| Login::Key(Arc::new(key)))
        .map_err(|e| format!("the SSH key does not decode: {e}"))
}

pub struct SshCommand<'a> {
    pub address: &'a str,
    pub port: u16,
    pub fingerprint: &'a str,
    pub username: &'a str,
    pub login: Login,
    pub command: &'a str,
    /// `(name, value)` for each variable the command refers to (see [`wrap`]).
    pub vars: &'a [(String, String)],
    pub timeout: Duration,
}

/// How a remote command ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Exit {
    Code(u32),
    Signal(String),
    /// The channel closed without an exit status.
    Vanished,
    TimedOut,
    Stopped(Stop),
}

/// Checks the server's key against the pinned fingerprint and remembers what it saw.
struct Pinned {
    expected: String,
    seen: Arc<Mutex<Option<String>>>,
}

impl client::Handler for Pinned {
    type Error = russh::Error;

    async fn check_server_key(&mut self, key: &PublicKey) -> Result<bool, Self::Error> {
        let seen = key.fingerprint(HashAlg::Sha256).to_string();
        let matches = seen == self.expected;
        *self.seen.lock().unwrap_or_else(|p| p.into_inner()) = Some(seen);
        Ok(matches)
    }
}

/// What goes to the remote side for a command: the exec request, and the bytes sent first on
/// the channel's input.
pub struct Wrapped {
    pub exec: String,
    pub input: Vec<u8>,
}

/// `command` wrapped for the remote shell: run in its own process group (job control on) with
/// no input, while a watcher holds the channel's input and kills the group when it closes.
/// The template's values never appear in the exec request (nor so in any remote process's
/// argv): they are `export OPS_P_n='…'` lines the platform writes (each value single-quoted,
/// `'` as `'\''`) and sends first on the channel's input; the wrapper reads exactly that many
/// bytes (its count is the only thing in the request) and evaluates them, so the command,
/// which only refers to the variables, finds them in its environment.
pub fn wrap(command: &str, vars: &[(String, String)]) -> Wrapped {
    let mut assignments = String::new();
    for (name, value) in vars {
        // Names are the platform's own (OPS_P_<n>); anything else would be a bug, not input.
        if name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
            assignments.push_str("export ");
            assignments.push_str(name);
            assignments.push('=');
            assignments.push_str(&shell_quote(value));
            assignments.push('\n');
        }
    }
    let script = "set -m; if [ \"$2\" -gt 0 ]; then \
                  ops_vars=$(dd bs=1 count=\"$2\" 2>/dev/null) || exit 125; \
                  eval \"$ops_vars\"; unset ops_vars; fi; \
                  exec 3<&0; sh -c \"$1\" </dev/null & child=$!; \
                  (while read -r _; do :; done; kill -TERM -$child 2>/dev/null; sleep 1; \
                  kill -KILL -$child 2>/dev/null) <&3 >/dev/null 2>&1 & exec 3<&-; \
                  wait $child";
    Wrapped {
        exec: format!(
            "sh -c {} opsconductor {} {}",
            shell_quote(script),
            shell_quote(command),
            assignments.len()
        ),
        input: assignments.into_bytes(),
    }
}

pub async fn run(
    command: SshCommand<'_>,
    log: &RunLog,
    origin: &Origin,
    stop: &mut watch::Receiver<Stop>,
) -> Result<Exit, String> {
    let deadline = tokio::time::Instant::now() + command.timeout;
    let seen = Arc::new(Mutex::new(None));
    let handler = Pinned {
        expected: command.fingerprint.to_string(),
        seen: seen.clone(),
    };
    let config = Arc::new(client::Config {
        inactivity_timeout: None,
        keepalive_interval: Some(Duration::from_secs(15)),
        keepalive_max: 4,
        nodelay: true,
        ..client::Config::default()
    });
    let address = (command.address, command.port);
    let connecting = tokio::time::timeout_at(deadline, client::connect(config, address, handler));
    let mut session = tokio::select! {
        connected = connecting => match connected {
            Err(_) => return Ok(Exit::TimedOut),
            Ok(Ok(session)) => session,
            Ok(Err(russh::Error::UnknownKey)) => {
                let seen = seen.lock().unwrap_or_else(|p| p.into_inner()).clone().unwrap_or_default();
                return Err(format!(
                    "the host key of {}:{} is {seen}, not the pinned {}: refusing to connect",
                    command.address, command.port, command.fingerprint
                ));
            }
            Ok(Err(e)) => return Err(format!("connecting to {}:{} failed: {e}", command.address, command.port)),
        },
        why = stopped(stop) => return Ok(Exit::Stopped(why)),
    };
    let authenticated = match &command.login {
        Login::Password(password) => session
            .authenticate_password(command.username, password.as_str())
            .await
            .map(|r| r.success()),
        Login::Key(key) => {
            let hash = session
                .best_supported_rsa_hash()
                .await
                .ok()
                .flatten()
                .flatten();
            session
                .authenticate_publickey(
                    command.username,
                    PrivateKeyWithHashAlg::new(key.clone(), hash),
                )
                .await
                .map(|r| r.success())
        }
    };
    match authenticated {
        Ok(true) => {}
        Ok(false) => {
            return Err(format!(
                "{}@{} refused the credential",
                command.username, command.address
            ))
        }
        Err(e) => return Err(format!("authenticating failed: {e}")),
    }
    let mut channel = session
        .channel_open_session()
        .await
        .map_err(|e| format!("opening a session failed: {e}"))?;
    let wrapped = wrap(command.command, command.vars);
    channel
        .exec(true, wrapped.exec)
        .await
        .map_err(|e| format!("starting the command failed: {e}"))?;
    if !wrapped.input.is_empty() {
        channel
            .data(&wrapped.input[..])
            .await
            .map_err(|e| format!("sending the command's values failed: {e}"))?;
    }
    log.system(
        origin,
        format!(
            "running on {}@{}:{}",
            command.username, command.address, command.port
        ),
    );
    let mut out = log.lines(origin, LogStream::Stdout);
    let mut err = log.lines(origin, LogStream::Stderr);
    let mut status = None;
    let ended = loop {
        // Read on only while the log has room: the channel's window then stops the target.
        tokio::select! {
            _ = log.room() => {}
            _ = tokio::time::sleep_until(deadline) => break Exit::TimedOut,
            why = stopped(stop) => break Exit::Stopped(why),
        }
        tokio::select! {
            msg = channel.wait() => match msg {
                Some(ChannelMsg::Data { data }) => out.push(&data),
                Some(ChannelMsg::ExtendedData { data, ext: 1 }) => err.push(&data),
                Some(ChannelMsg::ExitStatus { exit_status }) => status = Some(Exit::Code(exit_status)),
                Some(ChannelMsg::ExitSignal { signal_name, .. }) => status = Some(Exit::Signal(format!("{signal_name:?}"))),
                Some(_) => {}
                None => break status.clone().unwrap_or(Exit::Vanished),
            },
            _ = tokio::time::sleep_until(deadline) => break Exit::TimedOut,
            why = stopped(stop) => break Exit::Stopped(why),
        }
    };
    if matches!(ended, Exit::TimedOut | Exit::Stopped(_)) {
        // TERM to the remote shell, then close its input: the watcher kills the group.
        let _ = channel.signal(Sig::TERM).await;
        let _ = channel.eof().await;
        let _ = tokio::time::timeout(Duration::from_secs(2), async {
            while channel.wait().await.is_some() {}
        })
        .await;
    }
    let _ = channel.close().await;
    out.finish();
    err.finish();
    let _ = session
        .disconnect(Disconnect::ByApplication, "", "en")
        .await;
    Ok(ended)
}

#[cfg(test)]
mod tests {
    /// The wrapper hands the command to a shell as one argument: it runs as it was written.
    #[test]
    fn the_wrapper_runs_the_command_unchanged() {
        let command = "printf '%s|' \"a b\" 'c'\"'\"'d'; exit 7";
        let out = std::process::Command::new("/bin/sh")
            .arg("-c")
            .arg(super::wrap(command, &[]).exec)
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap();
        assert_eq!(String::from_utf8_lossy(&out.stdout), "a b|c'd|");
        assert_eq!(out.status.code(), Some(7));
    }

    /// Values arrive on the input, as assignments the platform writes: whatever they hold, the
    /// command reads them back exactly, nothing in them runs, and none is in the exec request.
    #[test]
    fn values_travel_on_the_input_and_arrive_exactly() {
        use std::io::{Read, Write};
        let dir = std::env::temp_dir().join(format!("oc-wrap-{}", std::process::id()));
        let marker = dir.display().to_string();
        let values = [
            format!("'; touch {marker}; '"),
            format!("$(touch {marker})\n`touch {marker}`\n\n"),
            "\"'\\'\"".to_string(),
            "-oProxyCommand=x".to_string(),
            "x".repeat(100_000),
            String::new(),
        ];
        for value in values {
            let vars = vec![
                ("OPS_P_0".to_string(), value.clone()),
                ("OPS_P_1".to_string(), "second".to_string()),
            ];
            let wrapped = super::wrap(r#"printf '%s|%s' "${OPS_P_0}" "${OPS_P_1}""#, &vars);
            assert!(!wrapped.exec.contains("second"), "no value in the request");
            // The remote login shell may be dash or bash.
            for shell in ["/bin/sh", "bash"] {
                let mut child = std::process::Command::new(shell)
                    .arg("-c")
                    .arg(&wrapped.exec)
                    .stdin(std::process::Stdio::piped())
                    .stdout(std::process::Stdio::piped())
                    .spawn()
                    .unwrap();
                // Like the channel: the values, then the input stays open while it runs.
                let mut input = child.stdin.take().unwrap();
                input.write_all(&wrapped.input).unwrap();
                let mut out = String::new();
                child
                    .stdout
                    .take()
                    .unwrap()
                    .read_to_string(&mut out)
                    .unwrap();
                drop(input);
                child.wait().unwrap();
                assert!(
                    out == format!("{value}|second"),
                    "{shell}: {:?}",
                    out.get(..80)
                );
                assert!(!dir.exists(), "{shell}: {value:?} ran a command");
            }
        }
    }
}
