//! Serving a service: bind, then health, reflection (v1 and v1alpha), request ids, tracing,
//! gRPC metrics and load shedding in front of the service's routes, `/metrics` on a port of
//! its own, and a graceful shutdown — NOT_SERVING first, then in-flight calls drain within a
//! bound.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use opsconductor_metrics::{GrpcMetrics, GrpcMetricsLayer, MetricsEndpoint, Registry, Side};
use thiserror::Error;
use tokio::net::TcpListener;
use tonic::service::Routes;
use tonic::transport::server::TcpIncoming;

use crate::auth::{AuthLayer, Authenticator};
use crate::config::ServerConfig;
use crate::health::{DependencyCheck, Health};
use crate::layers::{trace_layer, LoadShedLayer, RequestIdLayer};
use crate::policy::{PolicyError, PolicyTable};

#[derive(Debug, Error)]
pub enum ServerError {
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error(transparent)]
    Policy(#[from] PolicyError),
    #[error("reflection cannot be built: {0}")]
    Reflection(String),
    /// Every server that serves methods checks tokens; refusing to start is deny-by-default.
    #[error("{0} serves methods but has no authenticator")]
    NoAuthentication(String),
    #[error("server failed: {0}")]
    Transport(#[from] tonic::transport::Error),
    #[error(transparent)]
    Metrics(#[from] opsconductor_metrics::MetricsError),
}

/// Background work that lives as long as its server — an outbox relay, message consumers, the
/// broker connection — and is stopped after the server drained its calls, in the order it was
/// added, each within the shutdown grace period.
pub trait Worker: Send + 'static {
    fn stop(self: Box<Self>, grace: Duration) -> BoxFuture<'static, ()>;
}

/// Periodic tasks of a service (a sweeper, a checkpointer): nothing to drain, aborted when
/// the server stops.
pub struct Tasks(pub Vec<tokio::task::JoinHandle<()>>);

impl Worker for Tasks {
    fn stop(self: Box<Self>, _grace: Duration) -> BoxFuture<'static, ()> {
        for task in &self.0 {
            task.abort();
        }
        Box::pin(std::future::ready(()))
    }
}

/// A generated gRPC server over its implementation (`UserServiceServer<UserApi>` ...), that the
/// platform can serve and limit to its message size both ways.
pub trait GrpcService:
    tonic::server::NamedService
    + tower::Service<
        http::Request<tonic::body::Body>,
        Response = http::Response<tonic::body::Body>,
        Error = std::convert::Infallible,
        Future: Send + 'static,
    > + Clone
    + Send
    + Sync
    + Sized
    + 'static
{
    fn with_message_limit(self, max_bytes: usize) -> Self;
}

macro_rules! grpc_services {
    ($($server:ident<$service:path>),* $(,)?) => {
        $(
            impl<T: $service> GrpcService for $server<T> {
                fn with_message_limit(self, max_bytes: usize) -> Self {
                    self.max_decoding_message_size(max_bytes)
                        .max_encoding_message_size(max_bytes)
                }
            }
        )*
    };
}

use opsconductor_api::audit::v1::audit_service_server::{AuditService, AuditServiceServer};
use opsconductor_api::auth::v1::auth_service_server::{AuthService, AuthServiceServer};
use opsconductor_api::credentials::v1::credentials_service_server::{
    CredentialsService, CredentialsServiceServer,
};
use opsconductor_api::deadletters::v1::dead_letter_service_server::{
    DeadLetterService, DeadLetterServiceServer,
};
use opsconductor_api::executor::v1::executor_service_server::{
    ExecutorService, ExecutorServiceServer,
};
use opsconductor_api::jobs::v1::jobs_service_server::{JobsService, JobsServiceServer};
use opsconductor_api::notification::v1::notification_service_server::{
    NotificationService, NotificationServiceServer,
};
use opsconductor_api::scheduler::v1::scheduler_service_server::{
    SchedulerService, SchedulerServiceServer,
};
use opsconductor_api::targets::v1::targets_service_server::{TargetsService, TargetsServiceServer};
use opsconductor_api::user::v1::user_service_server::{UserService, UserServiceServer};
grpc_services! {
    AuthServiceServer<AuthService>,
    UserServiceServer<UserService>,
    AuditServiceServer<AuditService>,
    CredentialsServiceServer<CredentialsService>,
    TargetsServiceServer<TargetsService>,
    JobsServiceServer<JobsService>,
    NotificationServiceServer<NotificationService>,
    SchedulerServiceServer<SchedulerService>,
    ExecutorServiceServer<ExecutorService>,
    DeadLetterServiceServer<DeadLetterService>,
}

