//! Unary GetUser throughput, `concurrency` calls in flight on one HTTP/2 connection, against:
//! a plain tonic server answering from memory (the "echo" baseline); the same handler behind
//! the platform's server stack; the real user service (validation, SQLite read) without the
//! auth layer; and the same service with it, called with a service token from a refreshing
//! `TokenSource`. Rounds alternate so every server sees the same machine noise.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use anyhow::Context;
use futures::future::{BoxFuture, FutureExt};
use opsconductor_api::user::v1::user_service_client::UserServiceClient;
use opsconductor_api::user::v1::user_service_server::{UserService, UserServiceServer};
use opsconductor_api::user::v1::*;
use opsconductor_messaging::{AuditLog, Names, Outbox};
use opsconductor_platform::auth::{
    AuthChannel, AuthError, Authenticator, IssuedToken, StaticKeys, TokenFetcher, TokenSettings,
    TokenSource, Verifier,
};
use opsconductor_platform::client::Clients;
use opsconductor_platform::config::{Env, ServerConfig};
use opsconductor_platform::rate_limit::CredentialThrottle;
use opsconductor_platform::server::ServiceServer;
use opsconductor_platform::ServiceKind;
use opsconductor_storage::Database;
use opsconductor_tokens::{Claims, KeySet, SigningKey};
use tonic::transport::Channel;
use tonic::{Request, Response, Status};

/// Service tokens signed in-process, counted: how often the client's token source fetched.
struct Mint {
    key: Arc<SigningKey>,
    ttl: Duration,
    fetches: Arc<AtomicU64>,
}

impl TokenFetcher for Mint {
    fn fetch<'a>(
        &'a self,
        _: &'a opsconductor_tokens::PublicKey,
    ) -> BoxFuture<'a, Result<IssuedToken, AuthError>> {
        self.fetches.fetch_add(1, Ordering::Relaxed);
        let now = opsconductor_platform::time::now_secs();
        let claims = Claims::service(
            "opsconductor",
            "opsconductor",
            "jobs",
            now,
            self.ttl.as_secs(),
        );
        let token = self
            .key
            .sign(&claims)
            .map_err(|e| AuthError::Fetch(e.to_string()));
        futures::future::ready(token.map(|token| IssuedToken {
            token,
            expire_time: SystemTime::UNIX_EPOCH + Duration::from_secs(claims.exp),
            message_certificate: None,
        }))
        .boxed()
    }
}

