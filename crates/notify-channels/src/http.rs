//! JSON over HTTPS to Slack, Teams and generic webhooks: one pooled client, no redirects, a
//! bounded response, and destinations on the platform's own network refused.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use http::header::{CONTENT_TYPE, RETRY_AFTER};
use http::{HeaderMap, HeaderValue, StatusCode};
use opsconductor_api::common::v1::NotificationChannel;
use url::Url;

use crate::{excerpt, Attempt, ChannelError, Outcome};
use opsconductor_egress::{check_literal, is_refusal, GuardedResolver, Policy, Refused};

/// Longest URL accepted; real Slack/Teams webhook URLs are well under 600 characters.
const MAX_URL_CHARS: usize = 2048;
/// A destination asking to wait longer than this is still retried after this.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(3600);

const USER_AGENT: &str = concat!("OpsConductor-Notifications/", env!("CARGO_PKG_VERSION"));

#[derive(Debug, Clone)]
pub struct HttpSettings {
    /// The whole request, from connecting to the last byte of the response read.
    pub timeout: Duration,
    pub connect_timeout: Duration,
    /// How much of a response is read; the rest is dropped with the connection.
    pub max_response_bytes: usize,
    /// Allows `http://` destinations (a receiver on a trusted network, tests).
    pub allow_plain_http: bool,
    /// Allows loopback, private and link-local destinations (tests, on-premises receivers).
    pub allow_private_addresses: bool,
}

impl Default for HttpSettings {
    fn default() -> Self {
        HttpSettings {
            timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(3),
            max_response_bytes: 64 * 1024,
            allow_plain_http: false,
            allow_private_addresses: false,
        }
    }
}

/// Posts JSON. Cheap to clone: clones share one connection pool.
#[derive(Clone)]
pub struct HttpSender {
    client: reqwest::Client,
    settings: Arc<HttpSettings>,
}

impl std::fmt::Debug for HttpSender {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpSender")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

impl HttpSender {
    pub fn new(settings: HttpSettings) -> Result<HttpSender, ChannelError> {
        let client = reqwest::Client::builder()
            .user_agent(USER_AGENT)
            .timeout(settings.timeout)
            .connect_timeout(settings.connect_timeout)
            // A redirect could lead past the address checks to an internal host, and a
            // receiver that moved should be reconfigured, not silently followed.
            .redirect(reqwest::redirect::Policy::none())
            // A proxy from the environment would resolve names itself, past the guard.
            .no_proxy()
            .https_only(!settings.allow_plain_http)
            .dns_resolver(Arc::new(GuardedResolver {
                policy: policy(&settings),
            }))
            .build()
            .map_err(|e| ChannelError::Http(e.without_url().to_string()))?;
        Ok(HttpSender {
            client,
            settings: Arc::new(settings),
        })
    }