/// A service ready to be bound: its routes, the gRPC names it serves and what it depends on.
pub struct ServiceServer {
    name: String,
    config: ServerConfig,
    routes: Routes,
    grpc_names: Vec<String>,
    checks: Vec<Arc<dyn DependencyCheck>>,
    policies: Option<&'static PolicyTable>,
    workers: Vec<Box<dyn Worker>>,
    authenticator: Option<Arc<Authenticator>>,
    unauthenticated: bool,
    metrics: Registry,
}

impl ServiceServer {
    /// `name` is for logs (e.g. "user"); `grpc_names` are the fully qualified services in
    /// `routes`, whose every method must declare a caller policy.
    pub fn new(
        name: impl Into<String>,
        config: ServerConfig,
        routes: Routes,
        grpc_names: impl IntoIterator<Item = impl Into<String>>,
    ) -> Self {
        ServiceServer {
            name: name.into(),
            config,
            routes,
            grpc_names: grpc_names.into_iter().map(Into::into).collect(),
            checks: Vec::new(),
            policies: None,
            workers: Vec::new(),
            authenticator: None,
            unauthenticated: false,
            metrics: Registry::new(),
        }
    }

    /// One generated gRPC service, limited to the configured message size both ways; its
    /// every method must declare a caller policy.
    pub fn grpc<S: GrpcService>(name: impl Into<String>, config: ServerConfig, service: S) -> Self {
        let routes = Routes::new(service.with_message_limit(config.max_message_bytes));
        ServiceServer::new(name, config, routes, [S::NAME])
    }

    /// Serves another generated service beside the first (e.g. `DeadLetterService`).
    pub fn also_serve<S: GrpcService>(mut self, service: S) -> Self {
        let service = service.with_message_limit(self.config.max_message_bytes);
        self.routes = self.routes.add_service(service);
        self.grpc_names.push(S::NAME.to_string());
        self
    }

    /// The server's name in logs (the service's short name).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The configuration it will bind with.
    pub fn config(&self) -> &ServerConfig {
        &self.config
    }

    /// Checks every call's token and the method's caller policy (health and reflection stay
    /// open).
    pub fn authenticate(mut self, authenticator: Arc<Authenticator>) -> Self {
        self.authenticator = Some(authenticator);
        self
    }

    /// Serves without checking tokens. Only for a benchmark's baseline: any server that does
    /// not call [`ServiceServer::authenticate`] otherwise refuses to start.
    pub fn without_authentication(mut self) -> Self {
        self.unauthenticated = true;
        self
    }

    /// Stops `worker` when the server shuts down (after in-flight calls drained).
    pub fn with_worker(mut self, worker: impl Worker) -> Self {
        self.workers.push(Box::new(worker));
        self
    }

    /// Health follows this dependency.
    pub fn depends_on(mut self, check: impl DependencyCheck) -> Self {
        self.checks.push(Arc::new(check));
        self
    }

    /// Records the server's gRPC series in `registry` and serves it at `/metrics` (a server
    /// given none has a registry of its own).
    pub fn with_metrics(mut self, registry: Registry) -> Self {
        self.metrics = registry;
        self
    }

    /// Checks policies against `table` instead of the contracts compiled in (tests).
    pub fn with_policies(mut self, table: &'static PolicyTable) -> Self {
        self.policies = Some(table);
        self
    }

