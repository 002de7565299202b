//! Leases and the reaper, with real executor processes: one killed with SIGKILL mid-step
//! leaves runs that are requeued and finished by another executor, or failed with
//! EXECUTOR_LOST, per the job's policy — never left RUNNING. Runs nobody claims time out;
//! requests that were lost are published again; duplicate requests run a step once.

use std::time::Duration;

use opsconductor_api::jobs::v1::*;
use opsconductor_messaging::topology::platform;
use opsconductor_messaging::{Broker, OutgoingMessage, Topology};
use opsconductor_platform::ServiceKind;
use opsconductor_testkit::{JobsExt, Sandbox, StorageBackend};

use super::{job, shell, unique_path, LIMIT};
use crate::binary::Process;

/// Short leases and a quick reaper, so a lost executor is noticed in about two seconds.
const FAST_REAPER: &[(&str, &str)] = &[
    ("JOBS_RUN_LEASE_MS", "1500"),
    ("JOBS_REAPER_INTERVAL_MS", "200"),
];

/// `opsconductor serve executor` as a process of its own, wired to the sandbox, with `extra`
/// variables.
fn executor_process(s: &Sandbox, dir: &std::path::Path, extra: &[(&str, &str)]) -> Process {
    let env = s.service_env(ServiceKind::Executor);
    let mut envs: Vec<(&str, String)> = env.overrides().map(|(k, v)| (k, v.to_string())).collect();
    envs.push((
        "LISTEN_ADDR",
        format!("127.0.0.1:{}", opsconductor_testkit::free_port()),
    ));
    envs.push(("OPSCONDUCTOR_DATA_DIR", dir.display().to_string()));
    envs.extend(extra.iter().map(|(k, v)| (*k, v.to_string())));
    Process::start(&["serve", "executor"], &envs, dir)
}

/// Waits until the run's log has `text`.
pub async fn wait_for_line(s: &Sandbox, run_id: &str, text: &str) {
    let mut stream = s
        .jobs()
        .watch_run(WatchRunRequest {
            id: run_id.into(),
            include_logs: true,
            after_log_seq: 0,
        })
        .await
        .unwrap()
        .into_inner();
    let seen = async {
        while let Some(event) = stream.message().await.unwrap() {
            if matches!(&event.event, Some(watch_run_response::Event::LogLine(l)) if l.text == text)
            {
                return;
            }
        }
        panic!("the run ended without logging {text:?}");
    };
    tokio::time::timeout(LIMIT, seen)
        .await
        .expect("the line in time");
}

fn lost_after_start(name: &str, requeue_after_start: bool, max_attempts: u32) -> Job {
    lost_after_start_noting(name, requeue_after_start, max_attempts, "/dev/null")
}

/// The same, appending the pid of what it leaves running on its first attempt to `pids`.
fn lost_after_start_noting(
    name: &str,
    requeue_after_start: bool,
    max_attempts: u32,
    pids: &str,
) -> Job {
    let mut j = job(
        name,
        vec![shell(
            "work",
            &format!(
                "if [ \"$OPS_RUN_ATTEMPT\" = 1 ]; then sleep 300 & echo $! >> {pids}; \
                 echo started; wait; fi; echo done-$OPS_RUN_ATTEMPT"
            ),
        )],
    );
    j.requeue_after_start = requeue_after_start;
    j.max_attempts = max_attempts;
    j
}

