//! Server behaviour shared by every service: load shedding, request ids.

use std::net::SocketAddr;
use std::time::Duration;

use opsconductor_api::targets::v1::targets_service_client::TargetsServiceClient;
use opsconductor_api::targets::v1::{GetTargetRequest, TestTargetConnectivityRequest};
use opsconductor_platform::config::ServerConfig;
use opsconductor_storage::testing::TestDatabase;
use tonic::Code;
use tonic_types::StatusExt;

use crate::support::slow_target;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_beyond_the_limit_are_shed_with_retry_info() {
    let test_db = TestDatabase::sqlite().await.unwrap();
    let mut config = ServerConfig::local(SocketAddr::from(([127, 0, 0, 1], 0)));
    config.max_concurrent_requests = 1;
    let server = opsconductor_targets::server(test_db.db.clone(), config)
        .await
        .unwrap()
        .bind()
        .await
        .unwrap();
    let running = opsconductor_testkit::Running::start(server);

    let mut client = TargetsServiceClient::connect(running.url.clone())
        .await
        .unwrap();
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
    let request = tonic::Request::new(GetTargetRequest {
        id: target.id.clone(),
    });
    let shed = client.get_target(request).await.unwrap_err();
    assert_eq!(shed.code(), Code::Unavailable, "{shed:?}");
    let retry = shed.get_details_retry_info().expect("RetryInfo");
    assert!(retry.retry_delay.is_some());

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
