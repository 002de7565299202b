//! Every change the user and targets services make publishes an audit event through their
//! outbox, to the durable `audit.events` queue that keeps them until the audit service reads
//! them. A change that fails publishes nothing, and no event carries a secret.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use opsconductor_api::audit::v1::{AuditEvent, AuditOutcome};
use opsconductor_api::targets::v1::Target;
use opsconductor_api::user::v1::*;
use opsconductor_messaging::topology::platform;
use opsconductor_messaging::{Broker, Consumer, HandleError, Handlers, Received, Topology};
use opsconductor_testkit::{on_both_backends, Sandbox, TargetsExt, UsersExt};

/// An event and the correlation id it travelled with.
type Seen = (AuditEvent, Option<String>);

/// Reads the sandbox's audit queue as the audit service will.
async fn collect(s: &Sandbox, want: usize) -> Vec<Seen> {
    let broker = Broker::start(s.broker.config("audit"), Topology::new());
    let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
    let handlers = {
        let seen = seen.clone();
        Handlers::new().on(move |received: Received<AuditEvent>| {
            let seen = seen.clone();
            async move {
                seen.lock()
                    .unwrap()
                    .push((received.message, received.meta.correlation_id));
                Ok::<(), HandleError>(())
            }
        })
    };
    // One at a time: the log is appended in delivery order.
    let consumer = Consumer::work(&broker, &platform::audit_events(), handlers)
        .concurrency(1)
        .start();
    let started = Instant::now();
    while seen.lock().unwrap().len() < want {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "only {} of {want} audit events arrived",
            seen.lock().unwrap().len()
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    // Anything beyond what was expected would be a phantom.
    tokio::time::sleep(Duration::from_millis(300)).await;
    consumer.shutdown(Duration::from_secs(5)).await;
    broker.close().await;
    let events = seen.lock().unwrap().clone();
    events
}

on_both_backends!(every_change_is_audited_once_and_failures_not_at_all);
async fn every_change_is_audited_once_and_failures_not_at_all(s: &Sandbox) {
    let mut users = s.user();
    let mut request = tonic::Request::new(CreateUserRequest {
        user: Some(User {
            username: "audited".into(),
            email: "audited@example.com".into(),
            role: 1,
            ..Default::default()
        }),
        password: "a secret passphrase".into(),
    });
    request
        .metadata_mut()
        .insert("x-request-id", "req-audit-1".parse().unwrap());
    let user = users
        .create_user(request)
        .await
        .unwrap()
        .into_inner()
        .user
        .unwrap();
    // A duplicate fails: no event.
    users
        .create(
            User {
                username: "audited".into(),
                email: "other@example.com".into(),
                role: 1,
                ..Default::default()
            },
            "",
        )
        .await
        .unwrap_err();
    users
        .update(
            User {
                id: user.id.clone(),
                display_name: "Audited".into(),
                ..Default::default()
            },
            &["display_name"],
        )
        .await
        .unwrap();
    users
        .set_password(SetPasswordRequest {
            user_id: user.id.clone(),
            new_password: "another secret passphrase".into(),
        })
        .await
        .unwrap();
    users.delete(&user.id).await.unwrap();
    let mut targets = s.targets();
    let target = targets
        .create(Target {
            name: "audited-host".into(),
            address: "10.0.0.9".into(),
            port: 22,
            ..Default::default()
        })
        .await
        .unwrap();
    targets.delete(&target.id).await.unwrap();

    // The bootstrapped administrator's creation comes first.
    let events: Vec<Seen> = collect(s, 7)
        .await
        .into_iter()
        .filter(|(e, _)| e.details.get("username").map(String::as_str) != Some("admin"))
        .collect();
    // Each service's events arrive in the order of its changes; two services' events
    // interleave as they happen to.
    let actions = |source: &str| -> Vec<String> {
        events
            .iter()
            .filter(|(e, _)| e.source == source)
            .map(|(e, _)| e.action.clone())
            .collect()
    };
    assert_eq!(
        actions("user"),
        [
            "user.create",
            "user.update",
            "user.password_set",
            "user.delete"
        ],
        "one event per change, in order"
    );
    assert_eq!(actions("targets"), ["target.create", "target.delete"]);
    let of = |action: &str| {
        events
            .iter()
            .find(|(e, _)| e.action == action)
            .cloned()
            .unwrap()
    };
    let (created, correlation) = &of("user.create");
    assert_eq!(created.resource_type, "user");
    assert_eq!(created.resource_id, user.id);
    assert_eq!(created.source, "user");
    assert_eq!(created.outcome, AuditOutcome::Success as i32);
    assert_eq!(created.request_id, "req-audit-1");
    let actor = created.actor.clone().unwrap();
    assert_eq!(actor.user_id, s.admin.user_id, "the administrator did it");
    assert_eq!(correlation.as_deref(), Some("req-audit-1"));
    assert_eq!(created.details["username"], "audited");
    assert!(uuid::Uuid::try_parse(&created.id).is_ok());
    assert!(created.occur_time.is_some());
    assert_eq!(of("user.update").0.details["fields"], "display_name");
    assert_eq!(of("target.create").0.resource_id, target.id);
    for (event, _) in &events {
        let text = format!("{event:?}");
        assert!(!text.contains("secret passphrase"), "{text}");
    }
}
