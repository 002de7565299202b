//! `opsconductor-bench chaos`: two replicas of every service (each `opsconductor serve` over
//! its own PostgreSQL database, one broker prefix), a steady load of authenticated reads on
//! every service, runs started at a steady rate, a schedule firing every second and a webhook
//! per successful run — and, while all that goes on, the drills: the broker stopped and
//! started, every broker connection closed, one replica of each service killed (-9) and
//! restarted, PostgreSQL restarted, one replica of each service stopped with SIGTERM. Then it
//! counts what was lost and what happened twice, per drill.

mod cluster;
mod effects;
mod load;
mod streams;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use opsconductor_api::auth::v1::LoginRequest;
use opsconductor_api::jobs::v1::RunState;
use opsconductor_platform::client::Clients;
use opsconductor_platform::config::Env;
use opsconductor_platform::ServiceKind;
use sqlx::Connection;

use crate::stats::{ms, percentile};
use cluster::Cluster;
use effects::Effects;
use load::{Ids, Load, Window};

pub struct Options {
    /// Seconds of load before any drill (the steady-state figures).
    pub seconds: u64,
    pub callers: usize,
    /// Runs started per second.
    pub rate: u32,
}

const POSTGRES: &str = "postgres://postgres@127.0.0.1:5432";

/// What happened during one drill.
struct Drill {
    name: &'static str,
    window: usize,
    started: Instant,
    /// The longest a restarted replica took to be SERVING again.
    restart: Option<Duration>,
}