    /// Checks policies, binds the listener and builds health; serving starts with
    /// [`BoundServer::serve`].
    pub async fn bind(self) -> Result<BoundServer, ServerError> {
        let table = match self.policies {
            Some(table) => table,
            None => PolicyTable::global()?,
        };
        for name in &self.grpc_names {
            table.require_policies(name)?;
        }
        if !self.grpc_names.is_empty() && self.authenticator.is_none() && !self.unauthenticated {
            return Err(ServerError::NoAuthentication(self.name));
        }
        let listener = TcpListener::bind(self.config.listen)
            .await
            .map_err(|source| ServerError::Bind {
                addr: self.config.listen,
                source,
            })?;
        let local_addr = listener.local_addr().map_err(|source| ServerError::Bind {
            addr: self.config.listen,
            source,
        })?;
        let metrics_endpoint = match self.config.metrics {
            Some(addr) => Some(MetricsEndpoint::bind(addr).await?),
            None => None,
        };
        let grpc_metrics =
            GrpcMetrics::register(&self.metrics, Side::Server, crate::methods::method_kinds());
        let (reporter, health_service) = tonic_health::server::health_reporter();
        let health = Health::new(reporter, self.grpc_names.clone(), self.checks);
        health.refresh().await;

        // Describe only what this server serves (and what that imports): reflection answers
        // without a token, and the other services' contracts are not this server's to show.
        let served = served_descriptors(&self.grpc_names)?;
        let reflection = || {
            let mut builder = tonic_reflection::server::Builder::configure()
                .register_encoded_file_descriptor_set(&served)
                .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
                // google.rpc error details, so grpcurl can print ErrorInfo and BadRequest.
                .register_encoded_file_descriptor_set(tonic_types::pb::FILE_DESCRIPTOR_SET)
                .with_service_name("grpc.health.v1.Health")
                .with_service_name("grpc.reflection.v1.ServerReflection")
                .with_service_name("grpc.reflection.v1alpha.ServerReflection");
            for name in &self.grpc_names {
                builder = builder.with_service_name(name.clone());
            }
            builder
        };
        let reflection_v1 = reflection()
            .build_v1()
            .map_err(|e| ServerError::Reflection(e.to_string()))?;
        let reflection_v1alpha = reflection()
            .build_v1alpha()
            .map_err(|e| ServerError::Reflection(e.to_string()))?;
        let routes = self
            .routes
            .add_service(health_service)
            .add_service(reflection_v1)
            .add_service(reflection_v1alpha);

        Ok(BoundServer {
            name: self.name,
            config: self.config,
            routes,
            listener,
            local_addr,
            health,
            workers: self.workers,
            authenticator: self.authenticator,
            metrics: self.metrics,
            grpc_metrics,
            metrics_endpoint,
        })
    }
}

/// A bound server: its address is known, nothing is served yet.
pub struct BoundServer {
    name: String,
    config: ServerConfig,
    routes: Routes,
    listener: TcpListener,
    local_addr: SocketAddr,
    health: Health,
    workers: Vec<Box<dyn Worker>>,
    authenticator: Option<Arc<Authenticator>>,
    metrics: Registry,
    grpc_metrics: GrpcMetrics,
    metrics_endpoint: Option<MetricsEndpoint>,
}

