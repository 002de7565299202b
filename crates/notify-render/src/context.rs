//! Render contexts: from the platform's events, and from flat variables.

use chrono::{DateTime, SecondsFormat, Utc};
use opsconductor_api::common::v1::Actor;
use opsconductor_api::credentials::v1::{CredentialExpiring, CredentialKind};
use opsconductor_api::jobs::v1::{
    RunFinished, RunStarted, RunState, RunStep, RunTrigger, StepState, TriggerKind,
};
use opsconductor_api::scheduler::v1::{FireKind, FireOutcome, FireRecord, ScheduleFireFailed};
use serde_json::{json, Map, Value};

/// Flat string variables → a context: dotted names become nested objects ("run.id"="1" →
/// {"run":{"id":"1"}}); when a name is both a value and a parent ("a" and "a.b"), the nested
/// object wins, whatever the order.
pub fn context_from_variables<'a>(
    vars: impl IntoIterator<Item = (&'a String, &'a String)>,
) -> Value {
    let mut root = Map::new();
    for (name, value) in vars {
        let segments: Vec<&str> = name.split('.').collect();
        // "a..b" or ".a" cannot be reached by a dotted lookup anyway; keep such names flat.
        if segments.iter().any(|s| s.is_empty()) {
            if !matches!(root.get(name.as_str()), Some(Value::Object(_))) {
                root.insert(name.clone(), Value::String(value.clone()));
            }
            continue;
        }
        insert(&mut root, &segments, value);
    }
    Value::Object(root)
}

fn insert(map: &mut Map<String, Value>, segments: &[&str], value: &str) {
    let Some((first, rest)) = segments.split_first() else {
        return;
    };
    if rest.is_empty() {
        if !matches!(map.get(*first), Some(Value::Object(_))) {
            map.insert((*first).to_owned(), Value::String(value.to_owned()));
        }
        return;
    }
    let entry = map
        .entry((*first).to_owned())
        .or_insert_with(|| Value::Object(Map::new()));
    if !entry.is_object() {
        *entry = Value::Object(Map::new());
    }
    if let Value::Object(child) = entry {
        insert(child, rest, value);
    }
}

/// The event type of a finished run.
pub fn run_finished_event_type(e: &RunFinished) -> &'static str {
    match RunState::try_from(e.state) {
        Ok(RunState::Succeeded) => "run.succeeded",
        Ok(RunState::Failed | RunState::TimedOut) => "run.failed",
        Ok(RunState::Cancelled) => "run.cancelled",
        _ => "run.finished",
    }
}

/// `{"event": "run.started", "timestamp", "run", "job", "schedule", "trigger", "triggered_by"}`.
pub fn run_started_context(e: &RunStarted) -> Value {
    let start_time = rfc3339(e.start_time.as_ref());
    json!({
        "event": "run.started",
        "timestamp": start_time,
        "run": {
            "id": e.run_id,
            "state": "running",
            "attempt": e.attempt,
            "executor_id": e.executor_id,
            "start_time": start_time,
        },
        "job": {"id": e.job_id, "name": e.job_name, "labels": e.labels},
        "schedule": schedule(e.trigger.as_ref(), ""),
        "trigger": trigger(e.trigger.as_ref()),
        "triggered_by": actor(e.triggered_by.as_ref()),
    })
}

/// `{"event": run_finished_event_type(e), "timestamp", "run", "job", "schedule", "trigger",
/// "triggered_by", "failed_steps"}`.
pub fn run_finished_context(e: &RunFinished) -> Value {
    let start = e.start_time.as_ref();
    let end = e.end_time.as_ref();
    let duration = match (start, end) {
        (Some(start), Some(end)) if end.seconds >= start.seconds => {
            Some(end.seconds - start.seconds)
        }
        _ => None,
    };
    json!({
        "event": run_finished_event_type(e),
        "timestamp": rfc3339(end),
        "run": {
            "id": e.run_id,
            "state": word(RunState::try_from(e.state).map(|s| s.as_str_name()), "RUN_STATE_"),
            "attempt": e.attempt,
            "error": e.error,
            "error_reason": e.error_reason,
            "start_time": rfc3339(start),
            "end_time": rfc3339(end),
            "duration_seconds": duration,
            "duration": duration.map(human_duration).unwrap_or_default(),
        },
        "job": {"id": e.job_id, "name": e.job_name, "revision": e.job_revision, "labels": e.labels},
        "schedule": schedule(e.trigger.as_ref(), &e.schedule_id),
        "trigger": trigger(e.trigger.as_ref()),
        "triggered_by": actor(e.triggered_by.as_ref()),
        "failed_steps": e.failed_steps.iter().map(step).collect::<Vec<_>>(),
    })
}

