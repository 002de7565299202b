//! A real SMTP receiver for notification tests: aiosmtpd writing each message into a maildir.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

const INSTALL: &str = "pip install aiosmtpd";

/// aiosmtpd on a loopback port, plaintext, accepting any sender and recipient. The process is
/// killed when the sink is dropped.
pub struct SmtpSink {
    port: u16,
    child: Child,
    maildir: PathBuf,
    // Removed on drop, after the child is gone.
    _dir: tempfile::TempDir,
}

impl SmtpSink {
    pub async fn start() -> SmtpSink {
        let python = crate::python();
        let probe = Command::new(&python)
            .args(["-c", "import aiosmtpd"])
            .output()
            .unwrap_or_else(|e| panic!("run {}: {e}", python.display()));
        assert!(
            probe.status.success(),
            "aiosmtpd is not installed for {}: install it with `{INSTALL}`",
            python.display()
        );
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("smtp sink tempdir: {e}"));
        let maildir = dir.path().join("maildir");
        let log = std::fs::File::create(dir.path().join("aiosmtpd.log"))
            .unwrap_or_else(|e| panic!("smtp sink log: {e}"));
        let port = crate::free_port();
        let child = Command::new(&python)
            .args(["-m", "aiosmtpd", "-n", "-l"])
            .arg(format!("127.0.0.1:{port}"))
            .args(["-c", "aiosmtpd.handlers.Mailbox"])
            .arg(&maildir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("start aiosmtpd: {e}"));
        let mut sink = SmtpSink {
            port,
            child,
            maildir,
            _dir: dir,
        };
        sink.wait_ready().await;
        sink
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The raw RFC 5322 text of every message delivered so far, oldest first.
    pub fn messages(&self) -> Vec<String> {
        let mut found: Vec<(SystemTime, PathBuf)> = ["new", "cur"]
            .iter()
            .filter_map(|sub| std::fs::read_dir(self.maildir.join(sub)).ok())
            .flatten()
            .filter_map(|entry| {
                let entry = entry.ok()?;
                let modified = entry.metadata().ok()?.modified().ok()?;
                Some((modified, entry.path()))
            })
            .collect();
        found.sort();
        found
            .iter()
            .filter_map(|(_, path)| std::fs::read_to_string(path).ok())
            .collect()
    }

    /// Waits until at least `n` messages have been delivered and returns them all; fails the
    /// test after `timeout`. The maildir gives no event, so this looks every 20 ms.
    pub async fn wait_for(&self, n: usize, timeout: Duration) -> Vec<String> {
        let deadline = Instant::now() + timeout;
        loop {
            let messages = self.messages();
            if messages.len() >= n {
                return messages;
            }
            if Instant::now() >= deadline {
                panic!(
                    "smtp sink: {} of {n} messages within {timeout:?}{}",
                    messages.len(),
                    self.log_tail()
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if tokio::net::TcpStream::connect(("127.0.0.1", self.port))
                .await
                .is_ok()
            {
                return;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "aiosmtpd exited ({status}) before listening on {}{}",
                    self.port,
                    self.log_tail()
                );
            }
            assert!(
                Instant::now() < deadline,
                "aiosmtpd did not listen on {} within 15s{}",
                self.port,
                self.log_tail()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn log_tail(&self) -> String {
        let log = log_path(&self.maildir);
        let text = std::fs::read_to_string(log).unwrap_or_default();
        let tail: String = text
            .lines()
            .rev()
            .take(20)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect::<Vec<_>>()
            .join("\n");
        if tail.is_empty() {
            String::new()
        } else {
            format!("; aiosmtpd log:\n{tail}")
        }
    }
}

fn log_path(maildir: &Path) -> PathBuf {
    maildir.with_file_name("aiosmtpd.log")
}

impl Drop for SmtpSink {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
    use tokio::net::TcpStream;

    use super::*;

    #[tokio::test]
    async fn receives_a_message() {
        let sink = SmtpSink::start().await;
        let stream = TcpStream::connect(("127.0.0.1", sink.port()))
            .await
            .unwrap();
        let (read, mut write) = stream.into_split();
        let mut lines = BufReader::new(read).lines();
        let mut expect = async |code: &str| {
            let line = lines.next_line().await.unwrap().unwrap();
            assert!(line.starts_with(code), "expected {code}, got {line}");
        };
        expect("220").await;
        for (cmd, code) in [
            ("HELO test", "250"),
            ("MAIL FROM:<ops@example.com>", "250"),
            ("RCPT TO:<oncall@example.com>", "250"),
            ("DATA", "354"),
            (
                "Subject: hello\r\nMessage-ID: <m1@opsconductor>\r\n\r\nbody line\r\n.",
                "250",
            ),
        ] {
            write
                .write_all(format!("{cmd}\r\n").as_bytes())
                .await
                .unwrap();
            expect(code).await;
        }
        let got = sink.wait_for(1, Duration::from_secs(5)).await;
        assert_eq!(got.len(), 1);
        assert!(got[0].contains("Subject: hello"), "{}", got[0]);
        assert!(got[0].contains("body line"), "{}", got[0]);
    }
}
