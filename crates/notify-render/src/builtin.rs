//! The built-in texts, used when no template exists for a (channel, event type).
//!
//! Every text renders sensibly from a partial context too (PreviewTemplate with a few variables):
//! optional lines are left out when their value is empty, and nothing assumes a type. Lines use
//! `{%-` so that a left-out line leaves no blank line behind.

use crate::{Channel, Source};

/// The built-in text for (channel, event_type); for unknown event types a generic text that lists
/// whatever the context holds.
pub fn builtin(channel: Channel, event_type: &str) -> Source<'static> {
    let group = match event_type {
        "run.started" => Group::RunStarted,
        "run.succeeded" | "run.failed" | "run.cancelled" | "run.finished" => Group::RunFinished,
        "credential.expiring" => Group::CredentialExpiring,
        "schedule.fire_failed" => Group::ScheduleFireFailed,
        "test" => Group::Test,
        _ => Group::Generic,
    };
    match channel {
        Channel::Email | Channel::Unspecified => email(group),
        Channel::Slack => slack(group),
        Channel::Teams => teams(group),
        Channel::Webhook => webhook(group, event_type),
    }
}

#[derive(Clone, Copy)]
enum Group {
    RunStarted,
    RunFinished,
    CredentialExpiring,
    ScheduleFireFailed,
    Test,
    Generic,
}

const fn source(
    subject: &'static str,
    body: &'static str,
    html_body: &'static str,
) -> Source<'static> {
    Source {
        subject,
        body,
        html_body,
    }
}

// Lines that define `state` (a word such as "timed out") for the run-finished texts.
macro_rules! run_state {
    () => {
        "{%- set state = run.state|default(\"finished\", true)|replace(\"_\", \" \") -%}\n"
    };
}

// Lines that define `when` ("today", "tomorrow", "in 5 days") for the credential texts; days_left
// may be a number (events) or a string (variables).
macro_rules! credential_when {
    () => {
        "{%- set days = credential.days_left -%}\n\
         {%- set when = \"today\" if days == 0 or days == \"0\" else (\"tomorrow\" if days == 1 or days == \"1\" else (\"in \" ~ days ~ \" days\" if days else \"soon\")) -%}\n"
    };
}

macro_rules! started_headline {
    () => {
        "Run started: {{ job.name|default(job.id, true) }}"
    };
}
macro_rules! finished_headline {
    () => {
        "Run {{ state }}: {{ job.name|default(job.id, true) }}"
    };
}
macro_rules! credential_headline {
    () => {
        "Credential expiring {{ when }}: {{ credential.name|default(credential.id, true) }}"
    };
}
macro_rules! fire_headline {
    () => {
        "Schedule failed to fire: {{ schedule.name|default(schedule.id, true) }}"
    };
}
macro_rules! test_headline {
    () => {
        "Test notification"
    };
}
macro_rules! generic_headline {
    () => {
        "Notification: {{ event|default(\"event\", true) }}"
    };
}

const STARTED_SUBJECT: &str = started_headline!();
const FINISHED_SUBJECT: &str = concat!(run_state!(), finished_headline!());
const CREDENTIAL_SUBJECT: &str = concat!(credential_when!(), credential_headline!());
const FIRE_SUBJECT: &str = fire_headline!();
const TEST_SUBJECT: &str = test_headline!();
const GENERIC_SUBJECT: &str = generic_headline!();

fn email(group: Group) -> Source<'static> {
    match group {
        Group::RunStarted => source(
            concat!("[OpsConductor] ", started_headline!()),
            EMAIL_STARTED,
            HTML_STARTED,
        ),
        Group::RunFinished => source(
            concat!(run_state!(), "[OpsConductor] ", finished_headline!()),
            EMAIL_FINISHED,
            HTML_FINISHED,
        ),
        Group::CredentialExpiring => source(
            concat!(
                credential_when!(),
                "[OpsConductor] ",
                credential_headline!()
            ),
            EMAIL_CREDENTIAL,
            HTML_CREDENTIAL,
        ),
        Group::ScheduleFireFailed => source(
            concat!("[OpsConductor] ", fire_headline!()),
            EMAIL_FIRE,
            HTML_FIRE,
        ),
        Group::Test => source(
            concat!("[OpsConductor] ", test_headline!()),
            EMAIL_TEST,
            HTML_TEST,
        ),
        Group::Generic => source(
            concat!("[OpsConductor] ", generic_headline!()),
            EMAIL_GENERIC,
            HTML_GENERIC,
        ),
    }
}

