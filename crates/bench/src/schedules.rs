//! The scheduler under a steady load of fires, against the whole platform in this process (the
//! real broker, PostgreSQL or SQLite, the jobs service taking every StartRun; the executor is
//! stopped, so runs queue and the measure is the scheduler's):
//!
//! - `schedules` interval schedules (every `period` seconds, anchors spread evenly), created
//!   through CreateSchedule; the creation rate is reported.
//! - Restart: every scheduler replica stopped and started again; the time until the first fire
//!   is recorded (next fire times are stored, so nothing is computed at start).
//! - Fires over `seconds`: the rate achieved and the lag (the fire's record of StartRun
//!   accepted minus the scheduled time) p50/p99, across `replicas` replicas on one database.
//! - Baseline, in the same run: StartRun called directly at the same rate by a paced client,
//!   its latency p50/p99 — what a fire cannot be faster than.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures::StreamExt;
use opsconductor_api::jobs::v1::{step, Job, ShellStep, Step};
use opsconductor_api::scheduler::v1::*;
use opsconductor_platform::ServiceKind;
use opsconductor_testkit::{JobsExt, Running, Sandbox, StorageBackend};

use crate::stats::{ms, percentile};

fn now_micros() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or_default()
}

fn ts(micros: i64) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: micros.div_euclid(1_000_000),
        nanos: (micros.rem_euclid(1_000_000) * 1_000) as i32,
    }
}

pub struct Options {
    pub schedules: usize,
    pub period: u64,
    pub seconds: u64,
    pub replicas: usize,
    pub postgres: bool,
}

async fn replicas(s: &Sandbox, n: usize) -> Vec<Running> {
    let module = opsconductor_catalog::module(ServiceKind::Scheduler);
    let mut running = Vec::new();
    for _ in 1..n {
        if let Some(module) = module {
            running.push(
                s.start_module(module, s.db(ServiceKind::Scheduler).clone(), &[])
                    .await,
            );
        }
    }
    running
}

