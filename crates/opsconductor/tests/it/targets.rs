//! The targets service through its generated client, on SQLite and PostgreSQL.

use opsconductor_platform::ServiceKind;
use std::collections::HashMap;

use opsconductor_api::targets::v1::*;
use opsconductor_testkit::{on_both_backends, Sandbox, TargetsExt};
use tonic::Code;

use crate::support::{assert_code, assert_violations, MISSING_ID};

fn host(name: &str, tags: &[&str]) -> Target {
    Target {
        name: name.into(),
        address: "127.0.0.1".into(),
        port: 22,
        os: OperatingSystem::Linux as i32,
        tags: tags.iter().map(|t| t.to_string()).collect(),
        ..Default::default()
    }
}

async fn create(s: &Sandbox, target: Target) -> Target {
    s.targets().create(target).await.expect("create target")
}

async fn count(s: &Sandbox) -> usize {
    s.targets()
        .list(ListTargetsRequest {
            page_size: 500,
            ..Default::default()
        })
        .await
        .unwrap()
        .targets
        .len()
}

on_both_backends!(crud_round_trip);
async fn crud_round_trip(s: &Sandbox) {
    let cred = uuid::Uuid::now_v7().to_string();
    let created = create(
        s,
        Target {
            labels: HashMap::from([("env".to_string(), "prod".to_string())]),
            credential_refs: vec![CredentialRef {
                protocol: Protocol::Ssh as i32,
                credential_id: cred.clone(),
            }],
            description: "primary web node".into(),
            ..host("web-01", &["web", "prod"])
        },
    )
    .await;
    assert!(uuid::Uuid::try_parse(&created.id).is_ok());
    assert_eq!(created.labels["env"], "prod");
    assert_eq!(created.credential_refs[0].credential_id, cred);

    let got = s.targets().get(&created.id).await.unwrap();
    assert_eq!(got, created);

    let updated = s
        .targets()
        .update(
            Target {
                id: created.id.clone(),
                address: "db.example.com".into(),
                tags: vec!["db".into()],
                ..Default::default()
            },
            &["address", "tags"],
        )
        .await
        .unwrap();
    assert_eq!(updated.address, "db.example.com");
    assert_eq!(updated.tags, ["db"]);
    assert_eq!(updated.name, "web-01", "outside the mask");
    assert_eq!(updated.labels, created.labels);
    // The tag index follows the update.
    let by_old_tag = s
        .targets()
        .list(ListTargetsRequest {
            tags: vec!["web".into()],
            ..Default::default()
        })
        .await
        .unwrap()
        .targets;
    assert!(by_old_tag.is_empty());

    s.targets().delete(&created.id).await.unwrap();
    let err = s.targets().get(&created.id).await.unwrap_err();
    assert_code(&err, Code::NotFound, "RESOURCE_NOT_FOUND");
    assert_eq!(count(s).await, 0);
}

on_both_backends!(duplicates_and_missing);
async fn duplicates_and_missing(s: &Sandbox) {
    let first = create(s, host("app-1", &[])).await;
    let other = create(s, host("app-2", &[])).await;
    let err = s.targets().create(host("app-1", &["x"])).await.unwrap_err();
    assert_code(&err, Code::AlreadyExists, "RESOURCE_ALREADY_EXISTS");
    // Renaming onto a taken name is a duplicate too, and changes nothing.
    let err = s
        .targets()
        .update(
            Target {
                id: other.id.clone(),
                name: "app-1".into(),
                ..Default::default()
            },
            &["name"],
        )
        .await
        .unwrap_err();
    assert_code(&err, Code::AlreadyExists, "RESOURCE_ALREADY_EXISTS");
    assert_eq!(s.targets().get(&other.id).await.unwrap(), other);
    assert_eq!(count(s).await, 2);
    let unchanged = s.targets().get(&first.id).await.unwrap();
    assert_eq!(unchanged, first);

    let id = MISSING_ID.to_string();
    let mut c = s.targets();
    for err in [
        c.get(&id).await.unwrap_err(),
        c.delete(&id).await.unwrap_err(),
        // No mask at all, not an empty one.
        c.update_target(UpdateTargetRequest {
            target: Some(Target {
                id: id.clone(),
                ..host("x", &[])
            }),
            update_mask: None,
        })
        .await
        .unwrap_err(),
        c.test_target_connectivity(TestTargetConnectivityRequest {
            id: id.clone(),
            ..Default::default()
        })
        .await
        .unwrap_err(),
    ] {
        assert_code(&err, Code::NotFound, "RESOURCE_NOT_FOUND");
    }
}

