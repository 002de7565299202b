//! http step templates: where a value may go in a URL, and how it is encoded in a body.
//!
//! - A URL's scheme, host and port are the author's (or the target's: `{{ target.address }}`):
//!   a parameter or an earlier step's output may only fill the path, query or fragment
//!   ([`Template::check_url`], when the job is saved).
//! - In the path and query a value is percent-encoded, so it stays inside its component; a
//!   rendered URL with a `.` or `..` segment (which a URL parser would resolve, a value of `..`
//!   climbing one directory) is refused ([`Template::render_url`]).
//! - In a JSON body (one that starts with `{` or `[`) a value inside a string literal is
//!   JSON-escaped and one outside becomes a whole JSON string, so a `"` cannot end a string or
//!   add a key; in a form body it is percent-encoded; anything else is sent as it is.

use crate::escape::percent_encode;
use crate::{lookup, Part, Reference, RenderError, Template, UnsafeHole, Values};

/// How a body's values are encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyKind {
    /// `{…}` or `[…]`: values are JSON strings.
    Json,
    /// `application/x-www-form-urlencoded`: values are percent-encoded.
    Form,
    /// Anything else: values as they are.
    Text,
}

impl Template {
    /// Ok when no hole but the target's fields sits before the URL's path begins, so that no
    /// value chooses where the request goes.
    pub fn check_url(&self) -> Result<(), UnsafeHole> {
        let mut seen = String::new();
        for part in &self.parts {
            match part {
                Part::Literal(text) => seen.push_str(text),
                Part::Hole(reference, offset) => {
                    if !path_begun(&seen) && !matches!(reference, Reference::Target(_)) {
                        return Err(UnsafeHole {
                            offset: *offset,
                            reason: "a value may not choose the URL's scheme, host or port: \
                                     put it in the path or query, or use {{ target.address }}",
                        });
                    }
                    // Stands for the value: it cannot begin the path.
                    seen.push('x');
                }
            }
        }
        Ok(())
    }

    /// The URL with each value percent-encoded; refused when the result has a dot segment.
    pub fn render_url(&self, values: &Values<'_>) -> Result<String, RenderError> {
        let mut out = String::new();
        for part in &self.parts {
            match part {
                Part::Literal(text) => out.push_str(text),
                Part::Hole(reference, _) => {
                    out.push_str(&percent_encode(&lookup(reference, values)?))
                }
            }
        }
        if has_dot_segment(&out) {
            return Err(RenderError::DotSegment);
        }
        Ok(out)
    }

    /// The kind of body this template makes, given the request's content type (may be empty).
    pub fn body_kind(&self, content_type: &str) -> BodyKind {
        let first = self.parts.iter().find_map(|p| match p {
            Part::Literal(text) => text.trim_start().chars().next(),
            Part::Hole(..) => Some('\0'),
        });
        if matches!(first, Some('{' | '[')) {
            BodyKind::Json
        } else if content_type
            .to_ascii_lowercase()
            .contains("application/x-www-form-urlencoded")
        {
            BodyKind::Form
        } else {
            BodyKind::Text
        }
    }

    /// The body with each value encoded for `kind`.
    pub fn render_body(&self, values: &Values<'_>, kind: BodyKind) -> Result<String, RenderError> {
        let mut out = String::new();
        let mut json = JsonState::default();
        for part in &self.parts {
            match part {
                Part::Literal(text) => {
                    json.advance(text);
                    out.push_str(text);
                }
                Part::Hole(reference, _) => {
                    let value = lookup(reference, values)?;
                    match kind {
                        BodyKind::Text => out.push_str(&value),
                        BodyKind::Form => out.push_str(&percent_encode(&value)),
                        BodyKind::Json if json.in_string => out.push_str(&json_escape(&value)),
                        BodyKind::Json => {
                            out.push('"');
                            out.push_str(&json_escape(&value));
                            out.push('"');
                        }
                    }
                }
            }
        }
        Ok(out)
    }
}

/// Whether `prefix` (a URL's beginning) has reached its path, query or fragment.
fn path_begun(prefix: &str) -> bool {
    let Some(scheme_end) = prefix.find("://") else {
        return false;
    };
    prefix[scheme_end + 3..].contains(['/', '?', '#'])
}

/// Whether the path of `url` has a `.` or `..` segment, in any of the spellings a URL parser
/// takes for one (`%2e`, case-insensitive).
fn has_dot_segment(url: &str) -> bool {
    let after_scheme = url.find("://").map_or(url, |i| &url[i + 3..]);
    let Some(path_start) = after_scheme.find('/') else {
        return false;
    };
    let path = &after_scheme[path_start..];
    let path = path.split(['?', '#']).next().unwrap_or(path);
    path.split('/').any(|segment| {
        let lower = segment.to_ascii_lowercase().replace("%2e", ".");
        lower == "." || lower == ".."
    })
}

/// Whether a JSON text read so far ends inside a string literal.
#[derive(Default)]
struct JsonState {
    in_string: bool,
    escaped: bool,
}

impl JsonState {
    fn advance(&mut self, text: &str) {
        for c in text.chars() {
            if self.escaped {
                self.escaped = false;
            } else if self.in_string && c == '\\' {
                self.escaped = true;
            } else if c == '"' {
                self.in_string = !self.in_string;
            }
        }
    }
}

