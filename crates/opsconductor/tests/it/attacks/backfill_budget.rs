//! Backfills as a flood: every due time backfilled becomes a run, so a caller who may backfill
//! could start thousands of runs a minute one 1,000-time request after another. Each caller has
//! a budget of due times (`SCHEDULER_BACKFILL_RATE`), spent whole or not at all.

use opsconductor_api::common::v1::Role;
use opsconductor_api::scheduler::v1::*;
use opsconductor_testkit::{now_secs, Sandbox, StorageBackend};
use tonic::Code;
use tonic_types::StatusExt;

use crate::jobs::shell;
use crate::scheduler::{a_job, create, pause, schedule_of, secs, ts};

async fn fires(clients: &opsconductor_platform::client::Clients, id: &str) -> usize {
    clients
        .scheduler()
        .list_fire_records(ListFireRecordsRequest {
            schedule_id: id.into(),
            page_size: 100,
            ..Default::default()
        })
        .await
        .expect("list fires")
        .into_inner()
        .fire_records
        .len()
}

#[tokio::test]
async fn backfills_are_budgeted_per_caller_whole_or_not_at_all() {
    let s = Sandbox::start_with(
        StorageBackend::Sqlite,
        &[("SCHEDULER_BACKFILL_RATE", "8/3600s")],
    )
    .await;
    let j = a_job(&s, "budgeted", vec![shell("noop", "true")]).await;
    let anchor = now_secs() as i64 - 86_400;
    let schedule = create(
        &s,
        schedule_of(
            "minutely",
            &j.id,
            schedule::Spec::Interval(IntervalSpec {
                interval: Some(secs(60)),
                start_time: Some(ts(anchor)),
            }),
        ),
    )
    .await;
    pause(&s, &schedule.id, "backfill only").await;
    let backfill = |from: i64, count: i64| BackfillScheduleRequest {
        id: schedule.id.clone(),
        start_time: Some(ts(anchor + from * 60)),
        end_time: Some(ts(anchor + (from + count) * 60)),
    };

    let first = s
        .scheduler()
        .backfill_schedule(backfill(0, 5))
        .await
        .expect("within the budget")
        .into_inner();
    assert_eq!(first.created, 5);

    // Five more would overdraw the eight: refused whole, with a time to retry, nothing written.
    let refused = s
        .scheduler()
        .backfill_schedule(backfill(5, 5))
        .await
        .expect_err("over the budget");
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
    assert!(
        refused.message().contains("SCHEDULER_BACKFILL_RATE"),
        "{refused:?}"
    );
    let retry = refused
        .get_details_retry_info()
        .and_then(|r| r.retry_delay)
        .expect("RetryInfo");
    assert!(
        retry.as_secs() >= 60,
        "two due times at one per 450 s: {retry:?}"
    );
    assert_eq!(fires(s.clients(), &schedule.id).await, 5);

    // What is left can still be spent, exactly.
    let rest = s
        .scheduler()
        .backfill_schedule(backfill(5, 3))
        .await
        .expect("the rest of the budget")
        .into_inner();
    assert_eq!(rest.created, 3);
    let empty = s
        .scheduler()
        .backfill_schedule(backfill(8, 1))
        .await
        .expect_err("the budget is spent");
    assert_eq!(empty.code(), Code::ResourceExhausted);

    // Another administrator has a budget of their own.
    let (_, other) = s.user_with_role("second-admin", Role::Admin).await;
    let other = s.clients_as(&other.access_token);
    let theirs = other
        .scheduler()
        .backfill_schedule(backfill(8, 4))
        .await
        .expect("another caller's budget")
        .into_inner();
    assert_eq!(theirs.created, 4);
    assert_eq!(fires(s.clients(), &schedule.id).await, 12);
    s.stop().await;
}
