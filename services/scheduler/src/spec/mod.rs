//! When a schedule fires: a cron expression in a time zone (croner + chrono-tz), a fixed
//! interval from an anchor, or once; bounded by active_from/active_until, each due time delayed
//! by a stable jitter. Times are microseconds since the epoch; cron times are whole seconds.

use std::str::FromStr;

use chrono::{DateTime, TimeZone, Utc};
use chrono_tz::Tz;
use croner::parser::{CronParser, Seconds, Year};
use croner::Cron;
use opsconductor_api::scheduler::v1::schedule::Spec as Which;
use opsconductor_api::scheduler::v1::{CronSpec, IntervalSpec, OnceSpec, Schedule};
use opsconductor_platform::time::{to_micros, to_std_duration};
use opsconductor_platform::validate::Violations;
use sha2::{Digest, Sha256};

const MICROS: i64 = 1_000_000;
pub const MIN_INTERVAL_MICROS: i64 = 60 * MICROS;
pub const MAX_JITTER_MICROS: i64 = 3_600 * MICROS;

/// The cron fields, in order, for messages that point at one.
const FIELDS5: [&str; 5] = ["minute", "hour", "day-of-month", "month", "day-of-week"];
const FIELDS6: [&str; 6] = [
    "second",
    "minute",
    "hour",
    "day-of-month",
    "month",
    "day-of-week",
];

#[derive(Debug, Clone)]
enum When {
    Cron { cron: Box<Cron>, zone: Tz },
    Interval { every: i64, anchor: i64 },
    Once { at: i64 },
}

/// A parsed, valid spec.
#[derive(Debug, Clone)]
pub struct Spec {
    when: When,
    jitter: i64,
    from: Option<i64>,
    until: Option<i64>,
}

fn parser() -> CronParser {
    CronParser::builder()
        .seconds(Seconds::Optional)
        .year(Year::Disallowed)
        .build()
}

/// Parses a cron spec, adding a violation under `field` that names the bad cron field.
pub fn cron(v: &mut Violations, field: &str, spec: &CronSpec) -> Option<(Cron, Tz)> {
    let zone = if spec.time_zone.is_empty() {
        Some(Tz::UTC)
    } else {
        match Tz::from_str(&spec.time_zone) {
            Ok(zone) => Some(zone),
            Err(_) => {
                v.add(
                    format!("{field}.time_zone"),
                    format!("{:?} is not an IANA time zone", spec.time_zone),
                );
                None
            }
        }
    };
    let field = format!("{field}.expression");
    let expression = spec.expression.trim();
    if expression.len() > 256 {
        v.add(field, "at most 256 characters");
        return None;
    }
    let parts: Vec<&str> = expression.split_whitespace().collect();
    let names: &[&str] = match parts.len() {
        5 => &FIELDS5,
        6 => &FIELDS6,
        n => {
            v.add(
                field,
                format!(
                    "has {n} fields; 5 are needed (minute hour day-of-month month day-of-week), \
                     or 6 with a leading second"
                ),
            );
            return None;
        }
    };
    // Parse each field alone (the others as "*") so the message says which one is wrong.
    for (i, part) in parts.iter().enumerate() {
        let alone: Vec<&str> = (0..parts.len())
            .map(|j| if i == j { *part } else { "*" })
            .collect();
        if let Err(e) = parser().parse(&alone.join(" ")) {
            v.add(
                field,
                format!("the {} field {part:?} is invalid: {e}", names[i]),
            );
            return None;
        }
    }
    let cron = match parser().parse(expression) {
        Ok(cron) => cron,
        Err(e) => {
            v.add(field, format!("is invalid: {e}"));
            return None;
        }
    };
    // A valid pattern that never matches (30 February) is refused at save time, not at a fire.
    if cron
        .find_next_occurrence(&Utc::now().with_timezone(&Tz::UTC), false)
        .is_err()
    {
        v.add(field, "never matches a date");
        return None;
    }
    zone.map(|zone| (cron, zone))
}

fn interval(v: &mut Violations, field: &str, spec: &IntervalSpec, created: i64) -> Option<When> {
    let every = spec
        .interval
        .as_ref()
        .and_then(to_std_duration)
        .map(|d| d.as_micros() as i64);
    match every {
        Some(every) if (MIN_INTERVAL_MICROS..=366 * 86_400 * MICROS).contains(&every) => {
            Some(When::Interval {
                every,
                anchor: spec.start_time.as_ref().map(to_micros).unwrap_or(created),
            })
        }
        _ => {
            v.add(
                format!("{field}.interval"),
                "is required: at least 1 minute, at most 366 days",
            );
            None
        }
    }
}