impl BoundServer {
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Where `/metrics` is served, unless it is off.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_endpoint
            .as_ref()
            .map(MetricsEndpoint::local_addr)
    }

    pub fn health(&self) -> &Health {
        &self.health
    }

    /// Serves until `shutdown` completes, then: health NOT_SERVING, wait `shutdown_delay`,
    /// stop accepting, let in-flight calls finish for at most `shutdown_grace`.
    pub async fn serve(self, shutdown: impl Future<Output = ()> + Send) -> Result<(), ServerError> {
        let BoundServer {
            name,
            config,
            routes,
            listener,
            local_addr,
            health,
            workers,
            authenticator,
            metrics,
            grpc_metrics,
            metrics_endpoint,
        } = self;
        let metrics_task = metrics_endpoint.map(|endpoint| endpoint.spawn(metrics));
        let watcher = tokio::spawn(health.clone().watch(config.health_interval));
        let drain_started = Arc::new(tokio::sync::Notify::new());

        let signal = {
            let health = health.clone();
            let drain_started = drain_started.clone();
            let name = name.clone();
            let delay = config.shutdown_delay;
            async move {
                shutdown.await;
                tracing::info!(service = %name, "shutting down: NOT_SERVING");
                health.begin_shutdown().await;
                tokio::time::sleep(delay).await;
                tracing::info!(service = %name, "draining in-flight calls");
                drain_started.notify_one();
            }
        };

        // Token checks come before load shedding: a call whose token names a key not seen
        // yet may wait for the key set to be fetched, and must not hold a slot meanwhile.
        let layers = tower::ServiceBuilder::new()
            // Outermost: refusals by the token check and by load shedding are counted too.
            .layer(GrpcMetricsLayer::new(grpc_metrics))
            .layer(RequestIdLayer)
            .layer(trace_layer())
            .option_layer(authenticator.map(AuthLayer::new))
            .layer(LoadShedLayer::new(config.max_concurrent_requests))
            // Innermost, so the handler runs under its caller's deadline and the calls it
            // makes inherit it.
            .layer(crate::client::deadline::DeadlineLayer)
            .into_inner();
        let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
        let server = tonic::transport::Server::builder()
            .http2_keepalive_interval(Some(std::time::Duration::from_secs(30)))
            .layer(layers)
            .add_routes(routes)
            .serve_with_incoming_shutdown(incoming, signal);

        tracing::info!(service = %name, addr = %local_addr, "serving");
        let grace = config.shutdown_grace;
        let result = tokio::select! {
            result = server => result.map_err(ServerError::from),
            _ = async { drain_started.notified().await; tokio::time::sleep(grace).await } => {
                tracing::warn!(service = %name, grace_ms = grace.as_millis() as u64,
                    "in-flight calls did not finish within the grace period; stopping anyway");
                Ok(())
            }
        };
        watcher.abort();
        for worker in workers {
            worker.stop(grace).await;
        }
        // Last, so a scrape during the drain still sees the final counts.
        if let Some(task) = metrics_task {
            task.abort();
        }
        tracing::info!(service = %name, "stopped");
        result
    }
}

/// The encoded descriptor set of the files declaring `services`, with every file they import.
fn served_descriptors(services: &[String]) -> Result<Vec<u8>, ServerError> {
    use prost::Message;
    let pool = prost_reflect::DescriptorPool::decode(opsconductor_api::FILE_DESCRIPTOR_SET)
        .map_err(|e| ServerError::Reflection(e.to_string()))?;
    let mut wanted = std::collections::BTreeSet::new();
    let mut pending = Vec::new();
    for name in services {
        let service = pool
            .get_service_by_name(name)
            .ok_or_else(|| PolicyError::UnknownService(name.clone()))?;
        pending.push(service.parent_file());
    }
    while let Some(file) = pending.pop() {
        if wanted.insert(file.name().to_string()) {
            pending.extend(file.dependencies());
        }
    }
    let set = prost_types::FileDescriptorSet {
        file: pool
            .file_descriptor_protos()
            .filter(|file| wanted.contains(file.name()))
            .cloned()
            .collect(),
    };
    Ok(set.encode_to_vec())
}

/// SIGTERM and SIGINT (Ctrl-C), listened for from the moment this is created: install it
/// before binding anything, or a signal that arrives during start-up kills the process
/// instead of shutting it down.
pub struct TerminationSignal {
    #[cfg(unix)]
    signals: Option<(tokio::signal::unix::Signal, tokio::signal::unix::Signal)>,
}

impl TerminationSignal {
    pub fn install() -> Self {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            let signals = match (
                signal(SignalKind::terminate()),
                signal(SignalKind::interrupt()),
            ) {
                (Ok(term), Ok(int)) => Some((term, int)),
                _ => None,
            };
            TerminationSignal { signals }
        }
        #[cfg(not(unix))]
        TerminationSignal {}
    }

    /// Completes when a signal arrives.
    pub async fn recv(&mut self) {
        #[cfg(unix)]
        if let Some((term, int)) = &mut self.signals {
            tokio::select! {
                _ = term.recv() => {},
                _ = int.recv() => {},
            }
            return;
        }
        let _ = tokio::signal::ctrl_c().await;
    }
}
