//! Two replicas of every service, each its own `opsconductor serve` process over the service's
//! own PostgreSQL database, every client configured with both replicas of what it calls.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use opsconductor_platform::client::check_health;
use opsconductor_platform::health::ServingStatusPb;
use opsconductor_platform::ServiceKind;

/// One replica: its address and, while it runs, its process.
pub struct Replica {
    pub kind: ServiceKind,
    pub port: u16,
    env: Vec<(String, String)>,
    child: Option<Child>,
}

impl Replica {
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn start(&mut self, bin: &Path, dir: &Path) -> anyhow::Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join(format!("{}-{}.log", self.kind, self.port)))?;
        let child = Command::new(bin)
            .args(["serve", self.kind.name()])
            .current_dir(dir)
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .with_context(|| format!("cannot start {} on {}", self.kind, self.port))?;
        self.child = Some(child);
        Ok(())
    }

    /// The process's resident set, in KiB.
    pub fn rss_kib(&self) -> Option<u64> {
        let pid = self.child.as_ref()?.id();
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
    }

    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM, then waits for the exit (the drain) up to `limit`; the exit code.
    pub fn sigterm(&mut self, limit: Duration) -> anyhow::Result<Option<i32>> {
        let Some(mut child) = self.child.take() else {
            return Ok(None);
        };
        let pid = nix::unistd::Pid::from_raw(child.id() as i32);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM)?;
        let started = Instant::now();
        loop {
            if let Some(status) = child.try_wait()? {
                return Ok(status.code());
            }
            if started.elapsed() > limit {
                let _ = child.kill();
                bail!(
                    "{} on {} did not stop within {limit:?}",
                    self.kind,
                    self.port
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// Every replica, by service.
pub struct Cluster {
    bin: PathBuf,
    dir: PathBuf,
    pub replicas: BTreeMap<ServiceKind, [Replica; 2]>,
}

impl Cluster {
    /// `env(kind)` is a service's own configuration; the cluster adds where it listens and where
    /// every replica of every service is.
    pub fn new(
        bin: PathBuf,
        dir: PathBuf,
        kinds: &[ServiceKind],
        mut env: impl FnMut(ServiceKind) -> Vec<(String, String)>,
    ) -> Cluster {
        let bases = [
            opsconductor_testkit::free_port_base(),
            opsconductor_testkit::free_port_base(),
        ];
        let urls: Vec<(String, String)> = ServiceKind::ALL
            .iter()
            .map(|kind| {
                let var = format!("{}_SERVICE_URL", kind.name().to_ascii_uppercase());
                let both: Vec<String> = bases
                    .iter()
                    .map(|b| format!("http://127.0.0.1:{}", b + kind.port_offset()))
                    .collect();
                (var, both.join(","))
            })
            .collect();
        let mut replicas = BTreeMap::new();
        for &kind in kinds {
            let make = |base: u16, own: &[(String, String)]| {
                let port = base + kind.port_offset();
                let mut env = own.to_vec();
                env.extend(urls.iter().cloned());
                env.push(("LISTEN_ADDR".into(), format!("127.0.0.1:{port}")));
                env.push(("METRICS_ADDR".into(), "off".into()));
                Replica {
                    kind,
                    port,
                    env,
                    child: None,
                }
            };
            let own = env(kind);
            replicas.insert(kind, [make(bases[0], &own), make(bases[1], &own)]);
        }
        Cluster { bin, dir, replicas }
    }

    /// Starts every replica in `kinds` order, waiting for each service before the next.
    pub async fn start_all(&mut self) -> anyhow::Result<()> {
        let kinds: Vec<ServiceKind> = self.replicas.keys().copied().collect();
        for kind in kinds {
            for i in 0..2 {
                self.restart(kind, i).await?;
            }
        }
        Ok(())
    }

    /// Starts replica `i` of `kind` and waits until it is SERVING; how long that took.
    pub async fn restart(&mut self, kind: ServiceKind, i: usize) -> anyhow::Result<Duration> {
        let started = Instant::now();
        let replica = &mut self.replicas.get_mut(&kind).context("no such service")?[i];
        replica.start(&self.bin, &self.dir)?;
        let url = replica.url();
        loop {
            if let Ok(ServingStatusPb::Serving) =
                check_health(&url, "", Duration::from_millis(500)).await
            {
                return Ok(started.elapsed());
            }
            if started.elapsed() > Duration::from_secs(60) {
                bail!(
                    "{kind} on {url} never became SERVING (see its log in {})",
                    self.dir.display()
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn replica(&mut self, kind: ServiceKind, i: usize) -> &mut Replica {
        &mut self
            .replicas
            .get_mut(&kind)
            .expect("every service of the cluster has replicas")[i]
    }

    /// The resident set of every replica, in KiB, by service.
    pub fn rss(&self) -> BTreeMap<ServiceKind, u64> {
        self.replicas
            .iter()
            .map(|(kind, r)| (*kind, r.iter().filter_map(Replica::rss_kib).sum()))
            .collect()
    }

    pub fn stop_all(&mut self) {
        for replicas in self.replicas.values_mut() {
            for replica in replicas.iter_mut() {
                let _ = replica.sigterm(Duration::from_secs(20));
            }
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for replicas in self.replicas.values_mut() {
            for replica in replicas.iter_mut() {
                replica.kill9();
            }
        }
    }
}
