use std::io::Write;
use std::process::{Command, Stdio};

use opsconductor_api::scheduler::v1::schedule::Spec as Which;
use opsconductor_api::scheduler::v1::{CronSpec, IntervalSpec, OnceSpec, Schedule};

use super::*;

const ZONES: [&str; 3] = ["Europe/Berlin", "America/New_York", "Australia/Lord_Howe"];

fn cron_spec(expression: &str, zone: &str) -> Spec {
    let mut v = Violations::new();
    let spec = Spec::bare(
        &mut v,
        &Which::Cron(CronSpec {
            expression: expression.into(),
            time_zone: zone.into(),
        }),
        0,
    );
    assert!(v.is_empty(), "{expression}: {v:?}");
    spec.unwrap()
}

fn fires(spec: &Spec, start: i64, end: i64) -> Vec<i64> {
    let mut out = Vec::new();
    let mut t = start * MICROS;
    while let Some(next) = spec.next_after(t) {
        if next > end * MICROS {
            break;
        }
        out.push(next / MICROS);
        t = next;
    }
    out
}

/// A small deterministic generator: the property cases are the same on every run.
struct XorShift(u64);
impl XorShift {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

/// Fixed times biased to the small hours (where the clocks change), weekly and daily, and
/// wildcard-hour expressions around each 2026 transition, checked against Python's zoneinfo.
#[test]
fn daylight_saving_matches_an_independent_oracle() {
    let mut rng = XorShift(0x5eed_cafe_f00d);
    let mut cases = Vec::new();
    for zone in ZONES {
        for i in 0..10 {
            let h = if i < 7 {
                1 + rng.below(3)
            } else {
                rng.below(24)
            };
            let m = [0, 15, 30, 45, rng.below(60)][rng.below(5) as usize];
            let s = if i % 3 == 0 { rng.below(60) } else { 0 };
            let dow = (i % 4 == 0).then(|| vec![rng.below(7)]);
            cases.push(serde_json::json!({
                "zone": zone, "kind": "fixed", "h": h, "m": m, "s": s, "dow": dow,
            }));
        }
        cases.push(serde_json::json!({"zone": zone, "kind": "every", "step": 30}));
        cases.push(serde_json::json!({"zone": zone, "kind": "every", "step": 15}));
        cases.push(serde_json::json!({"zone": zone, "kind": "hourly", "m": 15}));
    }
    let mut python = Command::new("python3")
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/src/spec/oracle.py"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("python3 runs");
    python
        .stdin
        .take()
        .unwrap()
        .write_all(serde_json::to_string(&cases).unwrap().as_bytes())
        .unwrap();
    let output = python.wait_with_output().unwrap();
    assert!(output.status.success());
    let windows: Vec<serde_json::Value> = serde_json::from_slice(&output.stdout).unwrap();
    let mut windows = windows.into_iter();
    let mut checked = 0;
    for case in &cases {
        let zone = case["zone"].as_str().unwrap();
        let expression = match case["kind"].as_str().unwrap() {
            "fixed" => {
                let dow = match case["dow"].as_array() {
                    Some(d) => d[0].to_string(),
                    None => "*".into(),
                };
                format!("{} {} {} * * {dow}", case["s"], case["m"], case["h"])
            }
            "every" => format!("*/{} * * * *", case["step"]),
            _ => format!("{} * * * *", case["m"]),
        };
        let spec = cron_spec(&expression, zone);
        let count = if case["kind"] == "fixed" { 1 } else { 2 };
        for _ in 0..count {
            let window = windows.next().expect("a window per case");
            let expected: Vec<i64> = window["fires"]
                .as_array()
                .unwrap()
                .iter()
                .map(|t| t.as_i64().unwrap())
                .collect();
            let (start, end) = (
                window["start"].as_i64().unwrap(),
                window["end"].as_i64().unwrap(),
            );
            assert_eq!(
                fires(&spec, start, end),
                expected,
                "{expression:?} in {zone} over [{start}, {end}]"
            );
            checked += expected.len();
        }
    }
    assert!(windows.next().is_none());
    assert!(checked > 10_000, "{checked} instants checked");
}

/// The cases a person would check by hand: Berlin's 02:30 on the spring-forward day fires at
/// 03:00 CEST; on the fall-back day once, at the first 02:30 (CEST); Lord Howe's 02:15 in its
/// 30-minute gap fires at 02:30.
#[test]
fn daylight_saving_by_hand() {
    let berlin = cron_spec("30 2 * * *", "Europe/Berlin");
    let at = |s: &str| DateTime::parse_from_rfc3339(s).unwrap().timestamp() * MICROS;
    assert_eq!(
        berlin.next_after(at("2026-03-29T00:00:00+01:00")),
        Some(at("2026-03-29T03:00:00+02:00"))
    );
    let fall = berlin.next_after(at("2026-10-25T00:00:00+02:00")).unwrap();
    assert_eq!(fall, at("2026-10-25T02:30:00+02:00"));
    assert_eq!(
        berlin.next_after(fall),
        Some(at("2026-10-26T02:30:00+01:00"))
    );
    let howe = cron_spec("15 2 * * *", "Australia/Lord_Howe");
    assert_eq!(
        howe.next_after(at("2026-10-04T00:00:00+10:30")),
        Some(at("2026-10-04T02:30:00+11:00"))
    );
}

fn violations(schedule: &Schedule) -> Vec<(String, String)> {
    let mut v = Violations::new();
    let _ = Spec::of(&mut v, "schedule.", schedule, 0);
    match v.finish() {
        Ok(()) => Vec::new(),
        Err(e) => e
            .violations()
            .iter()
            .map(|f| (f.field.clone(), f.description.clone()))
            .collect(),
    }
}

fn with(which: Which) -> Schedule {
    Schedule {
        spec: Some(which),
        ..Default::default()
    }
}

#[test]
fn an_invalid_cron_field_is_named() {
    let bad = |expression: &str| {
        violations(&with(Which::Cron(CronSpec {
            expression: expression.into(),
            time_zone: String::new(),
        })))
    };
    let v = bad("0 25 * * *");
    assert_eq!(v[0].0, "schedule.cron.expression");
    assert!(v[0].1.contains("hour field \"25\""), "{v:?}");
    let v = bad("61 0 1 * * *");
    assert!(v[0].1.contains("second field \"61\""), "{v:?}");
    let v = bad("0 0 32 * *");
    assert!(v[0].1.contains("day-of-month"), "{v:?}");
    assert!(bad("* * *")[0].1.contains("has 3 fields"));
    assert!(bad("0 0 30 2 *")[0].1.contains("never matches"));
    let zone = violations(&with(Which::Cron(CronSpec {
        expression: "0 0 * * *".into(),
        time_zone: "Mars/Olympus".into(),
    })));
    assert_eq!(zone[0].0, "schedule.cron.time_zone");
    // L, W and # are accepted.
    for ok in [
        "0 0 L * *",
        "0 0 15W * *",
        "0 0 * * 5#2",
        "0 0 * * 5#L",
        "*/5 * * * * *",
    ] {
        assert!(bad(ok).is_empty(), "{ok}");
    }
}

#[test]
fn intervals_once_bounds_and_jitter() {
    let every = Schedule {
        spec: Some(Which::Interval(IntervalSpec {
            interval: Some(prost_types::Duration {
                seconds: 600,
                nanos: 0,
            }),
            start_time: Some(prost_types::Timestamp {
                seconds: 1_000,
                nanos: 0,
            }),
        })),
        active_until: Some(prost_types::Timestamp {
            seconds: 3_000,
            nanos: 0,
        }),
        jitter: Some(prost_types::Duration {
            seconds: 30,
            nanos: 0,
        }),
        ..Default::default()
    };
    let mut v = Violations::new();
    let spec = Spec::of(&mut v, "", &every, 0).unwrap();
    assert_eq!(spec.next_after(0), Some(1_000 * MICROS));
    assert_eq!(spec.next_after(1_000 * MICROS), Some(1_600 * MICROS));
    assert_eq!(spec.next_after(2_800 * MICROS), None, "past active_until");
    let due = spec.due("s1", 1_600 * MICROS);
    assert!((1_600 * MICROS..1_630 * MICROS).contains(&due));
    assert_eq!(due, spec.due("s1", 1_600 * MICROS), "stable");
    assert_ne!(
        spec.due("s1", 1_600 * MICROS),
        spec.due("s2", 1_600 * MICROS)
    );

    let short = Schedule {
        spec: Some(Which::Interval(IntervalSpec {
            interval: Some(prost_types::Duration {
                seconds: 59,
                nanos: 0,
            }),
            start_time: None,
        })),
        ..Default::default()
    };
    assert_eq!(violations(&short)[0].0, "schedule.interval.interval");
    let once = with(Which::Once(OnceSpec {
        fire_time: Some(prost_types::Timestamp {
            seconds: 5_000,
            nanos: 0,
        }),
    }));
    let spec = Spec::of(&mut v, "", &once, 0).unwrap();
    assert_eq!(spec.next_after(0), Some(5_000 * MICROS));
    assert_eq!(spec.next_after(5_000 * MICROS), None);
    assert_eq!(violations(&Schedule::default())[0].0, "schedule.spec");
}