fn bounded_duration(
    v: &mut Violations,
    field: &str,
    d: Option<&prost_types::Duration>,
    max: i64,
) -> i64 {
    match d {
        None => 0,
        Some(d) => match to_std_duration(d) {
            Some(d) if (d.as_micros() as i64) <= max => d.as_micros() as i64,
            _ => {
                v.add(field, format!("must be between 0s and {}s", max / MICROS));
                0
            }
        },
    }
}

impl Spec {
    /// The spec of `schedule` (its oneof and bounds), violations under `prefix` ("schedule.").
    /// `created` anchors an interval without a start time.
    pub fn of(v: &mut Violations, prefix: &str, schedule: &Schedule, created: i64) -> Option<Spec> {
        let when = Spec::when(v, prefix, schedule.spec.as_ref(), created);
        let jitter = bounded_duration(
            v,
            &format!("{prefix}jitter"),
            schedule.jitter.as_ref(),
            MAX_JITTER_MICROS,
        );
        let from = schedule.active_from.as_ref().map(to_micros);
        let until = schedule.active_until.as_ref().map(to_micros);
        if let (Some(f), Some(u)) = (from, until) {
            v.check(
                f < u,
                format!("{prefix}active_until"),
                "must be after active_from",
            );
        }
        if let Some(When::Interval { every, .. }) = &when {
            v.check(
                jitter < *every,
                format!("{prefix}jitter"),
                "must be shorter than the interval",
            );
        }
        Some(Spec {
            when: when?,
            jitter,
            from,
            until,
        })
    }

    fn when(v: &mut Violations, prefix: &str, which: Option<&Which>, created: i64) -> Option<When> {
        match which {
            None => {
                v.add(
                    format!("{prefix}spec"),
                    "one of cron, interval or once is required",
                );
                None
            }
            Some(Which::Cron(c)) => {
                cron(v, &format!("{prefix}cron"), c).map(|(cron, zone)| When::Cron {
                    cron: Box::new(cron),
                    zone,
                })
            }
            Some(Which::Interval(i)) => interval(v, &format!("{prefix}interval"), i, created),
            Some(Which::Once(o)) => once(v, &format!("{prefix}once"), o),
        }
    }

    /// A bare spec (PreviewSchedule of a spec not saved).
    pub fn bare(v: &mut Violations, which: &Which, now: i64) -> Option<Spec> {
        Some(Spec {
            when: Spec::when(v, "", Some(which), now)?,
            jitter: 0,
            from: None,
            until: None,
        })
    }

    /// The first scheduled time strictly after `after`, within the bounds.
    pub fn next_after(&self, after: i64) -> Option<i64> {
        let after = match self.from {
            Some(from) if after < from => from - 1,
            _ => after,
        };
        let next = match &self.when {
            When::Once { at } => (*at > after).then_some(*at),
            When::Interval { every, anchor } => Some(if after < *anchor {
                *anchor
            } else {
                anchor + ((after - anchor) / every + 1) * every
            }),
            When::Cron { cron, zone } => {
                let start = zone.timestamp_opt(after.div_euclid(MICROS), 0).single()?;
                let next: DateTime<Tz> = cron.find_next_occurrence(&start, false).ok()?;
                Some(next.timestamp() * MICROS)
            }
        }?;
        match self.until {
            Some(until) if next > until => None,
            _ => Some(next),
        }
    }

    /// When `scheduled` is due: later by a jitter that is stable for (schedule, time), so every
    /// replica computes the same due time.
    pub fn due(&self, schedule_id: &str, scheduled: i64) -> i64 {
        if self.jitter <= 0 {
            return scheduled;
        }
        let digest = Sha256::new()
            .chain_update(schedule_id.as_bytes())
            .chain_update(scheduled.to_le_bytes())
            .finalize();
        let mut first = [0u8; 8];
        first.copy_from_slice(&digest[..8]);
        scheduled + (u64::from_le_bytes(first) % self.jitter as u64) as i64
    }

    /// Whether the spec fires at most once (a once spec).
    pub fn is_once(&self) -> bool {
        matches!(self.when, When::Once { .. })
    }
}

fn once(v: &mut Violations, field: &str, spec: &OnceSpec) -> Option<When> {
    match &spec.fire_time {
        Some(t) => Some(When::Once { at: to_micros(t) }),
        None => {
            v.add(format!("{field}.fire_time"), "is required");
            None
        }
    }
}

#[cfg(test)]
mod tests;