on_both_backends!(bad_input_is_rejected_and_writes_nothing);
async fn bad_input_is_rejected_and_writes_nothing(s: &Sandbox) {
    let existing = create(s, host("keep-me", &["a"])).await;
    let mut c = s.targets();
    let err = c
        .create(Target {
            name: "Bad_Name".into(),
            address: "not an address!".into(),
            port: 70000,
            os: 99,
            tags: vec!["ok".into(), "ok".into(), "NOPE".into()],
            labels: HashMap::from([("Bad Key".to_string(), "v".to_string())]),
            credential_refs: vec![CredentialRef {
                protocol: 0,
                credential_id: "x".into(),
            }],
            description: "d".repeat(2000),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_violations(
        &err,
        &[
            "target.name",
            "target.address",
            "target.port",
            "target.os",
            "target.tags[1]",
            "target.tags[2]",
            "target.labels[\"Bad Key\"]",
            "target.credential_refs[0].protocol",
            "target.credential_refs[0].credential_id",
            "target.description",
        ],
    );
    let err = c
        .create_target(CreateTargetRequest { target: None })
        .await
        .unwrap_err();
    assert_violations(&err, &["target"]);
    let err = c.create(Target::default()).await.unwrap_err();
    assert_violations(&err, &["target.name", "target.address", "target.port"]);
    let err = c.get("zzz").await.unwrap_err();
    assert_violations(&err, &["id"]);
    let err = c.delete("").await.unwrap_err();
    assert_violations(&err, &["id"]);
    let err = c
        .list(ListTargetsRequest {
            page_size: -5,
            tags: vec!["Upper".into()],
            names: vec!["-x".into()],
            os: 77,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_violations(&err, &["page_size", "tags[0]", "names[0]", "os"]);
    let err = c
        .update(
            Target {
                id: existing.id.clone(),
                port: 0,
                ..Default::default()
            },
            &["port"],
        )
        .await
        .unwrap_err();
    assert_violations(&err, &["target.port"]);
    let err = c
        .update(
            Target {
                id: existing.id.clone(),
                ..Default::default()
            },
            &["id"],
        )
        .await
        .unwrap_err();
    assert_violations(&err, &["update_mask.paths[0]"]);
    let err = c
        .test_target_connectivity(TestTargetConnectivityRequest {
            id: existing.id.clone(),
            port: 70000,
            timeout: Some(prost_types::Duration {
                seconds: 120,
                nanos: 0,
            }),
        })
        .await
        .unwrap_err();
    assert_violations(&err, &["port", "timeout"]);

    assert_eq!(count(s).await, 1);
    let still = c.get(&existing.id).await.unwrap();
    assert_eq!(still, existing);
}

on_both_backends!(filters_by_tags_os_and_names);
async fn filters_by_tags_os_and_names(s: &Sandbox) {
    create(s, host("web-1", &["web", "prod"])).await;
    create(s, host("web-2", &["web", "staging"])).await;
    create(
        s,
        Target {
            os: OperatingSystem::Windows as i32,
            ..host("win-1", &["prod"])
        },
    )
    .await;
    let names = |targets: Vec<Target>| targets.into_iter().map(|t| t.name).collect::<Vec<_>>();
    let mut c = s.targets();
    let list = |tags: &[&str], os: OperatingSystem, names: &[&str]| ListTargetsRequest {
        tags: tags.iter().map(|t| t.to_string()).collect(),
        os: os as i32,
        names: names.iter().map(|t| t.to_string()).collect(),
        ..Default::default()
    };
    let r = c
        .list(list(&["web"], OperatingSystem::Unspecified, &[]))
        .await
        .unwrap();
    assert_eq!(names(r.targets), ["web-1", "web-2"]);
    let r = c
        .list(list(&["web", "prod"], OperatingSystem::Unspecified, &[]))
        .await
        .unwrap();
    assert_eq!(names(r.targets), ["web-1"], "every tag must match");
    let r = c
        .list(list(&["prod"], OperatingSystem::Windows, &[]))
        .await
        .unwrap();
    assert_eq!(names(r.targets), ["win-1"]);
    let r = c
        .list(list(
            &[],
            OperatingSystem::Unspecified,
            &["web-2", "win-1", "nope"],
        ))
        .await
        .unwrap();
    assert_eq!(names(r.targets), ["web-2", "win-1"]);
    let r = c
        .list(list(&["absent"], OperatingSystem::Unspecified, &[]))
        .await
        .unwrap();
    assert!(r.targets.is_empty());

    let first = c
        .list(ListTargetsRequest {
            page_size: 2,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(names(first.targets), ["web-1", "web-2"]);
    let second = c
        .list(ListTargetsRequest {
            page_size: 2,
            page_token: first.next_page_token,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(names(second.targets), ["win-1"]);
    assert!(second.next_page_token.is_empty());
}

on_both_backends!(connectivity_is_tested_over_tcp);
async fn connectivity_is_tested_over_tcp(s: &Sandbox) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let open_port = listener.local_addr().unwrap().port();
    let closed_port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let target = create(
        s,
        Target {
            port: u32::from(open_port),
            ..host("probe-me", &[])
        },
    )
    .await;
    let mut c = s.targets();
    let ok = c
        .test_target_connectivity(TestTargetConnectivityRequest {
            id: target.id.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(ok.reachable, "{ok:?}");
    assert_eq!(ok.resolved_address, format!("127.0.0.1:{open_port}"));
    assert!(ok.latency.is_some() && ok.check_time.is_some());

    let refused = c
        .test_target_connectivity(TestTargetConnectivityRequest {
            id: target.id.clone(),
            port: u32::from(closed_port),
            timeout: Some(prost_types::Duration {
                seconds: 2,
                nanos: 0,
            }),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(!refused.reachable);
    assert!(refused.error.contains("refused"), "{}", refused.error);

    let unresolvable = create(
        s,
        Target {
            address: "no-such-host.invalid".into(),
            ..host("ghost", &[])
        },
    )
    .await;
    let r = c
        .test_target_connectivity(TestTargetConnectivityRequest {
            id: unresolvable.id,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(!r.reachable);
    assert!(!r.error.is_empty());
    drop(listener);
}

on_both_backends!(stale_updates_are_refused);
async fn stale_updates_are_refused(s: &Sandbox) {
    let target = create(s, host("raced", &["a"])).await;
    let outbox = opsconductor_messaging::Outbox::new(s.db(ServiceKind::Targets).clone());
    let audit = opsconductor_messaging::AuditLog::new(&outbox, &s.broker.names(), "targets");
    let store = opsconductor_targets::TargetStore::new(s.db(ServiceKind::Targets).clone(), audit);
    let (mut read, version) = store.versioned(&target.id).await.unwrap();
    let (fields, cause) = (
        ["tags".to_string()],
        opsconductor_messaging::Cause::default(),
    );
    read.tags = vec!["first".into()];
    store.update(&read, version, &fields, &cause).await.unwrap();
    read.tags = vec!["second".into()];
    let err = store
        .update(&read, version, &fields, &cause)
        .await
        .unwrap_err();
    assert_code(
        &tonic::Status::from(err),
        Code::FailedPrecondition,
        "CONCURRENT_MODIFICATION",
    );
    let now = s.targets().get(&target.id).await.unwrap();
    assert_eq!(now.tags, ["first"]);
}
