//! A Python client generated with grpcio-tools from proto/ calls the user service.

use opsconductor_platform::ServiceKind;
use std::process::Command;

use opsconductor_api::user::v1::GetUserRequest;
use opsconductor_testkit::{python, repo_root, Sandbox, StorageBackend};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_client_generated_from_the_protos_calls_the_user_service() {
    let s = Sandbox::start(StorageBackend::Sqlite).await;
    let root = repo_root();
    let addr = s.addr(ServiceKind::User).to_string();
    let auth = s.addr(ServiceKind::Auth).to_string();
    let password = s.admin_password.clone();
    let output = tokio::task::spawn_blocking(move || {
        Command::new(python())
            .arg(root.join("crates/opsconductor/tests/python/user_client.py"))
            .args([
                "--addr",
                &addr,
                "--auth-addr",
                &auth,
                "--username",
                "pyuser",
            ])
            // The password travels in the environment, not on a command line others can read.
            .env("OPSCONDUCTOR_PASSWORD", password)
            .arg("--proto-dir")
            .arg(root.join("proto"))
            .output()
            .expect("run python (pip install grpcio-tools)")
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "python failed: {stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let seen: serde_json::Value = serde_json::from_str(stdout.trim()).expect("one JSON line");
    assert_eq!(seen["code"], "INVALID_ARGUMENT");
    let fields: Vec<&str> = seen["fields"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|v| v.as_str())
        .collect();
    assert!(
        fields.contains(&"user.username") && fields.contains(&"user.email"),
        "{fields:?}"
    );

    // What Python created is what Rust reads.
    let id = seen["id"].as_str().unwrap().to_string();
    let user = s
        .user()
        .get_user(GetUserRequest { id })
        .await
        .unwrap()
        .into_inner()
        .user
        .unwrap();
    assert_eq!(user.username, "pyuser");
    assert_eq!(seen["role"], 1);
    s.stop().await;
}

/// Another implementation checks the audit chain: Python, from the export, the checkpoints and
/// the published keys alone, with its own protobuf encoder; then finds an edit made in the
/// database.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_verifies_the_audit_chain_from_an_export() {
    let s = Sandbox::start(StorageBackend::Sqlite).await;
    s.user_with_role("py-audited", opsconductor_api::common::v1::Role::Operator)
        .await;
    let events = crate::support::drain_audit(&s).await;
    assert!(events.len() >= 3);
    let run = |s: &Sandbox| {
        let root = repo_root();
        let addr = s.addr(ServiceKind::Audit).to_string();
        let token = s.admin.access_token.clone();
        tokio::task::spawn_blocking(move || {
            let output = Command::new(python())
                .arg(root.join("crates/opsconductor/tests/python/audit_verify.py"))
                .args(["--addr", &addr])
                .arg("--proto-dir")
                .arg(root.join("proto"))
                .env("OPSCONDUCTOR_TOKEN", token)
                .output()
                .expect("run python (pip install grpcio-tools cryptography)");
            let stdout = String::from_utf8_lossy(&output.stdout).to_string();
            assert!(
                output.status.success(),
                "python failed: {stdout}{}",
                String::from_utf8_lossy(&output.stderr)
            );
            serde_json::from_str::<serde_json::Value>(stdout.trim()).expect("one JSON line")
        })
    };
    let seen = run(&s).await.unwrap();
    assert_eq!(seen["ok"], true, "{seen}");
    assert!(
        seen["checked"].as_u64().unwrap() > events.len() as u64,
        "{seen}"
    );
    assert!(seen["checkpoints"].as_u64().unwrap() >= 1, "{seen}");

    sqlx::query("UPDATE audit_events SET resource_id = 'someone-else' WHERE sequence = 2")
        .execute(s.db(ServiceKind::Audit).pool())
        .await
        .unwrap();
    let seen = run(&s).await.unwrap();
    assert_eq!(seen["ok"], false, "{seen}");
    assert_eq!(seen["sequence"], 2, "{seen}");
    s.stop().await;
}