/// The inside of a JSON string that is exactly `value`.
fn json_escape(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            // U+2028/9 end a line in JavaScript: escaped for receivers that eval.
            c if (c as u32) < 0x20 || c == '\u{2028}' || c == '\u{2029}' => {
                out.push_str(&format!("\\u{:04x}", c as u32))
            }
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn values(v: &str) -> (BTreeMap<String, String>, String) {
        (
            BTreeMap::from([("v".to_string(), v.to_string())]),
            v.to_string(),
        )
    }

    const HOSTILE: &[&str] = &[
        "..",
        ".",
        "%2e%2e",
        "../../admin",
        "a/b?c=d#e",
        "\"}, \"admin\": true, \"x\": {\"",
        "\\",
        "\\\"",
        "line\nbreak\r\u{0}\u{1f}",
        "</script>\u{2028}",
        "é ü 日本",
        "&a=b",
        "@evil.example.com",
        "",
    ];

    #[test]
    fn values_cannot_choose_where_a_request_goes() {
        for (url, ok) in [
            ("https://example.com/{{ params.v }}", true),
            ("https://example.com?q={{ params.v }}", true),
            ("https://example.com#{{ params.v }}", true),
            (
                "https://{{ target.address }}:{{ target.port }}/x/{{ params.v }}",
                true,
            ),
            ("https://{{ params.v }}/x", false),
            ("https://example.com:{{ params.v }}/x", false),
            ("https://example.com{{ params.v }}", false),
            ("https://user:{{ params.v }}@example.com/", false),
            ("{{ params.v }}://example.com/", false),
            ("https://{{ steps.a.output }}/", false),
            ("https://example.{{ run.id }}/", false),
        ] {
            let t = Template::parse(url).unwrap();
            assert_eq!(t.check_url().is_ok(), ok, "{url}");
        }
    }

    #[test]
    fn a_path_value_stays_one_segment_and_never_climbs() {
        let t = Template::parse("https://example.com/files/{{ params.v }}/raw?x={{ params.v }}")
            .unwrap();
        for value in HOSTILE {
            let (params, _) = values(value);
            let v = Values {
                params: Some(&params),
                ..Values::default()
            };
            match t.render_url(&v) {
                Ok(url) => {
                    let parsed = url::Url::parse(&url).unwrap();
                    let segments: Vec<&str> = parsed.path_segments().unwrap().collect();
                    assert_eq!(segments.len(), 3, "{value:?} → {url}");
                    assert_eq!(
                        (segments[0], segments[2]),
                        ("files", "raw"),
                        "{value:?} → {url}"
                    );
                    assert_eq!(parsed.host_str(), Some("example.com"));
                    let query: Vec<(String, String)> = parsed.query_pairs().into_owned().collect();
                    assert_eq!(query, vec![("x".to_string(), value.to_string())]);
                }
                Err(e) => {
                    assert!(matches!(e, RenderError::DotSegment), "{value:?}: {e}");
                    assert!(matches!(*value, "." | ".."), "{value:?} refused");
                }
            }
        }
    }

    #[test]
    fn a_json_body_keeps_each_value_a_string() {
        for body in [
            r#"{"name": "{{ params.v }}", "fixed": 1}"#,
            r#"{"name": {{ params.v }}, "fixed": 1}"#,
            r#"{"name": "pre-{{ params.v }}-post \" {{ params.v }}", "fixed": 1}"#,
            r#"[ "{{ params.v }}", {{ params.v }} ]"#,
        ] {
            let t = Template::parse(body).unwrap();
            assert_eq!(t.body_kind(""), BodyKind::Json);
            for value in HOSTILE {
                let (params, _) = values(value);
                let v = Values {
                    params: Some(&params),
                    ..Values::default()
                };
                let out = t.render_body(&v, BodyKind::Json).unwrap();
                let parsed: serde_json::Value = serde_json::from_str(&out)
                    .unwrap_or_else(|e| panic!("{body} with {value:?}: {out}: {e}"));
                let strings: Vec<String> = match &parsed {
                    serde_json::Value::Object(map) => {
                        assert_eq!(map.len(), 2, "{value:?} added a key: {out}");
                        assert_eq!(map["fixed"], 1);
                        vec![map["name"].as_str().unwrap().to_string()]
                    }
                    serde_json::Value::Array(items) => {
                        assert_eq!(items.len(), 2, "{out}");
                        items
                            .iter()
                            .map(|i| i.as_str().unwrap().to_string())
                            .collect()
                    }
                    other => panic!("{other}"),
                };
                assert!(
                    strings.iter().all(|s| s.contains(value)),
                    "{value:?}: {out}"
                );
            }
        }
    }

    #[test]
    fn form_bodies_percent_encode_and_text_bodies_pass_values_through() {
        let t = Template::parse("a={{ params.v }}&b=1").unwrap();
        assert_eq!(
            t.body_kind("application/x-www-form-urlencoded; charset=utf-8"),
            BodyKind::Form
        );
        assert_eq!(t.body_kind("text/plain"), BodyKind::Text);
        let (params, _) = values("x&b=2");
        let v = Values {
            params: Some(&params),
            ..Values::default()
        };
        assert_eq!(
            t.render_body(&v, BodyKind::Form).unwrap(),
            "a=x%26b%3D2&b=1"
        );
        assert_eq!(t.render_body(&v, BodyKind::Text).unwrap(), "a=x&b=2&b=1");
    }
}