pub async fn run(
    concurrency: usize,
    seconds: u64,
    rounds: usize,
    token_ttl: u64,
) -> anyhow::Result<()> {
    // The platform as deployed logs through the same subscriber (OPSCONDUCTOR_LOG, default info).
    let _tracing = opsconductor_platform::telemetry::init(&Env::process(), "opsconductor-bench")?;
    let dir = tempfile::tempdir()?;
    let db = Database::open_sqlite_file(&dir.path().join("user.db")).await?;
    db.migrate_all(&[
        &opsconductor_user::migrations(),
        &opsconductor_messaging::migrations(),
    ])
    .await?;
    let audit = AuditLog::new(&Outbox::new(db.clone()), &Names::new("bench"), "user");
    let store = opsconductor_user::UserStore::new(db.clone(), audit);
    let key = Arc::new(SigningKey::generate());
    let settings = TokenSettings::default();
    let verifier = Arc::new(Verifier::new(
        settings.clone(),
        Arc::new(StaticKeys::new(KeySet::from_keys([key.public()]))),
    ));
    let authenticator = Arc::new(Authenticator::new(verifier)?);

    let clients = Arc::new(Clients::from_env(&Env::default())?);
    let user_routes = || {
        tonic::service::Routes::new(UserServiceServer::new(opsconductor_user::UserApi::new(
            store.clone(),
            clients.clone(),
            CredentialThrottle::from_env(&Env::default()).unwrap_or_else(|e| panic!("{e}")),
        )))
    };
    let mut config = ServerConfig::local("127.0.0.1:0".parse()?);
    config.max_concurrent_requests = 4096;
    let user = ServiceKind::User.grpc_name();
    let open = ServiceServer::new("user", config.clone(), user_routes(), [user])
        .without_authentication()
        .bind()
        .await?;
    let guarded = ServiceServer::new("user", config.clone(), user_routes(), [user])
        .authenticate(authenticator)
        .bind()
        .await?;
    let (open_addr, guarded_addr) = (open.local_addr(), guarded.local_addr());
    tokio::spawn(open.serve(futures::future::pending()));
    tokio::spawn(guarded.serve(futures::future::pending()));
    let echo_addr = start_echo().await?;
    // The in-memory handler behind the platform's server stack: what the layers cost.
    let layered = ServiceServer::new(
        "echo",
        config,
        tonic::service::Routes::new(UserServiceServer::new(Echo)),
        [user],
    )
    .without_authentication()
    .bind()
    .await?;
    let layered_addr = layered.local_addr();
    tokio::spawn(layered.serve(futures::future::pending()));

    let created = store
        .create(
            &User {
                username: "bench".into(),
                email: "bench@example.com".into(),
                role: 1,
                ..Default::default()
            },
            None,
            &opsconductor_messaging::Cause::default(),
        )
        .await
        .context("creating the user")?;

    let fetches = Arc::new(AtomicU64::new(0));
    let tokens = TokenSource::new(Mint {
        key,
        ttl: Duration::from_secs(token_ttl),
        fetches: fetches.clone(),
    });
    tokens.spawn_refresher();
    let guarded_channel = AuthChannel::new(channel(guarded_addr).await?, Some(tokens));

    let duration = Duration::from_secs(seconds);
    let mut ratios = Vec::new();
    let mut authenticated_calls = 0u64;
    let started = Instant::now();
    for round in 1..=rounds {
        let echo = load(
            channel(echo_addr).await?,
            &created.id,
            concurrency,
            duration,
        )
        .await?;
        let layers = load(
            channel(layered_addr).await?,
            &created.id,
            concurrency,
            duration,
        )
        .await?;
        let plain = load(
            channel(open_addr).await?,
            &created.id,
            concurrency,
            duration,
        )
        .await?;
        let authed = load(guarded_channel.clone(), &created.id, concurrency, duration).await?;
        authenticated_calls += (authed * duration.as_secs_f64()) as u64;
        let ratio = authed / plain;
        println!(
            "round {round}: plain tonic {echo:.0}/s | layers + memory {layers:.0}/s ({:.3}) | \
             GetUser, auth off {plain:.0}/s ({:.3}) | GetUser, auth on {authed:.0}/s \
             (auth on / off {ratio:.3})",
            layers / echo,
            plain / echo
        );
        ratios.push(ratio);
    }
    let elapsed = started.elapsed();
    ratios.sort_by(f64::total_cmp);
    println!(
        "authenticated GetUser at {concurrency} in flight: median ratio {:.3} (auth on / auth off) over {rounds} rounds of {seconds}s",
        ratios[rounds / 2]
    );
    let fetched = fetches.load(Ordering::Relaxed);
    let lifetimes = elapsed.as_secs_f64() / token_ttl as f64;
    println!(
        "token fetches: {fetched} for {authenticated_calls} authenticated calls ({:.1} per 100k) while \
         {lifetimes:.1} token lifetimes ({token_ttl}s) elapsed: {:.2} fetches per lifetime after the first",
        fetched as f64 * 100_000.0 / authenticated_calls.max(1) as f64,
        fetched.saturating_sub(1) as f64 / lifetimes
    );
    Ok(())
}

async fn channel(addr: SocketAddr) -> anyhow::Result<Channel> {
    Ok(
        tonic::transport::Endpoint::from_shared(format!("http://{addr}"))?
            .tcp_nodelay(true)
            .connect()
            .await?,
    )
}

