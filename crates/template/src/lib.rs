//! Step templates. A template is literal text with `{{ reference }}` holes; references are
//! `params.<name>`, `target.name|address|port|id`, `run.id`, `run.attempt`, `job.name`, and an
//! earlier step's outputs: `steps.<step>.output` (its standard output, or an HTTP step's body,
//! trimmed) and `steps.<step>.json.<path>` (a field of that output read as JSON, e.g.
//! `steps.build.json.image.tag` or `steps.list.json.items.0.id`).
//! Templates are parsed when a job is saved (an unknown reference is a field violation then,
//! not a failed run later). Shell and ssh commands never carry a value in their text: each
//! hole renders to a reference to a variable (`"${OPS_P_0}"`) and the values travel beside the
//! script ([`Template::render_shell`]); the [`shell`] lexer refuses, at save time, holes where
//! such a reference would not expand or would be parsed again. Other templates are rendered
//! in a [`Context`] that decides how a value is escaped: percent-encoded in a URL, as is in a
//! header or body.

mod escape;
mod http;
pub mod shell;

use std::collections::BTreeMap;

pub use escape::{percent_encode, shell_quote};
pub use http::BodyKind;
pub use shell::Placement;

/// Where a rendered (non-shell) template goes, which decides how values are escaped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Context {
    /// A URL: each value is percent-encoded (every byte but the unreserved ones).
    Url,
    /// Headers, bodies, environment values: the value as it is.
    Text,
}

/// A field of the target a step runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TargetField {
    Id,
    Name,
    Address,
    Port,
}

/// What a hole refers to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reference {
    Param(String),
    Target(TargetField),
    RunId,
    RunAttempt,
    JobName,
    /// An earlier step's output; `json` is the path into it read as JSON (empty: the output).
    Step {
        step: String,
        json: Vec<String>,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Literal(String),
    /// A reference and the byte offset of its `{{` in the source.
    Hole(Reference, usize),
}

/// A parsed template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    parts: Vec<Part>,
}

/// Why a template does not parse; `offset` is the byte where the trouble starts.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("at byte {offset}: {message}")]
pub struct ParseError {
    pub offset: usize,
    pub message: String,
}

/// Why a template cannot be rendered with the values at hand.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RenderError {
    #[error("parameter {0:?} has no value")]
    MissingParam(String),
    #[error("{{{{ target.* }}}} is used by a step that has no target")]
    NoTarget,
    #[error("step {0:?} has no output here (it has not run, or ran on other targets)")]
    NoOutput(String),
    #[error("the output of step {0:?} has no JSON field {1:?}")]
    NoField(String, String),
    #[error("{0}")]
    Unsafe(UnsafeHole),
    #[error("{0} holds a NUL byte, which no command can receive")]
    Nul(String),
    #[error(
        "the output of step {0:?} starts with '-', which a command could take for an option: \
         refusing to pass it on"
    )]
    LeadingDash(String),
    #[error(
        "a value made a '.' or '..' segment of the URL's path, which would change the path: \
         refusing to send it"
    )]
    DotSegment,
}

/// A hole where a shell would not expand a reference, or would parse the value again.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("at byte {offset}: a value cannot go here: {reason}")]
pub struct UnsafeHole {
    pub offset: usize,
    pub reason: &'static str,
}

/// A shell command whose values are not in its text: `script` refers to them as
/// `${OPS_P_<n>}` and `vars` holds `(OPS_P_<n>, value)` for each hole, in order.
#[derive(Clone, PartialEq, Eq)]
pub struct ShellScript {
    pub script: String,
    pub vars: Vec<(String, String)>,
}

/// The values may be secrets: Debug shows the script and the variables' names only.
impl std::fmt::Debug for ShellScript {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<&str> = self.vars.iter().map(|(n, _)| n.as_str()).collect();
        f.debug_struct("ShellScript")
            .field("script", &self.script)
            .field("vars", &names)
            .finish()
    }
}

/// Earlier steps' outputs, as a rendering sees them (on its target).
pub trait StepOutputs {
    /// The output of `step`; with a non-empty `json` path, that field of it read as JSON
    /// (strings as they are, other values as JSON text). Err names what is missing.
    fn lookup(&self, step: &str, json: &[String]) -> Result<String, RenderError>;
}

