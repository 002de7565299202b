//! The audit service: every service's events form one hash chain, checked here independently of
//! the service; queries by every filter, stable paging, export from a sequence; an edit made in
//! the database, a rewrite of the chain behind it and a deleted event are each reported at
//! their sequence; pruning keeps the chain verifiable from a signed checkpoint.

use std::time::{Duration, Instant};

use opsconductor_api::audit::v1::*;
use opsconductor_api::common::v1::Role;
use opsconductor_api::targets::v1::Target;
use opsconductor_audit::chain::{self, Verifier, GENESIS};
use opsconductor_platform::ServiceKind;
use opsconductor_testkit::{on_both_backends, AuthExt, Sandbox, StorageBackend, TargetsExt};
use opsconductor_tokens::KeySet;
use tokio_stream::StreamExt;
use tonic::Code;

use crate::support::{assert_code, assert_violations, drain_audit};

async fn verify(s: &Sandbox, start: u64, end: u64) -> VerifyAuditChainResponse {
    s.audit()
        .verify_audit_chain(VerifyAuditChainRequest {
            start_sequence: start,
            end_sequence: end,
        })
        .await
        .unwrap()
        .into_inner()
}

async fn list(s: &Sandbox, request: ListAuditEventsRequest) -> Vec<AuditEvent> {
    s.audit()
        .list_audit_events(request)
        .await
        .unwrap()
        .into_inner()
        .audit_events
}

async fn export(s: &Sandbox, start: u64) -> Vec<AuditEvent> {
    let mut stream = s
        .audit()
        .export_audit_events(ExportAuditEventsRequest {
            start_sequence: start,
            end_sequence: 0,
        })
        .await
        .unwrap()
        .into_inner();
    let mut events = Vec::new();
    while let Some(item) = stream.next().await {
        events.push(item.unwrap().audit_event.unwrap());
    }
    events
}

/// The audit service's public keys, from its JWKS.
async fn keys(s: &Sandbox) -> KeySet {
    let jwks = s
        .anonymous()
        .audit()
        .get_audit_keys(GetAuditKeysRequest {})
        .await
        .unwrap()
        .into_inner()
        .keys;
    KeySet::from_jwks(
        &jwks
            .into_iter()
            .map(|k| opsconductor_tokens::Jwk {
                kty: k.kty,
                crv: k.crv,
                x: k.x,
                kid: k.kid,
                alg: k.alg,
                use_: k.r#use,
            })
            .collect::<Vec<_>>(),
    )
}

/// Some activity: two users, a target, a failed sign-in.
async fn activity(s: &Sandbox) {
    s.user_with_role("ann", Role::Viewer).await;
    s.user_with_role("ben", Role::Operator).await;
    s.targets()
        .create(Target {
            name: "audit-host".into(),
            address: "10.1.2.3".into(),
            port: 22,
            ..Default::default()
        })
        .await
        .unwrap();
    let err = s
        .anonymous()
        .auth()
        .sign_in("ann", "not her password")
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
}