/// `{"event": "credential.expiring", "timestamp" (now), "credential": {"id", "name", "kind",
/// "expire_time", "days_left"}}`.
pub fn credential_expiring_context(e: &CredentialExpiring) -> Value {
    json!({
        "event": "credential.expiring",
        "timestamp": Utc::now().to_rfc3339_opts(SecondsFormat::Secs, true),
        "credential": {
            "id": e.credential_id,
            "name": e.name,
            "kind": word(CredentialKind::try_from(e.kind).map(|k| k.as_str_name()), "CREDENTIAL_KIND_"),
            "expire_time": rfc3339(e.expire_time.as_ref()),
            "days_left": e.days_left,
        },
    })
}

/// `{"event": "schedule.fire_failed", "timestamp", "schedule", "job", "owner", "fire", "error",
/// "error_reason"}`.
pub fn schedule_fire_failed_context(e: &ScheduleFireFailed) -> Value {
    let default_fire = FireRecord::default();
    let fire = e.fire.as_ref().unwrap_or(&default_fire);
    let fire_time = rfc3339(fire.fire_time.as_ref());
    let scheduled_time = rfc3339(fire.scheduled_time.as_ref());
    let timestamp = if fire_time.is_empty() {
        scheduled_time.clone()
    } else {
        fire_time.clone()
    };
    json!({
        "event": "schedule.fire_failed",
        "timestamp": timestamp,
        "schedule": {
            "id": e.schedule_id,
            "name": e.schedule_name,
            "job_id": e.job_id,
            "owner_user_id": e.owner_user_id,
        },
        "job": {"id": e.job_id},
        "fire": {
            "id": fire.id,
            "kind": word(FireKind::try_from(fire.kind).map(|k| k.as_str_name()), "FIRE_KIND_"),
            "outcome": word(FireOutcome::try_from(fire.outcome).map(|o| o.as_str_name()), "FIRE_OUTCOME_"),
            "scheduled_time": scheduled_time,
            "fire_time": fire_time,
            "lag_seconds": fire.lag.as_ref().map(|d| d.seconds as f64 + f64::from(d.nanos) / 1e9),
            "run_id": fire.run_id,
            "error": fire.error,
            "error_reason": fire.error_reason,
            "requested_by": actor(fire.requested_by.as_ref()),
        },
        "error": fire.error,
        "error_reason": fire.error_reason,
    })
}

fn actor(actor: Option<&Actor>) -> Value {
    let (user_id, service) = actor
        .map(|a| (a.user_id.as_str(), a.service_id.as_str()))
        .unwrap_or_default();
    json!({"user_id": user_id, "service": service})
}

fn trigger(trigger: Option<&RunTrigger>) -> Value {
    let default = RunTrigger::default();
    let t = trigger.unwrap_or(&default);
    json!({
        "kind": word(TriggerKind::try_from(t.kind).map(|k| k.as_str_name()), "TRIGGER_KIND_"),
        "schedule_id": t.schedule_id,
        "fire_time": rfc3339(t.fire_time.as_ref()),
        "owner_user_id": t.owner_user_id,
    })
}

fn schedule(trigger: Option<&RunTrigger>, schedule_id: &str) -> Value {
    let id = match trigger {
        Some(t) if schedule_id.is_empty() => t.schedule_id.as_str(),
        _ => schedule_id,
    };
    json!({
        "id": id,
        "fire_time": rfc3339(trigger.and_then(|t| t.fire_time.as_ref())),
    })
}

fn step(s: &RunStep) -> Value {
    json!({
        "name": s.step_name,
        "index": s.step_index,
        "target_id": s.target_id,
        "target_name": s.target_name,
        "attempt": s.attempt,
        "state": word(StepState::try_from(s.state).map(|st| st.as_str_name()), "STEP_STATE_"),
        "exit_code": s.exit_code,
        "http_status": s.http_status,
        "error": s.error,
        "start_time": rfc3339(s.start_time.as_ref()),
        "end_time": rfc3339(s.end_time.as_ref()),
    })
}

/// A proto enum value's name as a lower-case word ("RUN_STATE_TIMED_OUT" → "timed_out"); empty
/// for UNSPECIFIED and values this build does not know.
fn word<E>(name: Result<&str, E>, prefix: &str) -> String {
    match name {
        Ok(name) => {
            let word = name.strip_prefix(prefix).unwrap_or(name);
            if word == "UNSPECIFIED" {
                String::new()
            } else {
                word.to_ascii_lowercase()
            }
        }
        Err(_) => String::new(),
    }
}

