//! Email over SMTP through a relay, with a pooled lettre transport.

use std::str::FromStr;
use std::time::{Duration, Instant};

use lettre::message::header::ContentType;
use lettre::message::{Mailbox, MultiPart, SinglePart};
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::{Certificate, Tls, TlsParameters};
use lettre::transport::smtp::PoolConfig;
use lettre::{Address, AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use zeroize::Zeroizing;

use crate::{excerpt, Attempt, ChannelError, Outcome};

/// RFC 5321's limit on a forward path, less the angle brackets.
const MAX_ADDRESS_CHARS: usize = 254;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SmtpTls {
    /// Plaintext, for a relay on the same host or a trusted segment only; no credentials.
    None,
    /// Plaintext, upgraded with STARTTLS, which is required (no fallback).
    StartTls,
    /// TLS from the first byte (SMTPS, usually port 465).
    Tls,
}

#[derive(Debug, Clone)]
pub struct SmtpSettings {
    pub host: String,
    pub port: u16,
    pub tls: SmtpTls,
    /// Empty means no authentication.
    pub username: String,
    /// The sender, e.g. `OpsConductor <ops@example.com>`.
    pub from: String,
    /// For each step of the conversation; one send is bounded by twice this.
    pub timeout: Duration,
    pub pool_max: u32,
    /// An extra trusted root (PEM) for a relay with a private CA, on top of the public roots.
    pub ca_pem: Option<Vec<u8>>,
}

/// Sends mail through one relay. Cheap to share (`Arc`); the transport pools connections.
pub struct Mailer {
    transport: AsyncSmtpTransport<Tokio1Executor>,
    from: Mailbox,
    settings: SmtpSettings,
    /// Kept only to cut it out of any error text a server might echo.
    password: Option<Zeroizing<String>>,
}

impl std::fmt::Debug for Mailer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mailer")
            .field("host", &self.settings.host)
            .field("port", &self.settings.port)
            .field("tls", &self.settings.tls)
            .field("username", &self.settings.username)
            .field("from", &self.settings.from)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .finish_non_exhaustive()
    }
}

impl Mailer {
    /// Must be called, and the mailer dropped, inside a Tokio runtime: the connection pool
    /// spawns its upkeep task on creation and its cleanup on drop.
    pub fn new(settings: SmtpSettings, password: Option<String>) -> Result<Mailer, ChannelError> {
        if tokio::runtime::Handle::try_current().is_err() {
            return Err(ChannelError::Smtp(
                "the mailer must be created inside a Tokio runtime".into(),
            ));
        }
        let password = password.map(Zeroizing::new);
        let from = Mailbox::from_str(&settings.from)
            .map_err(|e| ChannelError::Smtp(format!("invalid from address: {e}")))?;
        if settings.host.trim().is_empty() {
            return Err(ChannelError::Smtp("no relay host".into()));
        }
        let tls = match settings.tls {
            SmtpTls::None => Tls::None,
            SmtpTls::StartTls => Tls::Required(tls_parameters(&settings)?),
            SmtpTls::Tls => Tls::Wrapper(tls_parameters(&settings)?),
        };
        let mut builder = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(&settings.host)
            .port(settings.port)
            .tls(tls)
            .timeout(Some(settings.timeout))
            .pool_config(PoolConfig::new().max_size(settings.pool_max.max(1)));
        if !settings.username.is_empty() {
            // Credentials over plaintext would hand the password to anyone on the path.
            if settings.tls == SmtpTls::None {
                return Err(ChannelError::Smtp(
                    "authentication needs STARTTLS or TLS".into(),
                ));
            }
            let Some(pw) = password.as_ref() else {
                return Err(ChannelError::Smtp(
                    "a user name is set but no password".into(),
                ));
            };
            builder = builder.credentials(Credentials::new(
                settings.username.clone(),
                pw.as_str().to_owned(),
            ));
        }
        Ok(Mailer {
            transport: builder.build(),
            from,
            settings,
            password,
        })
    }