async fn a_killed_executor_never_leaves_a_run_running(backend: StorageBackend) {
    let mut s = Sandbox::start_with(backend, FAST_REAPER).await;
    s.stop_service(ServiceKind::Executor).await;
    let dir = tempfile::tempdir().unwrap();
    let mut doomed = executor_process(&s, dir.path(), &[]);
    let pids = unique_path("orphans");
    let repeatable = s
        .jobs()
        .create(lost_after_start_noting("repeatable", true, 3, &pids))
        .await
        .unwrap();
    let once = s
        .jobs()
        .create(lost_after_start("once", false, 3))
        .await
        .unwrap();
    let single = s
        .jobs()
        .create(lost_after_start("single", true, 1))
        .await
        .unwrap();
    let mut runs = Vec::new();
    for j in [&repeatable, &once, &single] {
        let run = s.jobs().start(&j.id, &[]).await.unwrap();
        wait_for_line(&s, &run.id, "started").await;
        runs.push(run.id);
    }
    doomed.kill9();
    // What the dead executor's step started in the background dies with it.
    let orphan = std::fs::read_to_string(&pids).unwrap();
    let _ = std::fs::remove_file(&pids);
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while super::alive(orphan.trim()) {
        assert!(
            std::time::Instant::now() < deadline,
            "{orphan} outlived its executor"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Another executor: it takes what the reaper requeues.
    let (replica, _db) = s.start_replica(ServiceKind::Executor).await;
    let mut finished = Vec::new();
    for id in &runs {
        finished.push(s.jobs().finish(id, LIMIT).await.unwrap().0);
    }
    let [again, lost, used_up] = [&finished[0], &finished[1], &finished[2]];
    assert_eq!(
        RunState::try_from(again.state),
        Ok(RunState::Succeeded),
        "{}",
        again.error
    );
    assert_eq!(again.attempt, 2);
    let lines = s.jobs().log_text(&again.id).await.unwrap();
    assert!(
        lines.contains(&"started".to_string()) && lines.contains(&"done-2".to_string()),
        "{lines:?}"
    );
    assert_eq!(
        again.steps[0].run_attempt, 2,
        "the second claim's result replaced the first's"
    );
    assert_eq!(RunState::try_from(lost.state), Ok(RunState::Failed));
    assert_eq!(lost.error_reason, "EXECUTOR_LOST");
    assert!(lost.error.contains("requeue_after_start"), "{}", lost.error);
    assert_eq!(RunState::try_from(used_up.state), Ok(RunState::Failed));
    assert_eq!(used_up.error_reason, "EXECUTOR_LOST");
    assert!(used_up.error.contains("attempts"), "{}", used_up.error);
    // Nothing is left active.
    let active = s
        .jobs()
        .list_runs(ListRunsRequest {
            states: vec![RunState::Queued as i32, RunState::Running as i32],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(active.runs.is_empty(), "{:?}", active.runs);
    replica.stop().await.unwrap();
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_executor_never_leaves_a_run_running_sqlite() {
    a_killed_executor_never_leaves_a_run_running(StorageBackend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_executor_never_leaves_a_run_running_postgres() {
    a_killed_executor_never_leaves_a_run_running(StorageBackend::Postgres).await;
}

/// With no executor, a run fails at its queue timeout; a request that was lost (taken off the
/// queue by nobody's executor) is published again and the run completes.
async fn nothing_waits_in_the_queue_forever(backend: StorageBackend) {
    let extra = [FAST_REAPER, &[("JOBS_REREQUEST_AFTER_MS", "500")]].concat();
    let mut s = Sandbox::start_with(backend, &extra).await;
    s.stop_service(ServiceKind::Executor).await;
    let mut waits = job("waits", vec![shell("noop", "true")]);
    waits.queue_timeout = Some(prost_types::Duration {
        seconds: 1,
        nanos: 0,
    });
    let waits = s.jobs().create(waits).await.unwrap();
    let run = s.jobs().start(&waits.id, &[]).await.unwrap();
    let (run, _) = s.jobs().finish(&run.id, LIMIT).await.unwrap();
    assert_eq!(RunState::try_from(run.state), Ok(RunState::Failed));
    assert_eq!(run.error_reason, "QUEUE_TIMEOUT");
    assert_eq!(run.attempt, 0);

    let lost = s
        .jobs()
        .create(job("lost-request", vec![shell("noop", "echo ran")]))
        .await
        .unwrap();
    let run = s.jobs().start(&lost.id, &[]).await.unwrap();
    // Take every request off the queue, as a consumer that died with them would.
    let queue = s.broker.names().queue(&platform::run_requests());
    loop {
        let (_, body) = s.broker.next_message(&queue, LIMIT).await;
        let taken: RunRequested = prost::Message::decode(body.as_slice()).unwrap();
        if taken.run_id == run.id {
            break;
        }
    }
    let (replica, _db) = s.start_replica(ServiceKind::Executor).await;
    let (run, _) = s.jobs().finish(&run.id, LIMIT).await.unwrap();
    assert_eq!(
        RunState::try_from(run.state),
        Ok(RunState::Succeeded),
        "{}",
        run.error
    );
    replica.stop().await.unwrap();
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_waits_in_the_queue_forever_sqlite() {
    nothing_waits_in_the_queue_forever(StorageBackend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_waits_in_the_queue_forever_postgres() {
    nothing_waits_in_the_queue_forever(StorageBackend::Postgres).await;
}

/// The same request delivered again — during the run and after it — runs its step once.
async fn duplicate_requests_run_a_step_once(s: &Sandbox) {
    let marks = unique_path("marks");
    let j = s
        .jobs()
        .create(job(
            "once",
            vec![shell("mark", &format!("echo mark >> {marks}; sleep 1"))],
        ))
        .await
        .unwrap();
    let run = s.jobs().start(&j.id, &[]).await.unwrap();
    // Duplicates as the jobs service would send them (a broker redelivery, a relay repeating
    // a row after a crash): signed by it.
    let broker = Broker::start_trusted(
        s.broker.config("test-duplicates"),
        Topology::new(),
        s.producer_trust(ServiceKind::Jobs),
    );
    assert!(broker.wait_connected(Duration::from_secs(10)).await);
    let exchange = broker.names().exchange(&platform::jobs_exchange());
    let request = RunRequested {
        run_id: run.id.clone(),
        job_id: j.id.clone(),
        attempt: 1,
        requested_time: None,
    };
    let publish = || async {
        for _ in 0..3 {
            let message = OutgoingMessage::new(&exchange, platform::RUN_REQUESTED, &request);
            broker.publisher().publish(&message).await.unwrap();
        }
    };
    publish().await;
    let (run, _) = s.jobs().finish(&run.id, LIMIT).await.unwrap();
    publish().await;
    assert_eq!(RunState::try_from(run.state), Ok(RunState::Succeeded));
    assert_eq!(run.attempt, 1);
    // Every duplicate is taken off the queue (acknowledged), none dead-lettered.
    let queue = s.broker.names().queue(&platform::run_requests());
    let dlq = s
        .broker
        .names()
        .dead_letter_queue(&platform::run_requests());
    let deadline = std::time::Instant::now() + LIMIT;
    while s.broker.message_count(&queue).await > 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "duplicates stay queued"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(s.broker.message_count(&dlq).await, 0);
    assert_eq!(std::fs::read_to_string(&marks).unwrap(), "mark\n");
    let _ = std::fs::remove_file(&marks);
    broker.close().await;
}
opsconductor_testkit::on_both_backends!(duplicate_requests_run_a_step_once);

/// SIGTERM: the executor stops within its grace period and gives its run back, which another
/// executor finishes at once (not a lease later). A drained executor takes no new run until it
/// resumes.
async fn executors_drain_and_hand_runs_over(backend: StorageBackend) {
    use opsconductor_api::executor::v1::executor_service_client::ExecutorServiceClient;
    use opsconductor_api::executor::v1::{DrainExecutorRequest, GetExecutorStatusRequest};

    let mut s = Sandbox::start(backend).await;
    s.stop_service(ServiceKind::Executor).await;
    let dir = tempfile::tempdir().unwrap();
    let leaving = executor_process(
        &s,
        dir.path(),
        &[("OPSCONDUCTOR_SHUTDOWN_GRACE_MS", "1500")],
    );
    let j = s
        .jobs()
        .create(lost_after_start("handed-over", true, 3))
        .await
        .unwrap();
    let run = s.jobs().start(&j.id, &[]).await.unwrap();
    wait_for_line(&s, &run.id, "started").await;
    let (staying, _db) = s.start_replica(ServiceKind::Executor).await;
    let terminated = std::time::Instant::now();
    leaving.sigterm();
    let (code, _) = leaving.wait(Duration::from_secs(20));
    assert_eq!(code, Some(0));
    let (run, _) = s.jobs().finish(&run.id, LIMIT).await.unwrap();
    assert_eq!(
        RunState::try_from(run.state),
        Ok(RunState::Succeeded),
        "{}",
        run.error
    );
    assert_eq!(run.attempt, 2);
    assert!(
        terminated.elapsed() < Duration::from_secs(15),
        "handed over in {:?}, not after the 30 s lease",
        terminated.elapsed()
    );

    let mut executor = ExecutorServiceClient::new(opsconductor_testkit::channel_as(
        &staying.url,
        s.admin.access_token.clone(),
    ));
    let drained = executor
        .drain_executor(DrainExecutorRequest { resume: false })
        .await
        .unwrap()
        .into_inner();
    assert!(drained.draining);
    let quick = s
        .jobs()
        .create(job("while-drained", vec![shell("noop", "echo ran")]))
        .await
        .unwrap();
    let waiting = s.jobs().start(&quick.id, &[]).await.unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let still = s.jobs().run(&waiting.id).await.unwrap();
    assert_eq!(
        RunState::try_from(still.state),
        Ok(RunState::Queued),
        "a draining executor took a run"
    );
    let status = executor
        .get_executor_status(GetExecutorStatusRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(status.draining && status.broker_connected);
    executor
        .drain_executor(DrainExecutorRequest { resume: true })
        .await
        .unwrap();
    let (done, _) = s.jobs().finish(&waiting.id, LIMIT).await.unwrap();
    assert_eq!(RunState::try_from(done.state), Ok(RunState::Succeeded));
    staying.stop().await.unwrap();
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn executors_drain_and_hand_runs_over_sqlite() {
    executors_drain_and_hand_runs_over(StorageBackend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn executors_drain_and_hand_runs_over_postgres() {
    executors_drain_and_hand_runs_over(StorageBackend::Postgres).await;
}
