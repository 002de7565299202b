//! The contracts themselves: every method declares who may call it (deny-by-default) and how
//! safe it is to retry; a method without a policy stops a server from starting.

use opsconductor_platform::config::ServerConfig;
use opsconductor_platform::policy::{Idempotency, PolicyError, PolicyTable};
use opsconductor_platform::server::{ServerError, ServiceServer};

#[test]
fn every_method_of_every_service_declares_a_caller_policy() {
    let table = PolicyTable::global().expect("descriptor set");
    let services: Vec<&str> = table.services().collect();
    for expected in [
        "auth",
        "user",
        "audit",
        "credentials",
        "targets",
        "jobs",
        "notification",
        "scheduler",
        "executor",
    ] {
        let kind = opsconductor_platform::ServiceKind::from_name(expected).unwrap();
        assert!(
            services.contains(&kind.grpc_name()),
            "{expected} is missing: {services:?}"
        );
    }
    let mut missing = Vec::new();
    for service in &services {
        if let Err(PolicyError::MissingPolicies(paths)) = table.require_policies(service) {
            missing.extend(paths);
        }
    }
    assert!(
        missing.is_empty(),
        "methods without a caller policy: {missing:#?}"
    );
    assert!(
        table.methods().count() > 60,
        "the contracts look incomplete"
    );
}

#[test]
fn reads_are_side_effect_free_and_updates_idempotent() {
    let table = PolicyTable::global().expect("descriptor set");
    for method in table.methods() {
        let name = method.path.rsplit('/').next().unwrap_or_default();
        if name.starts_with("Get") || name.starts_with("List") {
            assert_eq!(
                method.idempotency,
                Idempotency::NoSideEffects,
                "{}",
                method.path
            );
        }
        if name.starts_with("Update") || name.starts_with("Delete") {
            assert!(
                method.idempotency.retry_safe(),
                "{} should be retry-safe",
                method.path
            );
        }
        // A plain create is not safe to repeat; calls that trigger work carry an idempotency
        // key instead, which makes them safe (StartRun, SendNotification).
        if name.starts_with("Create") {
            assert_eq!(method.idempotency, Idempotency::Unknown, "{}", method.path);
        }
    }
    let check = table
        .method("/opsconductor.user.v1.UserService/CheckPassword")
        .unwrap();
    let policy = check.policy.as_ref().unwrap();
    assert_eq!(
        policy.services,
        ["auth"],
        "only the auth service checks passwords"
    );
    assert_eq!(policy.min_role, 0);
}

#[tokio::test]
async fn a_method_without_a_policy_is_found_and_its_server_does_not_start() {
    let dir = tempfile::tempdir().unwrap();
    let root = opsconductor_testkit::repo_root().join("proto");
    std::fs::create_dir_all(dir.path().join("opsconductor/common/v1")).unwrap();
    std::fs::copy(
        root.join("opsconductor/common/v1/options.proto"),
        dir.path().join("opsconductor/common/v1/options.proto"),
    )
    .unwrap();
    std::fs::create_dir_all(dir.path().join("opsconductor/bad/v1")).unwrap();
    std::fs::write(
        dir.path().join("opsconductor/bad/v1/bad.proto"),
        r#"syntax = "proto3";
package opsconductor.bad.v1;
import "opsconductor/common/v1/options.proto";
message PingRequest {}
message PingResponse {}
service BadService {
  rpc Guarded(PingRequest) returns (PingResponse) {
    option (opsconductor.common.v1.policy) = {min_role: ROLE_VIEWER};
  }
  rpc Leaky(PingRequest) returns (PingResponse);
  rpc Empty(PingRequest) returns (PingResponse) {
    option (opsconductor.common.v1.policy) = {};
  }
}
"#,
    )
    .unwrap();
    let mut compiler = protox::Compiler::new([dir.path()]).unwrap();
    compiler.include_imports(true);
    compiler.open_file("opsconductor/bad/v1/bad.proto").unwrap();
    let table: &'static PolicyTable = Box::leak(Box::new(
        PolicyTable::decode(&compiler.encode_file_descriptor_set()).unwrap(),
    ));
    // A server for that service refuses to start.
    let server = ServiceServer::new(
        "bad",
        ServerConfig::local("127.0.0.1:0".parse().unwrap()),
        tonic::service::Routes::default(),
        ["opsconductor.bad.v1.BadService"],
    )
    .with_policies(table);
    assert!(matches!(
        server.bind().await,
        Err(ServerError::Policy(PolicyError::MissingPolicies(_)))
    ));
    match table.require_policies("opsconductor.bad.v1.BadService") {
        Err(PolicyError::MissingPolicies(mut paths)) => assert_eq!(
            {
                paths.sort();
                paths
            },
            [
                "/opsconductor.bad.v1.BadService/Empty",
                "/opsconductor.bad.v1.BadService/Leaky"
            ]
        ),
        other => panic!("expected missing policies, got {other:?}"),
    }
}

