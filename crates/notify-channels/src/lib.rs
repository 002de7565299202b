//! Notification delivery over email (SMTP), Slack, Microsoft Teams and Standard
//! Webhooks-signed HTTP. Each call makes one attempt and says what it came to: delivered, worth
//! a retry (perhaps not before some time), or permanent. Retry scheduling, persistence and
//! rendering live with the caller.

mod email;
mod http;
mod payload;
mod webhook;

use std::time::Duration;

pub use email::{check_email, Mailer, SmtpSettings, SmtpTls};
pub use http::{check_url, HttpSender, HttpSettings};
pub use opsconductor_egress::is_private_address;
pub use payload::{slack_payload, teams_payload};
pub use webhook::{sign, webhook_headers, SigningKey};

/// What one attempt came to. `error` and `status_text` never contain the destination URL, its
/// query or any secret, nor more of a response body than a short sanitized excerpt.
#[derive(Debug, Clone, PartialEq)]
pub struct Attempt {
    pub outcome: Outcome,
    /// The HTTP status or SMTP reply code, when the destination answered.
    pub status: Option<u16>,
    /// Why it was not delivered; empty when delivered.
    pub error: String,
    pub latency: Duration,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    Delivered,
    /// Worth another attempt; `after` is the destination's own hint (capped at an hour).
    Retry {
        after: Option<Duration>,
    },
    Permanent,
}

impl Attempt {
    pub fn is_delivered(&self) -> bool {
        self.outcome == Outcome::Delivered
    }
}

/// Why a sender could not be built. Messages never include secrets.
#[derive(Debug, thiserror::Error)]
pub enum ChannelError {
    #[error("http client: {0}")]
    Http(String),
    #[error("smtp: {0}")]
    Smtp(String),
    #[error("invalid signing key: {0}")]
    SigningKey(String),
}

/// Longest excerpt of a remote answer kept in [`Attempt::error`].
const EXCERPT_CHARS: usize = 200;

/// A short, single-line excerpt of text that came from elsewhere (a response body, an SMTP
/// reply): it ends up in logs and the API, so control characters go and the length is bounded.
pub(crate) fn excerpt(text: &str) -> String {
    let mut out = String::new();
    let mut last_space = false;
    for (n, c) in text.trim().chars().enumerate() {
        if n >= EXCERPT_CHARS {
            out.push('…');
            break;
        }
        let c = if c.is_control() || c.is_whitespace() {
            ' '
        } else {
            c
        };
        // Collapsing runs of whitespace keeps multi-line replies readable in one line.
        if c == ' ' && last_space {
            continue;
        }
        last_space = c == ' ';
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn excerpt_is_single_line_and_bounded() {
        let long = "a\r\nb\tc".to_string() + &"x".repeat(500);
        let e = excerpt(&long);
        assert!(e.starts_with("a b c"));
        assert!(!e.contains('\n') && !e.contains('\r'));
        assert!(e.chars().count() <= EXCERPT_CHARS + 1);
    }
}
