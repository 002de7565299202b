//! Server behaviour shared by every service: load shedding, request ids.

use std::net::SocketAddr;
use std::time::Duration;

use opsconductor_api::targets::v1::targets_service_client::TargetsServiceClient;
use opsconductor_api::targets::v1::{GetTargetRequest, TestTargetConnectivityRequest};
use opsconductor_platform::config::ServerConfig;
use opsconductor_platform::ServiceKind;
use opsconductor_storage::testing::TestDatabase;
use opsconductor_testkit::{channel_as, standalone, static_source, TargetsExt, TestAuth, UsersExt};
use tonic::Code;
use tonic_types::StatusExt;

use crate::support::slow_target;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_beyond_the_limit_are_shed_with_retry_info() {
    let test_db = TestDatabase::sqlite().await.unwrap();
    let broker = opsconductor_testkit::TestBroker::new();
    broker.track_platform();
    let mut config = ServerConfig::local(SocketAddr::from(([127, 0, 0, 1], 0)));
    config.max_concurrent_requests = 1;
    let auth = TestAuth::new();
    let server = standalone(
        ServiceKind::Targets,
        test_db.db.clone(),
        config,
        &broker,
        &auth,
    )
    .await;
    let running = opsconductor_testkit::Running::start(server);

    let mut client = TargetsServiceClient::new(channel_as(&running.url, auth.admin_token()));
    let (target, _hole) = slow_target(&mut client).await;
    let mut slow_client = client.clone();
    let id = target.id.clone();
    let slow = tokio::spawn(async move {
        slow_client
            .test_target_connectivity(TestTargetConnectivityRequest {
                id,
                port: 0,
                timeout: Some(prost_types::Duration {
                    seconds: 2,
                    nanos: 0,
                }),
            })
            .await
    });
    tokio::time::sleep(Duration::from_millis(300)).await;

    // The one permit is taken: the next call is refused at once, retryable.
    let shed = client.get(&target.id).await.unwrap_err();
    assert_eq!(shed.code(), Code::Unavailable, "{shed:?}");
    let retry = shed.get_details_retry_info().expect("RetryInfo");
    assert!(retry.retry_delay.is_some());
    assert_eq!(
        shed.get_details_error_info().expect("ErrorInfo").reason,
        "OVERLOADED"
    );

    // Health probes are never shed: a busy server must not look dead.
    let health =
        opsconductor_platform::client::check_health(&running.url, "", Duration::from_secs(1))
            .await
            .expect("health answers while the limit is reached");
    assert_eq!(
        health,
        opsconductor_platform::health::ServingStatusPb::Serving
    );

    // Once the slow call is done, calls go through again.
    let finished = slow.await.unwrap().unwrap().into_inner();
    assert!(!finished.reachable);
    let mut request = tonic::Request::new(GetTargetRequest {
        id: target.id.clone(),
    });
    request
        .metadata_mut()
        .insert("x-request-id", "trace-me-123".parse().unwrap());
    let ok = client.get_target(request).await.unwrap();
    assert_eq!(
        ok.metadata().get("x-request-id").unwrap(),
        "trace-me-123",
        "request id echoed"
    );
    let fresh = client
        .get_target(GetTargetRequest { id: target.id })
        .await
        .unwrap();
    let generated = fresh
        .metadata()
        .get("x-request-id")
        .expect("a request id is assigned");
    assert!(uuid::Uuid::try_parse(generated.to_str().unwrap()).is_ok());

    running.stop().await.unwrap();
}

/// A user server on its own; its guards (database, broker prefix) live as long as it runs.
async fn user_server(
    config: ServerConfig,
    auth: &TestAuth,
) -> (
    opsconductor_testkit::Running,
    (TestDatabase, opsconductor_testkit::TestBroker),
) {
    let test_db = TestDatabase::sqlite().await.unwrap();
    let broker = opsconductor_testkit::TestBroker::new();
    broker.track_platform();
    let server = standalone(ServiceKind::User, test_db.db.clone(), config, &broker, auth).await;
    (
        opsconductor_testkit::Running::start(server),
        (test_db, broker),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_balance_calls_over_every_listed_replica() {
    use opsconductor_api::user::v1::User;
    use opsconductor_platform::client::Clients;
    use opsconductor_platform::config::Env;

    let local = || ServerConfig::local(SocketAddr::from(([127, 0, 0, 1], 0)));
    // Two replicas over separate databases: a user created on one is unknown to the other,
    // so the mix of answers shows that both received calls.
    let auth = TestAuth::new();
    let (a, _a_db) = user_server(local(), &auth).await;
    let (b, _b_db) = user_server(local(), &auth).await;
    let mut direct = opsconductor_api::user::v1::user_service_client::UserServiceClient::new(
        channel_as(&a.url, auth.admin_token()),
    );
    let user = direct
        .create(
            User {
                username: "replica".into(),
                email: "r@example.com".into(),
                role: 1,
                ..Default::default()
            },
            "",
        )
        .await
        .unwrap();
    let clients = Clients::from_env(&Env::isolated([(
        "USER_SERVICE_URL",
        format!("{},{}", a.url, b.url),
    )]))
    .unwrap()
    .with_tokens(static_source(auth.admin_token()));
    let mut balanced = clients.user();
    let (mut on_a, mut on_b) = (0, 0);
    for _ in 0..60 {
        match balanced.get(&user.id).await {
            Ok(_) => on_a += 1,
            Err(status) if status.code() == Code::NotFound => on_b += 1,
            Err(other) => panic!("unexpected {other:?}"),
        }
    }
    assert!(
        on_a > 0 && on_b > 0,
        "calls were not balanced: {on_a} on a, {on_b} on b"
    );
    a.stop().await.unwrap();
    b.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_messages_are_refused() {
    use opsconductor_api::user::v1::{ListUsersRequest, User};

    let mut config = ServerConfig::local(SocketAddr::from(([127, 0, 0, 1], 0)));
    config.max_message_bytes = 1024;
    let auth = TestAuth::new();
    let (server, _db) = user_server(config, &auth).await;
    let mut client = opsconductor_api::user::v1::user_service_client::UserServiceClient::new(
        channel_as(&server.url, auth.admin_token()),
    );
    let err = client
        .create(
            User {
                username: "big".into(),
                email: "b@example.com".into(),
                display_name: "x".repeat(4096),
                role: 1,
                ..Default::default()
            },
            "",
        )
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::OutOfRange, "{err:?}");
    let users = client
        .list(ListUsersRequest::default())
        .await
        .unwrap()
        .users;
    assert!(users.is_empty(), "nothing was written");
    server.stop().await.unwrap();
}