    /// One message to one recipient: `text`, or `text` and `html` as multipart/alternative.
    /// `message_id` becomes the `Message-ID` (`<{message_id}@opsconductor>`); keep it the same
    /// across retries so receivers can drop duplicates.
    pub async fn send(
        &self,
        message_id: &str,
        to: &str,
        subject: &str,
        text: &str,
        html: Option<&str>,
    ) -> Attempt {
        let started = Instant::now();
        let done = |outcome, status, error: String| Attempt {
            outcome,
            status,
            error,
            latency: started.elapsed(),
        };
        let message = match self.message(message_id, to, subject, text, html) {
            Ok(m) => m,
            Err(e) => return done(Outcome::Permanent, None, e),
        };
        // lettre's timeout bounds each step; this bounds the whole conversation.
        let limit = self.settings.timeout.saturating_mul(2);
        match tokio::time::timeout(limit, self.transport.send(message)).await {
            Err(_) => done(
                Outcome::Retry { after: None },
                None,
                "timed out talking to the mail relay".into(),
            ),
            Ok(Ok(response)) => done(
                Outcome::Delivered,
                Some(u16::from(response.code())),
                String::new(),
            ),
            Ok(Err(e)) => {
                let status = e.status().map(u16::from);
                let outcome = if e.is_permanent() {
                    Outcome::Permanent
                } else {
                    // 4xx replies, timeouts, TLS and connection failures may pass.
                    Outcome::Retry { after: None }
                };
                done(outcome, status, self.scrub(excerpt(&error_chain(&e))))
            }
        }
    }

    fn message(
        &self,
        message_id: &str,
        to: &str,
        subject: &str,
        text: &str,
        html: Option<&str>,
    ) -> Result<Message, String> {
        check_email(to).map_err(|e| format!("invalid recipient address: {e}"))?;
        let to = Address::from_str(to).map_err(|e| format!("invalid recipient address: {e}"))?;
        // Line breaks in a subject would start new headers in a naive encoder; one line it is.
        let subject: String = subject
            .chars()
            .map(|c| if c.is_control() { ' ' } else { c })
            .collect();
        let builder = Message::builder()
            .from(self.from.clone())
            .to(Mailbox::new(None, to))
            .subject(subject)
            .message_id(Some(format!("<{}@opsconductor>", id_part(message_id))));
        let built = match html {
            Some(html) => builder.multipart(MultiPart::alternative_plain_html(
                text.to_owned(),
                html.to_owned(),
            )),
            None => builder.singlepart(
                SinglePart::builder()
                    .header(ContentType::TEXT_PLAIN)
                    .body(text.to_owned()),
            ),
        };
        built.map_err(|e| format!("could not build the message: {e}"))
    }

    fn scrub(&self, text: String) -> String {
        match self.password.as_ref().filter(|p| !p.is_empty()) {
            Some(pw) if text.contains(pw.as_str()) => text.replace(pw.as_str(), "[redacted]"),
            _ => text,
        }
    }
}

fn tls_parameters(settings: &SmtpSettings) -> Result<TlsParameters, ChannelError> {
    let mut builder = TlsParameters::builder(settings.host.clone());
    if let Some(pem) = &settings.ca_pem {
        let cert = Certificate::from_pem(pem)
            .map_err(|e| ChannelError::Smtp(format!("invalid CA certificate: {e}")))?;
        builder = builder.add_root_certificate(cert);
    }
    builder
        .build_rustls()
        .map_err(|e| ChannelError::Smtp(format!("tls setup: {e}")))
}

/// The left part of a Message-ID may only hold `atext` and dots; anything else becomes `_` so a
/// caller's id (a UUID, usually) always gives a valid, stable header.
fn id_part(message_id: &str) -> String {
    let cleaned: String = message_id
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "!#$%&'*+-/=?^_`{|}~.".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect();
    let cleaned = cleaned.trim_matches('.').to_owned();
    if cleaned.is_empty() {
        "unnamed".to_owned()
    } else {
        cleaned
    }
}

fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(err) = source {
        let text = err.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = err.source();
    }
    out
}

