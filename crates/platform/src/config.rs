//! Configuration from environment variables, validated at start-up with errors that name the
//! variable. Every variable is listed, with its default, in `docs/configuration.md`.

use std::collections::HashMap;
use std::fmt::Display;
use std::net::SocketAddr;
use std::str::FromStr;
use std::time::Duration;

use thiserror::Error;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum ConfigError {
    #[error("{var}: invalid value {value}: {reason}")]
    Invalid {
        var: String,
        value: String,
        reason: String,
    },
    #[error("{var} is required: {hint}")]
    Missing { var: String, hint: String },
}

impl ConfigError {
    pub fn invalid(var: &str, value: &str, reason: impl Display) -> Self {
        ConfigError::Invalid {
            var: var.to_string(),
            value: shown_value(var, value),
            reason: reason.to_string(),
        }
    }

    /// The variable this error is about.
    pub fn var(&self) -> &str {
        match self {
            ConfigError::Invalid { var, .. } | ConfigError::Missing { var, .. } => var,
        }
    }
}

/// Values of variables that may hold secrets are never echoed back.
fn shown_value(var: &str, value: &str) -> String {
    let secret = [
        "SECRET",
        "PASSWORD",
        "TOKEN",
        "KEY",
        "DATABASE_URL",
        "AMQP_URL",
        // A collector's address may carry user info.
        "ENDPOINT",
    ]
    .iter()
    .any(|s| var.contains(s))
        // A *_FILE variable holds the path of a secret, not the secret.
        && !var.ends_with("_FILE");
    if secret {
        "(hidden)".to_string()
    } else {
        format!("{value:?}")
    }
}

/// Where variables come from: the process environment, with overrides on top (the all-in-one
/// runner and tests set per-service values without touching the process environment).
#[derive(Debug, Clone, Default)]
pub struct Env {
    overrides: HashMap<String, String>,
    process: bool,
}

impl Env {
    /// The process environment.
    pub fn process() -> Self {
        Env {
            overrides: HashMap::new(),
            process: true,
        }
    }

    /// Only the given pairs; the process environment is ignored.
    pub fn isolated<K: Into<String>, V: Into<String>>(
        pairs: impl IntoIterator<Item = (K, V)>,
    ) -> Self {
        Env {
            overrides: pairs
                .into_iter()
                .map(|(k, v)| (k.into(), v.into()))
                .collect(),
            process: false,
        }
    }

    /// This environment with `var` set to `value`.
    pub fn with(mut self, var: impl Into<String>, value: impl Into<String>) -> Self {
        self.overrides.insert(var.into(), value.into());
        self
    }

    /// The variables set on top of the process environment (to hand to a child process).
    pub fn overrides(&self) -> impl Iterator<Item = (&str, &str)> {
        self.overrides.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }

    /// The value of `var`, if set and not empty.
    pub fn get(&self, var: &str) -> Option<String> {
        let value = match self.overrides.get(var) {
            Some(v) => Some(v.clone()),
            None if self.process => std::env::var(var).ok(),
            None => None,
        };
        value.filter(|v| !v.trim().is_empty())
    }

    /// A secret from `var`, or from the file named by `<var>_FILE` (container secrets), with
    /// surrounding whitespace removed. Setting both is an error; neither gives `None`.
    pub fn secret(&self, var: &str) -> Result<Option<String>, ConfigError> {
        let file_var = format!("{var}_FILE");
        match (self.get(var), self.get(&file_var)) {
            (Some(_), Some(_)) => Err(ConfigError::invalid(
                var,
                "",
                format!("set {var} or {file_var}, not both"),
            )),
            (Some(value), None) => Ok(Some(value.trim().to_string())),
            (None, Some(path)) => match std::fs::read_to_string(path.trim()) {
                Ok(value) if !value.trim().is_empty() => Ok(Some(value.trim().to_string())),
                Ok(_) => Err(ConfigError::invalid(&file_var, &path, "the file is empty")),
                Err(e) => Err(ConfigError::invalid(&file_var, &path, e)),
            },
            (None, None) => Ok(None),
        }
    }

    /// Parses `var`, or returns `default` when unset.
    pub fn parse<T>(&self, var: &str, default: T) -> Result<T, ConfigError>
    where
        T: FromStr,
        T::Err: Display,
    {
        match self.get(var) {
            None => Ok(default),
            Some(raw) => raw
                .trim()
                .parse()
                .map_err(|e| ConfigError::invalid(var, &raw, e)),
        }
    }

    /// A duration given in milliseconds.
    pub fn millis(&self, var: &str, default: Duration) -> Result<Duration, ConfigError> {
        self.parse(var, default.as_millis() as u64)
            .map(Duration::from_millis)
    }

    /// A duration in milliseconds that must not be zero (an interval or a timeout).
    pub fn positive_millis(&self, var: &str, default: u64) -> Result<Duration, ConfigError> {
        self.bounded(var, default, 1..=86_400_000)
            .map(Duration::from_millis)
    }

    /// A positive integer within `range`.
    pub fn bounded(
        &self,
        var: &str,
        default: u64,
        range: std::ops::RangeInclusive<u64>,
    ) -> Result<u64, ConfigError> {
        let value = self.parse(var, default)?;
        if range.contains(&value) {
            Ok(value)
        } else {
            Err(ConfigError::invalid(
                var,
                &value.to_string(),
                format!("must be between {} and {}", range.start(), range.end()),
            ))
        }
    }
}

