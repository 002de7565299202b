//! Two jobs replicas over one PostgreSQL database: an executor reports to one of them, and a
//! watcher connected to the other gets the log pushed live (through the broker), not only
//! when the run ends.

use std::time::Duration;

use opsconductor_api::jobs::v1::jobs_service_client::JobsServiceClient;
use opsconductor_api::jobs::v1::*;
use opsconductor_platform::ServiceKind;
use opsconductor_testkit::{channel_as, JobsExt, Sandbox, StorageBackend};

use super::{job, shell, unique_path, LIMIT};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watcher_on_another_replica_sees_the_run_live() {
    let s = Sandbox::start(StorageBackend::Postgres).await;
    let other = s
        .start_module(
            &opsconductor_jobs::Jobs,
            s.db(ServiceKind::Jobs).clone(),
            &[],
        )
        .await;
    let (start, marker) = (unique_path("start"), unique_path("go-on"));
    let j = s
        .jobs()
        .create(job(
            "waits-for-the-watcher",
            vec![shell(
                "wait",
                &format!(
                    "while [ ! -e {start} ]; do sleep 0.05; done; echo first; \
                     while [ ! -e {marker} ]; do sleep 0.05; done; echo second"
                ),
            )],
        ))
        .await
        .unwrap();
    // Started on (and reported to) the sandbox's replica; watched on the other one.
    let run = s.jobs().start(&j.id, &[]).await.unwrap();
    let mut watcher = JobsServiceClient::new(channel_as(&other.url, s.admin.access_token.clone()));
    let mut stream = watcher
        .watch_run(WatchRunRequest {
            id: run.id.clone(),
            include_logs: true,
            after_log_seq: 0,
        })
        .await
        .unwrap()
        .into_inner();
    // The run as it is comes first: from then on, the watcher is subscribed.
    let initial = stream.message().await.unwrap().unwrap();
    assert!(matches!(
        initial.event,
        Some(watch_run_response::Event::Run(_))
    ));
    std::fs::write(&start, "").unwrap();
    let first = async {
        while let Some(event) = stream.message().await.unwrap() {
            if matches!(&event.event, Some(watch_run_response::Event::LogLine(l)) if l.text == "first")
            {
                return;
            }
        }
        panic!("the watch ended before the first line");
    };
    // Written after the watcher subscribed, and the run cannot end before the second marker:
    // this line can only have been pushed from the other replica.
    tokio::time::timeout(Duration::from_secs(30), first)
        .await
        .expect("the first line, live");
    std::fs::write(&marker, "").unwrap();
    let mut ended = None;
    let mut second = false;
    let rest = async {
        while let Some(event) = stream.message().await.unwrap() {
            match event.event {
                Some(watch_run_response::Event::LogLine(l)) if l.text == "second" => second = true,
                Some(watch_run_response::Event::Run(r)) => ended = Some(r.state),
                _ => {}
            }
        }
    };
    tokio::time::timeout(LIMIT, rest)
        .await
        .expect("the watch ends with the run");
    let _ = std::fs::remove_file(&marker);
    let _ = std::fs::remove_file(&start);
    assert!(second);
    assert_eq!(ended, Some(RunState::Succeeded as i32));
    other.stop().await.unwrap();
    s.stop().await;
}