/// Calls per second with `concurrency` callers sharing one channel for `duration`.
async fn load<C>(client: C, id: &str, concurrency: usize, duration: Duration) -> anyhow::Result<f64>
where
    C: tonic::client::GrpcService<tonic::body::Body> + Clone + Send + 'static,
    C::Future: Send,
    C::Error: Into<tonic::codegen::StdError>,
    C::ResponseBody: tonic::codegen::Body<Data = tonic::codegen::Bytes> + Send + 'static,
    <C::ResponseBody as tonic::codegen::Body>::Error: Into<tonic::codegen::StdError> + Send,
{
    let client = UserServiceClient::new(client);
    let done = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + duration;
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let mut client = client.clone();
        let (done, failed) = (done.clone(), failed.clone());
        let id = id.to_string();
        tasks.push(tokio::spawn(async move {
            while Instant::now() < deadline {
                match client.get_user(GetUserRequest { id: id.clone() }).await {
                    Ok(_) => done.fetch_add(1, Ordering::Relaxed),
                    Err(_) => failed.fetch_add(1, Ordering::Relaxed),
                };
            }
        }));
    }
    for t in tasks {
        t.await?;
    }
    anyhow::ensure!(
        failed.load(Ordering::Relaxed) == 0,
        "{} calls failed",
        failed.load(Ordering::Relaxed)
    );
    Ok(done.load(Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64())
}

/// The baseline: a bare tonic server answering GetUser from memory, no layers.
struct Echo;

#[tonic::async_trait]
impl UserService for Echo {
    async fn get_user(
        &self,
        r: Request<GetUserRequest>,
    ) -> Result<Response<GetUserResponse>, Status> {
        let id = r.into_inner().id;
        Ok(Response::new(GetUserResponse {
            user: Some(User {
                id,
                username: "bench".into(),
                email: "bench@example.com".into(),
                role: 1,
                ..Default::default()
            }),
        }))
    }
    async fn create_user(
        &self,
        _: Request<CreateUserRequest>,
    ) -> Result<Response<CreateUserResponse>, Status> {
        Err(Status::unimplemented("baseline"))
    }
    async fn list_users(
        &self,
        _: Request<ListUsersRequest>,
    ) -> Result<Response<ListUsersResponse>, Status> {
        Err(Status::unimplemented("baseline"))
    }
    async fn update_user(
        &self,
        _: Request<UpdateUserRequest>,
    ) -> Result<Response<UpdateUserResponse>, Status> {
        Err(Status::unimplemented("baseline"))
    }
    async fn delete_user(
        &self,
        _: Request<DeleteUserRequest>,
    ) -> Result<Response<DeleteUserResponse>, Status> {
        Err(Status::unimplemented("baseline"))
    }
    async fn set_password(
        &self,
        _: Request<SetPasswordRequest>,
    ) -> Result<Response<SetPasswordResponse>, Status> {
        Err(Status::unimplemented("baseline"))
    }
    async fn change_password(
        &self,
        _: Request<ChangePasswordRequest>,
    ) -> Result<Response<ChangePasswordResponse>, Status> {
        Err(Status::unimplemented("baseline"))
    }
    async fn check_password(
        &self,
        _: Request<CheckPasswordRequest>,
    ) -> Result<Response<CheckPasswordResponse>, Status> {
        Err(Status::unimplemented("baseline"))
    }
    async fn get_notification_preferences(
        &self,
        _: Request<GetNotificationPreferencesRequest>,
    ) -> Result<Response<GetNotificationPreferencesResponse>, Status> {
        Err(Status::unimplemented("baseline"))
    }
    async fn update_notification_preferences(
        &self,
        _: Request<UpdateNotificationPreferencesRequest>,
    ) -> Result<Response<UpdateNotificationPreferencesResponse>, Status> {
        Err(Status::unimplemented("baseline"))
    }
}

async fn start_echo() -> anyhow::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let incoming = tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(UserServiceServer::new(Echo))
            .serve_with_incoming(incoming),
    );
    Ok(addr)
}
