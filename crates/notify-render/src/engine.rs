//! The sandboxed template engine: checking, rendering, limits and missing variables.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::io;

use minijinja::value::Value as EngineValue;
use minijinja::{Environment, State, Template, UndefinedBehavior};
use serde_json::Value;

use crate::{escape, limits, Channel, RenderError, Rendered, Source};

/// Instructions one field may execute: plenty for any sensible notification, and a nested loop
/// over large ranges stops after a few milliseconds instead of tying up a worker.
pub const FUEL: u64 = 100_000;
/// The largest rendered subject, in bytes.
pub const SUBJECT_LIMIT: usize = 1024;
/// The largest rendered body or html_body, in bytes.
pub const BODY_LIMIT: usize = 256 * 1024;

const FIELDS: [&str; 3] = ["subject", "body", "html_body"];

fn environment<'s>() -> Environment<'s> {
    // A fresh environment per call: templates borrow their source, and nothing is loaded from
    // anywhere but the given strings (no loader is set, so include/import/extends fail).
    let mut env = Environment::new();
    env.set_fuel(Some(FUEL));
    // Chainable rather than Lenient: `{{ run.error }}` must render empty when the context has no
    // `run` at all (a preview with a few variables), not fail.
    env.set_undefined_behavior(UndefinedBehavior::Chainable);
    env.set_auto_escape_callback(escape::auto_escape);
    env.set_formatter(escape::format);
    // Debug mode would clone the source and context into every error; we only report the line.
    env.set_debug(false);
    env.add_function("variables", variables);
    env.add_filter("flatten", flatten);
    // The two built-ins whose argument sizes an allocation: capped so that a huge argument is a
    // clear error naming the limit rather than a failed allocation (which aborts the process).
    env.add_filter("indent", limits::indent);
    env.add_filter("tojson", limits::tojson);
    env
}

fn field_source<'a>(source: &Source<'a>, field: &str) -> &'a str {
    match field {
        "subject" => source.subject,
        "html_body" => source.html_body,
        _ => source.body,
    }
}

fn compile<'e, 's>(
    env: &'e Environment<'s>,
    channel: Channel,
    field: &'static str,
    source: &'s str,
) -> Result<Template<'e, 's>, RenderError> {
    env.template_from_named_str(escape::template_name(channel, field), source)
        .map_err(|err| RenderError::from_engine(field, &err))
}

pub(crate) fn check(channel: Channel, source: &Source<'_>) -> Result<(), RenderError> {
    let env = environment();
    for field in FIELDS {
        compile(&env, channel, field, field_source(source, field))?;
    }
    Ok(())
}

pub(crate) fn render(
    channel: Channel,
    source: &Source<'_>,
    context: &Value,
) -> Result<Rendered, RenderError> {
    render_reporting(channel, source, context, &mut |_| {})
}