/// The values of one rendering.
#[derive(Clone, Default)]
pub struct Values<'a> {
    pub params: Option<&'a BTreeMap<String, String>>,
    pub steps: Option<&'a (dyn StepOutputs + Sync)>,
    pub target: Option<TargetValues<'a>>,
    pub run_id: &'a str,
    pub run_attempt: u32,
    pub job_name: &'a str,
}

#[derive(Debug, Clone, Copy)]
pub struct TargetValues<'a> {
    pub id: &'a str,
    pub name: &'a str,
    pub address: &'a str,
    pub port: u32,
}

impl Template {
    pub fn parse(source: &str) -> Result<Template, ParseError> {
        let mut parts = Vec::new();
        let mut rest = source;
        let mut offset = 0;
        while let Some(open) = rest.find("{{") {
            if open > 0 {
                parts.push(Part::Literal(rest[..open].to_string()));
            }
            let after = &rest[open + 2..];
            let close = after.find("}}").ok_or_else(|| ParseError {
                offset: offset + open,
                message: "'{{' is never closed by '}}'".into(),
            })?;
            let reference =
                parse_reference(after[..close].trim()).map_err(|message| ParseError {
                    offset: offset + open,
                    message,
                })?;
            parts.push(Part::Hole(reference, offset + open));
            let consumed = open + 2 + close + 2;
            rest = &rest[consumed..];
            offset += consumed;
        }
        if let Some(stray) = rest.find("}}") {
            return Err(ParseError {
                offset: offset + stray,
                message: "'}}' without an opening '{{'".into(),
            });
        }
        if !rest.is_empty() {
            parts.push(Part::Literal(rest.to_string()));
        }
        Ok(Template { parts })
    }

    /// Every reference, in order.
    pub fn references(&self) -> impl Iterator<Item = &Reference> {
        self.parts.iter().filter_map(|p| match p {
            Part::Hole(r, _) => Some(r),
            Part::Literal(_) => None,
        })
    }

    /// Whether it refers to the target a step runs on.
    pub fn uses_target(&self) -> bool {
        self.references().any(|r| matches!(r, Reference::Target(_)))
    }

    /// Where each hole sits if the template is a shell command (see [`shell`]).
    pub fn shell_placements(&self) -> Vec<(usize, Placement)> {
        let mut toks = Vec::new();
        let mut offsets = Vec::new();
        for part in &self.parts {
            match part {
                Part::Literal(text) => toks.extend(text.chars().map(shell::Tok::Ch)),
                Part::Hole(_, offset) => {
                    toks.push(shell::Tok::Hole);
                    offsets.push(*offset);
                }
            }
        }
        offsets.into_iter().zip(shell::place(&toks)).collect()
    }

    /// Ok when every hole may be used in a shell command (checked when a job is saved).
    pub fn check_shell(&self) -> Result<(), UnsafeHole> {
        for (offset, placement) in self.shell_placements() {
            if let Placement::Refused(reason) = placement {
                return Err(UnsafeHole { offset, reason });
            }
        }
        Ok(())
    }

    /// The template as a shell command whose values are not in its text: each hole is a
    /// reference to a variable (quoted as its place needs), and the values come back beside
    /// it for the caller to hand over out of band (the environment, or assignments it writes).
    /// Refuses the template if any hole is unsafe (jobs saved before the check existed), a
    /// value holds NUL, or a step's output starts with `-`.
    pub fn render_shell(&self, values: &Values<'_>) -> Result<ShellScript, RenderError> {
        let placements = self.shell_placements();
        let mut script = String::new();
        let mut vars = Vec::new();
        let mut holes = placements.into_iter();
        for part in &self.parts {
            match part {
                Part::Literal(text) => script.push_str(text),
                Part::Hole(reference, offset) => {
                    let placement = holes
                        .next()
                        .map(|(_, p)| p)
                        .unwrap_or(Placement::Refused("the lexer lost track of this hole"));
                    let name = format!("OPS_P_{}", vars.len());
                    match placement {
                        Placement::Word => script.push_str(&format!("\"${{{name}}}\"")),
                        Placement::InString => script.push_str(&format!("${{{name}}}")),
                        Placement::Refused(reason) => {
                            return Err(RenderError::Unsafe(UnsafeHole {
                                offset: *offset,
                                reason,
                            }))
                        }
                    }
                    let value = lookup(reference, values)?;
                    if value.contains('\0') {
                        return Err(RenderError::Nul(describe(reference)));
                    }
                    if let Reference::Step { step, .. } = reference {
                        if value.starts_with('-') {
                            return Err(RenderError::LeadingDash(step.clone()));
                        }
                    }
                    vars.push((name, value));
                }
            }
        }
        Ok(ShellScript { script, vars })
    }