pub async fn run(options: Options) -> anyhow::Result<()> {
    let bin = crate::opsconductor_binary()?;
    let dir = tempfile::tempdir()?;
    let broker = opsconductor_testkit::TestBroker::new();
    broker.track_platform();
    let tag = broker.prefix.replace('-', "_");
    let kinds: Vec<ServiceKind> = opsconductor_catalog::implemented().collect();
    let databases = Databases::create(&tag, &kinds).await?;
    let secrets = opsconductor::secrets::Secrets::ensure(
        &dir.path().join("secrets"),
        opsconductor_catalog::SERVICES,
        &opsconductor::secrets::Options {
            provided: Vec::new(),
            broker: None,
            database: None,
        },
    )?;
    let password = secrets
        .vars(ServiceKind::User)
        .find(|(var, _)| *var == "OPSCONDUCTOR_ADMIN_PASSWORD")
        .map(|(_, v)| v.to_string())
        .context("no administrator password generated")?;
    let mut cluster = Cluster::new(bin, dir.path().to_path_buf(), &kinds, |kind| {
        let mut env: Vec<(String, String)> = secrets
            .vars(kind)
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        for (k, v) in [
            ("SERVICE_ID", kind.name().to_string()),
            ("DATABASE_URL", databases.url(kind)),
            ("OPSCONDUCTOR_DB_MAX_CONNECTIONS", "4".into()),
            ("OPSCONDUCTOR_AMQP_PREFIX", broker.prefix.clone()),
            ("OPSCONDUCTOR_LOG", "warn".into()),
            ("OPSCONDUCTOR_LOG_FORMAT", "json".into()),
            ("NOTIFICATION_ALLOW_PLAIN_HTTP", "true".into()),
            ("NOTIFICATION_ALLOW_PRIVATE_ADDRESSES", "true".into()),
            ("NOTIFICATION_RATE_PER_MINUTE", "0".into()),
            ("NOTIFICATION_DEDUPE_WINDOW_MS", "0".into()),
            (
                "NOTIFICATION_RETRY_DELAYS_MS",
                opsconductor_testkit::NOTIFICATION_RETRY_DELAYS_MS.into(),
            ),
            // A killed executor's run comes back within seconds, not the default 30.
            ("JOBS_RUN_LEASE_MS", "6000".into()),
            ("JOBS_REAPER_INTERVAL_MS", "1000".into()),
            ("SCHEDULER_FIRE_LEASE_MS", "5000".into()),
            ("EXECUTOR_CAPACITY", "16".into()),
        ] {
            env.push((k.to_string(), v));
        }
        env
    });
    println!("starting {} replicas ...", kinds.len() * 2);
    cluster.start_all().await?;

    let mut client_env = Env::process();
    for kind in ServiceKind::ALL {
        let urls: Vec<String> = match cluster.replicas.get(&kind) {
            Some(r) => r.iter().map(cluster::Replica::url).collect(),
            None => continue,
        };
        client_env = client_env.with(
            format!("{}_SERVICE_URL", kind.name().to_ascii_uppercase()),
            urls.join(","),
        );
    }
    let anonymous = Clients::from_env(&client_env)?;
    let session = anonymous
        .auth()
        .login(LoginRequest {
            username: "admin".into(),
            password,
        })
        .await?
        .into_inner();
    let clients = Arc::new(
        Clients::from_env(&client_env)?.with_tokens(opsconductor_testkit::session_source(&session)),
    );

    let effects = Effects::default();
    let sink = format!("http://{}", effects.start().await?);
    let fixtures = streams::fixtures(&clients, &sink).await?;
    let ids = Ids {
        admin_id: session.user_id.clone(),
        job_id: fixtures.job_id.clone(),
        schedule_id: fixtures.schedule_id.clone(),
    };
    let load = Arc::new(Load::start(clients.clone(), ids, options.callers));
    let runs = streams::Runs::start(
        clients.clone(),
        fixtures.job_id.clone(),
        options.rate,
        &load,
    );

    // Steady state first: the figures without faults, and RSS start vs end.
    let mut drills = Vec::new();
    tokio::time::sleep(Duration::from_secs(5)).await;
    let rss_before = cluster.rss();
    drills.push(Drill {
        name: "steady load",
        window: load.next_window(),
        started: Instant::now(),
        restart: None,
    });
    tokio::time::sleep(Duration::from_secs(options.seconds)).await;
    let rss_after = cluster.rss();

    let drill = |name: &'static str| Drill {
        name,
        window: load.next_window(),
        started: Instant::now(),
        restart: None,
    };

    let d = drill("broker stop_app 5 s, start_app");
    ctl(&["stop_app"])?;
    tokio::time::sleep(Duration::from_secs(5)).await;
    ctl(&["start_app"])?;
    ctl(&["await_startup"])?;
    tokio::time::sleep(Duration::from_secs(20)).await;
    drills.push(d);

    let d = drill("broker close_all_connections");
    ctl(&["close_all_connections", "chaos drill"])?;
    tokio::time::sleep(Duration::from_secs(15)).await;
    drills.push(d);

    let mut d = drill("kill -9 one replica of each service");
    for &kind in &kinds {
        cluster.replica(kind, 0).kill9();
        tokio::time::sleep(Duration::from_secs(2)).await;
        let took = cluster.restart(kind, 0).await?;
        d.restart = d.restart.max(Some(took));
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    tokio::time::sleep(Duration::from_secs(5)).await;
    drills.push(d);

    let d = drill("PostgreSQL restart");
    let cluster_name = std::fs::read_dir("/etc/postgresql")?
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .next()
        .context("no PostgreSQL cluster in /etc/postgresql")?;
    run_cmd(
        "pg_ctlcluster",
        &[
            "--skip-systemctl-redirect",
            &cluster_name,
            "main",
            "restart",
        ],
    )?;
    tokio::time::sleep(Duration::from_secs(20)).await;
    drills.push(d);

    let mut d = drill("SIGTERM one replica of each service");
    for &kind in &kinds {
        let code = cluster.replica(kind, 1).sigterm(Duration::from_secs(30))?;
        if code != Some(0) {
            println!("  {kind}: exited {code:?} on SIGTERM");
        }
        let took = cluster.restart(kind, 1).await?;
        d.restart = d.restart.max(Some(took));
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    tokio::time::sleep(Duration::from_secs(5)).await;
    drills.push(d);

    let asked = runs.stop().await;
    let load = Arc::try_unwrap(load).map_err(|_| anyhow::anyhow!("the load is still shared"))?;
    let windows = load.stop().await;
    let run_ids: Vec<String> = asked.iter().filter_map(|a| a.run_id.clone()).collect();
    println!("settling {} runs ...", run_ids.len());
    let states = streams::settle(&clients, &run_ids, Duration::from_secs(180)).await;
    // Webhooks of the last runs: give the notification service time to send them.
    let succeeded: Vec<&String> = run_ids
        .iter()
        .filter(|id| states.get(*id) == Some(&RunState::Succeeded))
        .collect();
    let waited = Instant::now();
    while waited.elapsed() < Duration::from_secs(60)
        && effects.with(|c| {
            succeeded
                .iter()
                .any(|id| !c.notified_runs.contains_key(*id))
        })
    {
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let fires = streams::fires(&clients, &fixtures.schedule_id).await?;

    report(&drills, &windows, &asked, &states, &effects);
    report_schedule(&fires, &effects);
    report_rss(&rss_before, &rss_after, &cluster.rss(), options.seconds);

    cluster.stop_all();
    drop(cluster);
    report_logs(dir.path());
    databases.drop_all().await;
    Ok(())
}

fn report(
    drills: &[Drill],
    windows: &[Window],
    asked: &[streams::Asked],
    states: &HashMap<String, RunState>,
    effects: &Effects,
) {
    println!(
        "\n| drill | client calls | failed | p50 ms | p99 ms | failures for | restart to SERVING | runs asked | StartRun retried | not accepted | lost | ended FAILED | duplicated effects | webhooks lost | webhooks twice |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    for drill in drills {
        let Some(window) = windows.get(drill.window) else {
            continue;
        };
        let mut latencies = window.latencies.clone();
        let calls = latencies.len() as u64 + window.failed;
        let span = window
            .failure_times
            .iter()
            .max()
            .map(|last| last.duration_since(drill.started))
            .map(|d| format!("{:.1} s", d.as_secs_f64()))
            .unwrap_or_else(|| "-".into());
        let mine: Vec<&streams::Asked> =
            asked.iter().filter(|a| a.window == drill.window).collect();
        let not_accepted = mine.iter().filter(|a| a.run_id.is_none()).count();
        let retried = mine.iter().filter(|a| a.tries > 1).count();
        let ids: Vec<&String> = mine.iter().filter_map(|a| a.run_id.as_ref()).collect();
        let lost = ids
            .iter()
            .filter(|id| {
                states
                    .get(**id)
                    .is_none_or(|s| matches!(s, RunState::Queued | RunState::Running))
            })
            .count();
        let failed_runs = ids
            .iter()
            .filter(|id| states.get(**id) == Some(&RunState::Failed))
            .count();
        let (duplicated, webhooks_lost, webhooks_twice) = effects.with(|c| {
            let duplicated = ids
                .iter()
                .filter(|id| {
                    c.steps
                        .get(&("effect".into(), (**id).clone()))
                        .copied()
                        .unwrap_or(0)
                        > 1
                })
                .count();
            let lost = ids
                .iter()
                .filter(|id| states.get(**id) == Some(&RunState::Succeeded))
                .filter(|id| !c.notified_runs.contains_key(**id))
                .count();
            let twice = ids
                .iter()
                .filter(|id| c.notified_runs.get(**id).copied().unwrap_or(0) > 1)
                .count();
            (duplicated, lost, twice)
        });
        println!(
            "| {} | {} | {} | {:.1} | {:.1} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            drill.name,
            calls,
            window.failed,
            ms(percentile(&mut latencies, 0.5)),
            ms(percentile(&mut latencies, 0.99)),
            span,
            drill
                .restart
                .map(|d| format!("≤ {:.1} s", d.as_secs_f64()))
                .unwrap_or_else(|| "-".into()),
            mine.len(),
            retried,
            not_accepted,
            lost,
            failed_runs,
            duplicated,
            webhooks_lost,
            webhooks_twice,
        );
        for error in &window.errors {
            println!("|  ↳ {error} ||||||||||||||");
        }
    }
}

fn report_schedule(fires: &HashMap<i64, u32>, effects: &Effects) {
    let (Some(first), Some(last)) = (fires.keys().min(), fires.keys().max()) else {
        println!("\nschedule: no fire records");
        return;
    };
    let missing = (*first..=*last).filter(|s| !fires.contains_key(s)).count();
    let twice = fires.values().filter(|n| **n > 1).count();
    let (runs, repeated) = effects.with(|c| {
        let sched: Vec<u32> = c
            .steps
            .iter()
            .filter(|((kind, _), _)| kind == "sched")
            .map(|(_, n)| *n)
            .collect();
        (sched.len(), sched.iter().filter(|n| **n > 1).count())
    });
    println!(
        "\nschedule every second: {} seconds from first to last fire, {} without a fire record, {} with two; {} scheduled runs reached their step, {} of them more than once",
        last - first + 1,
        missing,
        twice,
        runs,
        repeated
    );
}

fn report_rss(
    before: &BTreeMap<ServiceKind, u64>,
    after: &BTreeMap<ServiceKind, u64>,
    end: &BTreeMap<ServiceKind, u64>,
    seconds: u64,
) {
    println!("\n| service (2 replicas) | RSS at load start MiB | after {seconds} s of load | after the drills (restarted replicas) |");
    println!("|---|---|---|---|");
    for (kind, kib) in before {
        let mib = |m: &BTreeMap<ServiceKind, u64>| {
            m.get(kind).map(|k| *k as f64 / 1024.0).unwrap_or_default()
        };
        println!(
            "| {kind} | {:.1} | {:.1} | {:.1} |",
            *kib as f64 / 1024.0,
            mib(after),
            mib(end)
        );
    }
}

/// What the replicas logged at ERROR (they run at `warn`): a count per service and the first
/// distinct messages.
fn report_logs(dir: &std::path::Path) {
    let mut by_service: BTreeMap<String, (usize, Vec<String>)> = BTreeMap::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.filter_map(Result::ok) {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(service) = name.strip_suffix(".log").and_then(|n| n.split('-').next()) else {
            continue;
        };
        let text = std::fs::read_to_string(entry.path()).unwrap_or_default();
        let (count, firsts) = by_service.entry(service.to_string()).or_default();
        for line in text.lines() {
            let Ok(event) = serde_json::from_str::<serde_json::Value>(line) else {
                continue;
            };
            if event["level"] != "ERROR" {
                continue;
            }
            *count += 1;
            // Who said it and what, without the time, so repeats collapse.
            let message = format!(
                "{}: {}",
                event["target"].as_str().unwrap_or("?"),
                event["message"].as_str().unwrap_or("?")
            );
            if firsts.len() < 3 && !firsts.contains(&message) {
                firsts.push(message);
            }
        }
    }
    println!("\nERROR lines logged by the replicas (they log at warn, as JSON):");
    for (service, (count, firsts)) in by_service {
        println!("  {service}: {count}");
        for line in firsts {
            println!("    {line}");
        }
    }
}

fn ctl(args: &[&str]) -> anyhow::Result<()> {
    run_cmd("rabbitmqctl", args)
}

fn run_cmd(program: &str, args: &[&str]) -> anyhow::Result<()> {
    let out = std::process::Command::new(program).args(args).output()?;
    if !out.status.success() {
        bail!(
            "{program} {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

/// A PostgreSQL database per service, dropped at the end.
struct Databases {
    names: BTreeMap<ServiceKind, String>,
}

impl Databases {
    async fn create(tag: &str, kinds: &[ServiceKind]) -> anyhow::Result<Databases> {
        let mut admin = sqlx::PgConnection::connect(&format!("{POSTGRES}/postgres")).await?;
        let mut names = BTreeMap::new();
        for kind in kinds {
            let name = format!("chaos_{tag}_{}", kind.name());
            sqlx::query(&format!("CREATE DATABASE \"{name}\""))
                .execute(&mut admin)
                .await?;
            names.insert(*kind, name);
        }
        Ok(Databases { names })
    }

    fn url(&self, kind: ServiceKind) -> String {
        format!(
            "{POSTGRES}/{}",
            self.names
                .get(&kind)
                .map(String::as_str)
                .unwrap_or_default()
        )
    }

    async fn drop_all(&self) {
        if let Ok(mut admin) = sqlx::PgConnection::connect(&format!("{POSTGRES}/postgres")).await {
            for name in self.names.values() {
                let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))
                    .execute(&mut admin)
                    .await;
            }
        }
    }
}