/// [`render`], telling `starting` which field it is about to render (the sandbox reports it, so
/// that a field that exhausts the sandbox can be named).
pub(crate) fn render_reporting(
    channel: Channel,
    source: &Source<'_>,
    context: &Value,
    starting: &mut dyn FnMut(&'static str),
) -> Result<Rendered, RenderError> {
    let empty = Value::Object(serde_json::Map::new());
    let context = if context.is_object() { context } else { &empty };
    let env = environment();
    let globals: HashSet<&str> = env.globals().map(|(name, _)| name).collect();
    let mut missing = BTreeSet::new();
    let mut out = [String::new(), String::new(), String::new()];
    for (slot, field) in out.iter_mut().zip(FIELDS) {
        starting(field);
        let template = compile(&env, channel, field, field_source(source, field))?;
        let limit = if field == "subject" {
            SUBJECT_LIMIT
        } else {
            BODY_LIMIT
        };
        *slot = render_capped(&template, field, context, limit)?;
        for name in template.undeclared_variables(true) {
            let root = name.split('.').next().unwrap_or(&name);
            let global = globals.contains(root) && context.get(root).is_none();
            if !global && !resolves(context, &name) {
                missing.insert(name);
            }
        }
    }
    let [subject, body, html_body] = out;
    // A subject ends up in a mail header: a line break there would start a new header.
    let subject = subject
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect::<String>()
        .trim()
        .to_owned();
    if channel == Channel::Webhook {
        if let Err(err) = serde_json::from_str::<serde::de::IgnoredAny>(&body) {
            return Err(RenderError::NotJson {
                line: Some(err.line()).filter(|line| *line > 0),
                message: err.to_string(),
            });
        }
    }
    Ok(Rendered {
        subject,
        body,
        html_body,
        missing_variables: missing.into_iter().collect(),
    })
}

/// Renders into a buffer that refuses to grow past `limit`, so a long loop stops at the limit
/// rather than after building megabytes of output. (Values built inside the template, such as
/// `'x' * n` or a string doubled in a loop, are bounded by the sandbox's memory limit: see
/// [`crate::sandbox`].)
fn render_capped(
    template: &Template<'_, '_>,
    field: &'static str,
    context: &Value,
    limit: usize,
) -> Result<String, RenderError> {
    let mut sink = Capped {
        buf: Vec::new(),
        limit,
        exceeded: false,
    };
    let result = template.render_captured_to(context, &mut sink);
    if sink.exceeded {
        return Err(RenderError::TooLarge { field, limit });
    }
    result.map_err(|err| RenderError::from_engine(field, &err))?;
    // The engine only writes whole `str`s and the sink rejects a write as a whole, so the buffer is
    // always UTF-8; lossy conversion just avoids a panic path.
    Ok(match String::from_utf8(sink.buf) {
        Ok(text) => text,
        Err(err) => String::from_utf8_lossy(err.as_bytes()).into_owned(),
    })
}

struct Capped {
    buf: Vec<u8>,
    limit: usize,
    exceeded: bool,
}

impl io::Write for Capped {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        if self.buf.len() + bytes.len() > self.limit {
            self.exceeded = true;
            return Err(io::Error::other("output limit reached"));
        }
        self.buf.extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Whether a dotted name (as reported by the engine's static analysis) names a value in the
/// context.
fn resolves(context: &Value, dotted: &str) -> bool {
    let mut value = context;
    for segment in dotted.split('.') {
        match value.get(segment) {
            Some(next) => value = next,
            None => return false,
        }
    }
    true
}

/// `variables()`: the render context as a map, for templates (the generic built-ins) that show
/// whatever an event carries.
fn variables(state: &State) -> EngineValue {
    let globals: HashSet<&str> = state.env().globals().map(|(name, _)| name).collect();
    let mut map = BTreeMap::new();
    for name in state.known_variables() {
        if globals.contains(name.as_ref()) || name == "loop" {
            continue;
        }
        if let Some(value) = state.lookup(&name) {
            map.insert(name.into_owned(), value);
        }
    }
    EngineValue::from(map)
}

/// `|flatten`: a map as sorted `[dotted name, value]` pairs, nested maps flattened, lists shown as
/// JSON text, and empty or null values left out, so a generic template can list every fact.
fn flatten(value: EngineValue) -> EngineValue {
    fn walk(prefix: &str, value: &serde_json::Value, out: &mut Vec<(String, EngineValue)>) {
        match value {
            serde_json::Value::Object(map) => {
                for (key, value) in map {
                    let name = if prefix.is_empty() {
                        key.clone()
                    } else {
                        format!("{prefix}.{key}")
                    };
                    walk(&name, value, out);
                }
            }
            serde_json::Value::Null => {}
            serde_json::Value::String(s) if s.is_empty() => {}
            serde_json::Value::Array(items) if items.is_empty() => {}
            serde_json::Value::String(s) => {
                out.push((prefix.to_owned(), EngineValue::from(s.as_str())))
            }
            // Plain (not safe) strings, so the channel's escaping still applies to them.
            other => out.push((prefix.to_owned(), EngineValue::from(other.to_string()))),
        }
    }
    let mut out = Vec::new();
    // Values that do not serialize (functions) are just left out.
    if let Ok(json) = serde_json::to_value(&value) {
        walk("", &json, &mut out);
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out.into_iter()
        .map(|(name, value)| EngineValue::from(vec![EngineValue::from(name), value]))
        .collect()
}