fn slack(group: Group) -> Source<'static> {
    match group {
        Group::RunStarted => source(STARTED_SUBJECT, SLACK_STARTED, ""),
        Group::RunFinished => source(FINISHED_SUBJECT, SLACK_FINISHED, ""),
        Group::CredentialExpiring => source(CREDENTIAL_SUBJECT, SLACK_CREDENTIAL, ""),
        Group::ScheduleFireFailed => source(FIRE_SUBJECT, SLACK_FIRE, ""),
        Group::Test => source(TEST_SUBJECT, SLACK_TEST, ""),
        Group::Generic => source(GENERIC_SUBJECT, SLACK_GENERIC, ""),
    }
}

fn teams(group: Group) -> Source<'static> {
    match group {
        Group::RunStarted => source(STARTED_SUBJECT, TEAMS_STARTED, ""),
        Group::RunFinished => source(FINISHED_SUBJECT, TEAMS_FINISHED, ""),
        Group::CredentialExpiring => source(CREDENTIAL_SUBJECT, TEAMS_CREDENTIAL, ""),
        Group::ScheduleFireFailed => source(FIRE_SUBJECT, TEAMS_FIRE, ""),
        Group::Test => source(TEST_SUBJECT, TEAMS_TEST, ""),
        Group::Generic => source(GENERIC_SUBJECT, TEAMS_GENERIC, ""),
    }
}

// ---------------------------------------------------------------------------------------------
// Run started

const EMAIL_STARTED: &str = r#"Run started: {{ job.name|default(job.id, true) }}

Job:          {{ job.name }}
Run:          {{ run.id }}{{ ", attempt " ~ run.attempt if run.attempt and run.attempt != 1 }}
{%- if run.start_time %}
Started:      {{ run.start_time }}
{%- endif %}
{%- if run.executor_id %}
Executor:     {{ run.executor_id }}
{%- endif %}
{%- if schedule.id %}
Schedule:     {{ schedule.id }}
{%- endif %}
{%- if triggered_by.user_id or triggered_by.service %}
Triggered by: {{ triggered_by.user_id or triggered_by.service }}{{ " via " ~ triggered_by.service if triggered_by.user_id and triggered_by.service }}
{%- endif %}"#;

const HTML_STARTED: &str = r#"<!DOCTYPE html>
<html><body style="font-family: sans-serif">
<h2>Run started: {{ job.name|default(job.id, true) }}</h2>
<table cellpadding="4">
<tr><th align="left">Job</th><td>{{ job.name }}</td></tr>
<tr><th align="left">Run</th><td><code>{{ run.id }}</code>{{ ", attempt " ~ run.attempt if run.attempt and run.attempt != 1 }}</td></tr>
{%- if run.start_time %}
<tr><th align="left">Started</th><td>{{ run.start_time }}</td></tr>
{%- endif %}
{%- if run.executor_id %}
<tr><th align="left">Executor</th><td>{{ run.executor_id }}</td></tr>
{%- endif %}
{%- if schedule.id %}
<tr><th align="left">Schedule</th><td><code>{{ schedule.id }}</code></td></tr>
{%- endif %}
{%- if triggered_by.user_id or triggered_by.service %}
<tr><th align="left">Triggered by</th><td>{{ triggered_by.user_id or triggered_by.service }}{{ " via " ~ triggered_by.service if triggered_by.user_id and triggered_by.service }}</td></tr>
{%- endif %}
</table>
</body></html>"#;