    pub fn render(&self, values: &Values<'_>, context: Context) -> Result<String, RenderError> {
        let mut out = String::new();
        for part in &self.parts {
            match part {
                Part::Literal(text) => out.push_str(text),
                Part::Hole(reference, _) => {
                    let value = lookup(reference, values)?;
                    match context {
                        Context::Url => out.push_str(&percent_encode(&value)),
                        Context::Text => out.push_str(&value),
                    }
                }
            }
        }
        Ok(out)
    }
}

/// A reference as people write it, for errors.
fn describe(reference: &Reference) -> String {
    match reference {
        Reference::Param(name) => format!("parameter {name:?}"),
        Reference::Step { step, .. } => format!("the output of step {step:?}"),
        Reference::Target(_) => "the target".into(),
        Reference::RunId | Reference::RunAttempt => "the run".into(),
        Reference::JobName => "the job name".into(),
    }
}

fn parse_reference(text: &str) -> Result<Reference, String> {
    let (root, field) = text.split_once('.').unwrap_or((text, ""));
    match (root, field) {
        ("params", name) if is_param_name(name) => Ok(Reference::Param(name.to_string())),
        ("params", name) => Err(format!("{name:?} is not a parameter name")),
        ("target", "id") => Ok(Reference::Target(TargetField::Id)),
        ("target", "name") => Ok(Reference::Target(TargetField::Name)),
        ("target", "address") => Ok(Reference::Target(TargetField::Address)),
        ("target", "port") => Ok(Reference::Target(TargetField::Port)),
        ("run", "id") => Ok(Reference::RunId),
        ("run", "attempt") => Ok(Reference::RunAttempt),
        ("job", "name") => Ok(Reference::JobName),
        ("steps", rest) => step_reference(rest),
        _ => Err(format!(
            "unknown reference {text:?} (use params.<name>, target.id, target.name, \
             target.address, target.port, run.id, run.attempt or job.name)"
        )),
    }
}

/// `<step>.output` or `<step>.json.<path>`.
fn step_reference(rest: &str) -> Result<Reference, String> {
    let mut parts = rest.split('.');
    let step = parts.next().unwrap_or_default();
    let valid_step = !step.is_empty()
        && step.len() <= 63
        && step
            .chars()
            .all(|c| matches!(c, 'a'..='z' | '0'..='9' | '-' | '_'));
    if !valid_step {
        return Err(format!("{step:?} is not a step name"));
    }
    match parts.next() {
        Some("output") if parts.clone().next().is_none() => Ok(Reference::Step {
            step: step.to_string(),
            json: Vec::new(),
        }),
        Some("json") => {
            let path: Vec<String> = parts.map(str::to_string).collect();
            let valid = !path.is_empty()
                && path.iter().all(|p| {
                    !p.is_empty()
                        && p.chars()
                            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
                });
            if !valid {
                return Err(
                    "steps.<step>.json needs a path of fields, e.g. .json.image.tag".into(),
                );
            }
            Ok(Reference::Step {
                step: step.to_string(),
                json: path,
            })
        }
        _ => Err(format!(
            "use steps.{step}.output or steps.{step}.json.<field>"
        )),
    }
}

/// 1-63 characters of a-z, 0-9 and '_', starting with a letter.
pub fn is_param_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some('a'..='z'))
        && name.len() <= 63
        && chars.all(|c| matches!(c, 'a'..='z' | '0'..='9' | '_'))
}