#[tokio::test]
async fn a_server_for_an_unknown_service_does_not_start() {
    let server = ServiceServer::new(
        "rogue",
        ServerConfig::local("127.0.0.1:0".parse().unwrap()),
        tonic::service::Routes::default(),
        ["opsconductor.rogue.v1.RogueService"],
    );
    match server.bind().await {
        Err(ServerError::Policy(PolicyError::UnknownService(name))) => {
            assert_eq!(name, "opsconductor.rogue.v1.RogueService")
        }
        Err(other) => panic!("unexpected error {other}"),
        Ok(_) => panic!("a server without policies started"),
    }
}

#[test]
fn secrets_are_marked_sensitive_and_redacted_in_debug_output() {
    use prost_reflect::{DescriptorPool, Value};

    let pool = DescriptorPool::decode(opsconductor_api::FILE_DESCRIPTOR_SET).unwrap();
    let sensitive = pool
        .get_extension_by_name("opsconductor.common.v1.sensitive")
        .unwrap();
    let mut unmarked = Vec::new();
    for message in pool
        .all_messages()
        .filter(|m| m.package_name().starts_with("opsconductor."))
    {
        for field in message.fields() {
            let name = field.name();
            let looks_secret = ["password", "secret", "passphrase", "private_key"]
                .iter()
                .any(|s| name.contains(s))
                || name == "token"
                || (name.ends_with("_token") && !name.ends_with("page_token"));
            let is_string = matches!(
                field.kind(),
                prost_reflect::Kind::String | prost_reflect::Kind::Bytes
            );
            let marked = field.options().has_extension(&sensitive)
                && matches!(
                    field.options().get_extension(&sensitive).as_ref(),
                    Value::Bool(true)
                );
            if looks_secret && is_string && !marked {
                unmarked.push(field.full_name().to_string());
            }
        }
    }
    assert!(
        unmarked.is_empty(),
        "secret-looking fields without (sensitive) = true: {unmarked:#?}"
    );

    let request = opsconductor_api::user::v1::CreateUserRequest {
        user: None,
        password: "hunter2-hunter2".into(),
    };
    let shown = format!("{request:?}");
    assert!(
        !shown.contains("hunter2") && shown.contains("<redacted>"),
        "{shown}"
    );
    use opsconductor_api::user::v1::{
        ChangePasswordRequest, ChannelDestination, CheckPasswordRequest,
    };
    let shown = format!(
        "{:?} {:?} {:?}",
        ChangePasswordRequest {
            user_id: "u".into(),
            current_password: "old-secret-1".into(),
            new_password: "new-secret-2".into(),
        },
        CheckPasswordRequest {
            username: "ada".into(),
            password: "check-secret-3".into()
        },
        ChannelDestination {
            channel: 2,
            destination: "https://hooks.slack.com/services/T0/B0/tok-secret-4".into(),
            enabled: true,
            signing_credential_id: String::new(),
        }
    );
    assert!(!shown.contains("secret-"), "{shown}");
    assert!(
        shown.contains("\"ada\""),
        "non-secret fields still show: {shown}"
    );
    let login = opsconductor_api::auth::v1::LoginResponse {
        access_token: "eyJhbGciOi.secret.token".into(),
        ..Default::default()
    };
    assert!(!format!("{login:?}").contains("eyJ"));
}
