//! The scheduler with the real jobs service and executor: schedules validated and changed under
//! revisions, fires that start runs as the owner once per due time, manual and backfilled
//! fires, owners who may no longer run jobs. Overlap and misfire policies are in [`policies`];
//! several replicas on one PostgreSQL in [`replicas`].

mod policies;
mod replicas;

use std::time::{Duration, Instant};

use opsconductor_api::jobs::v1::{GetRunRequest, Job, ListRunsRequest, Run};
use opsconductor_api::scheduler::v1::*;
use opsconductor_testkit::{assert_code, assert_violations, on_both_backends, JobsExt, Sandbox};
use prost_types::{Duration as PbDuration, FieldMask, Timestamp};
use tonic::Code;

use crate::jobs::{job, shell, LIMIT};

pub fn now_secs() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// A timestamp as microseconds, for ordering (0 when unset).
pub fn micros(t: Option<Timestamp>) -> i64 {
    t.map(|t| t.seconds * 1_000_000 + i64::from(t.nanos) / 1_000)
        .unwrap_or(0)
}

pub fn ts(seconds: i64) -> Timestamp {
    Timestamp { seconds, nanos: 0 }
}

pub fn secs(seconds: i64) -> PbDuration {
    PbDuration { seconds, nanos: 0 }
}

pub fn cron(expression: &str, zone: &str) -> schedule::Spec {
    schedule::Spec::Cron(CronSpec {
        expression: expression.into(),
        time_zone: zone.into(),
    })
}

pub fn once(at: i64) -> schedule::Spec {
    schedule::Spec::Once(OnceSpec {
        fire_time: Some(ts(at)),
    })
}

pub fn schedule_of(name: &str, job_id: &str, spec: schedule::Spec) -> Schedule {
    Schedule {
        name: name.into(),
        job_id: job_id.into(),
        spec: Some(spec),
        ..Default::default()
    }
}

pub async fn create(s: &Sandbox, schedule: Schedule) -> Schedule {
    s.scheduler()
        .create_schedule(CreateScheduleRequest {
            schedule: Some(schedule),
        })
        .await
        .unwrap_or_else(|e| panic!("create schedule: {e:?}"))
        .into_inner()
        .schedule
        .unwrap()
}

pub async fn a_job(s: &Sandbox, name: &str, steps: Vec<opsconductor_api::jobs::v1::Step>) -> Job {
    s.jobs().create(job(name, steps)).await.unwrap()
}