const SLACK_STARTED: &str = r#":arrow_forward: *Run started: {{ job.name|default(job.id, true) }}*
• *Run:* `{{ run.id }}`{{ ", attempt " ~ run.attempt if run.attempt and run.attempt != 1 }}
{%- if run.executor_id %}
• *Executor:* {{ run.executor_id }}
{%- endif %}
{%- if schedule.id %}
• *Schedule:* `{{ schedule.id }}`
{%- endif %}
{%- if triggered_by.user_id or triggered_by.service %}
• *Triggered by:* {{ triggered_by.user_id or triggered_by.service }}{{ " via " ~ triggered_by.service if triggered_by.user_id and triggered_by.service }}
{%- endif %}"#;

const TEAMS_STARTED: &str = r#"**Run started: {{ job.name|default(job.id, true) }}**

- **Run:** `{{ run.id }}`{{ ", attempt " ~ run.attempt if run.attempt and run.attempt != 1 }}
{%- if run.executor_id %}
- **Executor:** {{ run.executor_id }}
{%- endif %}
{%- if schedule.id %}
- **Schedule:** `{{ schedule.id }}`
{%- endif %}
{%- if triggered_by.user_id or triggered_by.service %}
- **Triggered by:** {{ triggered_by.user_id or triggered_by.service }}{{ " via " ~ triggered_by.service if triggered_by.user_id and triggered_by.service }}
{%- endif %}"#;

// ---------------------------------------------------------------------------------------------
// Run finished (succeeded, failed, timed out, cancelled)

const EMAIL_FINISHED: &str = concat!(
    run_state!(),
    r#"Run {{ state }}: {{ job.name|default(job.id, true) }}

Job:          {{ job.name }}{{ " (revision " ~ job.revision ~ ")" if job.revision }}
Run:          {{ run.id }}{{ ", attempt " ~ run.attempt if run.attempt and run.attempt != 1 }}
State:        {{ state }}
{%- if run.start_time %}
Started:      {{ run.start_time }}
{%- endif %}
{%- if run.end_time %}
Finished:     {{ run.end_time }}
{%- endif %}
{%- if run.duration %}
Duration:     {{ run.duration }}
{%- endif %}
{%- if schedule.id %}
Schedule:     {{ schedule.id }}
{%- endif %}
{%- if triggered_by.user_id or triggered_by.service %}
Triggered by: {{ triggered_by.user_id or triggered_by.service }}{{ " via " ~ triggered_by.service if triggered_by.user_id and triggered_by.service }}
{%- endif %}
{%- if run.error %}

Error: {{ run.error }}{{ " (" ~ run.error_reason ~ ")" if run.error_reason }}
{%- endif %}
{%- if failed_steps %}

Failed steps:
{%- for step in failed_steps %}
  - {{ step.name }}{{ " on " ~ (step.target_name or step.target_id) if step.target_name or step.target_id }}: {{ step.state|replace("_", " ") }}{{ ", exit code " ~ step.exit_code if step.exit_code is number }}{{ ", HTTP " ~ step.http_status if step.http_status is number }}{{ " - " ~ step.error if step.error }}
{%- endfor %}
{%- endif %}"#
);

const HTML_FINISHED: &str = concat!(
    run_state!(),
    r#"<!DOCTYPE html>
<html><body style="font-family: sans-serif">
<h2>Run {{ state }}: {{ job.name|default(job.id, true) }}</h2>
<table cellpadding="4">
<tr><th align="left">Job</th><td>{{ job.name }}{{ " (revision " ~ job.revision ~ ")" if job.revision }}</td></tr>
<tr><th align="left">Run</th><td><code>{{ run.id }}</code>{{ ", attempt " ~ run.attempt if run.attempt and run.attempt != 1 }}</td></tr>
<tr><th align="left">State</th><td>{{ state }}</td></tr>
{%- if run.start_time %}
<tr><th align="left">Started</th><td>{{ run.start_time }}</td></tr>
{%- endif %}
{%- if run.end_time %}
<tr><th align="left">Finished</th><td>{{ run.end_time }}</td></tr>
{%- endif %}
{%- if run.duration %}
<tr><th align="left">Duration</th><td>{{ run.duration }}</td></tr>
{%- endif %}
{%- if schedule.id %}
<tr><th align="left">Schedule</th><td><code>{{ schedule.id }}</code></td></tr>
{%- endif %}
{%- if triggered_by.user_id or triggered_by.service %}
<tr><th align="left">Triggered by</th><td>{{ triggered_by.user_id or triggered_by.service }}{{ " via " ~ triggered_by.service if triggered_by.user_id and triggered_by.service }}</td></tr>
{%- endif %}
</table>
{%- if run.error %}
<p><strong>Error:</strong> {{ run.error }}{{ " (" ~ run.error_reason ~ ")" if run.error_reason }}</p>
{%- endif %}
{%- if failed_steps %}
<h3>Failed steps</h3>
<ul>
{%- for step in failed_steps %}
<li><strong>{{ step.name }}</strong>{{ " on " ~ (step.target_name or step.target_id) if step.target_name or step.target_id }}: {{ step.state|replace("_", " ") }}{{ ", exit code " ~ step.exit_code if step.exit_code is number }}{{ ", HTTP " ~ step.http_status if step.http_status is number }}{{ " - " ~ step.error if step.error }}</li>
{%- endfor %}
</ul>
{%- endif %}
</body></html>"#
);