/// RFC 3339 in UTC ("2025-03-01T02:30:00Z", with fractions only when there are some); empty when
/// unset or out of range.
pub(crate) fn rfc3339(ts: Option<&prost_types::Timestamp>) -> String {
    ts.and_then(|ts| DateTime::from_timestamp(ts.seconds, u32::try_from(ts.nanos).ok()?))
        .map(|t| t.to_rfc3339_opts(SecondsFormat::AutoSi, true))
        .unwrap_or_default()
}

/// "45s", "4m 12s", "2h 5m", "3d 4h": the two largest units, for people.
fn human_duration(seconds: i64) -> String {
    let (d, h, m, s) = (
        seconds / 86_400,
        seconds % 86_400 / 3_600,
        seconds % 3_600 / 60,
        seconds % 60,
    );
    if d > 0 {
        format!("{d}d {h}h")
    } else if h > 0 {
        format!("{h}h {m}m")
    } else if m > 0 {
        format!("{m}m {s}s")
    } else {
        format!("{s}s")
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn vars(pairs: &[(&str, &str)]) -> Value {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        context_from_variables(&map)
    }

    #[test]
    fn dotted_variables_nest() {
        assert_eq!(
            vars(&[
                ("run.id", "1"),
                ("run.state", "failed"),
                ("job.name", "backup"),
                ("x", "y")
            ]),
            json!({"run": {"id": "1", "state": "failed"}, "job": {"name": "backup"}, "x": "y"})
        );
    }

    #[test]
    fn nested_object_wins_a_conflict() {
        // Both insertion orders (the map's order is arbitrary).
        let mut a = Map::new();
        insert(&mut a, &["a"], "flat");
        insert(&mut a, &["a", "b"], "nested");
        let mut b = Map::new();
        insert(&mut b, &["a", "b"], "nested");
        insert(&mut b, &["a"], "flat");
        assert_eq!(Value::Object(a.clone()), json!({"a": {"b": "nested"}}));
        assert_eq!(a, b);
        assert_eq!(
            vars(&[("a", "1"), ("a.b", "2"), ("a.b.c", "3")]),
            json!({"a": {"b": {"c": "3"}}})
        );
    }

    #[test]
    fn finished_event_types() {
        let of = |state: RunState| {
            run_finished_event_type(&RunFinished {
                state: state as i32,
                ..Default::default()
            })
        };
        assert_eq!(of(RunState::Succeeded), "run.succeeded");
        assert_eq!(of(RunState::Failed), "run.failed");
        assert_eq!(of(RunState::TimedOut), "run.failed");
        assert_eq!(of(RunState::Cancelled), "run.cancelled");
        assert_eq!(of(RunState::Running), "run.finished");
        assert_eq!(of(RunState::Unspecified), "run.finished");
    }

    #[test]
    fn times_and_durations() {
        let ts = |seconds, nanos| prost_types::Timestamp { seconds, nanos };
        assert_eq!(rfc3339(Some(&ts(0, 0))), "1970-01-01T00:00:00Z");
        assert_eq!(
            rfc3339(Some(&ts(1_740_796_200, 500_000_000))),
            "2025-03-01T02:30:00.500Z"
        );
        assert_eq!(rfc3339(None), "");
        assert_eq!(rfc3339(Some(&ts(0, -1))), "");
        assert_eq!(human_duration(45), "45s");
        assert_eq!(human_duration(252), "4m 12s");
        assert_eq!(human_duration(7_500), "2h 5m");
        assert_eq!(human_duration(273_600), "3d 4h");
    }

    #[test]
    fn run_finished_context_shape() {
        let e = RunFinished {
            run_id: "r1".into(),
            job_name: "backup".into(),
            state: RunState::TimedOut as i32,
            start_time: Some(prost_types::Timestamp {
                seconds: 100,
                nanos: 0,
            }),
            end_time: Some(prost_types::Timestamp {
                seconds: 352,
                nanos: 0,
            }),
            failed_steps: vec![RunStep {
                step_name: "dump".into(),
                state: StepState::Failed as i32,
                exit_code: Some(2),
                ..Default::default()
            }],
            ..Default::default()
        };
        let c = run_finished_context(&e);
        assert_eq!(c["event"], "run.failed");
        assert_eq!(c["run"]["state"], "timed_out");
        assert_eq!(c["run"]["duration_seconds"], 252);
        assert_eq!(c["run"]["duration"], "4m 12s");
        assert_eq!(c["failed_steps"][0]["state"], "failed");
        assert_eq!(c["failed_steps"][0]["exit_code"], 2);
        assert_eq!(c["failed_steps"][0]["http_status"], Value::Null);
        assert_eq!(c["trigger"]["kind"], "");
    }
}
