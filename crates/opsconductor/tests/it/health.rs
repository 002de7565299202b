//! Health follows the database: a service whose PostgreSQL database disappears reports
//! NOT_SERVING (overall and for its service) until it is back.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use opsconductor_platform::client::check_health;
use opsconductor_platform::config::ServerConfig;
use opsconductor_platform::health::ServingStatusPb;
use opsconductor_storage::testing::{postgres_admin_url, TestDatabase};
use opsconductor_storage::Database;

async fn wait_for(url: &str, service: &str, want: ServingStatusPb) {
    let started = Instant::now();
    loop {
        let got = check_health(url, service, Duration::from_secs(1)).await;
        if matches!(got, Ok(s) if s == want) {
            return;
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "{url} {service:?}: never {want:?} (last {got:?})"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_follows_the_database() {
    let test_db = TestDatabase::postgres().await.unwrap();
    let broker = opsconductor_testkit::TestBroker::new();
    broker.track_platform();
    let mut config = ServerConfig::local(SocketAddr::from(([127, 0, 0, 1], 0)));
    config.health_interval = Duration::from_millis(200);
    let auth = opsconductor_testkit::TestAuth::new();
    let server = opsconductor_testkit::standalone(
        opsconductor_platform::ServiceKind::User,
        test_db.db.clone(),
        config,
        &broker,
        &auth,
    )
    .await;
    let running = opsconductor_testkit::Running::start(server);
    let url = running.url.clone();
    let service = "opsconductor.user.v1.UserService";
    wait_for(&url, "", ServingStatusPb::Serving).await;
    wait_for(&url, service, ServingStatusPb::Serving).await;

    // Take the database away under the running service.
    let name = test_db.url.rsplit('/').next().unwrap().to_string();
    let admin = Database::connect(&postgres_admin_url()).await.unwrap();
    sqlx::query(&format!("ALTER DATABASE {name} ALLOW_CONNECTIONS false"))
        .execute(admin.pool())
        .await
        .unwrap();
    sqlx::query(&format!(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{name}'"
    ))
    .execute(admin.pool())
    .await
    .unwrap();
    wait_for(&url, "", ServingStatusPb::NotServing).await;
    wait_for(&url, service, ServingStatusPb::NotServing).await;

    // And give it back: the service recovers by itself.
    sqlx::query(&format!("ALTER DATABASE {name} ALLOW_CONNECTIONS true"))
        .execute(admin.pool())
        .await
        .unwrap();
    wait_for(&url, "", ServingStatusPb::Serving).await;
    admin.close().await;
    running.stop().await.unwrap();
}