/// The runs a schedule started, as the jobs service lists them.
pub async fn runs_of(s: &Sandbox, schedule_id: &str) -> Vec<Run> {
    s.jobs()
        .list_runs(ListRunsRequest {
            schedule_id: schedule_id.into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .runs
}

pub async fn pause(s: &Sandbox, id: &str, note: &str) {
    s.scheduler()
        .pause_schedule(PauseScheduleRequest {
            id: id.into(),
            note: note.into(),
        })
        .await
        .unwrap_or_else(|e| panic!("pause {id}: {e:?}"));
}

/// Every fire record of a schedule, oldest due time first.
pub async fn fires(s: &Sandbox, schedule_id: &str) -> Vec<FireRecord> {
    let mut all = Vec::new();
    let mut token = String::new();
    loop {
        let page = s
            .scheduler()
            .list_fire_records(ListFireRecordsRequest {
                schedule_id: schedule_id.into(),
                page_size: 500,
                page_token: token,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        all.extend(page.fire_records);
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    all.sort_by_key(|f| {
        f.scheduled_time
            .map(|t| t.seconds * 1_000_000_000 + t.nanos as i64)
    });
    all
}

/// Asserts that the records' due times are consecutive seconds: one each, none missed.
#[track_caller]
pub fn assert_one_per_second(fires: &[FireRecord]) {
    let seconds: Vec<i64> = fires
        .iter()
        .map(|f| f.scheduled_time.unwrap().seconds)
        .collect();
    for pair in seconds.windows(2) {
        assert_eq!(pair[1], pair[0] + 1, "one record per second: {seconds:?}");
    }
}

pub fn outcome(f: &FireRecord) -> FireOutcome {
    FireOutcome::try_from(f.outcome).unwrap()
}

/// Waits (re-reading every 50 ms) until the fires of a schedule satisfy `done`.
pub async fn wait_fires(
    s: &Sandbox,
    schedule_id: &str,
    what: &str,
    done: impl Fn(&[FireRecord]) -> bool,
) -> Vec<FireRecord> {
    let started = Instant::now();
    loop {
        let all = fires(s, schedule_id).await;
        if done(&all) {
            return all;
        }
        assert!(
            started.elapsed() < LIMIT,
            "{what}: not within {LIMIT:?}; fires: {all:#?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub async fn get_run(s: &Sandbox, id: &str) -> Run {
    s.jobs()
        .get_run(GetRunRequest { id: id.into() })
        .await
        .unwrap()
        .into_inner()
        .run
        .unwrap()
}

async fn count_schedules(s: &Sandbox) -> usize {
    s.scheduler()
        .list_schedules(ListSchedulesRequest::default())
        .await
        .unwrap()
        .into_inner()
        .schedules
        .len()
}

/// Bad schedules are refused with the bad field named (the bad cron field in the message) and
/// nothing stored; a good one is changed only at the revision the caller read; pause keeps a
/// note, resume recomputes the next fire; a preview shows daylight saving as it will fire.
async fn schedules_validate_and_change_under_revisions(s: &Sandbox) {
    let j = a_job(s, "nightly", vec![shell("noop", "true")]).await;
    let bad = |mut schedule: Schedule, change: fn(&mut Schedule)| {
        change(&mut schedule);
        async move {
            s.scheduler()
                .create_schedule(CreateScheduleRequest {
                    schedule: Some(schedule),
                })
                .await
                .unwrap_err()
        }
    };
    let good = schedule_of("nightly", &j.id, cron("30 2 * * *", "Europe/Berlin"));
    let e = bad(good.clone(), |s| s.spec = Some(cron("0 25 * * *", "UTC"))).await;
    assert_violations(&e, &["schedule.cron.expression"]);
    assert!(e.message().contains("hour field \"25\""), "{}", e.message());
    let e = bad(good.clone(), |s| {
        s.spec = Some(cron("0 0 * * *", "Mars/Base"))
    })
    .await;
    assert_violations(&e, &["schedule.cron.time_zone"]);
    let e = bad(good.clone(), |s| {
        s.spec = None;
        s.name = "Not A Slug".into();
        s.jitter = Some(secs(7200));
        s.overlap_policy = 42;
    })
    .await;
    assert_violations(
        &e,
        &[
            "schedule.spec",
            "schedule.name",
            "schedule.jitter",
            "schedule.overlap_policy",
        ],
    );
    let e = bad(good.clone(), |s| {
        s.spec = Some(schedule::Spec::Interval(IntervalSpec {
            interval: Some(secs(30)),
            start_time: None,
        }))
    })
    .await;
    assert_violations(&e, &["schedule.interval.interval"]);
    let e = bad(good.clone(), |s| {
        s.job_id = uuid::Uuid::now_v7().to_string()
    })
    .await;
    assert_violations(&e, &["schedule.job_id"]);
    assert_eq!(count_schedules(s).await, 0, "nothing half-written");
    let e = s
        .scheduler()
        .get_schedule(GetScheduleRequest { id: "nope".into() })
        .await
        .unwrap_err();
    assert_violations(&e, &["id"]);
    let e = s
        .scheduler()
        .trigger_schedule(TriggerScheduleRequest { id: "nope".into() })
        .await
        .unwrap_err();
    assert_violations(&e, &["id"]);
    let e = s
        .scheduler()
        .list_fire_records(ListFireRecordsRequest {
            schedule_id: "nope".into(),
            outcome: 99,
            page_size: -1,
            page_token: "forged".into(),
        })
        .await
        .unwrap_err();
    assert_violations(&e, &["schedule_id", "outcome", "page_size", "page_token"]);
    let e = s
        .scheduler()
        .list_schedules(ListSchedulesRequest {
            job_id: "nope".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_violations(&e, &["job_id"]);

    let created = create(s, good.clone()).await;
    assert_eq!(created.revision, 1);
    assert!(created.enabled);
    assert_eq!(created.owner_user_id, s.admin.user_id);
    let preview = s
        .scheduler()
        .preview_schedule(PreviewScheduleRequest {
            source: Some(preview_schedule_request::Source::ScheduleId(
                created.id.clone(),
            )),
            count: 1,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(Some(preview.fire_times[0]), created.next_fire_time);
    // Spring forward in Berlin: 02:30 does not exist on 29 March 2026 and fires at 03:00 CEST.
    let preview = s
        .scheduler()
        .preview_schedule(PreviewScheduleRequest {
            source: Some(preview_schedule_request::Source::Cron(CronSpec {
                expression: "30 2 * * *".into(),
                time_zone: "Europe/Berlin".into(),
            })),
            count: 2,
            after_time: Some(ts(1_774_699_200)), // 2026-03-28T12:00:00Z
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        preview.fire_times,
        vec![ts(1_774_746_000), ts(1_774_830_600)] // 01:00Z (03:00 CEST), 00:30Z next day
    );
    let e = s
        .scheduler()
        .preview_schedule(PreviewScheduleRequest {
            source: Some(preview_schedule_request::Source::Cron(CronSpec {
                expression: "0 0 32 * *".into(),
                time_zone: String::new(),
            })),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_violations(&e, &["cron.expression"]);
    assert!(e.message().contains("day-of-month"), "{}", e.message());

    let update =
        |description: &str, expected_revision: u64, paths: &[&str]| UpdateScheduleRequest {
            schedule: Some(Schedule {
                id: created.id.clone(),
                description: description.into(),
                ..Default::default()
            }),
            update_mask: Some(FieldMask {
                paths: paths.iter().map(|p| p.to_string()).collect(),
            }),
            expected_revision,
        };
    let e = s
        .scheduler()
        .update_schedule(update("stale", 7, &["description"]))
        .await
        .unwrap_err();
    assert_code(&e, Code::FailedPrecondition, "REVISION_MISMATCH");
    let e = s
        .scheduler()
        .update_schedule(update("x", 1, &["owner_user_id"]))
        .await
        .unwrap_err();
    assert_violations(&e, &["update_mask.paths[0]"]);
    let updated = s
        .scheduler()
        .update_schedule(update("every night", 1, &["description"]))
        .await
        .unwrap()
        .into_inner()
        .schedule
        .unwrap();
    assert_eq!(
        (updated.revision, updated.description.as_str()),
        (2, "every night")
    );
    assert_eq!(updated.next_fire_time, created.next_fire_time);

    let pause = || PauseScheduleRequest {
        id: created.id.clone(),
        note: "change freeze".into(),
    };
    let paused = s
        .scheduler()
        .pause_schedule(pause())
        .await
        .unwrap()
        .into_inner();
    let paused = paused.schedule.unwrap();
    assert!(!paused.enabled);
    assert_eq!(paused.pause_note, "change freeze");
    assert_eq!(paused.paused_by.unwrap().user_id, s.admin.user_id);
    assert_eq!(paused.next_fire_time, None);
    let e = s
        .scheduler()
        .pause_schedule(PauseScheduleRequest {
            id: created.id.clone(),
            note: "x".repeat(1025),
        })
        .await
        .unwrap_err();
    assert_violations(&e, &["note"]);
    let again = s
        .scheduler()
        .pause_schedule(pause())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        again.schedule.unwrap().revision,
        paused.revision,
        "pausing twice is a no-op"
    );
    let resumed = s
        .scheduler()
        .resume_schedule(ResumeScheduleRequest {
            id: created.id.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .schedule
        .unwrap();
    assert!(resumed.enabled && resumed.pause_note.is_empty());
    assert_eq!(resumed.next_fire_time, created.next_fire_time);

    s.scheduler()
        .delete_schedule(DeleteScheduleRequest {
            id: created.id.clone(),
        })
        .await
        .unwrap();
    let e = s
        .scheduler()
        .get_schedule(GetScheduleRequest { id: created.id })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
}
on_both_backends!(schedules_validate_and_change_under_revisions);

/// An every-second schedule: each due second has one fire record and one run, started by the
/// scheduler for the owner with the due time on the run; pausing stops it.
async fn fires_start_one_run_per_due_time_as_the_owner(s: &Sandbox) {
    let j = a_job(s, "every-second", vec![shell("noop", "true")]).await;
    let mut every = schedule_of("every-second", &j.id, cron("* * * * * *", "UTC"));
    every.overlap_policy = OverlapPolicy::Allow as i32;
    let schedule = create(s, every).await;
    let started = |f: &[FireRecord]| {
        f.iter()
            .filter(|f| outcome(f) == FireOutcome::RunStarted)
            .count()
            >= 3
    };
    wait_fires(s, &schedule.id, "three runs", started).await;
    pause(s, &schedule.id, "").await;
    let all = wait_fires(s, &schedule.id, "settled", |f| {
        f.iter().all(|f| outcome(f) != FireOutcome::Pending)
    })
    .await;
    assert_one_per_second(&all);
    let mut run_ids = Vec::new();
    for fire in &all {
        assert_eq!(outcome(fire), FireOutcome::RunStarted, "{fire:?}");
        assert_eq!(fire.kind, FireKind::Scheduled as i32);
        let lag = fire.lag.unwrap();
        assert!(lag.seconds >= 0 && lag.seconds < 10, "{lag:?}");
        let run = get_run(s, &fire.run_id).await;
        let trigger = run.trigger.clone().unwrap();
        assert_eq!(trigger.schedule_id, schedule.id);
        assert_eq!(trigger.fire_time, fire.scheduled_time);
        let by = run.triggered_by.clone().unwrap();
        assert_eq!(
            (by.user_id.as_str(), by.service_id.as_str()),
            (s.admin.user_id.as_str(), "scheduler")
        );
        run_ids.push(run.id);
    }
    run_ids.dedup();
    assert_eq!(run_ids.len(), all.len(), "a run per fire");
    // Each fire counted once on /metrics, by its outcome.
    let (_, text) = crate::metrics::http(
        "GET",
        &s.metrics_url(opsconductor_platform::ServiceKind::Scheduler),
    )
    .await;
    assert_eq!(
        crate::metrics::sample(
            &text,
            "opsconductor_schedule_fires_total",
            &["outcome=\"run_started\""]
        ),
        Some(all.len() as f64),
        "{text}"
    );
    let listed = runs_of(s, &schedule.id).await;
    assert_eq!(listed.len(), all.len(), "no run without its fire");
    for run in listed {
        s.jobs().finish(&run.id, LIMIT).await.unwrap();
    }
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    assert_eq!(
        fires(s, &schedule.id).await.len(),
        all.len(),
        "paused: no more fires"
    );
}
on_both_backends!(fires_start_one_run_per_due_time_as_the_owner);

/// TriggerSchedule fires now as MANUAL; BackfillSchedule fires each past due time once,
/// however often it is asked, one run at a time.
async fn trigger_and_backfill_fire_each_time_once(s: &Sandbox) {
    let j = a_job(s, "hourly", vec![shell("noop", "true")]).await;
    let anchor = now_secs() - 2 * 86_400;
    let mut hourly = schedule_of(
        "minutely",
        &j.id,
        schedule::Spec::Interval(IntervalSpec {
            interval: Some(secs(60)),
            start_time: Some(ts(anchor)),
        }),
    );
    hourly.overlap_policy = OverlapPolicy::Skip as i32;
    let schedule = create(s, hourly).await;
    // Paused, it fires only what it is asked to (a backfill fires a paused schedule).
    pause(s, &schedule.id, "backfill only").await;
    let backfill = |start: i64, end: i64| BackfillScheduleRequest {
        id: schedule.id.clone(),
        start_time: Some(ts(start)),
        end_time: Some(ts(end)),
    };
    let first = s
        .scheduler()
        .backfill_schedule(backfill(anchor, anchor + 300))
        .await
        .unwrap()
        .into_inner();
    assert_eq!((first.created, first.already_recorded), (5, 0));
    let again = s
        .scheduler()
        .backfill_schedule(backfill(anchor, anchor + 360))
        .await
        .unwrap()
        .into_inner();
    assert_eq!((again.created, again.already_recorded), (1, 5));
    let e = s
        .scheduler()
        .backfill_schedule(backfill(anchor, now_secs() + 3_600))
        .await
        .unwrap_err();
    assert_violations(&e, &["end_time"]);
    let e = s
        .scheduler()
        .backfill_schedule(backfill(anchor, anchor + 86_400))
        .await
        .unwrap_err();
    assert_violations(&e, &["end_time"]);
    let e = s
        .scheduler()
        .backfill_schedule(BackfillScheduleRequest {
            id: "nope".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_violations(&e, &["id", "start_time", "end_time"]);
    let all = wait_fires(s, &schedule.id, "six backfilled runs", |f| {
        f.len() == 6 && f.iter().all(|f| outcome(f) == FireOutcome::RunStarted)
    })
    .await;
    for (i, fire) in all.iter().enumerate() {
        assert_eq!(fire.kind, FireKind::Backfill as i32);
        assert_eq!(fire.scheduled_time, Some(ts(anchor + 60 * i as i64)));
        assert_eq!(fire.requested_by.clone().unwrap().user_id, s.admin.user_id);
    }
    // One at a time: each backfilled run started after the previous one finished.
    let mut runs = Vec::new();
    for fire in &all {
        runs.push(get_run(s, &fire.run_id).await);
    }
    for pair in runs.windows(2) {
        assert!(
            micros(pair[1].create_time) >= micros(pair[0].end_time),
            "backfill runs overlapped"
        );
    }
    let last = &all[all.len() - 1].run_id;
    s.jobs().finish(last, LIMIT).await.unwrap();
    let manual = s
        .scheduler()
        .trigger_schedule(TriggerScheduleRequest {
            id: schedule.id.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .fire_record
        .unwrap();
    assert_eq!(manual.kind, FireKind::Manual as i32);
    let done = wait_fires(s, &schedule.id, "the manual fire", |f| {
        f.iter()
            .any(|f| f.id == manual.id && outcome(f) == FireOutcome::RunStarted)
    })
    .await;
    let fired = done.iter().find(|f| f.id == manual.id).unwrap();
    s.jobs().finish(&fired.run_id, LIMIT).await.unwrap();
}
on_both_backends!(trigger_and_backfill_fire_each_time_once);

/// An owner who is disabled, or no longer an operator, does not get runs: the fire is FAILED
/// with the reason, and a ScheduleFireFailed waits for the notification service.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_owner_who_may_no_longer_run_jobs_gets_failed_fires_and_a_notice() {
    use opsconductor_api::common::v1::Role;
    use opsconductor_api::user::v1::{UpdateUserRequest, User};
    use opsconductor_messaging::topology::platform;
    use prost::Message;

    let mut s = Sandbox::start_with(
        opsconductor_testkit::StorageBackend::Postgres,
        &[("SCHEDULER_OWNER_CACHE_MS", "0")],
    )
    .await;
    // The test reads the notice off the queue in the notification service's place.
    s.stop_service(opsconductor_platform::ServiceKind::Notification)
        .await;
    let j = a_job(&s, "owned", vec![shell("noop", "true")]).await;
    let (alice, session) = s.user_with_role("alice", Role::Admin).await;
    let as_alice = s.clients_as(&session.access_token);
    let schedule = as_alice
        .scheduler()
        .create_schedule(CreateScheduleRequest {
            schedule: Some(schedule_of("alices", &j.id, once(now_secs() + 86_400))),
        })
        .await
        .unwrap()
        .into_inner()
        .schedule
        .unwrap();
    assert_eq!(schedule.owner_user_id, alice.id);
    let change = |user: User, paths: &[&str]| UpdateUserRequest {
        user: Some(user),
        update_mask: Some(FieldMask {
            paths: paths.iter().map(|p| p.to_string()).collect(),
        }),
    };
    let trigger_and_fail = |reason: &'static str| {
        let s = &s;
        let id = schedule.id.clone();
        async move {
            let fire = s
                .scheduler()
                .trigger_schedule(TriggerScheduleRequest { id: id.clone() })
                .await
                .unwrap()
                .into_inner()
                .fire_record
                .unwrap();
            let all = wait_fires(s, &id, reason, |f| {
                f.iter()
                    .any(|f| f.id == fire.id && outcome(f) == FireOutcome::Failed)
            })
            .await;
            let failed = all.into_iter().find(|f| f.id == fire.id).unwrap();
            assert_eq!(failed.error_reason, reason, "{failed:?}");
            assert!(failed.run_id.is_empty());
            failed
        }
    };
    s.user()
        .update_user(change(
            User {
                id: alice.id.clone(),
                disabled: true,
                ..Default::default()
            },
            &["disabled"],
        ))
        .await
        .unwrap();
    let failed = trigger_and_fail("OWNER_DISABLED").await;
    let queue = s
        .broker
        .names()
        .queue(&platform::schedule_fire_failed_notifications());
    let (key, body) = s.broker.next_message(&queue, LIMIT).await;
    assert_eq!(key, platform::SCHEDULE_FIRE_FAILED);
    let notice = ScheduleFireFailed::decode(body.as_slice()).unwrap();
    assert_eq!(notice.owner_user_id, alice.id);
    assert_eq!(notice.fire.unwrap().id, failed.id);

    s.user()
        .update_user(change(
            User {
                id: alice.id.clone(),
                disabled: false,
                role: Role::Viewer as i32,
                ..Default::default()
            },
            &["disabled", "role"],
        ))
        .await
        .unwrap();
    trigger_and_fail("OWNER_ROLE").await;
    let runs = runs_of(&s, &schedule.id).await;
    assert!(runs.is_empty(), "no run for an owner who may not run it");
    s.stop().await;
}

/// A schedule row someone with database access garbled: it stops firing (and says so in the
/// log), GetSchedule answers INTERNAL, and the other schedules keep firing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_garbled_schedule_row_stops_alone() {
    use opsconductor_platform::ServiceKind;

    let s = Sandbox::start(opsconductor_testkit::StorageBackend::Sqlite).await;
    let j = a_job(&s, "garbled", vec![shell("noop", "true")]).await;
    let every = |name: &str| {
        let mut schedule = schedule_of(name, &j.id, cron("* * * * * *", "UTC"));
        schedule.overlap_policy = OverlapPolicy::Allow as i32;
        schedule
    };
    let garbled = create(&s, every("garbled")).await;
    let healthy = create(&s, every("healthy")).await;
    let db = s.db(ServiceKind::Scheduler);
    sqlx::query("UPDATE schedules SET spec = $1 WHERE id = $2")
        .bind(vec![0xffu8, 0xff, 0xff])
        .bind(&garbled.id)
        .execute(db.pool())
        .await
        .unwrap();
    let since = now_secs() + 1;
    wait_fires(&s, &healthy.id, "the healthy schedule goes on", |f| {
        f.iter()
            .filter(|f| {
                f.scheduled_time.unwrap().seconds > since && outcome(f) == FireOutcome::RunStarted
            })
            .count()
            >= 2
    })
    .await;
    let (due,): (Option<i64>,) = sqlx::query_as("SELECT due_time FROM schedules WHERE id = $1")
        .bind(&garbled.id)
        .fetch_one(db.pool())
        .await
        .unwrap();
    assert_eq!(due, None, "the garbled schedule is no longer due");
    let e = s
        .scheduler()
        .get_schedule(GetScheduleRequest {
            id: garbled.id.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Internal);
    pause(&s, &healthy.id, "").await;
    s.stop().await;
}

/// A schedule whose job was deleted fails its fire with JOB_NOT_FOUND and pauses itself, so
/// its owner hears of it once rather than at every due time.
async fn a_schedule_whose_job_is_gone_pauses_itself(s: &Sandbox) {
    use opsconductor_api::jobs::v1::DeleteJobRequest;

    let j = a_job(s, "short-lived", vec![shell("noop", "true")]).await;
    let schedule = create(s, schedule_of("orphan", &j.id, once(now_secs() + 86_400))).await;
    s.jobs()
        .delete_job(DeleteJobRequest { id: j.id.clone() })
        .await
        .unwrap();
    s.scheduler()
        .trigger_schedule(TriggerScheduleRequest {
            id: schedule.id.clone(),
        })
        .await
        .unwrap();
    let all = wait_fires(s, &schedule.id, "a failed fire", |f| {
        f.iter().any(|f| outcome(f) == FireOutcome::Failed)
    })
    .await;
    assert_eq!(all[0].error_reason, "JOB_NOT_FOUND");
    let started = Instant::now();
    let paused = loop {
        let current = s
            .scheduler()
            .get_schedule(GetScheduleRequest {
                id: schedule.id.clone(),
            })
            .await
            .unwrap()
            .into_inner()
            .schedule
            .unwrap();
        if !current.enabled {
            break current;
        }
        assert!(started.elapsed() < LIMIT, "the schedule was not paused");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(paused.pause_note.contains("no longer exists"), "{paused:?}");
    assert_eq!(paused.paused_by.unwrap().service_id, "scheduler");
    assert_eq!(paused.next_fire_time, None);
}
on_both_backends!(a_schedule_whose_job_is_gone_pauses_itself);