pub async fn run(o: Options) -> anyhow::Result<()> {
    let backend = if o.postgres {
        StorageBackend::Postgres
    } else {
        StorageBackend::Sqlite
    };
    let replica_count = if o.postgres { o.replicas.max(1) } else { 1 };
    let mut s = Sandbox::start_with(backend, &[("SCHEDULER_CONCURRENCY", "128")]).await;
    s.stop_service(ServiceKind::Executor).await;
    let job = s
        .jobs()
        .create(Job {
            name: "bench-tick".into(),
            steps: vec![Step {
                name: "noop".into(),
                action: Some(step::Action::Shell(ShellStep {
                    command: "true".into(),
                    env: Default::default(),
                })),
                ..Default::default()
            }],
            ..Default::default()
        })
        .await?;
    let rate = o.schedules as f64 / o.period as f64;

    eprintln!("baseline: StartRun at {rate:.0}/s for 10 s");
    let baseline = paced_starts(&s, &job.id, rate, 10).await?;

    // Anchors spread evenly over one period, starting once every schedule exists (creation is
    // timed first with the schedules paused, then they are resumed).
    let spacing = o.period as i64 * 1_000_000 / o.schedules as i64;
    eprintln!("creating {} schedules", o.schedules);
    let created_at = Instant::now();
    let far = now_micros() + 86_400_000_000;
    let ids: Vec<anyhow::Result<String>> = futures::stream::iter(0..o.schedules)
        .map(|i| {
            let mut client = s.scheduler();
            let job_id = job.id.clone();
            async move {
                let schedule = Schedule {
                    name: format!("bench-{i}"),
                    job_id,
                    spec: Some(schedule::Spec::Interval(IntervalSpec {
                        interval: Some(prost_types::Duration {
                            seconds: o.period as i64,
                            nanos: 0,
                        }),
                        start_time: Some(ts(far + i as i64 * spacing)),
                    })),
                    overlap_policy: OverlapPolicy::Allow as i32,
                    misfire_threshold: Some(prost_types::Duration {
                        seconds: 86_400,
                        nanos: 0,
                    }),
                    ..Default::default()
                };
                let created = client
                    .create_schedule(CreateScheduleRequest {
                        schedule: Some(schedule),
                    })
                    .await?
                    .into_inner()
                    .schedule
                    .ok_or_else(|| anyhow::anyhow!("no schedule"))?;
                Ok(created.id)
            }
        })
        .buffer_unordered(32)
        .collect()
        .await;
    let ids: Vec<String> = ids.into_iter().collect::<anyhow::Result<_>>()?;
    let create_rate = ids.len() as f64 / created_at.elapsed().as_secs_f64();

    // Move every anchor to start shortly: one UPDATE, as an operator's bulk change would be
    // (the scheduler reads next times from the rows).
    let begin = now_micros() + 5_000_000;
    let db = s.db(ServiceKind::Scheduler).clone();
    sqlx::query(
        "UPDATE schedules SET next_fire_time = next_fire_time - $1, due_time = due_time - $1",
    )
    .bind(far - begin)
    .execute(db.pool())
    .await?;

    eprintln!("restarting the scheduler replicas");
    s.stop_service(ServiceKind::Scheduler).await;
    let restarted = Instant::now();
    s.start_service(ServiceKind::Scheduler).await;
    let others = replicas(&s, replica_count).await;
    let ready = restarted.elapsed();

    eprintln!("firing for {} s", o.seconds);
    let window_start = begin + 2_000_000;
    let window_end = window_start + o.seconds as i64 * 1_000_000;
    let wait = (window_end - now_micros()).max(0) as u64 + 5_000_000;
    tokio::time::sleep(Duration::from_micros(wait)).await;
    let deadline = Instant::now() + Duration::from_secs(120);
    let expected = ((window_end - window_start) as f64 * rate / 1e6) as i64;
    let lags: Vec<(i64,)> = loop {
        let rows: Vec<(i64,)> = sqlx::query_as(
            "SELECT fire_time - scheduled_time FROM fires WHERE scheduled_time >= $1 \
             AND scheduled_time < $2 AND fire_time IS NOT NULL",
        )
        .bind(window_start)
        .bind(window_end)
        .fetch_all(db.pool())
        .await?;
        if rows.len() as i64 >= expected || Instant::now() > deadline {
            break rows;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let (first_fire,): (Option<i64>,) = sqlx::query_as("SELECT MIN(fire_time) FROM fires")
        .fetch_one(db.pool())
        .await?;
    let (last_fire,): (Option<i64>,) = sqlx::query_as(
        "SELECT MAX(fire_time) FROM fires WHERE scheduled_time >= $1 AND scheduled_time < $2",
    )
    .bind(window_start)
    .bind(window_end)
    .fetch_one(db.pool())
    .await?;
    let mut lag: Vec<Duration> = lags
        .iter()
        .map(|(l,)| Duration::from_micros((*l).max(0) as u64))
        .collect();
    let mut baseline = baseline;
    let backend = if o.postgres { "PostgreSQL" } else { "SQLite" };
    println!(
        "\n{} schedules every {} s ({rate:.0} fires/s offered), {backend}, {replica_count} replica(s)",
        o.schedules, o.period
    );
    println!("CreateSchedule: {create_rate:.0}/s (32 in flight)");
    println!(
        "restart -> serving: {:.1} ms; first fire {:.1} ms after the first due time",
        ms(ready),
        first_fire.map_or(f64::NAN, |f| (f - begin) as f64 / 1000.0)
    );
    let window = o.seconds as f64;
    let achieved = lag.len() as f64
        / last_fire.map_or(window, |l| ((l - window_start) as f64 / 1e6).max(window));
    println!(
        "fires in the {window:.0} s window: {} of {expected} ({achieved:.0}/s)",
        lag.len()
    );
    let (b50, b99) = (
        percentile(&mut baseline, 0.5),
        percentile(&mut baseline, 0.99),
    );
    let (l50, l99) = (percentile(&mut lag, 0.5), percentile(&mut lag, 0.99));
    println!("{:<40} {:>9} {:>9}", "", "p50 ms", "p99 ms");
    println!(
        "{:<40} {:>9.1} {:>9.1}",
        "StartRun called directly (baseline)",
        ms(b50),
        ms(b99)
    );
    println!(
        "{:<40} {:>9.1} {:>9.1}",
        "fire lag (StartRun accepted - due)",
        ms(l50),
        ms(l99)
    );
    println!(
        "ratio fire lag / StartRun: p50 {:.2}, p99 {:.2}",
        l50.as_secs_f64() / b50.as_secs_f64(),
        l99.as_secs_f64() / b99.as_secs_f64()
    );
    for replica in others {
        replica.stop().await.map_err(|e| anyhow::anyhow!("{e}"))?;
    }
    s.stop().await;
    Ok(())
}

/// StartRun at `rate` per second for `seconds`: the latency of each call.
async fn paced_starts(
    s: &Sandbox,
    job_id: &str,
    rate: f64,
    seconds: u64,
) -> anyhow::Result<Vec<Duration>> {
    let every = Duration::from_secs_f64(1.0 / rate.max(1.0));
    let mut tick = tokio::time::interval(every);
    let count = (rate * seconds as f64) as usize;
    let mut calls = Vec::with_capacity(count);
    for _ in 0..count {
        tick.tick().await;
        let mut jobs = s.jobs();
        let job_id = job_id.to_string();
        calls.push(tokio::spawn(async move {
            let started = Instant::now();
            jobs.start(&job_id, &[]).await.map(|_| started.elapsed())
        }));
    }
    let mut latencies = Vec::with_capacity(count);
    for call in calls {
        latencies.push(call.await??);
    }
    Ok(latencies)
}
