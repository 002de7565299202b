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

/// Every audit event the sandbox's services have published so far, as the audit service
/// appended them (in sequence order): waits until their outboxes are empty (everything
/// committed is in the queue), publishes a barrier event behind them, and once the barrier is
/// in the chain, everything before it is too (one active consumer, appended in queue order).
pub async fn drain_audit(
    s: &opsconductor_testkit::Sandbox,
) -> Vec<opsconductor_api::audit::v1::AuditEvent> {
    drain_audit_from(s, &opsconductor_testkit::amqp_url()).await
}

/// [`drain_audit`], publishing the barrier through the broker at `url`.
pub async fn drain_audit_from(
    s: &opsconductor_testkit::Sandbox,
    url: &str,
) -> Vec<opsconductor_api::audit::v1::AuditEvent> {
    use opsconductor_api::audit::v1::{AuditEvent, ListAuditEventsRequest};
    use opsconductor_messaging::topology::platform;

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
    // Signed by the audit service's identity, as itself: nothing unsigned reaches the chain.
    let barrier = AuditEvent {
        id: uuid::Uuid::now_v7().to_string(),
        action: "test.barrier".into(),
        request_id: uuid::Uuid::now_v7().to_string(),
        source: "audit".into(),
        ..Default::default()
    };
    let config = opsconductor_messaging::BrokerConfig::new(url, &s.broker.prefix, "audit").unwrap();
    let broker = opsconductor_messaging::Broker::start_trusted(
        config,
        opsconductor_messaging::Topology::new(),
        s.producer_trust(opsconductor_platform::ServiceKind::Audit),
    );
    broker
        .publisher()
        .publish(&opsconductor_messaging::OutgoingMessage::new(
            s.broker.names().exchange(&platform::audit_exchange()),
            "test.barrier",
            &barrier,
        ))
        .await
        .unwrap();
    broker.close().await;
    let mut audit = s.audit();
    let barrier_sequence = loop {
        let found = audit
            .list_audit_events(ListAuditEventsRequest {
                request_id: barrier.request_id.clone(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
            .audit_events;
        if let Some(event) = found.first() {
            break event.sequence;
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "the barrier never reached the audit log"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    };
    let mut events = Vec::new();
    let mut page_token = String::new();
    loop {
        let page = audit
            .list_audit_events(ListAuditEventsRequest {
                page_size: 500,
                page_token,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        events.extend(
            page.audit_events
                .into_iter()
                .filter(|e| e.sequence < barrier_sequence),
        );
        if page.next_page_token.is_empty() {
            break;
        }
        page_token = page.next_page_token;
    }
    events.reverse();
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

/// Password material for a credential.
pub fn password_secret(password: &str) -> opsconductor_api::credentials::v1::SecretMaterial {
    use opsconductor_api::credentials::v1::{secret_material::Material, PasswordSecret};
    opsconductor_api::credentials::v1::SecretMaterial {
        material: Some(Material::Password(PasswordSecret {
            password: password.into(),
        })),
    }
}

/// The test process's peak resident memory (every service of a sandbox runs in it), in KiB.
pub fn peak_rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// The dead letters `kind` keeps of `queue`, once there are at least `at_least`.
pub async fn dead_letters(
    s: &opsconductor_testkit::Sandbox,
    kind: opsconductor_platform::ServiceKind,
    queue: &str,
    at_least: usize,
) -> Vec<opsconductor_api::deadletters::v1::DeadLetter> {
    use opsconductor_api::deadletters::v1::dead_letter_service_client::DeadLetterServiceClient;
    use opsconductor_api::deadletters::v1::{GetDeadLetterRequest, ListDeadLettersRequest};

    let mut client = DeadLetterServiceClient::new(opsconductor_testkit::channel_as(
        &s.url(kind),
        s.admin.access_token.clone(),
    ));
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let listed = loop {
        let listed = client
            .list_dead_letters(ListDeadLettersRequest {
                queue: queue.to_string(),
                page_size: 500,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
            .dead_letters;
        if listed.len() >= at_least {
            break listed;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{} of {at_least} dead letters in {queue}",
            listed.len()
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    };
    let mut letters = Vec::new();
    for letter in listed {
        letters.push(
            client
                .get_dead_letter(GetDeadLetterRequest { id: letter.id })
                .await
                .unwrap()
                .into_inner()
                .dead_letter
                .unwrap(),
        );
    }
    letters
}
