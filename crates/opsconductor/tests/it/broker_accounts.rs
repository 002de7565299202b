//! Least privilege on the broker, on the real RabbitMQ: the definitions `secrets init` writes
//! are imported into a virtual host of the test's own; each service's account can do its work
//! and nothing else — the targets service's account cannot publish a revocation, delete or read
//! the audit queue, or publish as another account — and the services run on their own accounts
//! with `OPSCONDUCTOR_AMQP_DECLARE=verify`.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::process::Command;
use std::time::Duration;

use lapin::options::{
    BasicGetOptions, BasicPublishOptions, ConfirmSelectOptions, QueueDeleteOptions,
};
use lapin::{BasicProperties, Connection};
use opsconductor::secrets::{BrokerOptions, Options, Secrets};
use opsconductor_api::auth::v1::LogoutRequest;
use opsconductor_api::common::v1::Role;
use opsconductor_messaging::topology::platform;
use opsconductor_messaging::DeadLetterStrategy;
use opsconductor_platform::ServiceKind;
use opsconductor_testkit::{rabbitmqctl, Sandbox, StorageBackend, TestBroker};
use tonic::Code;

use crate::support::{list_targets, until_refused};

/// A virtual host and accounts of the test's own; removed on drop.
struct Accounts {
    vhost: String,
    users: Vec<String>,
}

impl Drop for Accounts {
    fn drop(&mut self) {
        let users: Vec<String> = self.users.iter().map(|u| format!("<<\"{u}\">>")).collect();
        // One call for all: each rabbitmqctl run costs a second of Erlang start-up.
        let cleanup = format!(
            "[rabbit_auth_backend_internal:delete_user(U, <<\"test\">>) || U <- [{}]], \
             rabbit_vhost:delete(<<\"{}\">>, <<\"test\">>).",
            users.join(", "),
            self.vhost
        );
        let _ = Command::new("rabbitmqctl")
            .args(["eval", &cleanup])
            .output();
    }
}

/// Writes the deployment's broker definitions for `broker`'s prefix into a new virtual host,
/// with the accounts renamed `<prefix>-<service>` (accounts are node-wide), and imports them.
fn import(broker: &TestBroker, dir: &std::path::Path) -> (Accounts, Secrets) {
    let vhost = format!("{}-vhost", broker.prefix);
    let secrets = Secrets::ensure(
        dir,
        opsconductor_catalog::SERVICES,
        &Options {
            provided: Vec::new(),
            broker: Some(BrokerOptions {
                prefix: broker.prefix.clone(),
                vhost: vhost.clone(),
                // RabbitMQ 3.10 here: see DeadLetterStrategy::AtLeastOnce.
                strategy: DeadLetterStrategy::AtMostOnce,
            }),
            database: None,
        },
    )
    .unwrap();
    let path = dir.join("rabbitmq/definitions.json");
    let mut definitions: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let rename = |name: &str| format!("{}-{name}", broker.prefix);
    let mut users = Vec::new();
    for user in definitions["users"].as_array_mut().unwrap() {
        let name = rename(user["name"].as_str().unwrap());
        users.push(name.clone());
        user["name"] = name.into();
    }
    for permission in definitions["permissions"].as_array_mut().unwrap() {
        permission["user"] = rename(permission["user"].as_str().unwrap()).into();
    }
    let accounts = Accounts { vhost, users };
    // rabbitmqctl runs as the broker's user: the file must be readable by it, for a moment
    // (it holds only password hashes, and of accounts removed when the test ends).
    let readable = tempfile::Builder::new().tempdir().unwrap();
    let file = readable.path().join("definitions.json");
    std::fs::write(&file, definitions.to_string()).unwrap();
    for (path, mode) in [(readable.path(), 0o755), (file.as_path(), 0o644)] {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
    }
    rabbitmqctl(&["import_definitions", &file.display().to_string()]);
    (accounts, secrets)
}

fn password(secrets: &Secrets, kind: ServiceKind) -> String {
    secrets
        .vars(kind)
        .find(|(var, _)| *var == "AMQP_PASSWORD")
        .map(|(_, value)| value.to_string())
        .unwrap()
}

fn url(broker: &TestBroker, kind: ServiceKind, accounts: &Accounts) -> String {
    format!(
        "amqp://{}-{kind}@127.0.0.1:5672/{}",
        broker.prefix, accounts.vhost
    )
}