const SLACK_FINISHED: &str = concat!(
    run_state!(),
    r#"{%- set icon = {"succeeded": ":white_check_mark:", "failed": ":x:", "timed out": ":hourglass:", "cancelled": ":no_entry_sign:"}[state]|default(":information_source:") -%}
{{ icon }} *Run {{ state }}: {{ job.name|default(job.id, true) }}*
• *Job:* {{ job.name }}{{ " (revision " ~ job.revision ~ ")" if job.revision }}
• *Run:* `{{ run.id }}`{{ ", attempt " ~ run.attempt if run.attempt and run.attempt != 1 }}
{%- if run.duration %}
• *Duration:* {{ run.duration }}
{%- endif %}
{%- if schedule.id %}
• *Schedule:* `{{ schedule.id }}`
{%- endif %}
{%- if triggered_by.user_id or triggered_by.service %}
• *Triggered by:* {{ triggered_by.user_id or triggered_by.service }}{{ " via " ~ triggered_by.service if triggered_by.user_id and triggered_by.service }}
{%- endif %}
{%- if run.error %}
*Error:* {{ run.error }}{{ " (" ~ run.error_reason ~ ")" if run.error_reason }}
{%- endif %}
{%- if failed_steps %}
*Failed steps:*
{%- for step in failed_steps %}
• *{{ step.name }}*{{ " on " ~ (step.target_name or step.target_id) if step.target_name or step.target_id }}: {{ step.state|replace("_", " ") }}{{ ", exit code " ~ step.exit_code if step.exit_code is number }}{{ ", HTTP " ~ step.http_status if step.http_status is number }}{{ " - " ~ step.error if step.error }}
{%- endfor %}
{%- endif %}"#
);

const TEAMS_FINISHED: &str = concat!(
    run_state!(),
    r#"**Run {{ state }}: {{ job.name|default(job.id, true) }}**

- **Job:** {{ job.name }}{{ " (revision " ~ job.revision ~ ")" if job.revision }}
- **Run:** `{{ run.id }}`{{ ", attempt " ~ run.attempt if run.attempt and run.attempt != 1 }}
{%- if run.duration %}
- **Duration:** {{ run.duration }}
{%- endif %}
{%- if schedule.id %}
- **Schedule:** `{{ schedule.id }}`
{%- endif %}
{%- if triggered_by.user_id or triggered_by.service %}
- **Triggered by:** {{ triggered_by.user_id or triggered_by.service }}{{ " via " ~ triggered_by.service if triggered_by.user_id and triggered_by.service }}
{%- endif %}
{%- if run.error %}

**Error:** {{ run.error }}{{ " (" ~ run.error_reason ~ ")" if run.error_reason }}
{%- endif %}
{%- if failed_steps %}

**Failed steps:**
{% for step in failed_steps %}
- **{{ step.name }}**{{ " on " ~ (step.target_name or step.target_id) if step.target_name or step.target_id }}: {{ step.state|replace("_", " ") }}{{ ", exit code " ~ step.exit_code if step.exit_code is number }}{{ ", HTTP " ~ step.http_status if step.http_status is number }}{{ " - " ~ step.error if step.error }}
{%- endfor %}
{%- endif %}"#
);

