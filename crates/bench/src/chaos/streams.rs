//! The work that must survive the drills: runs started at a steady rate (each with an
//! idempotency key, asked again with the same key until accepted), a schedule firing every
//! second, and a webhook for every run that succeeds. Afterwards, what became of each.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use opsconductor_api::common::v1::NotificationChannel;
use opsconductor_api::jobs::v1::{
    step, CreateJobRequest, GetRunRequest, HttpStep, Job, RunState, StartRunRequest, Step,
};
use opsconductor_api::notification::v1::{
    subscription, CreateSubscriptionRequest, OutcomeFilter, Subscription,
};
use opsconductor_api::scheduler::v1::{
    schedule, CreateScheduleRequest, CronSpec, ListFireRecordsRequest, OverlapPolicy, Schedule,
};
use opsconductor_platform::client::Clients;
use tokio::sync::watch;

use super::load::Load;

fn http_job(name: &str, url: String) -> Job {
    Job {
        name: name.into(),
        steps: vec![Step {
            name: "effect".into(),
            action: Some(step::Action::Http(HttpStep {
                method: "POST".into(),
                url,
                expected_status_codes: vec![200],
                ..Default::default()
            })),
            ..Default::default()
        }],
        ..Default::default()
    }
}

pub struct Fixtures {
    pub job_id: String,
    pub schedule_id: String,
}

/// The run job (a webhook on each success) and the every-second schedule of another job.
pub async fn fixtures(clients: &Clients, sink: &str) -> anyhow::Result<Fixtures> {
    let create = |job: Job| {
        let mut jobs = clients.jobs();
        async move {
            jobs.create_job(CreateJobRequest { job: Some(job) })
                .await?
                .into_inner()
                .job
                .ok_or_else(|| anyhow::anyhow!("CreateJob answered no job"))
        }
    };
    let job = create(http_job(
        "chaos-run",
        format!("{sink}/effect/{{{{ run.id }}}}"),
    ))
    .await?;
    clients
        .notification()
        .create_subscription(CreateSubscriptionRequest {
            subscription: Some(Subscription {
                selector: Some(subscription::Selector::JobId(job.id.clone())),
                channel: NotificationChannel::Webhook as i32,
                destination: format!("{sink}/notify"),
                outcomes: Some(OutcomeFilter {
                    succeeded: true,
                    ..Default::default()
                }),
                ..Default::default()
            }),
        })
        .await?;
    let scheduled = create(http_job(
        "chaos-scheduled",
        format!("{sink}/sched/{{{{ run.id }}}}"),
    ))
    .await?;
    let schedule = clients
        .scheduler()
        .create_schedule(CreateScheduleRequest {
            schedule: Some(Schedule {
                name: "every-second".into(),
                job_id: scheduled.id,
                spec: Some(schedule::Spec::Cron(CronSpec {
                    expression: "* * * * * *".into(),
                    time_zone: "UTC".into(),
                })),
                overlap_policy: OverlapPolicy::Allow as i32,
                ..Default::default()
            }),
        })
        .await?
        .into_inner()
        .schedule
        .ok_or_else(|| anyhow::anyhow!("CreateSchedule answered no schedule"))?;
    Ok(Fixtures {
        job_id: job.id,
        schedule_id: schedule.id,
    })
}

/// A run the stream asked for: accepted (its id), or never accepted.
pub struct Asked {
    pub window: usize,
    pub run_id: Option<String>,
    pub tries: u32,
}

pub struct Runs {
    pub asked: Arc<Mutex<Vec<Asked>>>,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl Runs {
    /// `rate` runs a second until stopped.
    pub fn start(clients: Arc<Clients>, job_id: String, rate: u32, load: &Arc<Load>) -> Runs {
        let asked = Arc::new(Mutex::new(Vec::new()));
        let (stop, stopped) = watch::channel(false);
        let (out, load) = (asked.clone(), load.clone());
        let task = tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / f64::from(rate)));
            let mut n = 0u64;
            let mut pending = Vec::new();
            while !*stopped.borrow() {
                tick.tick().await;
                n += 1;
                let window = load.current();
                let (clients, job_id, out) = (clients.clone(), job_id.clone(), out.clone());
                pending.push(tokio::spawn(async move {
                    let key = format!("chaos-{n}");
                    let started = Instant::now();
                    let mut tries = 0;
                    let run_id = loop {
                        tries += 1;
                        let answer = clients
                            .jobs()
                            .start_run(StartRunRequest {
                                job_id: job_id.clone(),
                                idempotency_key: key.clone(),
                                ..Default::default()
                            })
                            .await;
                        match answer {
                            Ok(r) => break r.into_inner().run.map(|r| r.id),
                            Err(_) if started.elapsed() < Duration::from_secs(120) => {
                                tokio::time::sleep(Duration::from_millis(250)).await
                            }
                            Err(_) => break None,
                        }
                    };
                    if let Ok(mut out) = out.lock() {
                        out.push(Asked {
                            window,
                            run_id,
                            tries,
                        });
                    }
                }));
            }
            for p in pending {
                let _ = p.await;
            }
        });
        Runs { asked, stop, task }
    }

    pub async fn stop(self) -> Vec<Asked> {
        let _ = self.stop.send(true);
        let _ = self.task.await;
        let mut asked = self.asked.lock().unwrap_or_else(|p| p.into_inner());
        std::mem::take(&mut *asked)
    }
}

/// Waits (up to `limit`) for every run to reach an end state; the state of each.
pub async fn settle(
    clients: &Clients,
    runs: &[String],
    limit: Duration,
) -> HashMap<String, RunState> {
    let started = Instant::now();
    let mut states: HashMap<String, RunState> = HashMap::new();
    loop {
        for id in runs {
            if states
                .get(id)
                .is_some_and(|s| !matches!(s, RunState::Queued | RunState::Running))
            {
                continue;
            }
            if let Ok(r) = clients
                .jobs()
                .get_run(GetRunRequest { id: id.clone() })
                .await
            {
                if let Some(run) = r.into_inner().run {
                    states.insert(id.clone(), run.state());
                }
            }
        }
        let open = runs
            .iter()
            .filter(|id| {
                states
                    .get(*id)
                    .is_none_or(|s| matches!(s, RunState::Queued | RunState::Running))
            })
            .count();
        if open == 0 || started.elapsed() > limit {
            return states;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// The schedule's fire records: scheduled second → how many records.
pub async fn fires(clients: &Clients, schedule_id: &str) -> anyhow::Result<HashMap<i64, u32>> {
    let mut seconds: HashMap<i64, u32> = HashMap::new();
    let mut token = String::new();
    loop {
        let page = clients
            .scheduler()
            .list_fire_records(ListFireRecordsRequest {
                schedule_id: schedule_id.into(),
                page_size: 1000,
                page_token: token,
                ..Default::default()
            })
            .await?
            .into_inner();
        for record in page.fire_records {
            if let Some(t) = record.scheduled_time {
                *seconds.entry(t.seconds).or_default() += 1;
            }
        }
        if page.next_page_token.is_empty() {
            return Ok(seconds);
        }
        token = page.next_page_token;
    }
}