    /// One POST of `body` as `application/json` (unless `headers` set another content type).
    pub async fn post_json(&self, url: &str, body: Bytes, mut headers: HeaderMap) -> Attempt {
        let started = Instant::now();
        let done = |outcome, status, error: String| Attempt {
            outcome,
            status,
            error,
            latency: started.elapsed(),
        };
        let url = match parse_destination(url, self.settings.allow_plain_http) {
            Ok(url) => url,
            Err(e) => return done(Outcome::Permanent, None, e),
        };
        // IP literals never reach the resolver, so they are checked here.
        if let Err(refused) = check_literal(&url, &policy(&self.settings)) {
            return done(Outcome::Permanent, None, refused.to_string());
        }
        headers
            .entry(CONTENT_TYPE)
            .or_insert(HeaderValue::from_static("application/json"));
        let sent = self
            .client
            .post(url.clone())
            .headers(headers)
            .body(body)
            .send()
            .await;
        let mut response = match sent {
            Ok(response) => response,
            Err(e) => {
                let (outcome, error) = classify_error(e);
                return done(outcome, None, scrub(error, &url));
            }
        };
        let status = response.status();
        let retry_after = response
            .headers()
            .get(RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| parse_retry_after(v, SystemTime::now()));
        let excerpt_text = read_bounded(&mut response, self.settings.max_response_bytes).await;
        let code = Some(status.as_u16());
        let described = |what: &str| {
            let text = excerpt(&excerpt_text);
            let line = if text.is_empty() {
                format!("{what}: HTTP {status}")
            } else {
                format!("{what}: HTTP {status}: {text}")
            };
            scrub(line, &url)
        };
        if status.is_success() {
            done(Outcome::Delivered, code, String::new())
        } else if status.is_redirection() {
            done(
                Outcome::Permanent,
                code,
                "redirects are not followed".into(),
            )
        } else if status == StatusCode::REQUEST_TIMEOUT
            || status == StatusCode::TOO_MANY_REQUESTS
            || status.is_server_error()
        {
            done(
                Outcome::Retry { after: retry_after },
                code,
                described("destination busy or failing"),
            )
        } else {
            done(Outcome::Permanent, code, described("destination refused"))
        }
    }
}

/// Reads at most `max` bytes of the body (the rest is dropped with the connection) and returns
/// them as text for an error excerpt. Failing to read is not a failure of delivery: the status
/// line already said what happened.
async fn read_bounded(response: &mut reqwest::Response, max: usize) -> String {
    let mut buf: Vec<u8> = Vec::new();
    while buf.len() < max {
        match response.chunk().await {
            Ok(Some(chunk)) => {
                let room = max - buf.len();
                buf.extend_from_slice(&chunk[..chunk.len().min(room)]);
            }
            Ok(None) | Err(_) => break,
        }
    }
    // Only an excerpt is ever shown, so decoding just its head is enough.
    buf.truncate(4096);
    String::from_utf8_lossy(&buf).into_owned()
}

fn classify_error(e: reqwest::Error) -> (Outcome, String) {
    let e = e.without_url();
    let chain = error_chain(&e);
    if is_refusal(&e) {
        return (Outcome::Permanent, Refused.to_string());
    }
    if e.is_builder() {
        return (Outcome::Permanent, format!("invalid request: {chain}"));
    }
    if e.is_timeout() {
        return (
            Outcome::Retry { after: None },
            format!("timed out: {chain}"),
        );
    }
    if e.is_connect() {
        return (
            Outcome::Retry { after: None },
            format!("connection failed: {chain}"),
        );
    }
    (Outcome::Retry { after: None }, chain)
}

/// `outer: inner: innermost`, without repeating a message a wrapper already quoted.
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
    excerpt(&out)
}

/// Belt and braces: webhook URLs carry their secret in the path or query, so any trace of them
/// in an error message (from a library that quotes the URL) is cut out.
fn scrub(mut text: String, url: &Url) -> String {
    let mut secrets = vec![url.as_str().to_owned()];
    if url.path().len() > 1 {
        secrets.push(url.path().to_owned());
    }
    if let Some(q) = url.query().filter(|q| !q.is_empty()) {
        secrets.push(q.to_owned());
    }
    for s in secrets {
        if text.contains(&s) {
            text = text.replace(&s, "[redacted]");
        }
    }
    text
}

fn policy(settings: &HttpSettings) -> Policy {
    if settings.allow_private_addresses {
        Policy::any()
    } else {
        Policy::public_only()
    }
}

/// `Retry-After` as delta-seconds or an HTTP-date, capped at an hour. A date in the past means
/// "now". Anything unparseable is ignored: the caller's own backoff applies.
fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    let wait = if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) {
        // Overlong digit strings are still "a very long time".
        Duration::from_secs(value.parse::<u64>().unwrap_or(u64::MAX))
    } else {
        let at = httpdate::parse_http_date(value).ok()?;
        at.duration_since(now).unwrap_or(Duration::ZERO)
    };
    Some(wait.min(MAX_RETRY_AFTER))
}

/// Validates a destination URL for a channel (for request validation, before it is stored): an
/// absolute http(s) URL with a host, https unless `allow_plain_http`, no credentials in it, at
/// most 2048 characters. Messages never quote the URL: it carries the webhook's secret.
pub fn check_url(
    channel: NotificationChannel,
    url: &str,
    allow_plain_http: bool,
) -> Result<Url, String> {
    match channel {
        NotificationChannel::Slack | NotificationChannel::Teams | NotificationChannel::Webhook => {}
        other => {
            return Err(format!(
                "channel {} does not deliver to a URL",
                other.as_str_name()
            ))
        }
    }
    parse_destination(url, allow_plain_http)
}

fn parse_destination(url: &str, allow_plain_http: bool) -> Result<Url, String> {
    if url.chars().count() > MAX_URL_CHARS {
        return Err(format!("URL is longer than {MAX_URL_CHARS} characters"));
    }
    let parsed = Url::parse(url.trim()).map_err(|e| format!("invalid URL: {e}"))?;
    match parsed.scheme() {
        "https" => {}
        "http" if allow_plain_http => {}
        "http" => return Err("URL must use https".into()),
        _ => return Err("URL must be http(s)".into()),
    }
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return Err("URL must not carry a user name or password".into());
    }
    match parsed.host_str() {
        Some(h) if !h.is_empty() => {}
        _ => return Err("URL has no host".into()),
    }
    Ok(parsed)
}

#[cfg(test)]
mod tests;
