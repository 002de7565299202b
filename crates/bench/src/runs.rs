//! Runs end to end, against the whole platform in this process (the real broker, SQLite files
//! or PostgreSQL, loopback gRPC, `setpriv` + `/bin/sh` for steps):
//!
//! - StartRun → the executor starting the first step (a `true` shell step): the step's start
//!   time minus the moment the client sent StartRun (one clock: same host), one run in flight,
//!   and at a steady rate of runs per second. The baseline, measured in the same run, is the
//!   floor an executor cannot go under: spawning `setpriv … /bin/sh -c true` and waiting for it.
//! - Sustained runs per second with one executor and with two (started sixteen calls at a time,
//!   timed until the last has finished).
//! - WatchRun: a step prints its own clock every 20 ms; a watcher notes when each line arrives.
//!   The executor batches log lines every 100 ms, which bounds this from below.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use opsconductor_api::jobs::v1::*;
use opsconductor_platform::ServiceKind;
use opsconductor_testkit::{JobsExt, Sandbox, StorageBackend};

use crate::stats::{ms, percentile};

fn now_nanos() -> i128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as i128)
        .unwrap_or_default()
}

fn nanos(t: &prost_types::Timestamp) -> i128 {
    i128::from(t.seconds) * 1_000_000_000 + i128::from(t.nanos)
}

fn shell(command: &str) -> Job {
    Job {
        name: format!("bench-{}", uuid::Uuid::now_v7().simple()),
        steps: vec![Step {
            name: "step".into(),
            action: Some(step::Action::Shell(ShellStep {
                command: command.into(),
                env: Default::default(),
            })),
            ..Default::default()
        }],
        ..Default::default()
    }
}

/// How long after `sent` (unix nanos) the run's first step started, and how long that step
/// took from its start to its end as the executor recorded them (for a `true` step: the
/// `Running` report, spawning it, and — with containment — preparing and cleaning up after it).
async fn first_step_latency(
    s: &Sandbox,
    run_id: &str,
    sent: i128,
) -> anyhow::Result<(Duration, Duration)> {
    let (run, _) = s.jobs().finish(run_id, Duration::from_secs(120)).await?;
    anyhow::ensure!(
        run.state == RunState::Succeeded as i32,
        "run {run_id} ended {:?}: {}",
        RunState::try_from(run.state),
        run.error
    );
    let start = run
        .steps
        .first()
        .and_then(|s| s.start_time.as_ref())
        .ok_or_else(|| anyhow::anyhow!("run {run_id} has no step start"))?;
    let end = run
        .steps
        .first()
        .and_then(|s| s.end_time.as_ref())
        .ok_or_else(|| anyhow::anyhow!("run {run_id} has no step end"))?;
    Ok((
        Duration::from_nanos((nanos(start) - sent).max(0) as u64),
        Duration::from_nanos((nanos(end) - nanos(start)).max(0) as u64),
    ))
}