/// How a server behaves; shared by every service.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Address to listen on.
    pub listen: SocketAddr,
    /// Calls handled at once before new ones are shed with UNAVAILABLE.
    pub max_concurrent_requests: usize,
    /// Largest request or response message.
    pub max_message_bytes: usize,
    /// After SIGTERM, how long health reports NOT_SERVING before new calls stop being accepted
    /// (lets load balancers and orchestrators notice).
    pub shutdown_delay: Duration,
    /// After that, how long in-flight calls may take to finish.
    pub shutdown_grace: Duration,
    /// How often dependencies (database, broker) are checked for health.
    pub health_interval: Duration,
    /// Where `/metrics` is served (`METRICS_ADDR`; by default the gRPC port + 1000 on the
    /// same host, an ephemeral port when the gRPC port is; `off` serves none).
    pub metrics: Option<SocketAddr>,
}

/// The metrics port is the gRPC port plus this (user: 3002 → 4002).
pub const METRICS_PORT_OFFSET: u16 = 1000;

/// Where a server listening on `listen` serves its metrics by default.
pub fn default_metrics_addr(listen: SocketAddr) -> Option<SocketAddr> {
    match listen.port() {
        0 => Some(SocketAddr::new(listen.ip(), 0)),
        port => port
            .checked_add(METRICS_PORT_OFFSET)
            .map(|port| SocketAddr::new(listen.ip(), port)),
    }
}

fn metrics_addr(env: &Env, listen: SocketAddr) -> Result<Option<SocketAddr>, ConfigError> {
    match env.get("METRICS_ADDR").as_deref().map(str::trim) {
        None | Some("") => match default_metrics_addr(listen) {
            Some(addr) => Ok(Some(addr)),
            None => Err(ConfigError::invalid(
                "METRICS_ADDR",
                "",
                format!(
                    "the gRPC port {} + 1000 is no port; set it or `off`",
                    listen.port()
                ),
            )),
        },
        Some("off") => Ok(None),
        Some(raw) => raw.parse().map(Some).map_err(|e| {
            ConfigError::invalid("METRICS_ADDR", raw, format!("{e} (host:port, or `off`)"))
        }),
    }
}

impl ServerConfig {
    pub fn from_env(env: &Env, listen: SocketAddr) -> Result<Self, ConfigError> {
        Ok(ServerConfig {
            listen,
            max_concurrent_requests: env.bounded(
                "OPSCONDUCTOR_MAX_CONCURRENT_REQUESTS",
                1024,
                1..=1_000_000,
            )? as usize,
            max_message_bytes: env.bounded(
                "OPSCONDUCTOR_MAX_MESSAGE_BYTES",
                4 * 1024 * 1024,
                1024..=256 * 1024 * 1024,
            )? as usize,
            shutdown_delay: env.millis("OPSCONDUCTOR_SHUTDOWN_DELAY_MS", Duration::from_secs(1))?,
            shutdown_grace: env
                .millis("OPSCONDUCTOR_SHUTDOWN_GRACE_MS", Duration::from_secs(30))?,
            health_interval: env.positive_millis("OPSCONDUCTOR_HEALTH_INTERVAL_MS", 5000)?,
            metrics: metrics_addr(env, listen)?,
        })
    }

    /// Defaults, listening on `listen` (tests use port 0).
    pub fn local(listen: SocketAddr) -> Self {
        let mut config = Self::from_env(&Env::default(), listen)
            .unwrap_or_else(|_| unreachable!("defaults are valid"));
        config.shutdown_delay = Duration::ZERO;
        config
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_listen_beside_the_grpc_port_unless_told_otherwise() {
        let at = |env: &Env, listen: &str| {
            ServerConfig::from_env(env, listen.parse().unwrap()).map(|c| c.metrics)
        };
        let none = Env::isolated::<&str, &str>([]);
        assert_eq!(
            at(&none, "0.0.0.0:3002").unwrap(),
            Some("0.0.0.0:4002".parse().unwrap())
        );
        assert_eq!(
            at(&none, "127.0.0.1:0").unwrap(),
            Some("127.0.0.1:0".parse().unwrap())
        );
        assert_eq!(
            at(&none, "127.0.0.1:65000").unwrap_err().var(),
            "METRICS_ADDR"
        );
        let off = Env::isolated([("METRICS_ADDR", "off")]);
        assert_eq!(at(&off, "127.0.0.1:3002").unwrap(), None);
        let set = Env::isolated([("METRICS_ADDR", "10.0.0.1:9100")]);
        assert_eq!(
            at(&set, "127.0.0.1:3002").unwrap(),
            Some("10.0.0.1:9100".parse().unwrap())
        );
        let bad = Env::isolated([("METRICS_ADDR", "everywhere")]);
        assert_eq!(
            at(&bad, "127.0.0.1:3002").unwrap_err().var(),
            "METRICS_ADDR"
        );
    }

    #[test]
    fn errors_name_the_variable_and_hide_secrets() {
        let env = Env::isolated([
            ("OPSCONDUCTOR_MAX_CONCURRENT_REQUESTS", "lots"),
            ("SERVICE_SECRET", "x"),
        ]);
        let err = ServerConfig::from_env(&env, "127.0.0.1:0".parse().unwrap()).unwrap_err();
        assert_eq!(err.var(), "OPSCONDUCTOR_MAX_CONCURRENT_REQUESTS");
        assert!(err.to_string().contains("\"lots\""));
        let err = env.parse::<u8>("SERVICE_SECRET", 0).unwrap_err();
        assert!(err.to_string().contains("(hidden)"));
    }

    #[test]
    fn bounds_are_checked() {
        let env = Env::isolated([("OPSCONDUCTOR_MAX_CONCURRENT_REQUESTS", "0")]);
        let err = ServerConfig::from_env(&env, "127.0.0.1:0".parse().unwrap()).unwrap_err();
        assert!(err.to_string().contains("between 1 and"));
    }
}