// ---------------------------------------------------------------------------------------------
// Credential expiring

const EMAIL_CREDENTIAL: &str = concat!(
    credential_when!(),
    r#"The credential "{{ credential.name|default(credential.id, true) }}" expires {{ when }}{{ " (" ~ credential.expire_time ~ ")" if credential.expire_time }}.

Name:     {{ credential.name }}
Id:       {{ credential.id }}
{%- if credential.kind %}
Kind:     {{ credential.kind|replace("_", " ") }}
{%- endif %}
{%- if credential.expire_time %}
Expires:  {{ credential.expire_time }}
{%- endif %}

Rotate it before then: jobs and targets that use it will fail once it has expired."#
);

const HTML_CREDENTIAL: &str = concat!(
    credential_when!(),
    r#"<!DOCTYPE html>
<html><body style="font-family: sans-serif">
<h2>Credential expiring {{ when }}: {{ credential.name|default(credential.id, true) }}</h2>
<table cellpadding="4">
<tr><th align="left">Name</th><td>{{ credential.name }}</td></tr>
<tr><th align="left">Id</th><td><code>{{ credential.id }}</code></td></tr>
{%- if credential.kind %}
<tr><th align="left">Kind</th><td>{{ credential.kind|replace("_", " ") }}</td></tr>
{%- endif %}
{%- if credential.expire_time %}
<tr><th align="left">Expires</th><td>{{ credential.expire_time }}</td></tr>
{%- endif %}
</table>
<p>Rotate it before then: jobs and targets that use it will fail once it has expired.</p>
</body></html>"#
);

const SLACK_CREDENTIAL: &str = concat!(
    credential_when!(),
    r#":warning: *Credential expiring {{ when }}: {{ credential.name|default(credential.id, true) }}*
• *Id:* `{{ credential.id }}`
{%- if credential.kind %}
• *Kind:* {{ credential.kind|replace("_", " ") }}
{%- endif %}
{%- if credential.expire_time %}
• *Expires:* {{ credential.expire_time }}
{%- endif %}
Rotate it before then: jobs and targets that use it will fail once it has expired."#
);

const TEAMS_CREDENTIAL: &str = concat!(
    credential_when!(),
    r#"**Credential expiring {{ when }}: {{ credential.name|default(credential.id, true) }}**

- **Id:** `{{ credential.id }}`
{%- if credential.kind %}
- **Kind:** {{ credential.kind|replace("_", " ") }}
{%- endif %}
{%- if credential.expire_time %}
- **Expires:** {{ credential.expire_time }}
{%- endif %}

Rotate it before then: jobs and targets that use it will fail once it has expired."#
);

// ---------------------------------------------------------------------------------------------
// Schedule fire failed

const EMAIL_FIRE: &str = r#"The schedule "{{ schedule.name|default(schedule.id, true) }}" was due but no run was started.

Schedule:  {{ schedule.name }}{{ " (" ~ schedule.id ~ ")" if schedule.id }}
{%- if schedule.job_id or job.id %}
Job:       {{ schedule.job_id or job.id }}
{%- endif %}
{%- if fire.scheduled_time %}
Due:       {{ fire.scheduled_time }}
{%- endif %}
{%- if fire.kind %}
Fire:      {{ fire.kind }}
{%- endif %}
{%- if schedule.owner_user_id %}
Owner:     {{ schedule.owner_user_id }}
{%- endif %}
{%- if error or error_reason %}

Error: {{ error }}{{ " (" ~ error_reason ~ ")" if error_reason }}
{%- endif %}"#;

