//! Typed clients for every service, located by the standard variables (`USER_SERVICE_URL` …).
//!
//! Channels are HTTP/2, connected lazily (a service can start before the ones it calls) and
//! shared: one channel per replica multiplexes every call. A variable may list several
//! replicas, comma-separated; calls take them in turn, skipping those whose circuit breaker
//! is open. Every call has a deadline (the one of the call being served, or a default per
//! method class) and is retried only where that is safe, within a budget ([`call`]). With a
//! [`TokenSource`], every call carries the service's token ([`AuthChannel`]).

mod breaker;
pub(crate) mod call;
pub mod deadline;
mod upstream;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub use breaker::{BreakerSettings, BreakerState};
pub use call::{CallPolicy, RetrySettings};
pub use upstream::Upstream;

use http::Uri;
use opsconductor_metrics::{GrpcMetrics, Registry, Side};
use thiserror::Error;
use tonic::transport::{Channel, Endpoint};
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

use crate::auth::{AuthChannel, TokenSource};
use crate::config::{ConfigError, Env};
use crate::ServiceKind;

#[derive(Debug, Error)]
pub enum ClientError {
    #[error("invalid address {0:?}: {1}")]
    Address(String, String),
    #[error("cannot connect to {0}: {1}")]
    Connect(String, tonic::transport::Error),
    #[error("call failed: {0}")]
    Call(#[from] tonic::Status),
}

/// Timeouts and limits for every client channel.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    pub connect_timeout: Duration,
    pub request_timeout: Duration,
    pub max_message_bytes: usize,
    pub retry: RetrySettings,
    pub breaker: BreakerSettings,
}

impl ClientConfig {
    pub fn from_env(env: &Env) -> Result<Self, ConfigError> {
        Ok(ClientConfig {
            connect_timeout: env.positive_millis("OPSCONDUCTOR_CONNECT_TIMEOUT_MS", 2000)?,
            request_timeout: env.positive_millis("OPSCONDUCTOR_REQUEST_TIMEOUT_MS", 10_000)?,
            max_message_bytes: env.bounded(
                "OPSCONDUCTOR_MAX_MESSAGE_BYTES",
                4 * 1024 * 1024,
                1024..=256 * 1024 * 1024,
            )? as usize,
            retry: RetrySettings {
                max_attempts: env.bounded("OPSCONDUCTOR_CLIENT_MAX_ATTEMPTS", 3, 1..=10)? as u32,
                budget_ratio: env.bounded(
                    "OPSCONDUCTOR_CLIENT_RETRY_BUDGET_PERCENT",
                    10,
                    0..=100,
                )? as f32
                    / 100.0,
                read_timeout: env.positive_millis("OPSCONDUCTOR_READ_TIMEOUT_MS", 5_000)?,
                write_timeout: env.positive_millis("OPSCONDUCTOR_REQUEST_TIMEOUT_MS", 10_000)?,
                ..RetrySettings::default()
            },
            breaker: BreakerSettings {
                failures: env.bounded("OPSCONDUCTOR_CLIENT_BREAKER_FAILURES", 5, 1..=1_000)? as u32,
                open_for: env.positive_millis("OPSCONDUCTOR_CLIENT_BREAKER_OPEN_MS", 1_000)?,
                ..BreakerSettings::default()
            },
        })
    }
}

/// The platform's upstreams: one lazily connected channel each.
pub struct Clients {
    config: ClientConfig,
    urls: HashMap<ServiceKind, Vec<Uri>>,
    channels: Mutex<HashMap<ServiceKind, Channel>>,
    upstreams: Arc<Mutex<HashMap<ServiceKind, Upstream>>>,
    policy: Arc<CallPolicy>,
    tokens: Option<TokenSource>,
    metrics: Option<GrpcMetrics>,
}

impl Clients {
    /// Reads every `*_SERVICE_URL` (default `http://127.0.0.1:<port base + offset>`, the port
    /// base from `OPSCONDUCTOR_PORT_BASE`, 3000) and validates each now, not on first call.
    pub fn from_env(env: &Env) -> Result<Self, ConfigError> {
        let config = ClientConfig::from_env(env)?;
        let port_base: u16 = env.parse("OPSCONDUCTOR_PORT_BASE", 3000)?;
        if port_base > u16::MAX - 10 {
            return Err(ConfigError::invalid(
                "OPSCONDUCTOR_PORT_BASE",
                &port_base.to_string(),
                "must leave room for nine ports",
            ));
        }
        let mut urls = HashMap::new();
        for kind in ServiceKind::ALL {
            let var = kind.url_var();
            let raw = env
                .get(var)
                .unwrap_or_else(|| format!("http://127.0.0.1:{}", port_base + kind.port_offset()));
            let list =
                parse_urls(&raw).map_err(|reason| ConfigError::invalid(var, &raw, reason))?;
            urls.insert(kind, list);
        }
        Ok(Clients {
            policy: Arc::new(CallPolicy::new(
                config.retry.clone(),
                config.max_message_bytes,
            )),
            config,
            urls,
            channels: Mutex::new(HashMap::new()),
            upstreams: Arc::new(Mutex::new(HashMap::new())),
            tokens: None,
            metrics: None,
        })
    }

