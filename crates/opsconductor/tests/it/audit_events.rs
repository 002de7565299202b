//! Every change the user and targets services make publishes an audit event through their
//! outbox, to the durable `audit.events` queue, from which the audit service appends it to its
//! chain. A change that fails publishes nothing, and no event carries a secret.

use opsconductor_api::audit::v1::{AuditEvent, AuditOutcome};
use opsconductor_api::targets::v1::Target;
use opsconductor_api::user::v1::*;
use opsconductor_testkit::{on_both_backends, Sandbox, TargetsExt, UsersExt};

use crate::support::drain_audit;

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

    // As the audit service appended them (the bootstrapped administrator's creation first).
    let events: Vec<AuditEvent> = drain_audit(s)
        .await
        .into_iter()
        .filter(|e| e.details.get("username").map(String::as_str) != Some("admin"))
        .collect();
    // Each service's events arrive in the order of its changes; two services' events
    // interleave as they happen to.
    let actions = |source: &str| -> Vec<String> {
        events
            .iter()
            .filter(|e| e.source == source)
            .map(|e| e.action.clone())
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
    let of = |action: &str| events.iter().find(|e| e.action == action).cloned().unwrap();
    let created = &of("user.create");
    assert_eq!(created.resource_type, "user");
    assert_eq!(created.resource_id, user.id);
    assert_eq!(created.source, "user");
    assert_eq!(created.outcome, AuditOutcome::Success as i32);
    assert_eq!(created.request_id, "req-audit-1");
    let actor = created.actor.clone().unwrap();
    assert_eq!(actor.user_id, s.admin.user_id, "the administrator did it");
    assert_eq!(created.details["username"], "audited");
    assert!(uuid::Uuid::try_parse(&created.id).is_ok());
    assert!(created.occur_time.is_some());
    assert_eq!(of("user.update").details["fields"], "display_name");
    assert_eq!(of("target.create").resource_id, target.id);
    // The broker account that published it, as RabbitMQ vouched for it.
    assert_eq!(created.publisher, "guest");
    for event in &events {
        let text = format!("{event:?}");
        assert!(!text.contains("secret passphrase"), "{text}");
    }
}