const HTML_FIRE: &str = r#"<!DOCTYPE html>
<html><body style="font-family: sans-serif">
<h2>Schedule failed to fire: {{ schedule.name|default(schedule.id, true) }}</h2>
<p>The schedule was due but no run was started.</p>
<table cellpadding="4">
<tr><th align="left">Schedule</th><td>{{ schedule.name }}{{ " (" ~ schedule.id ~ ")" if schedule.id }}</td></tr>
{%- if schedule.job_id or job.id %}
<tr><th align="left">Job</th><td><code>{{ schedule.job_id or job.id }}</code></td></tr>
{%- endif %}
{%- if fire.scheduled_time %}
<tr><th align="left">Due</th><td>{{ fire.scheduled_time }}</td></tr>
{%- endif %}
{%- if fire.kind %}
<tr><th align="left">Fire</th><td>{{ fire.kind }}</td></tr>
{%- endif %}
{%- if schedule.owner_user_id %}
<tr><th align="left">Owner</th><td>{{ schedule.owner_user_id }}</td></tr>
{%- endif %}
</table>
{%- if error or error_reason %}
<p><strong>Error:</strong> {{ error }}{{ " (" ~ error_reason ~ ")" if error_reason }}</p>
{%- endif %}
</body></html>"#;

const SLACK_FIRE: &str = r#":rotating_light: *Schedule failed to fire: {{ schedule.name|default(schedule.id, true) }}*
No run was started.
{%- if schedule.id %}
• *Schedule:* `{{ schedule.id }}`
{%- endif %}
{%- if schedule.job_id or job.id %}
• *Job:* `{{ schedule.job_id or job.id }}`
{%- endif %}
{%- if fire.scheduled_time %}
• *Due:* {{ fire.scheduled_time }}
{%- endif %}
{%- if schedule.owner_user_id %}
• *Owner:* {{ schedule.owner_user_id }}
{%- endif %}
{%- if error or error_reason %}
*Error:* {{ error }}{{ " (" ~ error_reason ~ ")" if error_reason }}
{%- endif %}"#;

const TEAMS_FIRE: &str = r#"**Schedule failed to fire: {{ schedule.name|default(schedule.id, true) }}**
No run was started.

- **Schedule:** {{ schedule.name }}{{ " (`" ~ schedule.id ~ "`)" if schedule.id }}
{%- if schedule.job_id or job.id %}
- **Job:** `{{ schedule.job_id or job.id }}`
{%- endif %}
{%- if fire.scheduled_time %}
- **Due:** {{ fire.scheduled_time }}
{%- endif %}
{%- if schedule.owner_user_id %}
- **Owner:** {{ schedule.owner_user_id }}
{%- endif %}
{%- if error or error_reason %}

**Error:** {{ error }}{{ " (" ~ error_reason ~ ")" if error_reason }}
{%- endif %}"#;

// ---------------------------------------------------------------------------------------------
// Test

const EMAIL_TEST: &str = r#"This is a test notification from OpsConductor.
{%- if message %}

{{ message }}
{%- endif %}

If you can read this, notifications to this destination work."#;

const HTML_TEST: &str = r#"<!DOCTYPE html>
<html><body style="font-family: sans-serif">
<p>This is a test notification from OpsConductor.</p>
{%- if message %}
<p>{{ message }}</p>
{%- endif %}
<p>If you can read this, notifications to this destination work.</p>
</body></html>"#;

const SLACK_TEST: &str = r#":wave: This is a test notification from OpsConductor.
{%- if message %}
{{ message }}
{%- endif %}"#;

const TEAMS_TEST: &str = r#"This is a test notification from OpsConductor.
{%- if message %}

{{ message }}
{%- endif %}"#;

// ---------------------------------------------------------------------------------------------
// Any other event: its message, then every non-empty value of the context.

const EMAIL_GENERIC: &str = r#"OpsConductor notification: {{ event|default("event", true) }}
{%- if message %}

{{ message }}
{%- endif %}
{%- for name, value in variables()|flatten if name not in ["event", "message", "timestamp"] %}
{{ "\n" if loop.first }}{{ name }}: {{ value }}
{%- endfor %}"#;

const HTML_GENERIC: &str = r#"<!DOCTYPE html>
<html><body style="font-family: sans-serif">
<h2>OpsConductor notification: {{ event|default("event", true) }}</h2>
{%- if message %}
<p>{{ message }}</p>
{%- endif %}
<table cellpadding="4">
{%- for name, value in variables()|flatten if name not in ["event", "message", "timestamp"] %}
<tr><th align="left">{{ name }}</th><td>{{ value }}</td></tr>
{%- endfor %}
</table>
</body></html>"#;