fn lookup(reference: &Reference, values: &Values<'_>) -> Result<String, RenderError> {
    let target = || values.target.ok_or(RenderError::NoTarget);
    Ok(match reference {
        Reference::Param(name) => values
            .params
            .and_then(|p| p.get(name))
            .cloned()
            .ok_or_else(|| RenderError::MissingParam(name.clone()))?,
        Reference::Target(TargetField::Id) => target()?.id.to_string(),
        Reference::Target(TargetField::Name) => target()?.name.to_string(),
        Reference::Target(TargetField::Address) => target()?.address.to_string(),
        Reference::Target(TargetField::Port) => target()?.port.to_string(),
        Reference::RunId => values.run_id.to_string(),
        Reference::RunAttempt => values.run_attempt.to_string(),
        Reference::JobName => values.job_name.to_string(),
        Reference::Step { step, json } => match values.steps {
            Some(outputs) => outputs.lookup(step, json)?,
            None => return Err(RenderError::NoOutput(step.clone())),
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn values_are_quoted_per_context() {
        let p = params(&[("x", "a'b $(id)")]);
        let values = Values {
            params: Some(&p),
            ..Values::default()
        };
        let t = Template::parse("echo {{ params.x }}! \"<{{ params.x }}>\"").unwrap();
        let rendered = t.render_shell(&values).unwrap();
        assert_eq!(rendered.script, r#"echo "${OPS_P_0}"! "<${OPS_P_1}>""#);
        assert_eq!(
            rendered.vars,
            vec![
                ("OPS_P_0".to_string(), "a'b $(id)".to_string()),
                ("OPS_P_1".to_string(), "a'b $(id)".to_string())
            ]
        );
        assert!(
            !format!("{rendered:?}").contains("$(id)"),
            "Debug shows no value"
        );
        let t = Template::parse("https://h/{{params.x}}").unwrap();
        assert_eq!(
            t.render(&values, Context::Url).unwrap(),
            "https://h/a%27b%20%24%28id%29"
        );
        assert_eq!(
            Template::parse("{{ params.x }}")
                .unwrap()
                .render(&values, Context::Text)
                .unwrap(),
            "a'b $(id)"
        );
    }

    struct Outputs;

    impl StepOutputs for Outputs {
        fn lookup(&self, step: &str, json: &[String]) -> Result<String, RenderError> {
            match (step, json) {
                ("build", []) => Ok("v1; rm -rf /".into()),
                ("build", [field]) if field == "tag" => Ok("1.2".into()),
                _ => Err(RenderError::NoOutput(step.into())),
            }
        }
    }

    #[test]
    fn step_outputs_are_values_like_any_other() {
        let values = Values {
            steps: Some(&Outputs),
            ..Values::default()
        };
        let t =
            Template::parse("deploy {{ steps.build.output }} {{steps.build.json.tag}}").unwrap();
        let rendered = t.render_shell(&values).unwrap();
        assert_eq!(rendered.script, r#"deploy "${OPS_P_0}" "${OPS_P_1}""#);
        assert_eq!(rendered.vars[0].1, "v1; rm -rf /");
        assert_eq!(rendered.vars[1].1, "1.2");
        assert!(Template::parse("{{ steps.build }}").is_err());
        assert!(Template::parse("{{ steps.build.json }}").is_err());
        assert!(Template::parse("{{ steps.build.json.a..b }}").is_err());
        assert!(Template::parse("{{ steps.Build.output }}").is_err());
        assert_eq!(
            Template::parse("{{ steps.test.output }}")
                .unwrap()
                .render(&values, Context::Text),
            Err(RenderError::NoOutput("test".into()))
        );
    }

    #[test]
    fn bad_templates_say_where() {
        let e = Template::parse("ok {{ params.X }}").unwrap_err();
        assert_eq!(e.offset, 3);
        assert!(Template::parse("{{ target.secret }}").is_err());
        assert_eq!(Template::parse("a {{ params.x").unwrap_err().offset, 2);
        assert_eq!(Template::parse("a }} b").unwrap_err().offset, 2);
        assert!(Template::parse("no holes")
            .unwrap()
            .references()
            .next()
            .is_none());
    }

    #[test]
    fn missing_values_are_errors_not_empty_strings() {
        let t = Template::parse("{{ params.y }} {{ target.address }}").unwrap();
        assert_eq!(
            t.render(&Values::default(), Context::Text),
            Err(RenderError::MissingParam("y".into()))
        );
        let p = params(&[("y", "1")]);
        let values = Values {
            params: Some(&p),
            ..Values::default()
        };
        assert_eq!(t.render(&values, Context::Text), Err(RenderError::NoTarget));
        assert!(t.uses_target());
    }
}
