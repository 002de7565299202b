//! Unary GetUser throughput, `concurrency` calls in flight on one HTTP/2 connection, against
//! (a) the platform's user service — layers, validation, SQLite read — and (b) a plain tonic
//! server implementing the same method from memory: the "echo" baseline. Rounds alternate so
//! both see the same machine noise.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use opsconductor_api::user::v1::user_service_client::UserServiceClient;
use opsconductor_api::user::v1::user_service_server::{UserService, UserServiceServer};
use opsconductor_api::user::v1::*;
use opsconductor_platform::config::ServerConfig;
use opsconductor_storage::Database;
use tonic::transport::Channel;
use tonic::{Request, Response, Status};

pub async fn run(concurrency: usize, seconds: u64, rounds: usize) -> anyhow::Result<()> {
    // The platform as deployed logs through the same subscriber (OPSCONDUCTOR_LOG, default info).
    opsconductor_platform::telemetry::init(&opsconductor_platform::config::Env::process())?;
    let dir = tempfile::tempdir()?;
    let db = Database::open_sqlite_file(&dir.path().join("user.db")).await?;
    let mut config = ServerConfig::local("127.0.0.1:0".parse()?);
    config.max_concurrent_requests = 4096;
    let amqp = opsconductor_messaging::BrokerConfig::from_env(
        &opsconductor_platform::config::Env::process(),
        "user",
    )?;
    let platform = opsconductor_user::server(db, config, amqp)
        .await?
        .bind()
        .await?;
    let platform_addr = platform.local_addr();
    tokio::spawn(platform.serve(futures::future::pending()));
    let echo_addr = start_echo().await?;
    // The same in-memory handler behind the platform's server stack: separates what the layers
    // (request id, tracing, load shedding, health/reflection routing) cost from the database.
    let layered = opsconductor_platform::server::ServiceServer::new(
        "echo",
        ServerConfig::local("127.0.0.1:0".parse()?),
        tonic::service::Routes::new(UserServiceServer::new(Echo)),
        [opsconductor_platform::ServiceKind::User.grpc_name()],
    )
    .bind()
    .await?;
    let layered_addr = layered.local_addr();
    tokio::spawn(layered.serve(futures::future::pending()));

    let mut client = UserServiceClient::new(channel(platform_addr).await?);
    let user = client
        .create_user(CreateUserRequest {
            user: Some(User {
                username: "bench".into(),
                email: "bench@example.com".into(),
                role: 1,
                ..Default::default()
            }),
            password: String::new(),
        })
        .await?
        .into_inner()
        .user
        .context("no user")?;

    let duration = Duration::from_secs(seconds);
    let mut ratios = Vec::new();
    for round in 1..=rounds {
        let echo = load(echo_addr, &user.id, concurrency, duration).await?;
        let layers = load(layered_addr, &user.id, concurrency, duration).await?;
        let served = load(platform_addr, &user.id, concurrency, duration).await?;
        let ratio = served / echo;
        println!(
            "round {round}: plain tonic {echo:.0} calls/s, platform layers + memory {layers:.0} ({:.3}), \
             platform GetUser over SQLite {served:.0} ({ratio:.3})",
            layers / echo
        );
        ratios.push(ratio);
    }
    ratios.sort_by(f64::total_cmp);
    println!(
        "GetUser at {concurrency} in flight: median ratio {:.3} (platform / plain tonic) over {rounds} rounds of {seconds}s",
        ratios[rounds / 2]
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
async fn load(
    addr: SocketAddr,
    id: &str,
    concurrency: usize,
    duration: Duration,
) -> anyhow::Result<f64> {
    let client = UserServiceClient::new(channel(addr).await?);
    let done = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + duration;
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let mut client = client.clone();
        let done = done.clone();
        let id = id.to_string();
        tasks.push(tokio::spawn(async move {
            while Instant::now() < deadline {
                let r = client.get_user(GetUserRequest { id: id.clone() }).await;
                if r.is_ok() {
                    done.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    for t in tasks {
        t.await?;
    }
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
