//! Notification templates: sandboxed, fuel-limited minijinja rendering with per-channel escaping,
//! the built-in texts and the sample data of each event.
//!
//! Templates are Jinja (minijinja) with the standard settings (no `trim_blocks`), lenient about
//! undefined values (they render empty and are listed in [`Rendered::missing_variables`]).
//! Nothing can be loaded (`include`, `import` and `extends` fail), each field may run
//! [`FUEL`] instructions, and output is capped ([`SUBJECT_LIMIT`], [`BODY_LIMIT`]). Templates
//! people wrote render in a memory-limited child process ([`sandbox`]), so a template that
//! builds gigabytes fails alone instead of aborting the service.
//!
//! Escaping of `{{ value }}` depends on the channel and field:
//!
//! | channel | subject | body | html_body |
//! |---------|---------|------|-----------|
//! | email (and unspecified) | none | none | HTML |
//! | Slack | `&`, `<`, `>` | `&`, `<`, `>` | HTML |
//! | Teams | none | none | HTML |
//! | webhook | none | JSON (each value is a JSON literal) | HTML |
//!
//! `none` values print nothing except in webhook bodies (`null`); `|safe` opts out of escaping.
//! Besides the standard functions and filters, templates have `variables()` (the whole context as
//! a map) and `|flatten` (a map as sorted `[dotted name, value]` pairs without empty values).

mod builtin;
mod context;
mod engine;
mod error;
mod escape;
mod limits;
mod sample;
pub mod sandbox;

use opsconductor_api::common::v1::NotificationChannel as Channel;
use opsconductor_api::common::v1::NotificationChannel;

pub use builtin::builtin;
pub use context::{
    context_from_variables, credential_expiring_context, run_finished_context,
    run_finished_event_type, run_started_context, schedule_fire_failed_context,
};
pub use engine::{BODY_LIMIT, FUEL, SUBJECT_LIMIT};
pub use error::RenderError;
pub use limits::{INDENT_LIMIT, JSON_INDENT_LIMIT};
pub use sample::sample;
/// Contexts are JSON objects.
pub use serde_json::Value;

/// Every event type with a built-in text of its own.
pub const EVENT_TYPES: &[&str] = &[
    "run.started",
    "run.succeeded",
    "run.failed",
    "run.cancelled",
    "run.finished",
    "credential.expiring",
    "schedule.fire_failed",
    "test",
];

/// The three templates of a notification. Channels other than email ignore the subject when
/// sending, and only email sends html_body (empty renders empty).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Source<'a> {
    pub subject: &'a str,
    pub body: &'a str,
    pub html_body: &'a str,
}

/// What [`render`] made of a [`Source`].
#[derive(Debug, Clone, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub struct Rendered {
    /// One line: control characters (line breaks included) are replaced by spaces, and it is
    /// trimmed.
    pub subject: String,
    pub body: String,
    pub html_body: String,
    /// The names (dotted for attribute lookups, e.g. "run.error") the templates use that the
    /// context lacks; sorted, without duplicates.
    pub missing_variables: Vec<String>,
}

/// Parses all three templates without rendering them: for validating templates when they are
/// created or updated.
pub fn check(channel: NotificationChannel, source: &Source<'_>) -> Result<(), RenderError> {
    engine::check(channel, source)
}

/// Renders the three templates with `context` (a JSON object; anything else is an empty context).
/// A webhook body must be JSON once rendered.
pub fn render(
    channel: NotificationChannel,
    source: &Source<'_>,
    context: &serde_json::Value,
) -> Result<Rendered, RenderError> {
    engine::render(channel, source, context)
}

#[cfg(test)]
mod tests;
