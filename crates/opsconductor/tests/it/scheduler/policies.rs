//! Overlap and misfire policies with the real jobs service and executor. A "gated" run holds
//! until the test creates its gate file, so "the previous run is still running" is a fact, not
//! a race; the scheduler learns that it finished from RunFinished.

use std::time::Duration;

use opsconductor_api::jobs::v1::{RunState, Step};
use opsconductor_api::scheduler::v1::*;
use opsconductor_platform::ServiceKind;
use opsconductor_testkit::{JobsExt, Sandbox, StorageBackend};

use super::*;
use crate::jobs::{string_param, unique_path};

fn gated() -> Vec<Step> {
    vec![shell(
        "hold",
        r#"while [ ! -e "$OPS_PARAM_GATE" ]; do sleep 0.05; done"#,
    )]
}

struct Gate {
    path: String,
}

impl Gate {
    fn new() -> Gate {
        Gate {
            path: unique_path("gate"),
        }
    }

    fn open(&self) {
        std::fs::write(&self.path, b"open").unwrap();
    }
}

impl Drop for Gate {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// A schedule that never fires by itself (once, tomorrow), fired with TriggerSchedule.
async fn triggered(s: &Sandbox, name: &str, policy: OverlapPolicy, gate: &Gate) -> Schedule {
    let mut j = job(name, gated());
    j.parameters = vec![string_param("gate")];
    let j = s.jobs().create(j).await.unwrap();
    let mut schedule = schedule_of(name, &j.id, once(now_secs() + 86_400));
    schedule.overlap_policy = policy as i32;
    schedule.parameters = [("gate".to_string(), gate.path.clone())].into();
    create(s, schedule).await
}

async fn trigger(s: &Sandbox, schedule: &Schedule) -> String {
    s.scheduler()
        .trigger_schedule(TriggerScheduleRequest {
            id: schedule.id.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .fire_record
        .unwrap()
        .id
}

/// Waits until fire `id` has `want` as its outcome; returns it.
async fn fire_is(s: &Sandbox, schedule: &Schedule, id: &str, want: FireOutcome) -> FireRecord {
    let what = format!("fire {id} {want:?}");
    let all = wait_fires(s, &schedule.id, &what, |f| {
        f.iter().any(|f| f.id == id && outcome(f) == want)
    })
    .await;
    all.into_iter().find(|f| f.id == id).unwrap()
}

async fn wait_run(s: &Sandbox, run_id: &str, want: RunState) {
    let run = s.jobs().finish(run_id, LIMIT).await.unwrap().0;
    assert_eq!(RunState::try_from(run.state).unwrap(), want, "{run:?}");
}

/// SKIP drops a fire while the run goes on; BUFFER_ONE keeps one and drops the rest, then
/// starts it when the run finishes; BUFFER_ALL starts every held fire, one at a time, oldest
/// first; ALLOW runs beside it.
async fn overlap_skip_buffer_and_allow(s: &Sandbox) {
    let gate = Gate::new();
    let skip = triggered(s, "skip", OverlapPolicy::Skip, &gate).await;
    let one = triggered(s, "buffer-one", OverlapPolicy::BufferOne, &gate).await;
    let all = triggered(s, "buffer-all", OverlapPolicy::BufferAll, &gate).await;
    let allow = triggered(s, "allow", OverlapPolicy::Allow, &gate).await;
    let mut first = Vec::new();
    for schedule in [&skip, &one, &all, &allow] {
        let id = trigger(s, schedule).await;
        first.push(fire_is(s, schedule, &id, FireOutcome::RunStarted).await);
    }
    let skipped = trigger(s, &skip).await;
    fire_is(s, &skip, &skipped, FireOutcome::SkippedOverlap).await;
    let kept = trigger(s, &one).await;
    fire_is(s, &one, &kept, FireOutcome::Waiting).await;
    let dropped = trigger(s, &one).await;
    fire_is(s, &one, &dropped, FireOutcome::SkippedOverlap).await;
    let held = [trigger(s, &all).await, trigger(s, &all).await];
    for id in &held {
        fire_is(s, &all, id, FireOutcome::Waiting).await;
    }
    let beside = trigger(s, &allow).await;
    fire_is(s, &allow, &beside, FireOutcome::RunStarted).await;

    gate.open();
    for f in &first {
        wait_run(s, &f.run_id, RunState::Succeeded).await;
    }
    let kept = fire_is(s, &one, &kept, FireOutcome::RunStarted).await;
    wait_run(s, &kept.run_id, RunState::Succeeded).await;
    let mut previous_end = None;
    for id in &held {
        let fire = fire_is(s, &all, id, FireOutcome::RunStarted).await;
        let run = get_run(s, &fire.run_id).await;
        if let Some(end) = previous_end {
            assert!(
                micros(run.create_time) >= micros(end),
                "held fires run one at a time"
            );
        }
        wait_run(s, &fire.run_id, RunState::Succeeded).await;
        previous_end = Some(get_run(s, &fire.run_id).await.end_time);
    }
    let fires_of_one = fires(s, &one.id).await;
    assert_eq!(fires_of_one.len(), 3);
}
on_both_backends!(overlap_skip_buffer_and_allow);

/// CANCEL_PREVIOUS cancels the running run, waits for its RunFinished, then starts.
async fn overlap_cancel_previous_waits_for_the_cancelled_run(s: &Sandbox) {
    let gate = Gate::new();
    let schedule = triggered(s, "replace", OverlapPolicy::CancelPrevious, &gate).await;
    let first = trigger(s, &schedule).await;
    let first = fire_is(s, &schedule, &first, FireOutcome::RunStarted).await;
    let second = trigger(s, &schedule).await;
    let second = fire_is(s, &schedule, &second, FireOutcome::RunStarted).await;
    assert_eq!(second.cancelled_run_id, first.run_id);
    let cancelled = get_run(s, &first.run_id).await;
    assert_eq!(
        RunState::try_from(cancelled.state).unwrap(),
        RunState::Cancelled
    );
    let started = get_run(s, &second.run_id).await;
    assert!(
        micros(started.create_time) >= micros(cancelled.end_time),
        "it waited for the cancel"
    );
    gate.open();
    wait_run(s, &second.run_id, RunState::Succeeded).await;
}
on_both_backends!(overlap_cancel_previous_waits_for_the_cancelled_run);

fn missable(name: &str, job_id: &str, at: i64, policy: MisfirePolicy) -> Schedule {
    let mut schedule = schedule_of(name, job_id, once(at));
    schedule.misfire_policy = policy as i32;
    schedule.misfire_threshold = Some(secs(1));
    schedule
}

/// Every scheduler down past a once schedule's time: SKIP records the miss, FIRE_ONCE fires
/// late. An every-second FIRE_ALL schedule fires the missed seconds inside its catch-up window
/// and records the older ones as missed: every second has exactly one record.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn misfires_while_the_scheduler_is_down() {
    let mut s = Sandbox::start(StorageBackend::Sqlite).await;
    let j = a_job(&s, "missable", vec![shell("noop", "true")]).await;
    let at = now_secs() + 3;
    let skip = create(&s, missable("skip", &j.id, at, MisfirePolicy::Skip)).await;
    let late = create(&s, missable("late", &j.id, at, MisfirePolicy::FireOnce)).await;
    let mut every = schedule_of("catch-up", &j.id, cron("* * * * * *", "UTC"));
    every.misfire_policy = MisfirePolicy::FireAll as i32;
    every.misfire_threshold = Some(secs(1));
    every.catch_up_window = Some(secs(3));
    every.overlap_policy = OverlapPolicy::Allow as i32;
    let every = create(&s, every).await;
    s.stop_service(ServiceKind::Scheduler).await;
    let down = now_secs();
    // The outage itself is what is tested: every scheduler is down for seven seconds.
    tokio::time::sleep(Duration::from_secs(7)).await;
    s.start_service(ServiceKind::Scheduler).await;
    let up = now_secs();

    let skipped = wait_fires(&s, &skip.id, "skip", |f| f.len() == 1).await;
    assert_eq!(outcome(&skipped[0]), FireOutcome::SkippedMisfire);
    let fired = wait_fires(&s, &late.id, "fire once", |f| {
        f.len() == 1 && outcome(&f[0]) == FireOutcome::RunStarted
    })
    .await;
    assert!(fired[0].lag.unwrap().seconds >= 1, "{:?}", fired[0]);
    let all = wait_fires(&s, &every.id, "caught up", |f| {
        f.iter().any(|f| {
            f.scheduled_time.unwrap().seconds > up + 1 && outcome(f) == FireOutcome::RunStarted
        })
    })
    .await;
    pause(&s, &every.id, "").await;
    assert_one_per_second(&all);
    for fire in &all {
        let t = fire.scheduled_time.unwrap().seconds;
        let o = outcome(fire);
        if t > down && t < up - 4 {
            assert_eq!(
                o,
                FireOutcome::SkippedMisfire,
                "older than the window: {fire:?}"
            );
        }
        if t >= up - 2 {
            assert_eq!(o, FireOutcome::RunStarted, "inside the window: {fire:?}");
        }
    }
    assert!(all
        .iter()
        .any(|f| outcome(f) == FireOutcome::SkippedMisfire));
    s.stop().await;
}

/// The jobs service down past the threshold: the fire is retried, then SKIP records a miss and
/// FIRE_ONCE starts the run once the jobs service is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn misfires_while_the_jobs_service_is_down() {
    let mut s = Sandbox::start(StorageBackend::Postgres).await;
    let j = a_job(&s, "missable", vec![shell("noop", "true")]).await;
    // Room for both schedules to be created before their time on a loaded machine: a once
    // schedule created after its time never fires (the test then saw no fire at all).
    let at = now_secs() + 3;
    let skip = create(&s, missable("skip", &j.id, at, MisfirePolicy::Skip)).await;
    let late = create(&s, missable("late", &j.id, at, MisfirePolicy::FireOnce)).await;
    s.stop_service(ServiceKind::Jobs).await;
    wait_fires(&s, &late.id, "a failed attempt", |f| {
        f.len() == 1 && !f[0].error.is_empty()
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    s.start_service(ServiceKind::Jobs).await;
    let skipped = wait_fires(&s, &skip.id, "skip", |f| {
        f.len() == 1 && outcome(&f[0]) != FireOutcome::Pending
    })
    .await;
    assert_eq!(
        outcome(&skipped[0]),
        FireOutcome::SkippedMisfire,
        "{skipped:?}"
    );
    let fired = wait_fires(&s, &late.id, "fire once", |f| {
        f.len() == 1 && outcome(&f[0]) == FireOutcome::RunStarted
    })
    .await;
    s.jobs().finish(&fired[0].run_id, LIMIT).await.unwrap();
    s.stop().await;
}
