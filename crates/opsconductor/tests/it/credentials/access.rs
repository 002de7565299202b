//! Who may reveal: administrators, and the executor for a run it holds (decided here by a
//! double of the jobs check, on a second replica over the same database); everyone else is
//! refused by the policy. Every reveal and every refusal is an audit event; a retried reveal
//! is checked and audited again. Deleting a credential a target uses is refused unless forced; expiring
//! credentials are announced once per expiry.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use futures::future::{BoxFuture, FutureExt};
use opsconductor_api::audit::v1::AuditOutcome;
use opsconductor_api::common::v1::Role;
use opsconductor_api::credentials::v1::credentials_service_client::CredentialsServiceClient;
use opsconductor_api::credentials::v1::*;
use opsconductor_api::targets::v1::{CredentialRef, ListTargetsRequest, Protocol, Target};
use opsconductor_credentials::{Credentials, Refused, RunChecker, RunUse};
use opsconductor_messaging::topology::platform;
use opsconductor_platform::ServiceKind;
use opsconductor_testkit::{
    assert_code, assert_violations, channel_as, on_both_backends, CredentialsExt, Sandbox,
    StorageBackend, TargetsExt,
};
use prost::Message;
use tonic::Code;

use super::named;
use crate::support::{count, drain_audit, password_secret};

/// The runs the jobs service would vouch for: (run, target, executor, credential).
#[derive(Default)]
pub struct Runs {
    held: Mutex<Vec<[String; 4]>>,
    down: AtomicBool,
}

impl Runs {
    pub fn hold(&self, run: &str, target: &str, executor: &str, credential: &str) {
        self.held
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push([run, target, executor, credential].map(String::from));
    }
}

impl RunChecker for Runs {
    fn check<'a>(&'a self, r: RunUse<'a>) -> BoxFuture<'a, Result<(), Refused>> {
        let result = if self.down.load(Ordering::SeqCst) {
            Err(Refused::Unavailable(
                "the jobs service is unreachable".into(),
            ))
        } else if self
            .held
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .any(|h| h == &[r.run_id, r.target_id, r.executor_id, r.credential_id])
        {
            Ok(())
        } else {
            Err(Refused::Denied(
                "the run's lease is held by another executor".into(),
            ))
        };
        futures::future::ready(result).boxed()
    }
}

const RUN: &str = "01900000-0000-7000-8000-0000000000a1";
const TARGET: &str = "01900000-0000-7000-8000-0000000000b2";

fn for_run(id: &str, executor: &str, key: &str) -> RevealCredentialRequest {
    RevealCredentialRequest {
        id: id.into(),
        reason: "run step 1".into(),
        idempotency_key: key.into(),
        run_id: RUN.into(),
        target_id: TARGET.into(),
        executor_id: executor.into(),
        lease_token: format!("lease-of-{executor}"),
        ..Default::default()
    }
}

