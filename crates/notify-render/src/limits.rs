//! Built-in filters whose argument sizes an allocation, with that argument capped.
//!
//! Everything else a template can build (`'x' * n`, a string doubled in a loop, a `{% set %}`
//! block) is bounded by the sandbox process's memory limit; these two get a cap of their own so
//! that the common mistake gets an error that names the limit.

use minijinja::value::{Kwargs, Value};
use minijinja::{Error, ErrorKind};

/// The widest `|indent`.
pub const INDENT_LIMIT: usize = 64;
/// The widest `|tojson(indent=…)`.
pub const JSON_INDENT_LIMIT: usize = 16;

fn too_large(what: &str, limit: usize) -> Error {
    Error::new(
        ErrorKind::InvalidOperation,
        format!("{what} is limited to {limit}"),
    )
}

/// `|indent(width, first, blank)`, as the built-in, with `width` at most [`INDENT_LIMIT`].
pub(crate) fn indent(
    value: Value,
    width: Option<Value>,
    first: Option<bool>,
    blank: Option<bool>,
    kwargs: Kwargs,
) -> Result<Value, Error> {
    let width = match width {
        Some(width) => width,
        None => kwargs
            .get::<Option<Value>>("width")?
            .unwrap_or(Value::from(4)),
    };
    // Parsed as i128 so that a width of 2^40 is "too large" rather than "not a number".
    let width = i128::try_from(width)
        .map_err(|_| Error::new(ErrorKind::InvalidOperation, "indent width must be a number"))?;
    let width = usize::try_from(width)
        .ok()
        .filter(|w| *w <= INDENT_LIMIT)
        .ok_or_else(|| too_large("indent width", INDENT_LIMIT))?;
    let first = match first {
        Some(first) => first,
        None => kwargs.get::<Option<bool>>("first")?.unwrap_or(false),
    };
    let blank = match blank {
        Some(blank) => blank,
        None => kwargs.get::<Option<bool>>("blank")?.unwrap_or(false),
    };
    kwargs.assert_all_used()?;
    let text = match value.as_str() {
        Some(text) => text.to_owned(),
        None => value.to_string(),
    };
    let input = text.strip_suffix('\n').unwrap_or(&text);
    let input = input.strip_suffix('\r').unwrap_or(input);
    let pad = " ".repeat(width);
    let mut out = String::with_capacity(input.len());
    for (i, line) in input.split('\n').enumerate() {
        if i > 0 {
            out.push('\n');
        }
        let indent_it = (i > 0 || first) && (blank || !line.is_empty());
        if indent_it {
            out.push_str(&pad);
        }
        out.push_str(line);
    }
    Ok(if value.is_safe() {
        Value::from_safe_string(out)
    } else {
        Value::from(out)
    })
}

/// `|tojson(indent)`, as the built-in, with `indent` (a number, or true for 2) at most
/// [`JSON_INDENT_LIMIT`].
pub(crate) fn tojson(value: &Value, indent: Option<Value>, kwargs: Kwargs) -> Result<Value, Error> {
    let indent = match indent {
        Some(indent) => Some(indent),
        None => kwargs.get::<Option<Value>>("indent")?,
    };
    kwargs.assert_all_used()?;
    if let Some(indent) = &indent {
        if !indent.is_true() || matches!(bool::try_from(indent.clone()), Ok(true)) {
            // false, none, 0 and true are small by construction.
        } else {
            let width = i128::try_from(indent.clone()).map_err(|_| {
                Error::new(
                    ErrorKind::InvalidOperation,
                    "tojson indent must be a number",
                )
            })?;
            if !(0..=JSON_INDENT_LIMIT as i128).contains(&width) {
                return Err(too_large("tojson indent", JSON_INDENT_LIMIT));
            }
        }
    }
    let none: [(&str, Value); 0] = [];
    minijinja::filters::tojson(value, indent, Kwargs::from_iter(none))
}
