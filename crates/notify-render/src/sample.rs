//! Sample contexts, for previews. Built from sample events through the same functions as real
//! ones, so a preview shows exactly the variables a real notification has.

use std::collections::HashMap;

use opsconductor_api::common::v1::Actor;
use opsconductor_api::credentials::v1::{CredentialExpiring, CredentialKind};
use opsconductor_api::jobs::v1::{
    RunFinished, RunStarted, RunState, RunStep, RunTrigger, StepState, TriggerKind,
};
use opsconductor_api::scheduler::v1::{FireKind, FireOutcome, FireRecord, ScheduleFireFailed};
use prost_types::Timestamp;
use serde_json::{json, Value};

use crate::context::{
    credential_expiring_context, run_finished_context, run_started_context,
    schedule_fire_failed_context,
};

// 2025-03-01T02:30:00Z, when the sample run starts.
const START: i64 = 1_740_796_200;

fn at(offset: i64) -> Option<Timestamp> {
    Some(Timestamp {
        seconds: START + offset,
        nanos: 0,
    })
}

fn trigger() -> Option<RunTrigger> {
    Some(RunTrigger {
        kind: TriggerKind::Schedule as i32,
        schedule_id: "0195a1b2-7c3d-7e4f-8a9b-0c1d2e3f4a5b".into(),
        fire_time: at(0),
        owner_user_id: "0195a1b2-0000-7000-8000-00000000a11c".into(),
    })
}

fn triggered_by() -> Option<Actor> {
    Some(Actor {
        user_id: "0195a1b2-0000-7000-8000-00000000a11c".into(),
        service_id: "scheduler".into(),
    })
}

fn labels() -> HashMap<String, String> {
    HashMap::from([
        ("team".to_owned(), "platform".to_owned()),
        ("env".to_owned(), "production".to_owned()),
    ])
}

fn run_finished(state: RunState) -> RunFinished {
    let mut e = RunFinished {
        run_id: "0195a1b2-9d8e-7f60-a1b2-c3d4e5f6a7b8".into(),
        job_id: "0195a1b2-1111-7222-8333-444455556666".into(),
        job_name: "nightly-db-backup".into(),
        state: state as i32,
        start_time: at(0),
        end_time: at(252),
        triggered_by: triggered_by(),
        schedule_id: "0195a1b2-7c3d-7e4f-8a9b-0c1d2e3f4a5b".into(),
        attempt: 1,
        job_revision: 7,
        trigger: trigger(),
        labels: labels(),
        ..Default::default()
    };
    match state {
        RunState::Failed | RunState::TimedOut => {
            // Quotes and a newline, so previews show how each channel escapes them.
            e.error = "step \"dump\" failed on 1 of 2 targets:\nexit code 2".into();
            e.error_reason = "STEP_FAILED".into();
            e.failed_steps = vec![
                RunStep {
                    step_name: "dump".into(),
                    step_index: 1,
                    target_id: "0195a1b2-aaaa-7bbb-8ccc-dddd0000db01".into(),
                    target_name: "db-01".into(),
                    attempt: 2,
                    state: StepState::Failed as i32,
                    exit_code: Some(2),
                    start_time: at(10),
                    end_time: at(240),
                    error: "pg_dump: error: connection to server failed".into(),
                    run_attempt: 1,
                    ..Default::default()
                },
                RunStep {
                    step_name: "notify-backup-api".into(),
                    step_index: 2,
                    attempt: 1,
                    state: StepState::Failed as i32,
                    http_status: Some(503),
                    start_time: at(241),
                    end_time: at(250),
                    error: "HTTP 503 Service Unavailable".into(),
                    run_attempt: 1,
                    ..Default::default()
                },
            ];
        }
        RunState::Cancelled => {
            e.error =
                "cancelled by 0195a1b2-0000-7000-8000-0000000b0b01: maintenance window".into();
            e.error_reason = "CANCELLED".into();
        }
        _ => {}
    }
    e
}

/// Sample context for an event type (for PreviewTemplate when no variables are given).
pub fn sample(event_type: &str) -> Value {
    match event_type {
        "run.started" => run_started_context(&RunStarted {
            run_id: "0195a1b2-9d8e-7f60-a1b2-c3d4e5f6a7b8".into(),
            job_id: "0195a1b2-1111-7222-8333-444455556666".into(),
            job_name: "nightly-db-backup".into(),
            attempt: 1,
            executor_id: "executor-7f9c4".into(),
            start_time: at(0),
            triggered_by: triggered_by(),
            trigger: trigger(),
            labels: labels(),
        }),
        "run.succeeded" => run_finished_context(&run_finished(RunState::Succeeded)),
        "run.failed" => run_finished_context(&run_finished(RunState::Failed)),
        "run.cancelled" => run_finished_context(&run_finished(RunState::Cancelled)),
        "run.finished" => {
            // A final state with no event type of its own does not exist today; show a
            // succeeded run under the catch-all type.
            let mut context = run_finished_context(&run_finished(RunState::Succeeded));
            context["event"] = json!("run.finished");
            context
        }
        "credential.expiring" => {
            let mut context = credential_expiring_context(&CredentialExpiring {
                credential_id: "0195a1b2-cccc-7ddd-8eee-ffff00001234".into(),
                name: "prod-db-ssh-key".into(),
                kind: CredentialKind::SshKey as i32,
                expire_time: at(7 * 86_400),
                days_left: 7,
            });
            // Fixed, so that previews are reproducible.
            context["timestamp"] = json!("2025-03-01T02:30:00Z");
            context
        }
        "schedule.fire_failed" => schedule_fire_failed_context(&ScheduleFireFailed {
            schedule_id: "0195a1b2-7c3d-7e4f-8a9b-0c1d2e3f4a5b".into(),
            schedule_name: "Nightly DB backup".into(),
            job_id: "0195a1b2-1111-7222-8333-444455556666".into(),
            owner_user_id: "0195a1b2-0000-7000-8000-00000000a11c".into(),
            fire: Some(FireRecord {
                id: "0195a1b2-eeee-7fff-8000-111122223333".into(),
                schedule_id: "0195a1b2-7c3d-7e4f-8a9b-0c1d2e3f4a5b".into(),
                scheduled_time: at(0),
                fire_time: at(2),
                outcome: FireOutcome::Failed as i32,
                error: "the schedule's owner is disabled".into(),
                error_reason: "OWNER_DISABLED".into(),
                lag: Some(prost_types::Duration {
                    seconds: 2,
                    nanos: 0,
                }),
                kind: FireKind::Scheduled as i32,
                ..Default::default()
            }),
        }),
        "test" => json!({
            "event": "test",
            "timestamp": "2025-03-01T02:30:00Z",
            "message": "Sent from the OpsConductor console.",
        }),
        other => json!({
            "event": other,
            "timestamp": "2025-03-01T02:30:00Z",
            "message": "A sample notification.",
            "details": {"source": "opsconductor", "count": 3},
        }),
    }
}