on_both_backends!(reveals_are_for_admins_and_the_executor_of_a_held_run_and_all_audited);
async fn reveals_are_for_admins_and_the_executor_of_a_held_run_and_all_audited(s: &Sandbox) {
    let runs = Arc::new(Runs::default());
    let replica = s
        .start_module(
            &Credentials::with_checker(runs.clone()),
            s.db(ServiceKind::Credentials).clone(),
            &[],
        )
        .await;
    let made = s
        .credentials()
        .create(
            named("deploy", CredentialKind::Password),
            password_secret("s3cret-deploy"),
        )
        .await
        .unwrap();
    runs.hold(RUN, TARGET, "executor-1", &made.id);

    // Users below admin and services other than the executor: refused by the policy.
    let (viewer, viewer_session) = s.user_with_role("vera", Role::Viewer).await;
    let (_, operator_session) = s.user_with_role("otto", Role::Operator).await;
    let targets_token = s.service_token(ServiceKind::Targets).await;
    for token in [
        &viewer_session.access_token,
        &operator_session.access_token,
        &targets_token,
    ] {
        let status = s
            .clients_as(token)
            .credentials()
            .reveal(&made.id, "not allowed")
            .await
            .unwrap_err();
        assert_code(&status, Code::PermissionDenied, "PERMISSION_DENIED");
    }

    // The executor, for the run it holds; not for another executor's lease; not when the
    // check cannot be made; not without naming the run.
    let executor = s.service_token(ServiceKind::Executor).await;
    let mut as_executor = CredentialsServiceClient::new(channel_as(&replica.url, executor));
    let revealed = as_executor
        .reveal_credential(for_run(&made.id, "executor-1", "run-a1"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(revealed.secret, Some(password_secret("s3cret-deploy")));
    let status = as_executor
        .reveal_credential(for_run(&made.id, "executor-2", "run-a1-other"))
        .await
        .unwrap_err();
    assert_code(&status, Code::PermissionDenied, "PERMISSION_DENIED");
    assert!(!status.message().contains("s3cret"));
    runs.down.store(true, Ordering::SeqCst);
    let status = as_executor
        .reveal_credential(for_run(&made.id, "executor-1", "run-a1-down"))
        .await
        .unwrap_err();
    assert_code(&status, Code::Unavailable, "UNAVAILABLE");
    runs.down.store(false, Ordering::SeqCst);
    let status = as_executor
        .reveal_credential(RevealCredentialRequest {
            id: made.id.clone(),
            reason: "no run".into(),
            idempotency_key: "no-run".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    // (The target may be left out: the run's SECRET parameters name credentials without one.)
    assert_violations(&status, &["executor_id", "lease_token", "run_id"]);
    // The administrator.
    s.credentials().reveal(&made.id, "admin-1").await.unwrap();
    assert!(s
        .credentials()
        .get(&made.id)
        .await
        .unwrap()
        .last_reveal_time
        .is_some());

    let events = drain_audit(s).await;
    let reveals: Vec<_> = events
        .iter()
        .filter(|e| e.action == "credential.reveal")
        .collect();
    assert_eq!(
        count(&events, "credential.reveal", AuditOutcome::Success),
        2
    );
    assert_eq!(count(&events, "credential.reveal", AuditOutcome::Denied), 5);
    let by_executor = reveals
        .iter()
        .find(|e| e.outcome == AuditOutcome::Success as i32 && e.details["run_id"] == RUN)
        .expect("the executor's reveal");
    assert_eq!(by_executor.actor.as_ref().unwrap().service_id, "executor");
    assert_eq!(by_executor.resource_id, made.id);
    assert_eq!(by_executor.details["target_id"], TARGET);
    assert_eq!(by_executor.details["reason"], "run step 1");
    assert_eq!(by_executor.details["secret_version"], "1");
    assert_eq!(by_executor.id, revealed.audit_event_id);
    let by_viewer = reveals
        .iter()
        .find(|e| e.actor.as_ref().unwrap().user_id == viewer.id)
        .expect("the viewer's refusal");
    assert_eq!(by_viewer.outcome, AuditOutcome::Denied as i32);
    assert!(by_viewer.details["refused"].contains("may not call"));
    let lease = reveals
        .iter()
        .find(|e| e.details.get("executor_id").map(String::as_str) == Some("executor-2"))
        .expect("the refused lease");
    assert_eq!(lease.outcome, AuditOutcome::Denied as i32);
    assert!(lease.details["refused"].contains("another executor"));
    assert!(events.iter().all(|e| !format!("{e:?}").contains("s3cret")));
    replica.stop().await.unwrap();
}

/// A key is not a grant: a retry is checked again and audited again (naming the first).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_reveal_is_answered_again_under_an_audit_event_of_its_own() {
    let s = Sandbox::start(StorageBackend::Sqlite).await;
    let mut vault = s.credentials();
    let made = vault
        .create(
            named("retried", CredentialKind::Password),
            password_secret("again"),
        )
        .await
        .unwrap();
    let first = vault.reveal(&made.id, "retry-1").await.unwrap();
    let second = vault.reveal(&made.id, "retry-1").await.unwrap();
    assert_ne!(first.audit_event_id, second.audit_event_id);
    assert_eq!(second.secret, Some(password_secret("again")));
    // The same key for another request is a client bug, not a retry.
    let status = vault
        .reveal_credential(RevealCredentialRequest {
            id: made.id.clone(),
            reason: "another reason".into(),
            idempotency_key: "retry-1".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_code(&status, Code::FailedPrecondition, "IDEMPOTENCY_KEY_REUSED");
    let events = drain_audit(&s).await;
    assert_eq!(
        count(&events, "credential.reveal", AuditOutcome::Success),
        2
    );
    let retry = events
        .iter()
        .find(|e| e.id == second.audit_event_id)
        .expect("the retry's event");
    assert_eq!(retry.details["replay_of"], first.audit_event_id);
    s.stop().await;
}

on_both_backends!(a_credential_a_target_uses_is_deleted_only_by_force);
async fn a_credential_a_target_uses_is_deleted_only_by_force(s: &Sandbox) {
    let mut vault = s.credentials();
    let used = vault
        .create(
            named("in-use", CredentialKind::Password),
            password_secret("u"),
        )
        .await
        .unwrap();
    let unused = vault
        .create(
            named("unused", CredentialKind::Password),
            password_secret("n"),
        )
        .await
        .unwrap();
    let target = s
        .targets()
        .create(Target {
            name: "web-1".into(),
            address: "10.0.0.1".into(),
            port: 22,
            credential_refs: vec![CredentialRef {
                protocol: Protocol::Ssh as i32,
                credential_id: used.id.clone(),
            }],
            ..Default::default()
        })
        .await
        .unwrap();
    let users = s
        .targets()
        .list(ListTargetsRequest {
            credential_id: used.id.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .targets;
    assert_eq!(users.len(), 1);
    let status = s
        .targets()
        .list(ListTargetsRequest {
            credential_id: "nope".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_violations(&status, &["credential_id"]);

    let status = vault.delete(&used.id, false).await.unwrap_err();
    assert_code(&status, Code::FailedPrecondition, "CREDENTIAL_IN_USE");
    assert!(
        status.message().contains(&target.id),
        "{}",
        status.message()
    );
    vault.get(&used.id).await.unwrap();
    vault.delete(&unused.id, false).await.unwrap();
    vault.delete(&used.id, true).await.unwrap();
    let status = vault.get(&used.id).await.unwrap_err();
    assert_code(&status, Code::NotFound, "RESOURCE_NOT_FOUND");
    // The sealed secret went with it.
    let (left,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM credential_secrets")
        .fetch_one(s.db(ServiceKind::Credentials).pool())
        .await
        .unwrap();
    assert_eq!(left, 0);
    let events = drain_audit(s).await;
    let forced = events
        .iter()
        .find(|e| e.action == "credential.delete" && e.resource_id == used.id)
        .expect("the forced delete's event");
    assert!(format!("{:?}", forced.details).contains(&target.id));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_about_to_expire_are_announced_once_per_expiry() {
    let mut s = Sandbox::start_with(
        StorageBackend::Sqlite,
        &[("CREDENTIALS_EXPIRY_SWEEP_MS", "100")],
    )
    .await;
    // The test reads the announcements off the queue in the notification service's place.
    s.stop_service(opsconductor_platform::ServiceKind::Notification)
        .await;
    let mut vault = s.credentials();
    let in_days = |days: i64| prost_types::Timestamp {
        seconds: opsconductor_testkit::now_secs() as i64 + days * 86_400,
        nanos: 0,
    };
    let soon = vault
        .create(
            Credential {
                expire_time: Some(in_days(3)),
                ..named("soon", CredentialKind::ApiToken)
            },
            super::token("t1"),
        )
        .await
        .unwrap();
    vault
        .create(
            Credential {
                expire_time: Some(in_days(30)),
                ..named("later", CredentialKind::ApiToken)
            },
            super::token("t2"),
        )
        .await
        .unwrap();
    let queue = s
        .broker
        .names()
        .queue(&platform::credential_expiring_notifications());
    let next = || async {
        let (key, body) = s.broker.next_message(&queue, Duration::from_secs(20)).await;
        assert_eq!(key, platform::CREDENTIAL_EXPIRING);
        CredentialExpiring::decode(body.as_slice()).unwrap()
    };
    let first = next().await;
    assert_eq!(first.credential_id, soon.id);
    assert_eq!(first.name, "soon");
    assert_eq!(first.days_left, 2);
    // Sweeps go on; the next announcement is the next credential, not "soon" again.
    let sooner = vault
        .create(
            Credential {
                expire_time: Some(in_days(1)),
                ..named("sooner", CredentialKind::ApiToken)
            },
            super::token("t3"),
        )
        .await
        .unwrap();
    assert_eq!(next().await.credential_id, sooner.id);
    // A new expiry date is announced again.
    vault
        .update_credential(UpdateCredentialRequest {
            credential: Some(Credential {
                id: soon.id.clone(),
                expire_time: Some(in_days(5)),
                ..Default::default()
            }),
            update_mask: Some(prost_types::FieldMask {
                paths: vec!["expire_time".into()],
            }),
        })
        .await
        .unwrap();
    let renewed = next().await;
    assert_eq!((renewed.credential_id, renewed.days_left), (soon.id, 4));
    assert_eq!(s.broker.message_count(&queue).await, 0);
    s.stop().await;
}
