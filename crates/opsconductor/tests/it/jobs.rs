//! The jobs service and the executor together: runs of shell and http steps end to end, live
//! watches, parameters that never become shell syntax, validation with nothing written,
//! idempotent starts, cancellation, retries. Leases, the reaper and lost executors are in
//! [`leases`]; what a step may not do on the executor's host is in [`confinement`].

mod confinement;
pub(crate) mod http;
mod leases;
mod limits;
mod replicas;
mod secrets;
pub(crate) mod ssh;

use std::time::Duration;

use opsconductor_api::jobs::v1::*;
use opsconductor_testkit::{assert_code, assert_violations, on_both_backends, JobsExt, Sandbox};
use tonic::Code;

pub const LIMIT: Duration = Duration::from_secs(60);

pub fn shell(name: &str, command: &str) -> Step {
    Step {
        name: name.into(),
        action: Some(step::Action::Shell(ShellStep {
            command: command.into(),
            env: Default::default(),
        })),
        ..Default::default()
    }
}

pub fn job(name: &str, steps: Vec<Step>) -> Job {
    Job {
        name: name.into(),
        steps,
        ..Default::default()
    }
}

pub fn string_param(name: &str) -> ParameterSpec {
    ParameterSpec {
        name: name.into(),
        r#type: ParameterType::String as i32,
        required: true,
        ..Default::default()
    }
}

fn state(run: &Run) -> RunState {
    RunState::try_from(run.state).unwrap()
}

/// Whether `pid` is a live process (a zombie waiting for its reaper is not).
pub fn alive(pid: &str) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !stat
            .rsplit(')')
            .next()
            .unwrap_or("")
            .trim_start()
            .starts_with('Z'),
        Err(_) => false,
    }
}

/// A file name no other test uses.
pub fn unique_path(what: &str) -> String {
    format!("/tmp/opsconductor-{what}-{}", uuid::Uuid::now_v7().simple())
}

/// Values that would run `touch` if they were ever read as shell syntax, passed both ways a
/// command may use them: as a quoted template value and as `$OPS_PARAM_X`.
async fn parameters_never_become_shell_syntax(s: &Sandbox) {
    let pwned = unique_path("pwned");
    let values = [
        format!("x'; touch {pwned}; '"),
        format!("$(touch {pwned})"),
        format!("`touch {pwned}` && touch {pwned} \" ; touch {pwned}"),
    ];
    let mut j = job(
        "quoting",
        vec![shell(
            "echo",
            "printf 'template=%s\\n' {{ params.x }}; printf 'env=%s\\n' \"$OPS_PARAM_X\"",
        )],
    );
    j.parameters = vec![string_param("x")];
    let j = s.jobs().create(j).await.unwrap();
    for value in &values {
        let run = s.jobs().start(&j.id, &[("x", value)]).await.unwrap();
        let (run, _) = s.jobs().finish(&run.id, LIMIT).await.unwrap();
        assert_eq!(state(&run), RunState::Succeeded, "{}", run.error);
        let lines = s.jobs().log_text(&run.id).await.unwrap();
        assert!(lines.contains(&format!("template={value}")), "{lines:?}");
        assert!(lines.contains(&format!("env={value}")), "{lines:?}");
    }
    assert!(
        !std::path::Path::new(&pwned).exists(),
        "a value ran as a command"
    );
}
on_both_backends!(parameters_never_become_shell_syntax);