/// A single bare mailbox (`user@example.com`): no display name, no list, no line breaks, at most
/// 254 characters.
pub fn check_email(address: &str) -> Result<(), String> {
    if address.is_empty() {
        return Err("address is empty".into());
    }
    if address.chars().count() > MAX_ADDRESS_CHARS {
        return Err(format!(
            "address is longer than {MAX_ADDRESS_CHARS} characters"
        ));
    }
    if address.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err("address contains spaces or control characters".into());
    }
    if address.contains(['<', '>', ',', ';', '"']) {
        return Err("expected one bare address, without a display name".into());
    }
    Address::from_str(address).map_err(|e| format!("not an email address: {e}"))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> SmtpSettings {
        SmtpSettings {
            host: "127.0.0.1".into(),
            port: 1,
            tls: SmtpTls::StartTls,
            username: "ops".into(),
            from: "OpsConductor <ops@example.com>".into(),
            timeout: Duration::from_secs(1),
            pool_max: 2,
            ca_pem: None,
        }
    }

    #[tokio::test]
    async fn debug_hides_password() {
        let m = Mailer::new(settings(), Some("hunter2-secret".into())).unwrap();
        let d = format!("{m:?}");
        assert!(!d.contains("hunter2-secret"), "{d}");
        assert!(d.contains("<redacted>") && d.contains("127.0.0.1"), "{d}");
    }

    #[tokio::test]
    async fn construction_errors() {
        let mut s = settings();
        s.from = "not an address".into();
        assert!(Mailer::new(s, Some("pw".into())).is_err());
        assert!(Mailer::new(settings(), None).is_err());
        let mut s = settings();
        s.tls = SmtpTls::None;
        let err = Mailer::new(s, Some("hunter2-secret".into()))
            .unwrap_err()
            .to_string();
        assert!(
            !err.contains("hunter2-secret") && err.contains("TLS"),
            "{err}"
        );
        let mut s = settings();
        s.ca_pem = Some(b"-----BEGIN CERTIFICATE-----\nnope\n-----END CERTIFICATE-----\n".to_vec());
        assert!(Mailer::new(s, Some("pw".into())).is_err());
        let mut s = settings();
        s.tls = SmtpTls::None;
        s.username.clear();
        assert!(Mailer::new(s, None).is_ok());
    }

    #[tokio::test]
    async fn bad_recipient_is_permanent_without_connecting() {
        let m = Mailer::new(settings(), Some("pw".into())).unwrap();
        for to in [
            "nobody",
            "a@b.c\r\nBcc: x@y.z",
            "Name <a@b.c>",
            "a@b.c, d@e.f",
            "",
        ] {
            let a = m.send("id-1", to, "s", "t", None).await;
            assert_eq!(a.outcome, Outcome::Permanent, "{to:?}");
            assert!(a.error.contains("recipient"), "{}", a.error);
            assert_eq!(a.status, None);
        }
    }

    #[tokio::test]
    async fn unreachable_relay_is_retried() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        drop(listener);
        let mut s = settings();
        s.port = port;
        s.tls = SmtpTls::None;
        s.username.clear();
        let m = Mailer::new(s, None).unwrap();
        let a = m.send("id-1", "ops@example.com", "s", "t", None).await;
        assert_eq!(a.outcome, Outcome::Retry { after: None }, "{a:?}");
        assert!(!a.error.is_empty());
    }

    #[test]
    fn outside_a_runtime_is_an_error_not_a_panic() {
        assert!(Mailer::new(settings(), Some("pw".into())).is_err());
    }

    #[test]
    fn check_email_rules() {
        assert!(check_email("ops@example.com").is_ok());
        assert!(check_email("first.last+tag@sub.example.co.uk").is_ok());
        for bad in [
            "",
            "ops",
            "@example.com",
            "ops@",
            "Ops <ops@example.com>",
            "a@example.com,b@example.com",
            "ops@example.com\r\n",
            "ops @example.com",
        ] {
            assert!(check_email(bad).is_err(), "{bad:?}");
        }
        let long = format!("{}@example.com", "a".repeat(250));
        assert!(check_email(&long).is_err());
    }

    #[test]
    fn message_ids_are_stable_and_valid() {
        assert_eq!(id_part("0190a1b2-c3d4"), "0190a1b2-c3d4");
        assert_eq!(id_part("a b<c>"), "a_b_c_");
        assert_eq!(id_part(""), "unnamed");
    }
}
