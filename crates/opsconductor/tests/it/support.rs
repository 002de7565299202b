//! Assertions shared by the modules.

use std::time::Duration;

pub use opsconductor_testkit::{assert_code, assert_violations};

pub const MISSING_ID: &str = "01900000-0000-7000-8000-000000000000";

/// A loopback port whose accept queue is full: new connections hang in SYN retransmission,
/// which makes a connectivity test take as long as its timeout.
pub async fn black_hole() -> (u16, Vec<tokio::net::TcpStream>, tokio::net::TcpListener) {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let listener = socket.listen(0).unwrap();
    let port = listener.local_addr().unwrap().port();
    let mut held = Vec::new();
    for _ in 0..8 {
        match tokio::time::timeout(
            Duration::from_millis(300),
            tokio::net::TcpStream::connect(("127.0.0.1", port)),
        )
        .await
        {
            Ok(Ok(stream)) => held.push(stream),
            _ => return (port, held, listener),
        }
    }
    panic!("the accept queue never filled");
}

/// A target whose connectivity test hangs until its timeout (its port is a [`black_hole`]);
/// keep the returned guard alive while the test runs.
pub async fn slow_target(
    client: &mut opsconductor_api::targets::v1::targets_service_client::TargetsServiceClient<
        opsconductor_platform::auth::AuthChannel,
    >,
) -> (
    opsconductor_api::targets::v1::Target,
    (Vec<tokio::net::TcpStream>, tokio::net::TcpListener),
) {
    use opsconductor_api::targets::v1::{CreateTargetRequest, Target};
    let (hole, held, listener) = black_hole().await;
    let target = client
        .create_target(CreateTargetRequest {
            target: Some(Target {
                name: "slow".into(),
                address: "127.0.0.1".into(),
                port: u32::from(hole),
                ..Default::default()
            }),
        })
        .await
        .expect("create the slow target")
        .into_inner()
        .target
        .expect("target in response");
    (target, (held, listener))
}

/// Every audit event the sandbox's services have published so far: waits until their outboxes
/// are empty (everything committed has been confirmed by the broker), then takes what the
/// audit queue holds.
pub async fn drain_audit(
    s: &opsconductor_testkit::Sandbox,
) -> Vec<opsconductor_api::audit::v1::AuditEvent> {
    drain_audit_from(s, &opsconductor_testkit::amqp_url()).await
}

/// [`drain_audit`] through the broker at `url` (an account that may read the audit queue).
pub async fn drain_audit_from(
    s: &opsconductor_testkit::Sandbox,
    url: &str,
) -> Vec<opsconductor_api::audit::v1::AuditEvent> {
    use lapin::options::{BasicAckOptions, BasicGetOptions};
    use opsconductor_messaging::topology::platform;
    use prost::Message;

    let started = std::time::Instant::now();
    for kind in opsconductor_catalog::implemented() {
        loop {
            let (pending,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM messaging_outbox")
                .fetch_one(s.db(kind).pool())
                .await
                .unwrap();
            if pending == 0 {
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "the {kind} outbox never emptied"
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }
    let connection = lapin::Connection::connect(url, lapin::ConnectionProperties::default())
        .await
        .unwrap();
    let channel = connection.create_channel().await.unwrap();
    let queue = s.broker.names().queue(&platform::audit_events());
    let mut events = Vec::new();
    while let Some(message) = channel
        .basic_get(queue.as_str().into(), BasicGetOptions::default())
        .await
        .unwrap()
    {
        // Only what the services published (a test may have put others there).
        let kind = message.delivery.properties.kind().clone();
        if kind.as_ref().map(|k| k.as_str()) == Some("opsconductor.audit.v1.AuditEvent") {
            events.push(
                opsconductor_api::audit::v1::AuditEvent::decode(message.delivery.data.as_slice())
                    .unwrap(),
            );
        }
        message
            .delivery
            .ack(BasicAckOptions::default())
            .await
            .unwrap();
    }
    let _ = connection.close(200, "drained".into()).await;
    events
}

/// How many of `events` are `action` with `outcome`.
pub fn count(
    events: &[opsconductor_api::audit::v1::AuditEvent],
    action: &str,
    outcome: opsconductor_api::audit::v1::AuditOutcome,
) -> usize {
    events
        .iter()
        .filter(|e| e.action == action && e.outcome == outcome as i32)
        .count()
}

/// Calls `call` every 20 ms until it fails with `code`; returns how long that took.
pub async fn until_refused<F, Fut, T>(code: tonic::Code, limit: Duration, mut call: F) -> Duration
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, tonic::Status>>,
{
    let started = std::time::Instant::now();
    loop {
        match call().await {
            Err(status) if status.code() == code => return started.elapsed(),
            _ => {}
        }
        assert!(started.elapsed() < limit, "still accepted after {limit:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// ListTargets as `clients`' caller: the probe of whether a token is accepted.
pub async fn list_targets(
    clients: &opsconductor_platform::client::Clients,
) -> Result<(), tonic::Status> {
    use opsconductor_testkit::TargetsExt;
    clients
        .targets()
        .list(opsconductor_api::targets::v1::ListTargetsRequest::default())
        .await
        .map(|_| ())
}