    /// Every call made through these clients carries a token from `tokens`.
    pub fn with_tokens(mut self, tokens: TokenSource) -> Self {
        self.tokens = Some(tokens);
        self
    }

    pub fn tokens(&self) -> Option<&TokenSource> {
        self.tokens.as_ref()
    }

    /// Every call made through these clients is recorded in `registry`'s `grpc_client_*`
    /// series (and the token cache's counters, with tokens).
    pub fn with_metrics(mut self, registry: &Registry) -> Self {
        self.metrics = Some(GrpcMetrics::register(
            registry,
            Side::Client,
            crate::methods::method_kinds(),
        ));
        if let Some(tokens) = &self.tokens {
            tokens.register_metrics(registry);
        }
        registry.register_collector(call::counter_set(&self.policy));
        registry.register_collector(BreakerStates(Arc::downgrade(&self.upstreams)));
        self
    }

    /// The authenticated channel to `kind`: deadlines, safe retries, breakers per replica.
    pub fn channel(&self, kind: ServiceKind) -> AuthChannel {
        AuthChannel::over(self.upstream(kind), self.tokens.clone())
            .with_metrics(self.metrics.clone())
            .with_policy(self.policy.clone())
    }

    /// The calls' shared policy (its retries, for tests and benchmarks).
    pub fn policy(&self) -> &Arc<CallPolicy> {
        &self.policy
    }

    /// `kind`'s replicas, each with its channel and breaker, created on first use.
    pub fn upstream(&self, kind: ServiceKind) -> Upstream {
        let mut upstreams = self
            .upstreams
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        upstreams
            .entry(kind)
            .or_insert_with(|| {
                Upstream::replicas(
                    kind.name(),
                    self.urls(kind),
                    |uri| endpoint(uri.clone(), &self.config).connect_lazy(),
                    self.config.breaker,
                )
            })
            .clone()
    }

    pub fn urls(&self, kind: ServiceKind) -> &[Uri] {
        self.urls.get(&kind).map(Vec::as_slice).unwrap_or_default()
    }

    /// The shared channel to `kind` without a token (the auth service's public methods), created
    /// on first use. Must be called inside a Tokio runtime (the channel's worker is a task).
    pub fn raw_channel(&self, kind: ServiceKind) -> Channel {
        let mut channels = self
            .channels
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        channels
            .entry(kind)
            .or_insert_with(|| {
                let endpoints: Vec<Endpoint> = self
                    .urls(kind)
                    .iter()
                    .map(|uri| endpoint(uri.clone(), &self.config))
                    .collect();
                match endpoints.as_slice() {
                    [one] => one.connect_lazy(),
                    _ => Channel::balance_list(endpoints.into_iter()),
                }
            })
            .clone()
    }
}

/// `opsconductor_client_breaker_open{upstream, replica}`: 1 while a replica is skipped.
struct BreakerStates(std::sync::Weak<Mutex<HashMap<ServiceKind, Upstream>>>);

impl std::fmt::Debug for BreakerStates {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("BreakerStates")
    }
}

impl prometheus_client::collector::Collector for BreakerStates {
    fn encode(
        &self,
        mut encoder: prometheus_client::encoding::DescriptorEncoder,
    ) -> Result<(), std::fmt::Error> {
        use prometheus_client::encoding::EncodeMetric;
        use prometheus_client::metrics::gauge::ConstGauge;
        use prometheus_client::metrics::TypedMetric;
        let Some(upstreams) = self.0.upgrade() else {
            return Ok(());
        };
        let upstreams: Vec<Upstream> = upstreams
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .values()
            .cloned()
            .collect();
        let mut family = encoder.encode_descriptor(
            "opsconductor_client_breaker_open",
            "1 while calls skip a replica whose circuit breaker is open (or half-open).",
            None,
            ConstGauge::<i64>::TYPE,
        )?;
        for upstream in upstreams {
            for (replica, open) in upstream.breaker_states() {
                let labels = [
                    ("upstream", upstream.name().to_string()),
                    ("replica", replica),
                ];
                ConstGauge::new(i64::from(open)).encode(family.encode_family(&labels)?)?;
            }
        }
        Ok(())
    }
}

