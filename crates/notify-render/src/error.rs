//! Why a template could not be checked or rendered.

/// Why a template could not be checked or rendered. Every variant names the field it is about so
/// that the caller can point the template's author at it.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum RenderError {
    /// The template does not parse, or failed while rendering (including running out of fuel).
    #[error("{field}{}: {message}", at_line(.line))]
    Template {
        /// "subject", "body" or "html_body".
        field: &'static str,
        /// 1-based, within that field's template, when known.
        line: Option<usize>,
        /// The engine's short description of the problem.
        message: String,
    },
    /// The rendered text is larger than `limit` bytes.
    #[error("{field}: the rendered text is larger than {limit} bytes")]
    TooLarge {
        /// "subject", "body" or "html_body".
        field: &'static str,
        limit: usize,
    },
    /// Rendering the field needed more memory than the sandbox allows (`limit` bytes): a template
    /// that builds huge values, e.g. `'x' * 100000000` or a string doubled in a loop.
    #[error("{field}: the template needs more than {limit} bytes of memory to render")]
    OutOfMemory { field: &'static str, limit: u64 },
    /// Rendering the field took longer than the sandbox allows.
    #[error("{field}: the template took longer than {limit_ms} ms to render")]
    TimedOut { field: &'static str, limit_ms: u64 },
    /// A webhook body that is not JSON once rendered.
    #[error("body{}: the rendered webhook body is not JSON: {message}", at_line(.line))]
    NotJson {
        /// 1-based, within the rendered body.
        line: Option<usize>,
        message: String,
    },
}

impl RenderError {
    /// The field the error is about: "subject", "body" or "html_body".
    pub fn field(&self) -> &'static str {
        match self {
            RenderError::Template { field, .. }
            | RenderError::TooLarge { field, .. }
            | RenderError::OutOfMemory { field, .. }
            | RenderError::TimedOut { field, .. } => field,
            RenderError::NotJson { .. } => "body",
        }
    }

    pub(crate) fn from_engine(field: &'static str, err: &minijinja::Error) -> RenderError {
        // Only the kind and detail: the engine's Display adds the internal template name, and its
        // debug dump repeats the source and the whole context, which may be large or sensitive.
        let message = match err.detail() {
            Some(detail) => format!("{}: {detail}", err.kind()),
            None => err.kind().to_string(),
        };
        RenderError::Template {
            field,
            line: err.line(),
            message,
        }
    }
}

fn at_line(line: &Option<usize>) -> String {
    match line {
        Some(line) => format!(" line {line}"),
        None => String::new(),
    }
}
