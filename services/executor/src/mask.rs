//! The masker: every form in which a revealed secret can surface in a step's text, replaced by
//! `****`. A command can print a secret raw, percent-encoded (curl, a URL the executor logs),
//! JSON-escaped (`jq`, `json.dumps`), or base64-encoded (`base64`, an `Authorization: Basic`
//! header, possibly with other bytes before it), and a multi-line secret (an SSH key, a
//! certificate's key) line by line. The masker knows each of those forms; what it cannot know
//! (a secret reversed, hashed, or split by the command) is out of reach of any masker — that
//! is why which credentials a run may reveal at all is the job author's choice.

use std::borrow::Cow;

use aho_corasick::{AhoCorasick, MatchKind};
use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};
use base64::Engine;

/// What a secret is replaced with.
pub const MASK: &str = "****";
/// Lines of a multi-line secret at least this long are masked on their own (shorter ones —
/// blank lines, `-----END …-----` — would mask ordinary text).
const MIN_LINE: usize = 16;
/// Encoded forms shorter than this are not masked on their own (a two-letter password's
/// base64 would mask random text); the raw form always is.
const MIN_FORM: usize = 4;
/// Base64 of a secret at an unknown offset inside a longer encoding is recognised by the
/// characters that depend on the secret alone, when there are at least this many.
const MIN_BASE64_CORE: usize = 8;

/// The forms of every secret added so far, and one automaton that finds them all in one pass
/// over a line (an SSH key brings hundreds of forms; a flood brings millions of lines).
#[derive(Clone, Default)]
pub struct Masker {
    forms: Vec<String>,
    matcher: Option<AhoCorasick>,
}

impl std::fmt::Debug for Masker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The forms are the secrets.
        write!(f, "Masker({} forms)", self.forms.len())
    }
}

impl Masker {
    /// Masks `secret`, its encodings, and (when it has several lines) each long line of it.
    pub fn add(&mut self, secret: &str) {
        if secret.is_empty() {
            return;
        }
        self.add_forms(secret);
        if secret.contains('\n') {
            for line in secret.lines().map(|l| l.trim_end_matches('\r').trim()) {
                if line.len() >= MIN_LINE && !line.starts_with("-----") {
                    self.add_forms(line);
                }
            }
        }
        self.forms
            .sort_by(|a, b| b.len().cmp(&a.len()).then_with(|| a.cmp(b)));
        self.forms.dedup();
        // Leftmost-longest: a form containing another is masked whole.
        self.matcher = AhoCorasick::builder()
            .match_kind(MatchKind::LeftmostLongest)
            .build(&self.forms)
            .map_err(|e| tracing::error!(error = %e, "the masker could not be built"))
            .ok();
    }

    fn add_forms(&mut self, secret: &str) {
        self.forms.push(secret.to_string());
        if secret.len() < MIN_FORM {
            return;
        }
        for form in encodings(secret) {
            if form.len() >= MIN_FORM && form != secret {
                self.forms.push(form);
            }
        }
    }

    /// The longest form in bytes: a reader that cuts a stream keeps this many bytes past a
    /// cut so a secret straddling it is still seen whole.
    pub fn longest(&self) -> usize {
        self.forms.first().map_or(0, String::len)
    }

    /// `text` with every form of every secret replaced by [`MASK`].
    pub fn mask<'a>(&self, text: &'a str) -> Cow<'a, str> {
        let Some(matcher) = &self.matcher else {
            if self.forms.is_empty() {
                return Cow::Borrowed(text);
            }
            // No automaton (it could not be built): one form at a time, never unmasked.
            let mut out = Cow::Borrowed(text);
            for form in &self.forms {
                if out.contains(form.as_str()) {
                    out = Cow::Owned(out.replace(form.as_str(), MASK));
                }
            }
            return out;
        };
        let mut matches = matcher.find_iter(text).peekable();
        if matches.peek().is_none() {
            return Cow::Borrowed(text);
        }
        let mut out = String::with_capacity(text.len());
        let mut last = 0;
        for found in matches {
            out.push_str(&text[last..found.start()]);
            out.push_str(MASK);
            last = found.end();
        }
        out.push_str(&text[last..]);
        Cow::Owned(out)
    }
}

/// The encoded forms of `secret` a command or the executor may print.
fn encodings(secret: &str) -> Vec<String> {
    let mut forms = vec![
        percent(
            secret,
            |b| b.is_ascii_alphanumeric() || b"-._~".contains(&b),
            false,
        ),
        percent(
            secret,
            |b| b.is_ascii_alphanumeric() || b"-._~".contains(&b),
            true,
        ),
        // What a URL parser leaves of a raw path (WHATWG path percent-encode set).
        percent(
            secret,
            |b| b > b' ' && b < 0x7f && !b"\"#<>?`{}".contains(&b),
            false,
        ),
        // application/x-www-form-urlencoded.
        percent(
            secret,
            |b| b.is_ascii_alphanumeric() || b"*-._ ".contains(&b),
            false,
        )
        .replace(' ', "+"),
    ];
    let json = json_escape(secret, false);
    forms.push(json.replace('/', "\\/"));
    forms.push(json);
    forms.push(json_escape(secret, true));
    for engine in [STANDARD, URL_SAFE] {
        forms.push(engine.encode(secret));
    }
    for engine in [STANDARD_NO_PAD, URL_SAFE_NO_PAD] {
        forms.extend(base64_cores(secret.as_bytes(), &engine));
    }
    forms
}

