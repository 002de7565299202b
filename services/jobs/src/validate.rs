//! Job definitions and run parameters, checked field by field: every problem is one field
//! violation naming the field path, and nothing is stored unless there is none.

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use opsconductor_api::jobs::v1::{
    step, ConcurrencyPolicy, Job, ParameterSpec, ParameterType, Step, StepKind, TargetSelector,
};
use opsconductor_platform::time::to_std_duration;
use opsconductor_platform::validate::{is_slug, Violations};
use opsconductor_platform::ApiError;
use opsconductor_template::{is_param_name, Reference, Template};

pub const DEFAULT_QUEUE_TIMEOUT: Duration = Duration::from_secs(3600);
pub const DEFAULT_MAX_ATTEMPTS: u32 = 3;
const WEEK: Duration = Duration::from_secs(7 * 86_400);
const DAY: Duration = Duration::from_secs(86_400);
const MAX_VALUE_BYTES: usize = 4096;
/// The most credentials one SECRET parameter may allow.
pub const MAX_ALLOWED_CREDENTIALS: usize = 64;
const HTTP_METHODS: [&str; 6] = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"];

/// Checks a whole job (as created, or as it would be after an update).
pub fn job(v: &mut Violations, job: &Job) {
    if v.required("job.name", &job.name) {
        v.check(
            is_slug(&job.name, 1, 63, &['-']),
            "job.name",
            "must be 1-63 characters of a-z, 0-9 and '-', starting with a letter or digit",
        );
    }
    v.max_chars("job.description", &job.description, 1024);
    v.check(
        job.parameters.len() <= 64,
        "job.parameters",
        "at most 64 parameters",
    );
    let mut names = HashSet::new();
    for (i, spec) in job.parameters.iter().enumerate() {
        parameter(v, &format!("job.parameters[{i}]"), spec);
        v.check(
            names.insert(spec.name.as_str()),
            format!("job.parameters[{i}].name"),
            format!("{:?} is declared twice", spec.name),
        );
    }
    v.check(
        (1..=100).contains(&job.steps.len()),
        "job.steps",
        "a job has 1-100 steps",
    );
    let mut step_names = HashSet::new();
    for (i, s) in job.steps.iter().enumerate() {
        let field = format!("job.steps[{i}]");
        let scope = Scope {
            params: names.clone(),
            steps: step_names.clone(),
        };
        step(v, &field, s, &scope, job.targets.as_ref());
        v.check(
            step_names.insert(s.name.as_str()),
            format!("{field}.name"),
            format!("{:?} is used by an earlier step", s.name),
        );
    }
    selector(v, "job.targets", job.targets.as_ref());
    duration(v, "job.timeout", job.timeout.as_ref(), WEEK);
    duration(v, "job.queue_timeout", job.queue_timeout.as_ref(), WEEK);
    v.check(
        job.max_attempts <= 10,
        "job.max_attempts",
        "must be 0 (default 3) to 10",
    );
    v.check(
        ConcurrencyPolicy::try_from(job.concurrency_policy).is_ok(),
        "job.concurrency_policy",
        "is not a concurrency policy",
    );
    v.check(
        job.max_concurrent_runs <= 10_000,
        "job.max_concurrent_runs",
        "at most 10000",
    );
    v.check(
        job.max_parallel_targets <= 1000,
        "job.max_parallel_targets",
        "at most 1000",
    );
    v.check(job.labels.len() <= 64, "job.labels", "at most 64 labels");
    for (key, value) in &job.labels {
        v.check(
            is_slug(key, 1, 63, &['-', '_', '.', '/']),
            format!("job.labels[{key}]"),
            "keys are 1-63 characters of a-z, 0-9, '-', '_', '.' and '/'",
        );
        v.max_chars(&format!("job.labels[{key}]"), value, 256);
    }
}

/// Whether the job runs code on the executor's host (only administrators may save one).
pub fn has_shell_steps(job: &Job) -> bool {
    job.steps
        .iter()
        .any(|s| matches!(s.action, Some(step::Action::Shell(_))))
}

