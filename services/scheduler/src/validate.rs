//! What a valid schedule is, field by field (the violations name each bad field).

use opsconductor_api::scheduler::v1::{MisfirePolicy, OverlapPolicy, Schedule};
use opsconductor_platform::time::to_std_duration;
use opsconductor_platform::validate::{is_slug, Violations};

use crate::spec::Spec;

const DAY_SECS: u64 = 86_400;

fn duration(
    v: &mut Violations,
    field: &str,
    d: Option<&prost_types::Duration>,
    min_secs: u64,
    max_secs: u64,
) {
    if let Some(d) = d {
        let ok = to_std_duration(d)
            .is_some_and(|d| d.as_secs() >= min_secs && d.as_secs() <= max_secs && !d.is_zero());
        v.check(
            ok,
            field,
            format!("must be between {min_secs}s and {max_secs}s"),
        );
    }
}

/// Checks everything a caller sets; the spec when it is valid.
pub fn schedule(v: &mut Violations, s: &Schedule) -> Option<Spec> {
    if v.required("schedule.name", &s.name) {
        v.check(
            is_slug(&s.name, 1, 63, &['-']),
            "schedule.name",
            "must be 1-63 characters of a-z, 0-9 and '-', starting with a letter or digit",
        );
    }
    v.max_chars("schedule.description", &s.description, 1024);
    v.id("schedule.job_id", &s.job_id);
    v.check(
        s.parameters.len() <= 64,
        "schedule.parameters",
        "at most 64 parameters",
    );
    for (name, value) in &s.parameters {
        v.check(
            !name.is_empty() && name.len() <= 64,
            format!("schedule.parameters[{name:?}]"),
            "names are 1-64 characters",
        );
        v.max_chars(&format!("schedule.parameters[{name:?}]"), value, 4096);
    }
    v.check(
        MisfirePolicy::try_from(s.misfire_policy).is_ok(),
        "schedule.misfire_policy",
        format!("{} is not a misfire policy", s.misfire_policy),
    );
    v.check(
        OverlapPolicy::try_from(s.overlap_policy).is_ok(),
        "schedule.overlap_policy",
        format!("{} is not an overlap policy", s.overlap_policy),
    );
    duration(
        v,
        "schedule.misfire_threshold",
        s.misfire_threshold.as_ref(),
        1,
        DAY_SECS,
    );
    duration(
        v,
        "schedule.catch_up_window",
        s.catch_up_window.as_ref(),
        1,
        7 * DAY_SECS,
    );
    Spec::of(v, "schedule.", s, 0)
}
