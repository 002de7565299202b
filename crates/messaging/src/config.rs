//! How a service reaches RabbitMQ: `AMQP_URL`, the name prefix and the recovery timings, read
//! and validated at start-up like every other variable (docs/configuration.md).

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use lapin::uri::{AMQPScheme, AMQPUri};
use opsconductor_platform::config::{ConfigError, Env};

/// The default broker: a local RabbitMQ with its default account and vhost.
pub const DEFAULT_AMQP_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";
/// The default prefix of every exchange and queue name.
pub const DEFAULT_PREFIX: &str = "opsconductor";

#[derive(Clone)]
pub struct BrokerConfig {
    url: String,
    username: String,
    /// Prefix of every exchange and queue name ("opsconductor" → "opsconductor.audit.events").
    pub prefix: String,
    /// The producing service: the `app_id` of what it publishes and its connection's name.
    pub service: String,
    /// First delay before reconnecting after the connection is lost; doubles up to `reconnect_max`.
    pub reconnect_min: Duration,
    pub reconnect_max: Duration,
    /// How long a publish waits for a connection and then for the broker's confirm.
    pub publish_timeout: Duration,
    /// Unconfirmed messages one publishing call keeps in flight.
    pub confirm_window: usize,
    /// How the broker moves messages out of delay queues and into dead-letter queues.
    pub dead_letter_strategy: DeadLetterStrategy,
    /// Whether this service declares the shared topology or only checks it exists.
    pub declare: DeclareMode,
}

/// Who creates the exchanges and queues (`OPSCONDUCTOR_AMQP_DECLARE`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeclareMode {
    /// The service declares what it uses, idempotently (needs `configure` permission on it):
    /// the default, for a broker account of its own or a development broker.
    Declare,
    /// The topology was created by the broker's administrator (the generated definitions
    /// file); the service only checks that it exists. Its own per-instance broadcast queues
    /// are still declared. For broker accounts with least privilege.
    Verify,
}

impl std::str::FromStr for DeclareMode {
    type Err = &'static str;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "declare" => Ok(DeclareMode::Declare),
            "verify" => Ok(DeclareMode::Verify),
            _ => Err("must be declare or verify"),
        }
    }
}

/// RabbitMQ's dead-lettering guarantee for the queues this service declares
/// (`OPSCONDUCTOR_AMQP_DEAD_LETTER_STRATEGY`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeadLetterStrategy {
    /// RabbitMQ's default: a message leaves its queue as it is dead-lettered; lost only if the
    /// target queue is unavailable at that instant.
    AtMostOnce,
    /// The message stays until its target has it. Needs RabbitMQ 3.11 or later: 3.10 crashes
    /// its dead-letter workers (and then every such queue) when these queues are deleted.
    AtLeastOnce,
}

impl std::str::FromStr for DeadLetterStrategy {
    type Err = &'static str;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "at-most-once" => Ok(DeadLetterStrategy::AtMostOnce),
            "at-least-once" => Ok(DeadLetterStrategy::AtLeastOnce),
            _ => Err("must be at-most-once or at-least-once"),
        }
    }
}

impl BrokerConfig {
    /// `AMQP_URL`, `OPSCONDUCTOR_AMQP_PREFIX`, `OPSCONDUCTOR_AMQP_RECONNECT_MIN_MS`,
    /// `OPSCONDUCTOR_AMQP_RECONNECT_MAX_MS`, `OPSCONDUCTOR_AMQP_PUBLISH_TIMEOUT_MS`,
    /// `OPSCONDUCTOR_AMQP_CONFIRM_WINDOW`.
    pub fn from_env(env: &Env, service: &str) -> Result<Self, ConfigError> {
        let url = env
            .get("AMQP_URL")
            .unwrap_or_else(|| DEFAULT_AMQP_URL.to_string());
        validate_url(&url).map_err(|reason| ConfigError::invalid("AMQP_URL", &url, reason))?;
        // The password may come apart from the URL, from a file of this service's own.
        let url = match env.secret("AMQP_PASSWORD")? {
            Some(password) => with_password(&url, &password)
                .map_err(|reason| ConfigError::invalid("AMQP_URL", &url, reason))?,
            None => url,
        };
        let prefix = env
            .get("OPSCONDUCTOR_AMQP_PREFIX")
            .unwrap_or_else(|| DEFAULT_PREFIX.to_string());
        validate_prefix(&prefix)
            .map_err(|reason| ConfigError::invalid("OPSCONDUCTOR_AMQP_PREFIX", &prefix, reason))?;
        let reconnect_min = env.positive_millis("OPSCONDUCTOR_AMQP_RECONNECT_MIN_MS", 100)?;
        let reconnect_max = env.positive_millis("OPSCONDUCTOR_AMQP_RECONNECT_MAX_MS", 5000)?;
        if reconnect_max < reconnect_min {
            return Err(ConfigError::invalid(
                "OPSCONDUCTOR_AMQP_RECONNECT_MAX_MS",
                &reconnect_max.as_millis().to_string(),
                "must not be below OPSCONDUCTOR_AMQP_RECONNECT_MIN_MS",
            ));
        }
        let username = AMQPUri::from_str(&url)
            .map(|uri| uri.authority.userinfo.username)
            .unwrap_or_default();
        Ok(BrokerConfig {
            url,
            username,
            prefix,
            service: service.to_string(),
            reconnect_min,
            reconnect_max,
            publish_timeout: env.positive_millis("OPSCONDUCTOR_AMQP_PUBLISH_TIMEOUT_MS", 10_000)?,
            confirm_window: env.bounded("OPSCONDUCTOR_AMQP_CONFIRM_WINDOW", 1024, 1..=65_535)?
                as usize,
            dead_letter_strategy: env.parse(
                "OPSCONDUCTOR_AMQP_DEAD_LETTER_STRATEGY",
                DeadLetterStrategy::AtMostOnce,
            )?,
            declare: env.parse("OPSCONDUCTOR_AMQP_DECLARE", DeclareMode::Declare)?,
        })
    }