/// A watcher sees the run queued, running, each step, every log line in order, and the end.
async fn a_watch_follows_the_run_live(s: &Sandbox) {
    let j = s
        .jobs()
        .create(job(
            "watched",
            vec![
                shell("first", "for i in 1 2 3; do echo line-$i; done"),
                shell("second", "echo to-stderr >&2"),
            ],
        ))
        .await
        .unwrap();
    let run = s.jobs().start(&j.id, &[]).await.unwrap();
    // Stored QUEUED; an executor may have claimed it before the answer was read back.
    assert!(matches!(state(&run), RunState::Queued | RunState::Running));
    let (run, events) = s.jobs().finish(&run.id, LIMIT).await.unwrap();
    assert_eq!(state(&run), RunState::Succeeded);
    assert_eq!(run.attempt, 1);
    assert!(run.start_time.is_some() && run.end_time.is_some());
    let lines: Vec<&LogLine> = events
        .iter()
        .filter_map(|e| match &e.event {
            Some(watch_run_response::Event::LogLine(l)) => Some(l),
            _ => None,
        })
        .collect();
    let seqs: Vec<u64> = lines.iter().map(|l| l.seq).collect();
    let expected: Vec<u64> = (1..=seqs.len() as u64).collect();
    assert_eq!(seqs, expected, "log lines arrive once each, in order");
    let texts: Vec<&str> = lines.iter().map(|l| l.text.as_str()).collect();
    for needle in ["line-1", "line-2", "line-3", "to-stderr"] {
        assert!(texts.contains(&needle), "{texts:?}");
    }
    let stderr = lines.iter().find(|l| l.text == "to-stderr").unwrap();
    assert_eq!(stderr.stream, LogStream::Stderr as i32);
    assert_eq!(stderr.step_name, "second");
    let steps: Vec<(String, i32)> = events
        .iter()
        .filter_map(|e| match &e.event {
            Some(watch_run_response::Event::Step(st)) => Some((st.step_name.clone(), st.state)),
            _ => None,
        })
        .collect();
    assert!(
        steps.contains(&("first".into(), StepState::Running as i32)),
        "{steps:?}"
    );
    assert!(
        steps.contains(&("second".into(), StepState::Succeeded as i32)),
        "{steps:?}"
    );
    assert_eq!(run.steps.len(), 2);
    assert!(run
        .steps
        .iter()
        .all(|st| st.state == StepState::Succeeded as i32 && st.exit_code == Some(0)));
    // A watch of a finished run gets the run and its whole log, then ends.
    let (_, again) = s.jobs().finish(&run.id, LIMIT).await.unwrap();
    let replayed = again
        .iter()
        .filter(|e| matches!(e.event, Some(watch_run_response::Event::LogLine(_))))
        .count();
    assert_eq!(replayed, lines.len());
    // Resuming after a seq sends only the lines after it.
    let mut stream = s
        .jobs()
        .watch_run(WatchRunRequest {
            id: run.id.clone(),
            include_logs: true,
            after_log_seq: 3,
        })
        .await
        .unwrap()
        .into_inner();
    let mut resumed = Vec::new();
    while let Some(event) = stream.message().await.unwrap() {
        if let Some(watch_run_response::Event::LogLine(l)) = event.event {
            resumed.push(l.seq);
        }
    }
    assert_eq!(resumed, (4..=seqs.len() as u64).collect::<Vec<_>>());
}
on_both_backends!(a_watch_follows_the_run_live);

/// A failing step is retried, then fails the run; the steps after it are skipped unless the
/// failing one continues on error.
async fn failures_retry_then_fail_and_skip_the_rest(s: &Sandbox) {
    let counter = unique_path("attempts");
    let mut flaky = shell("flaky", &format!("echo try >> {counter}; exit 3"));
    flaky.retries = 2;
    flaky.retry_delay = Some(prost_types::Duration {
        seconds: 0,
        nanos: 50_000_000,
    });
    let mut tolerated = shell("tolerated", "exit 1");
    tolerated.continue_on_error = true;
    let j = s
        .jobs()
        .create(job(
            "flaky",
            vec![tolerated, flaky, shell("never", "echo never-runs")],
        ))
        .await
        .unwrap();
    let run = s.jobs().start(&j.id, &[]).await.unwrap();
    let (run, _) = s.jobs().finish(&run.id, LIMIT).await.unwrap();
    assert_eq!(state(&run), RunState::Failed);
    assert_eq!(run.error_reason, "STEP_FAILED");
    assert!(run.error.contains("flaky"), "{}", run.error);
    let tries = std::fs::read_to_string(&counter).unwrap();
    let _ = std::fs::remove_file(&counter);
    assert_eq!(tries.lines().count(), 3, "one attempt and two retries");
    let by_name = |name: &str| {
        run.steps
            .iter()
            .find(|st| st.step_name == name)
            .unwrap()
            .clone()
    };
    assert_eq!(by_name("tolerated").state, StepState::Failed as i32);
    let flaky = by_name("flaky");
    assert_eq!(
        (flaky.state, flaky.attempt, flaky.exit_code),
        (StepState::Failed as i32, 3, Some(3))
    );
    assert_eq!(by_name("never").state, StepState::Skipped as i32);
    let lines = s.jobs().log_text(&run.id).await.unwrap();
    assert!(!lines.iter().any(|l| l == "never-runs"));
    // Counted once on /metrics, by its end state.
    let jobs = s.metrics_url(opsconductor_platform::ServiceKind::Jobs);
    let (_, text) = crate::metrics::http("GET", &jobs).await;
    let failed = ["state=\"failed\""];
    assert_eq!(
        crate::metrics::sample(&text, "opsconductor_runs_finished_total", &failed),
        Some(1.0),
        "{text}"
    );
}
on_both_backends!(failures_retry_then_fail_and_skip_the_rest);