on_both_backends!(every_service_s_events_form_one_verified_chain);
async fn every_service_s_events_form_one_verified_chain(s: &Sandbox) {
    activity(s).await;
    let events = drain_audit(s).await;
    assert!(events.len() >= 8, "{} events", events.len());
    // Checked here with the chain's rules and the published key, not by asking the service.
    let no_keys = KeySet::default();
    let mut checker = Verifier::new(&no_keys, 0, &GENESIS);
    for (i, event) in events.iter().enumerate() {
        assert_eq!(event.sequence, i as u64 + 1, "no gaps");
        checker.event(event).unwrap();
        assert_eq!(event.hash, chain::hash(event).to_vec());
    }
    let sources: std::collections::BTreeSet<&str> =
        events.iter().map(|e| e.source.as_str()).collect();
    for source in ["auth", "user", "targets"] {
        assert!(sources.contains(source), "{sources:?}");
    }
    let report = verify(s, 0, 0).await;
    assert!(report.ok, "{report:?}");
    assert_eq!(report.checked_count, report.head_sequence);
    assert!(
        report.checked_count > events.len() as u64,
        "and the barrier"
    );
    // Checkpoints (the sandbox signs every 4 events), each signed by the published key.
    let keys = keys(s).await;
    assert_eq!(keys.len(), 1);
    let checkpoints = s
        .audit()
        .list_audit_checkpoints(ListAuditCheckpointsRequest::default())
        .await
        .unwrap()
        .into_inner()
        .checkpoints;
    assert!(!checkpoints.is_empty());
    assert!(report.checkpoints_checked >= checkpoints.len() as u64);
    for checkpoint in checkpoints
        .iter()
        .filter(|c| c.sequence as usize <= events.len())
    {
        let at = &events[checkpoint.sequence as usize - 1];
        let mut v = Verifier::new(&keys, at.sequence, &at.hash);
        v.checkpoint(checkpoint).unwrap();
    }

    // Filters.
    let created = list(
        s,
        ListAuditEventsRequest {
            action: "user.create".into(),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(created.len(), 3, "admin, ann, ben");
    assert!(
        created.windows(2).all(|w| w[0].sequence > w[1].sequence),
        "newest first"
    );
    let targets = list(
        s,
        ListAuditEventsRequest {
            action_prefix: "target.".into(),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(targets.len(), 1);
    assert_eq!(targets[0].resource_type, "target");
    let failed = list(
        s,
        ListAuditEventsRequest {
            outcome: AuditOutcome::Failure as i32,
            action: "auth.login".into(),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(failed.len(), 1);
    let by_admin = list(
        s,
        ListAuditEventsRequest {
            actor_user_id: s.admin.user_id.clone(),
            ..Default::default()
        },
    )
    .await;
    assert!(by_admin
        .iter()
        .all(|e| e.actor.as_ref().unwrap().user_id == s.admin.user_id));
    assert!(by_admin.iter().any(|e| e.action == "target.create"));
    let one = &created[0];
    let by_request = list(
        s,
        ListAuditEventsRequest {
            request_id: one.request_id.clone(),
            ..Default::default()
        },
    )
    .await;
    assert!(by_request.iter().any(|e| e.id == one.id));
    let after_everything = list(
        s,
        ListAuditEventsRequest {
            start_time: Some(prost_types::Timestamp::from(
                std::time::SystemTime::now() + Duration::from_secs(60),
            )),
            ..Default::default()
        },
    )
    .await;
    assert!(after_everything.is_empty());
    let got = s
        .audit()
        .get_audit_event(GetAuditEventRequest { id: one.id.clone() })
        .await
        .unwrap()
        .into_inner()
        .audit_event
        .unwrap();
    assert_eq!(&got, one);

    // Paging two at a time walks every event once, newest first, while events keep coming.
    let mut paged = Vec::new();
    let mut page_token = String::new();
    loop {
        let page = s
            .audit()
            .list_audit_events(ListAuditEventsRequest {
                page_size: 2,
                page_token,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        paged.extend(page.audit_events.into_iter().map(|e| e.sequence));
        if page.next_page_token.is_empty() {
            break;
        }
        page_token = page.next_page_token;
    }
    let expected: Vec<u64> = (1..=paged[0]).rev().collect();
    assert_eq!(paged, expected);

    // Export resumes from any sequence.
    let all = export(s, 0).await;
    assert_eq!(all.len() as u64, report.head_sequence);
    assert_eq!(all[..events.len()], events[..]);
    let rest = export(s, 5).await;
    assert_eq!(rest.first().unwrap().sequence, 5);
    assert_eq!(rest[..], all[4..]);

    // Bad input.
    let err = s
        .audit()
        .list_audit_events(ListAuditEventsRequest {
            page_size: -1,
            page_token: "garbage".into(),
            outcome: 99,
            start_time: Some(prost_types::Timestamp {
                seconds: 100,
                nanos: 0,
            }),
            end_time: Some(prost_types::Timestamp {
                seconds: 50,
                nanos: 0,
            }),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_violations(&err, &["page_size", "page_token", "outcome", "end_time"]);
    let err = s
        .audit()
        .verify_audit_chain(VerifyAuditChainRequest {
            start_sequence: 1,
            end_sequence: 1_000_000,
        })
        .await
        .unwrap_err();
    assert_violations(&err, &["end_sequence"]);
    let err = s
        .audit()
        .get_audit_event(GetAuditEventRequest {
            id: "01900000-0000-7000-8000-000000000000".into(),
        })
        .await
        .unwrap_err();
    assert_code(&err, Code::NotFound, "RESOURCE_NOT_FOUND");
    let err = s
        .audit()
        .get_audit_event(GetAuditEventRequest::default())
        .await
        .unwrap_err();
    assert_violations(&err, &["id"]);
}

on_both_backends!(edits_rewrites_and_deletions_are_reported_at_their_sequence);
async fn edits_rewrites_and_deletions_are_reported_at_their_sequence(s: &Sandbox) {
    activity(s).await;
    let events = drain_audit(s).await;
    assert!(events.len() >= 8);
    let db = s.db(ServiceKind::Audit);
    assert!(verify(s, 0, 0).await.ok);

    // An edit of one column, straight in the database.
    sqlx::query("UPDATE audit_events SET action = 'user.nothing_to_see' WHERE sequence = 3")
        .execute(db.pool())
        .await
        .unwrap();
    let report = verify(s, 0, 0).await;
    assert!(!report.ok);
    assert_eq!(report.first_broken_sequence, 3, "{report:?}");
    assert!(report.error.contains("changed"), "{report:?}");
    // A range after the edit still verifies; one that includes it does not.
    assert!(verify(s, 4, 8).await.ok);
    assert!(!verify(s, 2, 4).await.ok);
    sqlx::query("UPDATE audit_events SET action = $1 WHERE sequence = 3")
        .bind(&events[2].action)
        .execute(db.pool())
        .await
        .unwrap();
    assert!(verify(s, 0, 0).await.ok, "restored");

    // The same edit, with every later hash recomputed so each link matches: the next signed
    // checkpoint gives it away.
    let next_checkpoint = s
        .audit()
        .list_audit_checkpoints(ListAuditCheckpointsRequest::default())
        .await
        .unwrap()
        .into_inner()
        .checkpoints
        .into_iter()
        .map(|c| c.sequence)
        .find(|&seq| seq >= 3 && seq <= events.len() as u64)
        .expect("a checkpoint after event 3 (the sandbox signs every 4 events)");
    let mut prev = events[1].hash.clone();
    for (i, original) in events[2..].iter().enumerate() {
        let mut event = original.clone();
        if i == 0 {
            event.details.insert("role".into(), "ROLE_ADMIN".into());
        }
        event.prev_hash = prev.clone();
        event.hash = chain::hash(&event).to_vec();
        prev = event.hash.clone();
        let details: std::collections::BTreeMap<_, _> = event.details.iter().collect();
        sqlx::query(
            "UPDATE audit_events SET details = $1, prev_hash = $2, hash = $3 WHERE sequence = $4",
        )
        .bind(serde_json::to_string(&details).unwrap())
        .bind(event.prev_hash.clone())
        .bind(event.hash.clone())
        .bind(event.sequence as i64)
        .execute(db.pool())
        .await
        .unwrap();
    }
    let report = verify(s, 0, events.len() as u64).await;
    assert!(!report.ok);
    assert_eq!(
        report.first_broken_sequence, next_checkpoint,
        "the first checkpoint after event 3: {report:?}"
    );
    assert!(report.error.contains("rewritten"), "{report:?}");

    // A deleted event.
    sqlx::query("DELETE FROM audit_events WHERE sequence = 2")
        .execute(db.pool())
        .await
        .unwrap();
    let report = verify(s, 0, 0).await;
    assert!(!report.ok);
    assert_eq!(report.first_broken_sequence, 2, "{report:?}");
    assert!(report.error.contains("missing"), "{report:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pruning_keeps_the_chain_verifiable_from_a_signed_checkpoint() {
    let s = Sandbox::start_with(
        StorageBackend::Sqlite,
        &[
            ("AUDIT_RETENTION_SECS", "1"),
            ("AUDIT_PRUNE_INTERVAL_MS", "200"),
        ],
    )
    .await;
    activity(&s).await;
    let before = drain_audit(&s).await;
    let started = Instant::now();
    let report = loop {
        let report = verify(&s, 0, 0).await;
        if report.anchor_sequence > 0 {
            break report;
        }
        assert!(started.elapsed() < Duration::from_secs(20), "never pruned");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(report.ok, "verifiable from the checkpoint: {report:?}");
    let anchor = report.anchor_sequence;
    // Pruning may already have taken the oldest events when they were listed: compare with
    // the newest sequence there was, not with how many were still there.
    let newest = before.iter().map(|e| e.sequence).max().unwrap_or(0);
    assert!(anchor <= newest + 1, "{anchor} > {newest} + 1");
    let kept = s
        .audit()
        .list_audit_checkpoints(ListAuditCheckpointsRequest::default())
        .await
        .unwrap()
        .into_inner()
        .checkpoints;
    assert_eq!(
        kept[0].sequence, anchor,
        "it starts from a signed checkpoint"
    );
    // What went is gone from every view; what is left starts right after the anchor.
    let exported = export(&s, 0).await;
    assert_eq!(exported.first().unwrap().sequence, anchor + 1);
    assert!(list(&s, ListAuditEventsRequest::default())
        .await
        .iter()
        .all(|e| e.sequence > anchor));
    // The pruning itself is in the trail.
    let started = Instant::now();
    while list(
        &s,
        ListAuditEventsRequest {
            action: "audit.prune".into(),
            ..Default::default()
        },
    )
    .await
    .is_empty()
    {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "prune not audited"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    s.stop().await;
}