    /// Defaults with `url` and `prefix` (tests).
    pub fn new(url: &str, prefix: &str, service: &str) -> Result<Self, ConfigError> {
        let env = Env::isolated([("AMQP_URL", url), ("OPSCONDUCTOR_AMQP_PREFIX", prefix)]);
        Self::from_env(&env, service)
    }

    pub(crate) fn url(&self) -> &str {
        &self.url
    }

    /// The broker account this service connects as: the `user_id` RabbitMQ validates on
    /// everything it publishes.
    pub fn username(&self) -> &str {
        &self.username
    }

    /// The URL with its password masked, for logs.
    pub fn redacted_url(&self) -> String {
        opsconductor_storage::redact_url(&self.url)
    }
}

impl fmt::Debug for BrokerConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BrokerConfig")
            .field("url", &self.redacted_url())
            .field("prefix", &self.prefix)
            .field("service", &self.service)
            .finish_non_exhaustive()
    }
}

fn validate_url(url: &str) -> Result<(), String> {
    let uri = AMQPUri::from_str(url)?;
    match uri.scheme {
        AMQPScheme::AMQP => Ok(()),
        AMQPScheme::AMQPS => Err(
            "amqps is not supported by this build; terminate TLS in front of RabbitMQ".to_string(),
        ),
    }
}

/// `url` with its password replaced by `password` (percent-encoded).
fn with_password(url: &str, password: &str) -> Result<String, String> {
    let (scheme, rest) = url
        .split_once("://")
        .ok_or_else(|| "has no scheme".to_string())?;
    let (authority_end, _) = rest
        .char_indices()
        .find(|(_, c)| *c == '/' || *c == '?')
        .unwrap_or((rest.len(), ' '));
    let (authority, tail) = rest.split_at(authority_end);
    let (userinfo, host) = authority
        .rsplit_once('@')
        .ok_or_else(|| "names no user for AMQP_PASSWORD".to_string())?;
    let user = userinfo.split(':').next().unwrap_or_default();
    if user.is_empty() {
        return Err("names no user for AMQP_PASSWORD".to_string());
    }
    let encoded: String = password
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect();
    let url = format!("{scheme}://{user}:{encoded}@{host}{tail}");
    validate_url(&url)?;
    Ok(url)
}

/// Names are `<prefix>.<name>`: the prefix takes the characters RabbitMQ tooling handles well.
fn validate_prefix(prefix: &str) -> Result<(), &'static str> {
    let ok_chars = prefix
        .chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '-' | '_'));
    if prefix.is_empty() || prefix.len() > 64 {
        Err("must be 1-64 characters")
    } else if !ok_chars {
        Err("may hold only a-z, 0-9, '.', '-' and '_'")
    } else if prefix.starts_with('.') || prefix.ends_with('.') {
        Err("must not start or end with '.'")
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validates_and_hides_the_password() {
        let config = BrokerConfig::new("amqp://u:hunter2@h:5672/v", "t-1", "user").unwrap();
        assert_eq!(config.redacted_url(), "amqp://u:***@h:5672/v");
        assert!(!format!("{config:?}").contains("hunter2"));
        let err = BrokerConfig::new("amqps://h", "p", "s").err().unwrap();
        assert_eq!(err.var(), "AMQP_URL");
        let err = BrokerConfig::new("amqp://u:hunter2@h/v", "Bad Prefix", "s")
            .err()
            .unwrap();
        assert_eq!(err.var(), "OPSCONDUCTOR_AMQP_PREFIX");
        let err = BrokerConfig::new("not a url", "p", "s").err().unwrap();
        assert!(!err.to_string().contains("not a url"), "AMQP_URL is hidden");
    }

    #[test]
    fn the_password_may_come_from_its_own_variable() {
        let env = Env::isolated([
            ("AMQP_URL", "amqp://targets@rabbitmq:5672/%2f"),
            ("AMQP_PASSWORD", "s3cret/+="),
        ]);
        let config = BrokerConfig::from_env(&env, "targets").unwrap();
        assert_eq!(
            config.url(),
            "amqp://targets:s3cret%2F%2B%3D@rabbitmq:5672/%2f"
        );
        assert_eq!(config.username(), "targets");
        assert!(!format!("{config:?}").contains("s3cret"));
        let env = Env::isolated([("AMQP_URL", "amqp://rabbitmq"), ("AMQP_PASSWORD", "x")]);
        assert_eq!(
            BrokerConfig::from_env(&env, "t").err().unwrap().var(),
            "AMQP_URL"
        );
        let env = Env::isolated([("OPSCONDUCTOR_AMQP_DECLARE", "sometimes")]);
        assert_eq!(
            BrokerConfig::from_env(&env, "t").err().unwrap().var(),
            "OPSCONDUCTOR_AMQP_DECLARE"
        );
    }
}