/// Publishes as `connection`'s account; the broker's verdict.
async fn publish(
    connection: &Connection,
    exchange: &str,
    key: &str,
    properties: BasicProperties,
) -> Result<(), String> {
    let channel = connection
        .create_channel()
        .await
        .map_err(|e| e.to_string())?;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .map_err(|e| e.to_string())?;
    let confirm = channel
        .basic_publish(
            exchange.into(),
            key.into(),
            BasicPublishOptions::default(),
            b"x",
            properties,
        )
        .await
        .map_err(|e| e.to_string())?
        .await
        .map_err(|e| e.to_string())?;
    if confirm.is_ack() {
        Ok(())
    } else {
        Err("nacked".into())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_service_account_does_its_work_and_nothing_else() {
    let broker = TestBroker::new();
    let dir = tempfile::tempdir().unwrap();
    let (accounts, secrets) = import(&broker, dir.path());
    let names = broker.names();

    // The targets service's account, as a compromised targets service would use it.
    let targets_url = format!(
        "amqp://{}-targets:{}@127.0.0.1:5672/{}",
        broker.prefix,
        password(&secrets, ServiceKind::Targets),
        accounts.vhost
    );
    let targets = Connection::connect(&targets_url, Default::default())
        .await
        .unwrap();
    let audit = names.exchange(&platform::audit_exchange());
    publish(
        &targets,
        &audit,
        "target.create",
        BasicProperties::default(),
    )
    .await
    .expect("it publishes audit events");
    // RabbitMQ checks the user id it claims: it can only be itself.
    let own = format!("{}-targets", broker.prefix);
    publish(
        &targets,
        &audit,
        "target.create",
        BasicProperties::default().with_user_id(own.as_str().into()),
    )
    .await
    .expect("as itself");
    let other = format!("{}-auth", broker.prefix);
    let err = publish(
        &targets,
        &audit,
        "target.create",
        BasicProperties::default().with_user_id(other.as_str().into()),
    )
    .await
    .unwrap_err();
    assert!(err.contains("PRECONDITION_FAILED"), "{err}");
    // It cannot publish a revocation, whatever the signature.
    let err = publish(
        &targets,
        &names.exchange(&platform::auth_exchange()),
        platform::TOKEN_REVOKED,
        BasicProperties::default(),
    )
    .await
    .unwrap_err();
    assert!(err.contains("ACCESS_REFUSED"), "{err}");
    // It can neither read nor delete the audit trail waiting for the audit service.
    let queue = names.queue(&platform::audit_events());
    let channel = targets.create_channel().await.unwrap();
    let err = channel
        .basic_get(queue.as_str().into(), BasicGetOptions::default())
        .await
        .unwrap_err();
    assert!(err.to_string().contains("ACCESS_REFUSED"), "{err}");
    let channel = targets.create_channel().await.unwrap();
    let err = channel
        .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
        .await
        .unwrap_err();
    assert!(err.to_string().contains("ACCESS_REFUSED"), "{err}");
    let _ = targets.close(200, "done".into()).await;

    // The services on their own accounts, checking the topology instead of declaring it.
    let per_service: BTreeMap<ServiceKind, Vec<(String, String)>> =
        opsconductor_catalog::implemented()
            .map(|kind| {
                (
                    kind,
                    vec![
                        ("AMQP_URL".into(), url(&broker, kind, &accounts)),
                        ("AMQP_PASSWORD".into(), password(&secrets, kind)),
                        ("OPSCONDUCTOR_AMQP_DECLARE".into(), "verify".into()),
                    ],
                )
            })
            .collect();
    let s = Sandbox::start_configured(StorageBackend::Sqlite, broker, &[], &per_service).await;
    // Signing in publishes audit events; logging out broadcasts a signed revocation, which
    // every service applies.
    let (_, session) = s.user_with_role("least", Role::Operator).await;
    let clients = s.clients_as(&session.access_token);
    list_targets(&clients).await.unwrap();
    clients
        .auth()
        .logout(LogoutRequest {
            refresh_token: session.refresh_token.clone(),
        })
        .await
        .unwrap();
    until_refused(Code::Unauthenticated, Duration::from_secs(5), || {
        list_targets(&clients)
    })
    .await;
    // The administrator's account reads what waits for the audit service.
    let admin = format!(
        "amqp://{}-admin:{}@127.0.0.1:5672/{}",
        s.broker.prefix,
        std::fs::read_to_string(dir.path().join("rabbitmq/admin-password"))
            .unwrap()
            .trim(),
        accounts.vhost
    );
    let events = crate::support::drain_audit_from(&s, &admin).await;
    assert!(
        events.iter().any(|e| e.action == "auth.logout"),
        "{events:?}"
    );
    s.stop().await;
    drop(accounts);
}