fn percent(secret: &str, keep: impl Fn(u8) -> bool, lower: bool) -> String {
    let mut out = String::with_capacity(secret.len() * 3);
    for b in secret.bytes() {
        if keep(b) {
            out.push(char::from(b));
        } else if lower {
            out.push_str(&format!("%{b:02x}"));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// A JSON string's inside; `ascii` escapes every non-ASCII character as `\uXXXX` (what
/// Python's `json.dumps` does by default).
fn json_escape(secret: &str, ascii: bool) -> String {
    let quoted = serde_json::to_string(secret).unwrap_or_default();
    let inner = quoted
        .strip_prefix('"')
        .and_then(|q| q.strip_suffix('"'))
        .unwrap_or_default();
    if !ascii {
        return inner.to_string();
    }
    let mut out = String::with_capacity(inner.len());
    for c in inner.chars() {
        if c.is_ascii() {
            out.push(c);
        } else {
            let mut units = [0u16; 2];
            for unit in c.encode_utf16(&mut units) {
                out.push_str(&format!("\\u{unit:04x}"));
            }
        }
    }
    out
}

/// The characters of `secret`'s base64 that depend on its bytes alone, for each of the three
/// offsets (modulo 3) at which it can sit in a longer encoded stream.
fn base64_cores(secret: &[u8], engine: &impl Engine) -> Vec<String> {
    let mut cores = Vec::new();
    for offset in 0..3usize {
        let mut bytes = vec![0u8; offset];
        bytes.extend_from_slice(secret);
        let encoded = engine.encode(&bytes);
        // Character i carries bits [6i, 6i+6); the secret's bits are [8·offset, 8·len).
        let first = (8 * offset).div_ceil(6);
        let end = (8 * bytes.len()) / 6;
        if end > first && end - first >= MIN_BASE64_CORE {
            if let Some(core) = encoded.get(first..end) {
                cores.push(core.to_string());
            }
        }
    }
    cores
}

#[cfg(test)]
mod tests {
    use super::*;

    fn masker(secrets: &[&str]) -> Masker {
        let mut m = Masker::default();
        for s in secrets {
            m.add(s);
        }
        m
    }

    const SECRET: &str = "p@ss w/ord\"&é=+?x";

    #[test]
    fn every_form_of_a_secret_is_masked() {
        let m = masker(&[SECRET]);
        let forms = [
            SECRET.to_string(),
            opsconductor_template::percent_encode(SECRET),
            percent(SECRET, |b| b.is_ascii_alphanumeric(), true),
            serde_json::to_string(SECRET).unwrap(),
            json_escape(SECRET, true),
            STANDARD.encode(SECRET),
            URL_SAFE_NO_PAD.encode(SECRET),
            // Inside a longer base64 stream, at each offset.
            STANDARD.encode(format!("user:{SECRET}")),
            STANDARD.encode(format!("ab{SECRET}cd")),
            STANDARD.encode(format!("a{SECRET}")),
        ];
        for form in forms {
            let line = format!("before {form} after");
            let masked = m.mask(&line);
            assert!(masked.contains(MASK), "{form:?} not masked: {masked:?}");
            assert!(
                !masked.contains(SECRET),
                "{form:?} leaves the secret: {masked:?}"
            );
            assert!(masked.starts_with("before ") && masked.ends_with(" after"));
        }
    }

    /// A secret written raw into a URL's path comes back from the URL parser encoded.
    #[test]
    fn a_secret_in_a_parsed_url_path_is_masked() {
        let secret = "tok en\"<é>{x}%41`";
        let m = masker(&[secret]);
        let url = reqwest::Url::parse(&format!("http://h/a/{secret}/b")).unwrap();
        assert_eq!(m.mask(url.as_str()), "http://h/a/****/b");
    }

    #[test]
    fn multi_line_secrets_are_masked_line_by_line() {
        let key = "-----BEGIN OPENSSH PRIVATE KEY-----\r\n\
                   b3BlbnNzaC1rZXktdjEAAAAABG5vbmUAAAAEbm9uZQAAAAAAAAABAAAAMwAAAAtzc2gtZW\r\n\
                   QyNTUxOQAAACDzKIwk1hs6MV2xD7fW9n9Uq6m9I0hIhX0c2nZ8hH1jvgAAAJgx\n\
                   -----END OPENSSH PRIVATE KEY-----\n";
        let m = masker(&[key]);
        let printed = key.replace("\r\n", "\n");
        for line in printed.lines() {
            let masked = m.mask(line);
            if line.starts_with("-----") {
                assert_eq!(masked, line, "boundaries are not secret");
            } else {
                assert_eq!(masked, MASK);
            }
        }
        assert!(!m
            .mask(&serde_json::to_string(key).unwrap())
            .contains("b3Blbn"));
    }

    #[test]
    fn longer_secrets_are_masked_whole_and_short_ones_only_raw() {
        let m = masker(&["hunter2", "hunter22", "ab"]);
        assert_eq!(m.mask("pw=hunter22 and hunter2"), "pw=**** and ****");
        assert_eq!(
            m.mask("ab YWI="),
            "**** YWI=",
            "a two-byte secret's base64 is noise"
        );
        assert!(matches!(m.mask("nothing here"), Cow::Borrowed(_)));
        assert!(m.longest() >= STANDARD.encode("hunter22").len());
        assert_eq!(Masker::default().longest(), 0);
    }
}
