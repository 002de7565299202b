//! Spawns the real `opsconductor up` over a fresh data directory (so migrations run, keys and
//! secrets are generated and the administrator is created) and polls health every 5 ms until
//! every implemented service is SERVING; then lets it idle and reads its RSS.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use opsconductor_platform::client::check_health;
use opsconductor_platform::health::ServingStatusPb;

/// auth, user, targets.
const PORTS: [u16; 3] = [1, 2, 5];

/// The broker names of every run, removed afterwards.
const PREFIX: &str = "bench-startup";

pub async fn run(runs: usize) -> anyhow::Result<()> {
    let bin = crate::opsconductor_binary()?;
    let mut startups = Vec::new();
    let mut rss = Vec::new();
    for i in 0..runs {
        let dir = tempfile::tempdir()?;
        let base = 24_000 + (i as u16) * 20;
        let started = Instant::now();
        let mut child = Command::new(&bin)
            .args(["up", "--port-base", &base.to_string(), "--data-dir"])
            .arg(dir.path())
            .env("OPSCONDUCTOR_LOG", "warn")
            .env("OPSCONDUCTOR_AMQP_PREFIX", PREFIX)
            .env("OPSCONDUCTOR_SHUTDOWN_DELAY_MS", "0")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        for offset in PORTS {
            let url = format!("http://127.0.0.1:{}", base + offset);
            loop {
                if let Ok(ServingStatusPb::Serving) =
                    check_health(&url, "", Duration::from_millis(200)).await
                {
                    break;
                }
                if started.elapsed() > Duration::from_secs(30) {
                    let _ = child.kill();
                    bail!("{url} never became SERVING");
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
        let elapsed = started.elapsed();
        tokio::time::sleep(Duration::from_secs(2)).await;
        let kib = vm_rss_kib(child.id())?;
        // SIGTERM path is tested elsewhere; here we only need it gone.
        let _ = child.kill();
        let _ = child.wait();
        println!(
            "run {}: SERVING after {:.1} ms, idle RSS {:.1} MiB",
            i + 1,
            elapsed.as_secs_f64() * 1e3,
            kib as f64 / 1024.0
        );
        startups.push(elapsed);
        rss.push(kib);
    }
    startups.sort();
    rss.sort();
    println!(
        "startup to SERVING: median {:.1} ms (min {:.1}, max {:.1}) over {runs} runs; idle RSS median {:.1} MiB",
        startups[runs / 2].as_secs_f64() * 1e3,
        startups[0].as_secs_f64() * 1e3,
        startups[runs - 1].as_secs_f64() * 1e3,
        rss[runs / 2] as f64 / 1024.0
    );
    let url = std::env::var("AMQP_URL")
        .unwrap_or_else(|_| opsconductor_messaging::DEFAULT_AMQP_URL.to_string());
    crate::messaging::cleanup(
        &url,
        PREFIX,
        &opsconductor_messaging::topology::platform::audit_events(),
    )
    .await
}

fn vm_rss_kib(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .context("no VmRSS")
}