/// A generated client of one of the platform's services, over an [`AuthChannel`].
pub trait ServiceClient: Sized {
    const KIND: ServiceKind;
    fn with_channel(channel: AuthChannel, max_message_bytes: usize) -> Self;
}

impl Clients {
    /// A client of the service `C` talks to: `clients.client::<UserServiceClient<_>>()`.
    pub fn client<C: ServiceClient>(&self) -> C {
        C::with_channel(self.channel(C::KIND), self.config.max_message_bytes)
    }
}

macro_rules! typed_clients {
    ($($fn:ident => $kind:ident, $client:path;)*) => {
        $(
            impl ServiceClient for $client {
                const KIND: ServiceKind = ServiceKind::$kind;
                fn with_channel(channel: AuthChannel, max_message_bytes: usize) -> Self {
                    <$client>::new(channel)
                        .max_decoding_message_size(max_message_bytes)
                        .max_encoding_message_size(max_message_bytes)
                }
            }
        )*
        impl Clients {
            $(
                #[doc = concat!("A client of the ", stringify!($fn), " service.")]
                pub fn $fn(&self) -> $client {
                    self.client::<$client>()
                }
            )*
        }
    };
}

use opsconductor_api as api;
typed_clients! {
    auth => Auth, api::auth::v1::auth_service_client::AuthServiceClient<AuthChannel>;
    user => User, api::user::v1::user_service_client::UserServiceClient<AuthChannel>;
    audit => Audit, api::audit::v1::audit_service_client::AuditServiceClient<AuthChannel>;
    credentials => Credentials, api::credentials::v1::credentials_service_client::CredentialsServiceClient<AuthChannel>;
    targets => Targets, api::targets::v1::targets_service_client::TargetsServiceClient<AuthChannel>;
    jobs => Jobs, api::jobs::v1::jobs_service_client::JobsServiceClient<AuthChannel>;
    notification => Notification, api::notification::v1::notification_service_client::NotificationServiceClient<AuthChannel>;
    scheduler => Scheduler, api::scheduler::v1::scheduler_service_client::SchedulerServiceClient<AuthChannel>;
    executor => Executor, api::executor::v1::executor_service_client::ExecutorServiceClient<AuthChannel>;
}

fn endpoint(uri: Uri, config: &ClientConfig) -> Endpoint {
    Endpoint::from(uri)
        .connect_timeout(config.connect_timeout)
        .timeout(config.request_timeout)
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(30))
        .keep_alive_while_idle(true)
}

/// Parses a comma-separated list of `http://host:port` URLs.
pub fn parse_urls(raw: &str) -> Result<Vec<Uri>, String> {
    let mut out = Vec::new();
    for part in raw.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let uri: Uri = part
            .parse()
            .map_err(|e| format!("{part:?} is not a URL: {e}"))?;
        match uri.scheme_str() {
            Some("http") => {}
            Some("https") => {
                return Err(format!(
                    "{part:?}: https is not supported by this build; terminate TLS in front"
                ))
            }
            _ => return Err(format!("{part:?} must start with http://")),
        }
        if uri.authority().is_none() {
            return Err(format!("{part:?} has no host"));
        }
        out.push(uri);
    }
    if out.is_empty() {
        return Err("no URL given".to_string());
    }
    Ok(out)
}

/// Asks a server's `grpc.health.v1.Health/Check` about `service` ("" for the whole server).
pub async fn check_health(
    url: &str,
    service: &str,
    timeout: Duration,
) -> Result<tonic_health::pb::health_check_response::ServingStatus, ClientError> {
    let uri: Uri = url
        .parse()
        .map_err(|e: http::uri::InvalidUri| ClientError::Address(url.to_string(), e.to_string()))?;
    let channel = Endpoint::from(uri)
        .connect_timeout(timeout)
        .timeout(timeout)
        .connect()
        .await
        .map_err(|e| ClientError::Connect(url.to_string(), e))?;
    let response = HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: service.to_string(),
        })
        .await?;
    Ok(response.into_inner().status())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_validated_with_the_variable_named() {
        assert_eq!(parse_urls("http://a:1, http://b:2").unwrap().len(), 2);
        assert!(parse_urls("ftp://a").is_err());
        assert!(parse_urls("").is_err());
        let env = Env::isolated([("USER_SERVICE_URL", "nonsense url")]);
        let err = Clients::from_env(&env).err().unwrap();
        assert_eq!(err.var(), "USER_SERVICE_URL");
    }
}