const SLACK_GENERIC: &str = r#":information_source: *OpsConductor notification: {{ event|default("event", true) }}*
{%- if message %}
{{ message }}
{%- endif %}
{%- for name, value in variables()|flatten if name not in ["event", "message", "timestamp"] %}
• *{{ name }}:* {{ value }}
{%- endfor %}"#;

const TEAMS_GENERIC: &str = r#"**OpsConductor notification: {{ event|default("event", true) }}**
{%- if message %}

{{ message }}
{%- endif %}
{%- for name, value in variables()|flatten if name not in ["event", "message", "timestamp"] %}
{{ "\n" if loop.first }}- **{{ name }}:** {{ value }}
{%- endfor %}"#;

// ---------------------------------------------------------------------------------------------
// Webhooks: a Standard Webhooks-style payload. Each `{{ value }}` is a JSON literal here (the body
// is JSON auto-escaped), and `|tojson` writes whole objects.

macro_rules! webhook_body {
    ($event:literal, $($data:tt)+) => {
        concat!(
            "{\n  \"type\": {{ event|default(\"",
            $event,
            "\", true) }},\n  \"timestamp\": {{ timestamp|default(\"\") }},\n  \"data\": ",
            $($data)+,
            "\n}"
        )
    };
}

macro_rules! run_started_data {
    () => {
        r#"{{ {"run": run, "job": job, "schedule": schedule, "trigger": trigger, "triggered_by": triggered_by}|tojson }}"#
    };
}
macro_rules! run_finished_data {
    () => {
        r#"{{ {"run": run, "job": job, "schedule": schedule, "trigger": trigger, "triggered_by": triggered_by, "failed_steps": failed_steps}|tojson }}"#
    };
}

const WEBHOOK_STARTED: &str = webhook_body!("run.started", run_started_data!());
const WEBHOOK_SUCCEEDED: &str = webhook_body!("run.succeeded", run_finished_data!());
const WEBHOOK_FAILED: &str = webhook_body!("run.failed", run_finished_data!());
const WEBHOOK_CANCELLED: &str = webhook_body!("run.cancelled", run_finished_data!());
const WEBHOOK_FINISHED: &str = webhook_body!("run.finished", run_finished_data!());
const WEBHOOK_CREDENTIAL: &str = webhook_body!(
    "credential.expiring",
    r#"{{ {"credential": credential}|tojson }}"#
);
const WEBHOOK_FIRE: &str = webhook_body!(
    "schedule.fire_failed",
    r#"{{ {"schedule": schedule, "job": job, "fire": fire, "error": error, "error_reason": error_reason}|tojson }}"#
);
const WEBHOOK_TEST: &str = webhook_body!(
    "test",
    r#"{{ {"message": message|default("This is a test notification from OpsConductor.", true)}|tojson }}"#
);
// The event type of an unknown event is only known from the context.
const WEBHOOK_GENERIC: &str = r#"{
  "type": {{ event|default("") }},
  "timestamp": {{ timestamp|default("") }},
  "data": {{ variables()|tojson }}
}"#;

fn webhook(group: Group, event_type: &str) -> Source<'static> {
    let (subject, body) = match group {
        Group::RunStarted => (STARTED_SUBJECT, WEBHOOK_STARTED),
        Group::RunFinished => (
            FINISHED_SUBJECT,
            match event_type {
                "run.succeeded" => WEBHOOK_SUCCEEDED,
                "run.failed" => WEBHOOK_FAILED,
                "run.cancelled" => WEBHOOK_CANCELLED,
                _ => WEBHOOK_FINISHED,
            },
        ),
        Group::CredentialExpiring => (CREDENTIAL_SUBJECT, WEBHOOK_CREDENTIAL),
        Group::ScheduleFireFailed => (FIRE_SUBJECT, WEBHOOK_FIRE),
        Group::Test => (TEST_SUBJECT, WEBHOOK_TEST),
        Group::Generic => (GENERIC_SUBJECT, WEBHOOK_GENERIC),
    };
    source(subject, body, "")
}
