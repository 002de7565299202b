//! Typed clients for every service, located by the standard variables (`USER_SERVICE_URL` …).
//!
//! Channels are HTTP/2, connected lazily (a service can start before the ones it calls) and
//! shared: one channel per upstream multiplexes every call. A variable may list several
//! replicas, comma-separated; calls are balanced over them. With a [`TokenSource`], every call
//! carries the service's token ([`AuthChannel`]).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

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
        })
    }
}

/// The platform's upstreams: one lazily connected channel each.
pub struct Clients {
    config: ClientConfig,
    urls: HashMap<ServiceKind, Vec<Uri>>,
    channels: Mutex<HashMap<ServiceKind, Channel>>,
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
            config,
            urls,
            channels: Mutex::new(HashMap::new()),
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
        self
    }

    /// The authenticated channel to `kind`.
    pub fn channel(&self, kind: ServiceKind) -> AuthChannel {
        AuthChannel::new(self.raw_channel(kind), self.tokens.clone())
            .with_metrics(self.metrics.clone())
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