/// Cancelling a running shell step stops it within a second or two, and takes the processes it
/// started with it; cancelling a queued run ends it at once.
async fn cancel_stops_the_step_and_its_processes(s: &Sandbox) {
    let pids = unique_path("pids");
    let j = s
        .jobs()
        .create(job(
            "long",
            vec![shell(
                "sleep",
                &format!("sleep 300 & echo $! > {pids}; echo $$ >> {pids}; echo started; wait"),
            )],
        ))
        .await
        .unwrap();
    let run = s.jobs().start(&j.id, &[]).await.unwrap();
    let mut stream = s
        .jobs()
        .watch_run(WatchRunRequest {
            id: run.id.clone(),
            include_logs: true,
            after_log_seq: 0,
        })
        .await
        .unwrap()
        .into_inner();
    while let Some(event) = stream.message().await.unwrap() {
        if matches!(&event.event, Some(watch_run_response::Event::LogLine(l)) if l.text == "started")
        {
            break;
        }
    }
    let cancelled_at = std::time::Instant::now();
    let cancelled_wall = std::time::SystemTime::now();
    let answer = s
        .jobs()
        .cancel_run(CancelRunRequest {
            id: run.id.clone(),
            reason: "changed my mind".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .run
        .unwrap();
    assert!(answer.cancel_requested);
    let (run, _) = s.jobs().finish(&run.id, LIMIT).await.unwrap();
    assert_eq!(state(&run), RunState::Cancelled);
    // The broadcast, not the next heartbeat (10 s away), stopped it.
    assert!(
        cancelled_at.elapsed() < Duration::from_secs(3),
        "took {:?}",
        cancelled_at.elapsed()
    );
    assert_eq!(run.cancel_reason, "changed my mind");
    assert_eq!(run.steps[0].state, StepState::Cancelled as i32);
    // The step ended (the executor's clock, this host) within a second of the cancel.
    let ended = run.steps[0].end_time.unwrap();
    let ended = std::time::UNIX_EPOCH + Duration::new(ended.seconds as u64, ended.nanos as u32);
    let took = ended.duration_since(cancelled_wall).unwrap_or_default();
    assert!(
        took < Duration::from_secs(1),
        "the step stopped {took:?} after the cancel"
    );
    for pid in std::fs::read_to_string(&pids).unwrap().split_whitespace() {
        assert!(!alive(pid), "process {pid} outlived the step");
    }
    let _ = std::fs::remove_file(&pids);
    // Cancelling again changes nothing.
    let again = s
        .jobs()
        .cancel_run(CancelRunRequest {
            id: run.id.clone(),
            reason: "again".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .run
        .unwrap();
    assert_eq!(again.cancel_reason, "changed my mind");
    // Who started it, which executor took it, who cancelled it: all in the audit trail, once.
    let events = crate::support::drain_audit(s).await;
    let of_run: Vec<&str> = events
        .iter()
        .filter(|e| e.resource_id == run.id)
        .map(|e| e.action.as_str())
        .collect();
    assert_eq!(
        of_run,
        ["run.start", "run.claim", "run.cancel", "run.complete"]
    );
    assert!(events
        .iter()
        .any(|e| e.action == "job.create" && e.resource_id == j.id));
}
on_both_backends!(cancel_stops_the_step_and_its_processes);

/// Bad definitions and bad run parameters are refused field by field, and nothing is stored.
async fn bad_input_is_refused_field_by_field(s: &Sandbox) {
    let mut bad = job(
        "Bad Name",
        vec![
            shell("uses-undeclared", "echo {{ params.nope }}"),
            Step {
                name: "no-action".into(),
                ..Default::default()
            },
            Step {
                name: "remote".into(),
                action: Some(step::Action::Ssh(SshStep {
                    command: "true".into(),
                    credential_id: String::new(),
                })),
                ..Default::default()
            },
            shell("uses-undeclared", "echo {{ target.secret }}"),
        ],
    );
    bad.parameters = vec![
        ParameterSpec {
            name: "n".into(),
            r#type: ParameterType::Int as i32,
            default_value: "x".into(),
            ..Default::default()
        },
        ParameterSpec {
            name: "p".into(),
            r#type: ParameterType::String as i32,
            pattern: "(".into(),
            ..Default::default()
        },
        ParameterSpec {
            name: "c".into(),
            r#type: ParameterType::Choice as i32,
            ..Default::default()
        },
    ];
    bad.max_attempts = 11;
    let status = s.jobs().create(bad).await.unwrap_err();
    assert_violations(
        &status,
        &[
            "job.name",
            "job.parameters[0].default_value",
            "job.parameters[1].pattern",
            "job.parameters[2].choices",
            "job.steps[0].shell.command",
            "job.steps[1].action",
            "job.steps[2].targets",
            "job.steps[3].shell.command",
            "job.steps[3].name",
            "job.max_attempts",
        ],
    );
    let mut env_step = shell("env", "true");
    if let Some(step::Action::Shell(sh)) = &mut env_step.action {
        sh.env.insert("OPS_RUN_ID".into(), "forged".into());
    }
    assert_violations(
        &s.jobs()
            .create(job("env", vec![env_step]))
            .await
            .unwrap_err(),
        &["job.steps[0].shell.env[OPS_RUN_ID]"],
    );
    let listed = s
        .jobs()
        .list_jobs(ListJobsRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert!(listed.jobs.is_empty(), "nothing stored: {:?}", listed.jobs);

    let mut j = job("typed", vec![shell("noop", "true")]);
    j.parameters = vec![
        ParameterSpec {
            name: "count".into(),
            r#type: ParameterType::Int as i32,
            required: true,
            min: Some(1),
            max: Some(5),
            ..Default::default()
        },
        ParameterSpec {
            name: "mode".into(),
            r#type: ParameterType::Choice as i32,
            choices: vec!["fast".into(), "safe".into()],
            default_value: "safe".into(),
            ..Default::default()
        },
        ParameterSpec {
            name: "host".into(),
            r#type: ParameterType::String as i32,
            pattern: "[a-z]+".into(),
            ..Default::default()
        },
    ];
    let j = s.jobs().create(j).await.unwrap();
    let status = s
        .jobs()
        .start(
            &j.id,
            &[
                ("count", "9"),
                ("mode", "reckless"),
                ("host", "UPPER"),
                ("extra", "1"),
            ],
        )
        .await
        .unwrap_err();
    assert_violations(
        &status,
        &[
            "parameters[count]",
            "parameters[mode]",
            "parameters[host]",
            "parameters[extra]",
        ],
    );
    assert_violations(
        &s.jobs().start(&j.id, &[]).await.unwrap_err(),
        &["parameters[count]"],
    );
    let runs = s
        .jobs()
        .list_runs(ListRunsRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert!(runs.runs.is_empty(), "no run stored");
    let status = s
        .jobs()
        .start_run(StartRunRequest {
            job_id: j.id.clone(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_violations(&status, &["idempotency_key"]);
    assert_code(
        &s.jobs()
            .start(super::support::MISSING_ID, &[])
            .await
            .unwrap_err(),
        Code::NotFound,
        "RESOURCE_NOT_FOUND",
    );
}
on_both_backends!(bad_input_is_refused_field_by_field);

/// The same key returns the same run; the same key with other parameters is refused.
async fn starts_are_idempotent_by_key(s: &Sandbox) {
    let mut j = job("keyed", vec![shell("noop", "true")]);
    j.parameters = vec![string_param("x")];
    let j = s.jobs().create(j).await.unwrap();
    let request = |x: &str| StartRunRequest {
        job_id: j.id.clone(),
        parameters: [("x".to_string(), x.to_string())].into(),
        idempotency_key: "key-1".into(),
        trigger: None,
    };
    let first = s
        .jobs()
        .start_run(request("a"))
        .await
        .unwrap()
        .into_inner()
        .run
        .unwrap();
    let second = s
        .jobs()
        .start_run(request("a"))
        .await
        .unwrap()
        .into_inner()
        .run
        .unwrap();
    assert_eq!(first.id, second.id);
    let status = s.jobs().start_run(request("b")).await.unwrap_err();
    assert_code(&status, Code::FailedPrecondition, "IDEMPOTENCY_KEY_REUSED");
    let runs = s
        .jobs()
        .list_runs(ListRunsRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(runs.runs.len(), 1);
    s.jobs().finish(&first.id, LIMIT).await.unwrap();
}
on_both_backends!(starts_are_idempotent_by_key);

/// A build step printing `build`, one printing shell syntax, and one using both outputs.
fn outputs_job(name: &str, build: &str, pwned: &str) -> Job {
    job(
        name,
        vec![
            shell("build", build),
            shell("evil", &format!("echo '$(touch {pwned})'")),
            shell(
                "use",
                "echo tag={{ steps.build.json.image.tag }} id={{ steps.build.json.items.0.id }}; \
                 echo got={{ steps.evil.output }}",
            ),
        ],
    )
}

/// A later step reads an earlier one's output and its JSON fields; an output holding shell
/// syntax stays a value; a reference to a step that has not run yet is refused when saved.
async fn later_steps_use_earlier_outputs(s: &Sandbox) {
    let pwned = unique_path("output-pwned");
    let json = r#"echo '{"image": {"tag": "v1.2"}, "items": [{"id": 7}]}'"#;
    let mixed = s
        .jobs()
        .create(outputs_job(
            "outputs",
            &format!("echo building; {json}"),
            &pwned,
        ))
        .await
        .unwrap();
    let run = s.jobs().start(&mixed.id, &[]).await.unwrap();
    let (run, _) = s.jobs().finish(&run.id, LIMIT).await.unwrap();
    assert_eq!(
        state(&run),
        RunState::Failed,
        "the build output is not JSON as a whole"
    );
    let lines = s.jobs().log_text(&run.id).await.unwrap();
    assert!(
        lines.iter().any(|l| l.contains("has no JSON field")),
        "{lines:?}"
    );

    let j = s
        .jobs()
        .create(outputs_job("json-outputs", json, &pwned))
        .await
        .unwrap();
    let run = s.jobs().start(&j.id, &[]).await.unwrap();
    let (run, _) = s.jobs().finish(&run.id, LIMIT).await.unwrap();
    assert_eq!(state(&run), RunState::Succeeded, "{}", run.error);
    let lines = s.jobs().log_text(&run.id).await.unwrap();
    assert!(lines.contains(&"tag=v1.2 id=7".to_string()), "{lines:?}");
    assert!(
        lines.contains(&format!("got=$(touch {pwned})")),
        "{lines:?}"
    );
    assert!(!std::path::Path::new(&pwned).exists());

    let status = s
        .jobs()
        .create(job(
            "forward",
            vec![
                shell("first", "echo {{ steps.second.output }}"),
                shell("second", "true"),
            ],
        ))
        .await
        .unwrap_err();
    assert_violations(&status, &["job.steps[0].shell.command"]);
}
on_both_backends!(later_steps_use_earlier_outputs);

/// A re-run keeps the job revision, parameters and targets of the run it repeats; with
/// failed_targets_only it runs only where a step did not succeed.
async fn reruns_repeat_all_or_only_failed_targets(s: &Sandbox) {
    for i in 0..3 {
        s.targets()
            .create_target(opsconductor_api::targets::v1::CreateTargetRequest {
                target: Some(opsconductor_api::targets::v1::Target {
                    name: format!("node-{i}"),
                    address: "127.0.0.1".into(),
                    port: 22,
                    tags: vec!["nodes".into()],
                    ..Default::default()
                }),
            })
            .await
            .unwrap();
    }
    let mut j = job(
        "flaky-node",
        vec![shell(
            "check",
            "echo on-$OPS_TARGET_NAME-{{ params.x }}; [ \"$OPS_TARGET_NAME\" != node-1 ]",
        )],
    );
    j.parameters = vec![string_param("x")];
    j.targets = Some(TargetSelector {
        tags: vec!["nodes".into()],
        ..Default::default()
    });
    let j = s.jobs().create(j).await.unwrap();
    let first = s.jobs().start(&j.id, &[("x", "v")]).await.unwrap();
    let (first, _) = s.jobs().finish(&first.id, LIMIT).await.unwrap();
    assert_eq!(state(&first), RunState::Failed);
    // The job changes after the run: a re-run still runs what the first run ran.
    let mut changed = j.clone();
    changed.steps = vec![shell("check", "echo revision-two")];
    let changed = s
        .jobs()
        .update_job(opsconductor_api::jobs::v1::UpdateJobRequest {
            job: Some(changed),
            update_mask: Some(prost_types::FieldMask {
                paths: vec!["steps".into()],
            }),
            expected_revision: 0,
        })
        .await
        .unwrap()
        .into_inner()
        .job
        .unwrap();
    assert_ne!(changed.revision, first.job_revision);
    let rerun = |failed_targets_only: bool, key: &str| RerunRunRequest {
        id: first.id.clone(),
        failed_targets_only,
        idempotency_key: key.into(),
    };
    let only_failed = s
        .jobs()
        .rerun_run(rerun(true, "r1"))
        .await
        .unwrap()
        .into_inner()
        .run
        .unwrap();
    assert_eq!(only_failed.rerun_of, first.id);
    assert_eq!(only_failed.job_revision, first.job_revision);
    let names: Vec<&str> = only_failed
        .targets
        .iter()
        .map(|t| t.name.as_str())
        .collect();
    assert_eq!(names, ["node-1"]);
    let (only_failed, _) = s.jobs().finish(&only_failed.id, LIMIT).await.unwrap();
    assert_eq!(only_failed.steps.len(), 1);
    let lines = s.jobs().log_text(&only_failed.id).await.unwrap();
    assert!(lines.contains(&"on-node-1-v".to_string()), "{lines:?}");
    assert!(
        !lines.iter().any(|l| l.contains("revision-two")),
        "{lines:?}"
    );
    let again = s
        .jobs()
        .rerun_run(rerun(true, "r1"))
        .await
        .unwrap()
        .into_inner()
        .run
        .unwrap();
    assert_eq!(
        again.id, only_failed.id,
        "the same key returns the same re-run"
    );
    let all = s
        .jobs()
        .rerun_run(rerun(false, "r2"))
        .await
        .unwrap()
        .into_inner()
        .run
        .unwrap();
    assert_eq!(all.targets.len(), 3);
    s.jobs().finish(&all.id, LIMIT).await.unwrap();
    let succeeded = s.jobs().start(&j.id, &[("x", "v")]).await;
    assert!(succeeded.is_ok());
}
on_both_backends!(reruns_repeat_all_or_only_failed_targets);

/// A schedule's fire starts one run, ever: the same (schedule, due time) under another key
/// returns the first run; another due time starts another; only the scheduler may say SCHEDULE.
async fn a_schedule_fire_starts_one_run_ever(s: &Sandbox) {
    use opsconductor_api::jobs::v1::jobs_service_client::JobsServiceClient;
    use opsconductor_platform::ServiceKind;

    let j = s
        .jobs()
        .create(job("scheduled", vec![shell("noop", "true")]))
        .await
        .unwrap();
    let schedule_id = uuid::Uuid::now_v7().to_string();
    let owner = uuid::Uuid::now_v7().to_string();
    let fire = |seconds: i64, key: &str| StartRunRequest {
        job_id: j.id.clone(),
        idempotency_key: key.into(),
        trigger: Some(RunTrigger {
            kind: TriggerKind::Schedule as i32,
            schedule_id: schedule_id.clone(),
            fire_time: Some(prost_types::Timestamp { seconds, nanos: 0 }),
            owner_user_id: owner.clone(),
        }),
        ..Default::default()
    };
    let token = s.service_token(ServiceKind::Scheduler).await;
    let mut scheduler = JobsServiceClient::new(opsconductor_testkit::channel_as(
        &s.url(ServiceKind::Jobs),
        token,
    ));
    let first = scheduler
        .start_run(fire(1_800_000_000, "a"))
        .await
        .unwrap()
        .into_inner()
        .run
        .unwrap();
    let again = scheduler
        .start_run(fire(1_800_000_000, "b"))
        .await
        .unwrap()
        .into_inner()
        .run
        .unwrap();
    assert_eq!(first.id, again.id, "one run per fire, whatever the key");
    let by = first.triggered_by.clone().unwrap_or_default();
    assert_eq!(
        (by.user_id.as_str(), by.service_id.as_str()),
        (owner.as_str(), "scheduler")
    );
    let next = scheduler
        .start_run(fire(1_800_000_060, "c"))
        .await
        .unwrap()
        .into_inner()
        .run
        .unwrap();
    assert_ne!(next.id, first.id);
    let listed = s
        .jobs()
        .list_runs(ListRunsRequest {
            schedule_id: schedule_id.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.runs.len(), 2);
    let forged = s
        .jobs()
        .start_run(fire(1_800_000_120, "d"))
        .await
        .unwrap_err();
    assert_eq!(forged.code(), Code::PermissionDenied);
    for run in [&first, &next] {
        s.jobs().finish(&run.id, LIMIT).await.unwrap();
    }
}
on_both_backends!(a_schedule_fire_starts_one_run_ever);
