//! A job's limits: concurrent runs (queued or refused), targets at once, and how many failed
//! targets a step tolerates before it skips the rest.

use std::time::Duration;

use opsconductor_api::jobs::v1::*;
use opsconductor_api::targets::v1::{CreateTargetRequest, Target};
use opsconductor_testkit::{assert_code, on_both_backends, JobsExt, Sandbox};
use tonic::Code;

use super::{job, shell, unique_path, LIMIT};

/// One at a time: queued runs wait for the running one and never overlap; with REFUSE the
/// second start is refused while the first is active, and its own retry still gets its run.
async fn concurrent_runs_queue_or_are_refused(s: &Sandbox) {
    let spans = unique_path("spans");
    let mut queued = job(
        "one-at-a-time",
        vec![shell(
            "span",
            &format!("echo start >> {spans}; sleep 0.3; echo end >> {spans}"),
        )],
    );
    queued.max_concurrent_runs = 1;
    let queued = s.jobs().create(queued).await.unwrap();
    let mut runs = Vec::new();
    for _ in 0..3 {
        runs.push(s.jobs().start(&queued.id, &[]).await.unwrap());
    }
    for run in &runs {
        let (run, _) = s.jobs().finish(&run.id, LIMIT).await.unwrap();
        assert_eq!(
            RunState::try_from(run.state),
            Ok(RunState::Succeeded),
            "{}",
            run.error
        );
    }
    let log = std::fs::read_to_string(&spans).unwrap();
    let _ = std::fs::remove_file(&spans);
    assert_eq!(log, "start\nend\n".repeat(3), "runs overlapped");

    let mut refusing = job("refusing", vec![shell("wait", "sleep 1")]);
    refusing.max_concurrent_runs = 1;
    refusing.concurrency_policy = ConcurrencyPolicy::Refuse as i32;
    let refusing = s.jobs().create(refusing).await.unwrap();
    let start = |key: &str| StartRunRequest {
        job_id: refusing.id.clone(),
        idempotency_key: key.into(),
        ..Default::default()
    };
    let first = s
        .jobs()
        .start_run(start("first"))
        .await
        .unwrap()
        .into_inner()
        .run
        .unwrap();
    let refused = s.jobs().start_run(start("second")).await.unwrap_err();
    assert_code(&refused, Code::FailedPrecondition, "CONCURRENCY_LIMIT");
    let again = s
        .jobs()
        .start_run(start("first"))
        .await
        .unwrap()
        .into_inner()
        .run
        .unwrap();
    assert_eq!(again.id, first.id);
    s.jobs().finish(&first.id, LIMIT).await.unwrap();
    let later = s
        .jobs()
        .start_run(start("second"))
        .await
        .unwrap()
        .into_inner()
        .run
        .unwrap();
    s.jobs().finish(&later.id, LIMIT).await.unwrap();
}
on_both_backends!(concurrent_runs_queue_or_are_refused);

async fn fleet(s: &Sandbox, tag: &str, count: usize) {
    for i in 0..count {
        s.targets()
            .create_target(CreateTargetRequest {
                target: Some(Target {
                    name: format!("{tag}-{i}"),
                    address: "127.0.0.1".into(),
                    port: 22,
                    tags: vec![tag.into()],
                    ..Default::default()
                }),
            })
            .await
            .unwrap();
    }
}

fn on_tag(mut j: Job, tag: &str) -> Job {
    j.targets = Some(TargetSelector {
        tags: vec![tag.into()],
        ..Default::default()
    });
    j
}

/// Two targets at a time out of five; with no failure tolerated, one failed target skips
/// the ones not started.
async fn targets_run_in_parallel_within_limits(s: &Sandbox) {
    fleet(s, "fleet", 5).await;
    let dir = unique_path("busy");
    let seen = unique_path("seen");
    // Each target's step runs as a uid of its own: the shared places are made writable by
    // all of them beforehand (a sticky directory, like /tmp).
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::create_dir(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o1777)).unwrap();
        std::fs::write(&seen, "").unwrap();
        std::fs::set_permissions(&seen, std::fs::Permissions::from_mode(0o666)).unwrap();
    }
    let script = format!(
        "mkdir -p {dir}; touch {dir}/$OPS_TARGET_NAME; ls {dir} | wc -l >> {seen}; sleep 0.5; rm {dir}/$OPS_TARGET_NAME"
    );
    let mut wide = on_tag(job("two-at-a-time", vec![shell("count", &script)]), "fleet");
    wide.max_parallel_targets = 2;
    let wide = s.jobs().create(wide).await.unwrap();
    let run = s.jobs().start(&wide.id, &[]).await.unwrap();
    let (run, _) = s.jobs().finish(&run.id, LIMIT).await.unwrap();
    assert_eq!(
        RunState::try_from(run.state),
        Ok(RunState::Succeeded),
        "{}",
        run.error
    );
    assert_eq!(run.targets.len(), 5);
    assert_eq!(run.steps.len(), 5);
    let counts: Vec<u32> = std::fs::read_to_string(&seen)
        .unwrap()
        .split_whitespace()
        .map(|n| n.parse().unwrap())
        .collect();
    let _ = std::fs::remove_file(&seen);
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(counts.len(), 5);
    assert_eq!(
        counts.iter().max(),
        Some(&2),
        "at most two at once, and two did run together: {counts:?}"
    );

    let mut brittle = on_tag(
        job(
            "brittle",
            vec![shell("fail", "exit 1"), shell("after", "true")],
        ),
        "fleet",
    );
    brittle.max_parallel_targets = 1;
    brittle.max_failed_targets = Some(0);
    let brittle = s.jobs().create(brittle).await.unwrap();
    let run = s.jobs().start(&brittle.id, &[]).await.unwrap();
    let (run, _) = s
        .jobs()
        .finish(&run.id, Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(RunState::try_from(run.state), Ok(RunState::Failed));
    let states: Vec<i32> = run
        .steps
        .iter()
        .filter(|st| st.step_name == "fail")
        .map(|st| st.state)
        .collect();
    assert_eq!(
        states
            .iter()
            .filter(|st| **st == StepState::Failed as i32)
            .count(),
        1,
        "{states:?}"
    );
    assert_eq!(
        states
            .iter()
            .filter(|st| **st == StepState::Skipped as i32)
            .count(),
        4,
        "{states:?}"
    );
    assert!(run
        .steps
        .iter()
        .filter(|st| st.step_name == "after")
        .all(|st| st.state == StepState::Skipped as i32));
}
on_both_backends!(targets_run_in_parallel_within_limits);