fn parameter(v: &mut Violations, field: &str, spec: &ParameterSpec) {
    v.check(
        is_param_name(&spec.name),
        format!("{field}.name"),
        "must be 1-63 characters of a-z, 0-9 and '_', starting with a letter",
    );
    let kind = ParameterType::try_from(spec.r#type).unwrap_or(ParameterType::Unspecified);
    v.check(
        kind != ParameterType::Unspecified,
        format!("{field}.type"),
        "must be STRING, INT, BOOL, SECRET or CHOICE",
    );
    v.max_chars(&format!("{field}.description"), &spec.description, 1024);
    if kind == ParameterType::Choice {
        v.check(
            !spec.choices.is_empty(),
            format!("{field}.choices"),
            "a CHOICE needs choices",
        );
    } else {
        v.check(
            spec.choices.is_empty(),
            format!("{field}.choices"),
            "only a CHOICE has choices",
        );
    }
    if !spec.pattern.is_empty() {
        if kind != ParameterType::String {
            v.add(format!("{field}.pattern"), "only a STRING has a pattern");
        } else if let Err(e) = anchored(&spec.pattern) {
            v.add(
                format!("{field}.pattern"),
                format!("is not a regular expression: {e}"),
            );
        }
    }
    if spec.min.is_some() || spec.max.is_some() {
        v.check(
            matches!(kind, ParameterType::Int | ParameterType::String),
            format!("{field}.min"),
            "only INT and STRING parameters have bounds",
        );
        if let (Some(min), Some(max)) = (spec.min, spec.max) {
            v.check(min <= max, format!("{field}.max"), "must not be below min");
        }
    }
    allowed_credentials(v, field, kind, spec);
    if !spec.default_value.is_empty() {
        if let Err(problem) = value(spec, &spec.default_value) {
            v.add(format!("{field}.default_value"), problem);
        } else if kind == ParameterType::Secret && credential_refused(spec, &spec.default_value) {
            v.add(
                format!("{field}.default_value"),
                "must be one of allowed_credential_ids",
            );
        }
    }
}

/// A SECRET parameter's allowlist: canonical credential ids (the form the credentials service
/// assigns, so one credential has one spelling and string comparison is exact), bounded, and
/// on SECRET parameters only (anywhere else it would read as a grant that means nothing).
fn allowed_credentials(v: &mut Violations, field: &str, kind: ParameterType, spec: &ParameterSpec) {
    let ids = &spec.allowed_credential_ids;
    if ids.is_empty() {
        return;
    }
    let list = format!("{field}.allowed_credential_ids");
    if kind != ParameterType::Secret {
        v.add(list, "only a SECRET parameter has allowed_credential_ids");
        return;
    }
    if ids.len() > MAX_ALLOWED_CREDENTIALS {
        v.add(
            list,
            format!(
                "at most {MAX_ALLOWED_CREDENTIALS} credentials (got {})",
                ids.len()
            ),
        );
        return;
    }
    let mut seen = HashSet::new();
    for (i, id) in ids.iter().enumerate() {
        let canonical = uuid::Uuid::try_parse(id).is_ok_and(|u| u.hyphenated().to_string() == *id);
        v.check(
            canonical,
            format!("{list}[{i}]"),
            "must be a credential id (a lowercase hyphenated UUID)",
        );
        v.check(
            seen.insert(id.as_str()),
            format!("{list}[{i}]"),
            "is listed twice",
        );
    }
}

/// Whether `credential_id`, given for the SECRET parameter `spec`, is outside its allowlist.
fn credential_refused(spec: &ParameterSpec, credential_id: &str) -> bool {
    !spec
        .allowed_credential_ids
        .iter()
        .any(|id| id == credential_id)
}

/// The SECRET parameter whose resolved value is `credential_id` and whose allowlist lists it.
pub fn allowing(
    specs: &[ParameterSpec],
    resolved: &BTreeMap<String, String>,
    credential_id: &str,
) -> Option<String> {
    specs
        .iter()
        .filter(|s| s.r#type == ParameterType::Secret as i32)
        .find(|s| {
            resolved.get(&s.name).map(String::as_str) == Some(credential_id)
                && !credential_refused(s, credential_id)
        })
        .map(|s| s.name.clone())
}

/// Refuses a re-run of a run whose SECRET values the job, as it is now (`current`, empty when
/// it was deleted), no longer allows: narrowing an allowlist revokes the credentials it drops,
/// also for re-runs of older revisions. PERMISSION_DENIED, naming the parameter.
pub fn still_allowed(
    revision: &[ParameterSpec],
    current: &[ParameterSpec],
    resolved: &BTreeMap<String, String>,
) -> Result<(), ApiError> {
    for spec in revision
        .iter()
        .filter(|s| s.r#type == ParameterType::Secret as i32)
    {
        let Some(credential_id) = resolved.get(&spec.name).filter(|v| !v.is_empty()) else {
            continue;
        };
        let now = current
            .iter()
            .find(|c| c.name == spec.name && c.r#type == ParameterType::Secret as i32);
        if now.is_none_or(|c| credential_refused(c, credential_id)) {
            return Err(ApiError::PermissionDenied(format!(
                "parameter {:?} may not name credential {credential_id}: the job no longer \
                 allows it (it is not in the current revision's allowed_credential_ids)",
                spec.name
            )));
        }
    }
    Ok(())
}

/// Refuses a run whose SECRET parameters (given or by default, as `resolved` holds them) name a
/// credential the job's author did not allow: which credentials a run may use is the author's
/// choice, not the caller's. PERMISSION_DENIED, naming the parameter.
pub fn credentials_allowed(
    specs: &[ParameterSpec],
    resolved: &BTreeMap<String, String>,
) -> Result<(), ApiError> {
    for spec in specs
        .iter()
        .filter(|s| s.r#type == ParameterType::Secret as i32)
    {
        let Some(credential_id) = resolved.get(&spec.name).filter(|v| !v.is_empty()) else {
            continue;
        };
        if credential_refused(spec, credential_id) {
            let why = if spec.allowed_credential_ids.is_empty() {
                "it allows no credential (its allowed_credential_ids is empty)"
            } else {
                "it is not in the parameter's allowed_credential_ids"
            };
            return Err(ApiError::PermissionDenied(format!(
                "parameter {:?} may not name credential {credential_id}: {why}",
                spec.name
            )));
        }
    }
    Ok(())
}

fn anchored(pattern: &str) -> Result<regex::Regex, regex::Error> {
    regex::RegexBuilder::new(&format!("^(?:{pattern})$"))
        .size_limit(1 << 20)
        .build()
}

/// Checks one value against its spec; the error is for people.
pub fn value(spec: &ParameterSpec, value: &str) -> Result<(), String> {
    if value.len() > MAX_VALUE_BYTES {
        return Err(format!("at most {MAX_VALUE_BYTES} bytes"));
    }
    if value.contains('\0') {
        return Err("must not contain NUL".into());
    }
    let kind = ParameterType::try_from(spec.r#type).unwrap_or(ParameterType::Unspecified);
    if value.starts_with('-')
        && matches!(kind, ParameterType::String | ParameterType::Int)
        && !spec.allow_leading_dash
        && !requires_leading_dash(&spec.pattern)
    {
        return Err(
            "must not start with '-' (a command could take it for an option); the parameter \
             allows it only with allow_leading_dash or a pattern that requires the dash"
                .into(),
        );
    }
    match kind {
        ParameterType::Int => {
            let n: i64 = value
                .parse()
                .map_err(|_| "must be an integer".to_string())?;
            if spec.min.is_some_and(|min| n < min) || spec.max.is_some_and(|max| n > max) {
                return Err(bounds("must be", spec));
            }
        }
        ParameterType::Bool => {
            if value != "true" && value != "false" {
                return Err("must be true or false".into());
            }
        }
        ParameterType::Choice => {
            if !spec.choices.iter().any(|c| c == value) {
                return Err(format!("must be one of: {}", spec.choices.join(", ")));
            }
        }
        ParameterType::Secret => {
            if uuid::Uuid::parse_str(value).is_err() {
                return Err("must be a credential id".into());
            }
        }
        ParameterType::String => {
            let chars = value.chars().count() as i64;
            if spec.min.is_some_and(|min| chars < min) || spec.max.is_some_and(|max| chars > max) {
                return Err(bounds("its length must be", spec));
            }
            if !spec.pattern.is_empty()
                && !anchored(&spec.pattern).is_ok_and(|re| re.is_match(value))
            {
                return Err(format!("must match {:?}", spec.pattern));
            }
        }
        ParameterType::Unspecified => return Err("the parameter has no type".into()),
    }
    Ok(())
}

/// Whether every string `pattern` matches starts with '-' (the author asked for options):
/// every literal prefix the pattern can begin with starts with a dash.
fn requires_leading_dash(pattern: &str) -> bool {
    use regex_syntax::hir::literal::{ExtractKind, Extractor};
    if pattern.is_empty() {
        return false;
    }
    let Ok(hir) = regex_syntax::parse(&format!("^(?:{pattern})$")) else {
        return false;
    };
    let mut extractor = Extractor::new();
    extractor.kind(ExtractKind::Prefix);
    let prefixes = extractor.extract(&hir);
    prefixes.literals().is_some_and(|literals| {
        !literals.is_empty() && literals.iter().all(|l| l.as_bytes().first() == Some(&b'-'))
    })
}

fn bounds(what: &str, spec: &ParameterSpec) -> String {
    match (spec.min, spec.max) {
        (Some(min), Some(max)) => format!("{what} between {min} and {max}"),
        (Some(min), None) => format!("{what} at least {min}"),
        (None, Some(max)) => format!("{what} at most {max}"),
        (None, None) => String::new(),
    }
}

/// The run's parameter values: `given` checked against `specs`, defaults applied.
pub fn parameters(
    v: &mut Violations,
    specs: &[ParameterSpec],
    given: &BTreeMap<String, String>,
) -> BTreeMap<String, String> {
    let mut resolved = BTreeMap::new();
    for name in given.keys() {
        v.check(
            specs.iter().any(|s| &s.name == name),
            format!("parameters[{name}]"),
            "the job has no such parameter",
        );
    }
    for spec in specs {
        let field = format!("parameters[{}]", spec.name);
        match given.get(&spec.name) {
            Some(given) => match value(spec, given) {
                Ok(()) => {
                    resolved.insert(spec.name.clone(), given.clone());
                }
                Err(problem) => v.add(field, problem),
            },
            None if !spec.default_value.is_empty() => {
                resolved.insert(spec.name.clone(), spec.default_value.clone());
            }
            None if spec.required => v.add(field, "is required"),
            None => {
                resolved.insert(spec.name.clone(), String::new());
            }
        }
    }
    resolved
}

fn step(
    v: &mut Violations,
    field: &str,
    s: &Step,
    params: &Scope,
    job_targets: Option<&TargetSelector>,
) {
    v.check(
        is_slug(&s.name, 1, 63, &['-', '_']),
        format!("{field}.name"),
        "must be 1-63 characters of a-z, 0-9, '-' and '_'",
    );
    let kind = StepKind::try_from(s.kind).unwrap_or(StepKind::Unspecified);
    let expected = match &s.action {
        None => {
            v.add(format!("{field}.action"), "set one of shell, ssh or http");
            return;
        }
        Some(step::Action::Shell(shell)) => {
            let command = format!("{field}.shell.command");
            if template(v, &command, &shell.command, params, true) {
                shell_holes(v, &command, &shell.command);
            }
            for (name, value) in &shell.env {
                env_name(v, &format!("{field}.shell.env[{name}]"), name);
                template(
                    v,
                    &format!("{field}.shell.env[{name}]"),
                    value,
                    params,
                    false,
                );
            }
            StepKind::Shell
        }
        Some(step::Action::Ssh(ssh)) => {
            let command = format!("{field}.ssh.command");
            if template(v, &command, &ssh.command, params, true) {
                shell_holes(v, &command, &ssh.command);
            }
            if !ssh.credential_id.is_empty() {
                v.id(&format!("{field}.ssh.credential_id"), &ssh.credential_id);
            }
            let selects = |t: Option<&TargetSelector>| {
                t.is_some_and(|t| !t.names.is_empty() || !t.tags.is_empty())
            };
            v.check(
                selects(s.targets.as_ref()) || selects(job_targets),
                format!("{field}.targets"),
                "an ssh step needs targets (on the step or the job)",
            );
            StepKind::Ssh
        }
        Some(step::Action::Http(http)) => {
            let method = format!("{field}.http.method");
            v.check(
                HTTP_METHODS.contains(&http.method.as_str()),
                method,
                format!("must be one of {}", HTTP_METHODS.join(", ")),
            );
            let url = format!("{field}.http.url");
            if template(v, &url, &http.url, params, true) {
                url_holes(v, &url, &http.url);
                v.check(
                    http.url.starts_with("http://") || http.url.starts_with("https://"),
                    url,
                    "must start with http:// or https:// (not with a template)",
                );
            }
            for (name, value) in &http.headers {
                let header = format!("{field}.http.headers[{name}]");
                v.check(
                    http::HeaderName::from_bytes(name.as_bytes()).is_ok(),
                    header.clone(),
                    "is not a header name",
                );
                template(v, &header, value, params, false);
            }
            template(v, &format!("{field}.http.body"), &http.body, params, false);
            for (i, code) in http.expected_status_codes.iter().enumerate() {
                v.check(
                    (100..=599).contains(code),
                    format!("{field}.http.expected_status_codes[{i}]"),
                    "must be 100-599",
                );
            }
            StepKind::Http
        }
    };
    v.check(
        kind == StepKind::Unspecified || kind == expected,
        format!("{field}.kind"),
        "does not match the action",
    );
    selector(v, &format!("{field}.targets"), s.targets.as_ref());
    duration(v, &format!("{field}.timeout"), s.timeout.as_ref(), DAY);
    duration(
        v,
        &format!("{field}.retry_delay"),
        s.retry_delay.as_ref(),
        DAY,
    );
    v.check(s.retries <= 10, format!("{field}.retries"), "at most 10");
}

/// Parses a template and checks its parameter references; false when it does not parse.
/// What a step's templates may refer to: the job's parameters and the steps before it.
struct Scope<'a> {
    params: HashSet<&'a str>,
    steps: HashSet<&'a str>,
}

fn template(v: &mut Violations, field: &str, source: &str, params: &Scope, required: bool) -> bool {
    if required && !v.required(field, source) {
        return false;
    }
    v.check(source.len() <= 64 * 1024, field, "at most 64 KiB");
    match Template::parse(source) {
        Ok(t) => {
            for reference in t.references() {
                if let Reference::Step { step, .. } = reference {
                    v.check(
                        params.steps.contains(step.as_str()),
                        field,
                        format!("refers to the output of {step:?}, which is not an earlier step"),
                    );
                }
                if let Reference::Param(name) = reference {
                    v.check(
                        params.params.contains(name.as_str()),
                        field,
                        format!(
                            "refers to {{{{ params.{name} }}}}, which the job does not declare"
                        ),
                    );
                }
            }
            true
        }
        Err(e) => {
            v.add(field, format!("template error {e}"));
            false
        }
    }
}

/// A shell or ssh command's holes must be where a reference to a variable expands once and is
/// never parsed again (see `opsconductor_template::shell`); the violation names the byte.
fn shell_holes(v: &mut Violations, field: &str, source: &str) {
    if let Ok(t) = Template::parse(source) {
        if let Err(e) = t.check_shell() {
            v.add(field, e.to_string());
        }
    }
}

/// Refuses holes that would let a value choose an http step's scheme, host or port (see
/// `opsconductor_template`'s http module); the violation names the byte.
fn url_holes(v: &mut Violations, field: &str, source: &str) {
    if let Ok(t) = Template::parse(source) {
        if let Err(e) = t.check_url() {
            v.add(field, e.to_string());
        }
    }
}

fn env_name(v: &mut Violations, field: &str, name: &str) {
    let valid = name
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_uppercase() || c == '_')
        && name
            .chars()
            .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_')
        && name.len() <= 128;
    v.check(
        valid,
        field,
        "names are A-Z, 0-9 and '_', not starting with a digit",
    );
    v.check(
        !name.starts_with("OPS_"),
        field,
        "OPS_ names are set by the executor",
    );
}

fn selector(v: &mut Violations, field: &str, selector: Option<&TargetSelector>) {
    let Some(selector) = selector else { return };
    v.check(
        selector.names.len() <= 100,
        format!("{field}.names"),
        "at most 100 names",
    );
    v.check(
        selector.tags.len() <= 16,
        format!("{field}.tags"),
        "at most 16 tags",
    );
    v.check(
        selector.exclude_names.len() <= 100,
        format!("{field}.exclude_names"),
        "at most 100 names",
    );
    v.check(
        selector.exclude_tags.len() <= 16,
        format!("{field}.exclude_tags"),
        "at most 16 tags",
    );
    for (list, names) in [
        ("names", &selector.names),
        ("exclude_names", &selector.exclude_names),
    ] {
        for (i, name) in names.iter().enumerate() {
            v.check(
                is_slug(name, 1, 63, &['-']),
                format!("{field}.{list}[{i}]"),
                "is not a target name",
            );
        }
    }
    for (list, tags) in [
        ("tags", &selector.tags),
        ("exclude_tags", &selector.exclude_tags),
    ] {
        for (i, tag) in tags.iter().enumerate() {
            v.check(
                is_slug(tag, 1, 63, &['-', '_', '.']),
                format!("{field}.{list}[{i}]"),
                "is not a tag",
            );
        }
    }
}

fn duration(v: &mut Violations, field: &str, d: Option<&prost_types::Duration>, max: Duration) {
    let Some(d) = d else { return };
    match to_std_duration(d) {
        Some(d) if !d.is_zero() && d <= max => {}
        _ => v.add(
            field,
            format!("must be more than 0s and at most {}s", max.as_secs()),
        ),
    }
}

/// The duration set, or `default`.
pub fn or_default(d: Option<&prost_types::Duration>, default: Duration) -> Duration {
    d.and_then(to_std_duration)
        .filter(|d| !d.is_zero())
        .unwrap_or(default)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(kind: ParameterType, pattern: &str, allow: bool) -> ParameterSpec {
        ParameterSpec {
            name: "p".into(),
            r#type: kind as i32,
            pattern: pattern.into(),
            allow_leading_dash: allow,
            ..ParameterSpec::default()
        }
    }

    #[test]
    fn leading_dashes_need_the_authors_consent() {
        let plain = spec(ParameterType::String, "", false);
        assert!(value(&plain, "-oProxyCommand=touch /tmp/x").is_err());
        assert!(value(&plain, "--help").is_err());
        assert!(value(&plain, "a-b").is_ok());
        assert!(value(&spec(ParameterType::Int, "", false), "-5").is_err());
        assert!(value(&spec(ParameterType::Int, "", true), "-5").is_ok());
        assert!(value(&spec(ParameterType::String, "", true), "--verbose").is_ok());
        // A pattern that requires the dash is the author's consent; one that merely admits it
        // is not.
        assert!(value(&spec(ParameterType::String, "-[a-z]+", false), "-v").is_ok());
        assert!(value(
            &spec(ParameterType::String, "(-v|--verbose)", false),
            "--verbose"
        )
        .is_ok());
        assert!(value(&spec(ParameterType::String, ".*", false), "-v").is_err());
        assert!(value(&spec(ParameterType::String, "-?[a-z]+", false), "-v").is_err());
        assert!(value(&spec(ParameterType::String, "[-a-z]+", false), "-v").is_err());
        assert!(value(&spec(ParameterType::String, "(-v|x)", false), "-v").is_err());
    }

    #[test]
    fn shell_holes_are_refused_with_the_byte() {
        let mut v = Violations::default();
        shell_holes(
            &mut v,
            "job.steps[0].shell.command",
            "echo '{{ params.a }}'",
        );
        let text = format!("{v:?}");
        assert!(text.contains("at byte 6"), "{text}");
        let mut v = Violations::default();
        shell_holes(&mut v, "f", "echo \"{{ params.a }}\"");
        assert!(v.is_empty());
    }
}
