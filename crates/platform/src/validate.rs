//! Request validation that reports every problem at once, as field violations.

use tonic_types::FieldViolation;

use crate::ApiError;

/// Collects field violations; [`Violations::finish`] turns them into `INVALID_ARGUMENT`.
#[derive(Debug, Default)]
pub struct Violations(Vec<FieldViolation>);

impl Violations {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn add(&mut self, field: impl Into<String>, description: impl Into<String>) {
        self.0.push(FieldViolation::new(field, description));
    }

    /// Adds a violation unless `ok`.
    pub fn check(&mut self, ok: bool, field: impl Into<String>, description: impl Into<String>) {
        if !ok {
            self.add(field, description);
        }
    }

    pub fn required(&mut self, field: &str, value: &str) -> bool {
        let ok = !value.trim().is_empty();
        self.check(ok, field, "is required");
        ok
    }

    /// A required string of at most `max` characters.
    pub fn required_max(&mut self, field: &str, value: &str, max: usize) {
        if self.required(field, value) {
            self.max_chars(field, value, max);
        }
    }

    pub fn max_chars(&mut self, field: &str, value: &str, max: usize) {
        let n = value.chars().count();
        self.check(
            n <= max,
            field,
            format!("must be at most {max} characters (got {n})"),
        );
    }

    /// A required id in the UUID form the platform assigns.
    pub fn id(&mut self, field: &str, value: &str) {
        if self.required(field, value) {
            self.check(
                uuid::Uuid::try_parse(value).is_ok(),
                field,
                "must be a UUID",
            );
        }
    }

    /// No control characters (they break logs and terminals).
    pub fn printable(&mut self, field: &str, value: &str) {
        self.check(
            !value.chars().any(char::is_control),
            field,
            "must not contain control characters",
        );
    }

    /// The paths of an AIP update mask, each checked against `updatable`. No mask (or an
    /// empty one) means every updatable field.
    pub fn update_mask(
        &mut self,
        mask: Option<prost_types::FieldMask>,
        updatable: &[&str],
    ) -> Vec<String> {
        let paths = match mask {
            Some(mask) if !mask.paths.is_empty() => mask.paths,
            _ => updatable.iter().map(|s| s.to_string()).collect(),
        };
        for (i, path) in paths.iter().enumerate() {
            self.check(
                updatable.contains(&path.as_str()),
                format!("update_mask.paths[{i}]"),
                format!(
                    "{path:?} cannot be updated; updatable: {}",
                    updatable.join(", ")
                ),
            );
        }
        paths
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn finish(self) -> Result<(), ApiError> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(ApiError::InvalidArgument(self.0))
        }
    }
}

/// A request whose only input is an id: `INVALID_ARGUMENT` unless `id` is a UUID.
pub fn require_id(field: &str, id: &str) -> Result<(), ApiError> {
    let mut v = Violations::new();
    v.id(field, id);
    v.finish()
}

/// A required message field: `INVALID_ARGUMENT` naming `field` when it is absent.
pub fn required<T>(field: &str, value: Option<T>) -> Result<T, ApiError> {
    value.ok_or_else(|| ApiError::invalid(field, "is required"))
}

/// `a-z` followed by `a-z 0-9 . _ -`, `min..=max` characters long.
pub fn is_slug(value: &str, min: usize, max: usize, extra: &[char]) -> bool {
    let len = value.len();
    let mut chars = value.chars();
    (min..=max).contains(&len)
        && chars
            .next()
            .is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || extra.contains(&c))
}

/// A pragmatic email check: one `@`, a non-empty local part, a dotted domain, no spaces.
pub fn is_email(value: &str) -> bool {
    let Some((local, domain)) = value.split_once('@') else {
        return false;
    };
    !local.is_empty()
        && local.len() <= 64
        && value.len() <= 254
        && domain.contains('.')
        && !domain.starts_with('.')
        && !domain.ends_with('.')
        && !domain.contains('@')
        && !value.chars().any(|c| c.is_whitespace() || c.is_control())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slugs_and_emails() {
        assert!(is_slug("web-01", 1, 63, &['-']));
        assert!(!is_slug("-web", 1, 63, &['-']));
        assert!(!is_slug("Web", 1, 63, &['-']));
        assert!(!is_slug("", 1, 63, &['-']));
        assert!(is_email("ops@example.com"));
        assert!(!is_email("ops@example"));
        assert!(!is_email("ops example@x.com"));
        assert!(!is_email("@x.com"));
    }

    #[test]
    fn collects_all_violations() {
        let mut v = Violations::new();
        v.required("a", "");
        v.id("b", "nope");
        v.max_chars("c", "abcd", 3);
        match v.finish() {
            Err(ApiError::InvalidArgument(list)) => {
                let fields: Vec<_> = list.iter().map(|f| f.field.as_str()).collect();
                assert_eq!(fields, ["a", "b", "c"]);
            }
            other => panic!("expected violations, got {other:?}"),
        }
    }
}