pub async fn run(runs: usize, rate: u32, postgres: bool) -> anyhow::Result<()> {
    let backend = if postgres {
        StorageBackend::Postgres
    } else {
        StorageBackend::Sqlite
    };
    let s = Sandbox::start_with(backend, &[("EXECUTOR_CAPACITY", "32")]).await;
    let job = s.jobs().create(shell("true")).await?;

    // Warm up: connections, caches, the first process spawn.
    for _ in 0..5 {
        let run = s.jobs().start(&job.id, &[]).await?;
        s.jobs().finish(&run.id, Duration::from_secs(60)).await?;
    }

    eprintln!("measuring: spawn floor");
    let mut floor = Vec::new();
    for _ in 0..runs.min(200) {
        let started = Instant::now();
        let status = tokio::process::Command::new("setpriv")
            .args([
                "--pdeathsig=KILL",
                "--no-new-privs",
                "--",
                "/bin/sh",
                "-c",
                "true",
            ])
            .status()
            .await?;
        anyhow::ensure!(status.success());
        floor.push(started.elapsed());
    }

    eprintln!("measuring: one in flight");
    let mut one = Vec::new();
    let mut step = Vec::new();
    for _ in 0..runs {
        let sent = now_nanos();
        let run = s.jobs().start(&job.id, &[]).await?;
        let (latency, took) = first_step_latency(&s, &run.id, sent).await?;
        one.push(latency);
        step.push(took);
    }

    eprintln!("measuring: paced");
    let mut paced = Vec::new();
    let mut started = Vec::new();
    let every = Duration::from_secs_f64(1.0 / f64::from(rate.max(1)));
    let mut tick = tokio::time::interval(every);
    for _ in 0..runs {
        tick.tick().await;
        let sent = now_nanos();
        let run = s.jobs().start(&job.id, &[]).await?;
        started.push((run.id, sent));
    }
    for (id, sent) in &started {
        paced.push(first_step_latency(&s, id, *sent).await?.0);
    }

    eprintln!("measuring: throughput, one executor");
    let one_executor = throughput(&s, &job.id, runs).await?;
    let (second, _db) = s.start_replica(ServiceKind::Executor).await;
    eprintln!("measuring: throughput, two executors");
    let two_executors = throughput(&s, &job.id, runs).await?;
    second.stop().await.map_err(|e| anyhow::anyhow!("{e}"))?;

    eprintln!("measuring: watch latency");
    let watch = watch_latency(&s).await?;

    let backend = if postgres { "PostgreSQL" } else { "SQLite" };
    let floor_p50 = percentile(&mut floor, 0.5);
    println!("\n{runs} runs per measure, {backend}, one `true` shell step each");
    println!(
        "{:<44} {:>9} {:>9} {:>12}",
        "", "p50 ms", "p99 ms", "p50 / spawn"
    );
    for (name, samples) in [
        ("spawn setpriv + sh -c true (floor)", &mut floor),
        ("StartRun -> first step, 1 in flight", &mut one),
        (
            &*format!("StartRun -> first step, {rate} runs/s"),
            &mut paced,
        ),
        ("`true` step, its start -> its end, 1 in flight", &mut step),
    ] {
        let p50 = percentile(samples, 0.5);
        println!(
            "{:<44} {:>9.3} {:>9.3} {:>12.2}",
            name,
            ms(p50),
            ms(percentile(samples, 0.99)),
            p50.as_secs_f64() / floor_p50.as_secs_f64()
        );
    }
    println!(
        "sustained: {one_executor:.0} runs/s with 1 executor, {two_executors:.0} runs/s with 2"
    );
    let mut watch = watch;
    println!(
        "WatchRun, executor stdout -> watcher: p50 {:.1} ms, p99 {:.1} ms ({} lines)",
        ms(percentile(&mut watch, 0.5)),
        ms(percentile(&mut watch, 0.99)),
        watch.len()
    );
    s.stop().await;
    Ok(())
}

/// Starts `runs` runs, sixteen calls in flight, and waits for the last: runs per second.
async fn throughput(s: &Sandbox, job_id: &str, runs: usize) -> anyhow::Result<f64> {
    let started = Instant::now();
    let mut ids = Vec::with_capacity(runs);
    use futures::StreamExt;
    // Sixteen starts in flight: a busy scheduler or API client, not a thundering herd.
    let starts: Vec<_> = futures::stream::iter(0..runs)
        .map(|_| {
            let mut jobs = s.jobs();
            async move { jobs.start(job_id, &[]).await }
        })
        .buffer_unordered(16)
        .collect()
        .await;
    for run in starts {
        ids.push(run?.id);
    }
    for id in &ids {
        let (run, _) = s.jobs().finish(id, Duration::from_secs(300)).await?;
        anyhow::ensure!(run.state == RunState::Succeeded as i32, "{}", run.error);
    }
    Ok(runs as f64 / started.elapsed().as_secs_f64())
}

/// Lines a step prints with its own clock, as a watcher receives them.
async fn watch_latency(s: &Sandbox) -> anyhow::Result<Vec<Duration>> {
    let job = s
        .jobs()
        .create(shell(
            "for i in $(seq 100); do date +%s%N; sleep 0.02; done",
        ))
        .await?;
    let run = s.jobs().start(&job.id, &[]).await?;
    let mut stream = s
        .jobs()
        .watch_run(WatchRunRequest {
            id: run.id.clone(),
            include_logs: true,
            after_log_seq: 0,
        })
        .await?
        .into_inner();
    let mut samples = Vec::new();
    while let Some(event) = stream.message().await? {
        if let Some(watch_run_response::Event::LogLine(line)) = event.event {
            if let Ok(printed) = line.text.trim().parse::<i128>() {
                samples.push(Duration::from_nanos((now_nanos() - printed).max(0) as u64));
            }
        }
    }
    anyhow::ensure!(!samples.is_empty(), "no line arrived");
    Ok(samples)
}
