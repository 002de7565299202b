//! The key-encryption key: a rotation killed between batches is finished by the next start
//! (and a repeated call is a no-op); two replicas on PostgreSQL rotating at once re-wrap every
//! data key exactly once; a replica with the wrong master key refuses to start; sealed bytes
//! moved to another credential's row do not open.

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use opsconductor_api::credentials::v1::credentials_service_client::CredentialsServiceClient;
use opsconductor_api::credentials::v1::*;
use opsconductor_credentials::Credentials;
use opsconductor_platform::ServiceKind;
use opsconductor_runtime::ServiceModule;
use opsconductor_storage::Database;
use opsconductor_testkit::{
    assert_code, channel_as, free_port, CredentialsExt, Sandbox, StorageBackend,
};
use tonic::Code;

use super::named;
use crate::binary::wait_serving;
use crate::support::password_secret;

/// `opsconductor serve credentials` over the sandbox's credentials database, as a process to
/// kill.
struct Served {
    child: Child,
    url: String,
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn serve(s: &Sandbox, extra: &[(&str, &str)]) -> Served {
    let port = free_port();
    let mut command = Command::new(env!("CARGO_BIN_EXE_opsconductor"));
    command
        .args(["serve", "credentials"])
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    for (var, value) in s.service_env(ServiceKind::Credentials).overrides() {
        command.env(var, value);
    }
    command
        .env("DATABASE_URL", s.database_url(ServiceKind::Credentials))
        .env("LISTEN_ADDR", format!("127.0.0.1:{port}"));
    for (var, value) in extra {
        command.env(var, value);
    }
    let served = Served {
        child: command
            .spawn()
            .expect("spawn opsconductor serve credentials"),
        url: format!("http://127.0.0.1:{port}"),
    };
    wait_serving(&served.url).await;
    served
}

/// How many secret versions are wrapped under `version`, and whether `retired` is retired.
async fn wrapped_under(db: &Database, version: i64) -> i64 {
    let (n,): (i64,) =
        sqlx::query_as("SELECT COUNT(*) FROM credential_secrets WHERE key_version = $1")
            .bind(version)
            .fetch_one(db.pool())
            .await
            .unwrap();
    n
}

async fn retired(db: &Database, version: i64) -> bool {
    let (sealed,): (Option<Vec<u8>>,) =
        sqlx::query_as("SELECT sealed_key FROM encryption_keys WHERE version = $1")
            .bind(version)
            .fetch_one(db.pool())
            .await
            .unwrap();
    sealed.is_none()
}

/// `n` password credentials, `pw-<i>` each.
async fn populate(s: &Sandbox, n: usize) -> Vec<String> {
    let mut ids = Vec::new();
    for i in 0..n {
        let made = s
            .credentials()
            .create(
                named(&format!("cred-{i}"), CredentialKind::Password),
                password_secret(&format!("pw-{i}")),
            )
            .await
            .unwrap();
        ids.push(made.id);
    }
    ids
}

/// Every one of `ids` reveals its secret: `pw-<i>`, or "replaced" for the first `replaced`.
async fn all_reveal(
    client: &mut CredentialsServiceClient<opsconductor_platform::auth::AuthChannel>,
    ids: &[String],
    replaced: usize,
) {
    for (i, id) in ids.iter().enumerate() {
        let revealed = client
            .reveal(id, &uuid::Uuid::now_v7().to_string())
            .await
            .unwrap();
        let want = if i < replaced {
            "replaced".to_string()
        } else {
            format!("pw-{i}")
        };
        assert_eq!(revealed.secret, Some(password_secret(&want)));
    }
}

fn rotate_from(version: u32) -> RotateEncryptionKeyRequest {
    RotateEncryptionKeyRequest {
        expected_key_version: version,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotation_killed_between_batches_is_finished_by_the_next_start() {
    let s = Sandbox::start(StorageBackend::Sqlite).await;
    let db = s.db(ServiceKind::Credentials).clone();
    let ids = populate(&s, 12).await;
    // Two data keys per batch, a pause between batches: slow enough to be killed mid-way.
    let mut first = serve(
        &s,
        &[
            ("CREDENTIALS_REWRAP_BATCH", "2"),
            ("CREDENTIALS_REWRAP_PAUSE_MS", "300"),
        ],
    )
    .await;
    let mut client =
        CredentialsServiceClient::new(channel_as(&first.url, s.admin.access_token.clone()));
    let call = tokio::spawn(async move { client.rotate_encryption_key(rotate_from(1)).await });
    let started = Instant::now();
    while wrapped_under(&db, 2).await < 4 {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "the re-wrap never started"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    first.child.kill().unwrap();
    first.child.wait().unwrap();
    assert!(
        call.await.unwrap().is_err(),
        "the call died with the process"
    );
    let moved = wrapped_under(&db, 2).await;
    assert!(
        (4..12).contains(&moved),
        "killed mid-way: {moved} of 12 re-wrapped"
    );
    assert!(!retired(&db, 1).await, "version 1 still wraps the rest");
    // Every secret reveals mid-way, under whichever version wraps it.
    all_reveal(&mut s.credentials(), &ids, 0).await;

    // Started again, it finishes the rotation on its own and retires version 1.
    let second = serve(&s, &[]).await;
    let started = Instant::now();
    while !(wrapped_under(&db, 2).await == 12 && retired(&db, 1).await) {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "the rotation was not resumed"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The same call again is the same rotation, already done.
    let mut client =
        CredentialsServiceClient::new(channel_as(&second.url, s.admin.access_token.clone()));
    let again = client
        .rotate_encryption_key(rotate_from(1))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (
            again.key_version,
            again.previous_key_version,
            again.rewrapped_count
        ),
        (2, 1, 0)
    );
    all_reveal(&mut client, &ids, 0).await;
    all_reveal(&mut s.credentials(), &ids, 0).await;
    let got = s.credentials().get(&ids[0]).await.unwrap();
    assert_eq!(got.key_version, 2);
    drop(second);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_on_postgres_rotating_at_once_rewrap_each_key_once() {
    let s = Sandbox::start_with(
        StorageBackend::Postgres,
        &[("CREDENTIALS_REWRAP_BATCH", "3")],
    )
    .await;
    let db = s.db(ServiceKind::Credentials).clone();
    let ids = populate(&s, 30).await;
    // Some with a second version, so there are more data keys than credentials.
    for id in &ids[..5] {
        s.credentials()
            .rotate_credential(RotateCredentialRequest {
                id: id.clone(),
                secret: Some(password_secret("replaced")),
                ..Default::default()
            })
            .await
            .unwrap();
    }
    let replica = s
        .start_module(
            &Credentials::production(),
            db.clone(),
            &[("CREDENTIALS_REWRAP_BATCH", "3")],
        )
        .await;
    let mut here = s.credentials();
    let mut there =
        CredentialsServiceClient::new(channel_as(&replica.url, s.admin.access_token.clone()));
    let (a, b) = tokio::join!(
        here.rotate_encryption_key(rotate_from(1)),
        there.rotate_encryption_key(rotate_from(1)),
    );
    let (a, b) = (a.unwrap().into_inner(), b.unwrap().into_inner());
    assert_eq!(
        (a.key_version, b.key_version),
        (2, 2),
        "one rotation, not two"
    );
    assert_eq!(
        a.rewrapped_count + b.rewrapped_count,
        35,
        "each data key re-wrapped once"
    );
    assert_eq!(wrapped_under(&db, 2).await, 35);
    assert!(retired(&db, 1).await);
    // Both replicas reveal every secret (the replaced ones' current versions).
    all_reveal(&mut here, &ids, 5).await;
    all_reveal(&mut there, &ids, 5).await;
    // The next rotation by one is seen by the other; a stale expectation is refused.
    let next = there
        .rotate_encryption_key(rotate_from(2))
        .await
        .unwrap()
        .into_inner();
    assert_eq!((next.key_version, next.rewrapped_count), (3, 35));
    let status = here
        .rotate_encryption_key(rotate_from(1))
        .await
        .unwrap_err();
    assert_code(&status, Code::FailedPrecondition, "KEY_VERSION_MISMATCH");
    all_reveal(&mut here, &ids, 5).await;
    replica.stop().await.unwrap();
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_wrong_master_key_or_a_moved_sealed_secret_opens_nothing() {
    let s = Sandbox::start(StorageBackend::Sqlite).await;
    let db = s.db(ServiceKind::Credentials).clone();
    let env = s.service_env(ServiceKind::Credentials).with(
        "CREDENTIALS_MASTER_KEY",
        "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=",
    );
    let listen = SocketAddr::from(([127, 0, 0, 1], 0));
    let refused = Credentials::production()
        .build(db.clone(), &env, listen)
        .await
        .err()
        .expect("a replica with another master key must not start");
    assert!(
        refused.to_string().contains("CREDENTIALS_MASTER_KEY"),
        "{refused}"
    );

    // An attacker with write access to the database copies one credential's sealed secret and
    // wrapped key over another's, hoping to read it through the other's permissions.
    let mut vault = s.credentials();
    let mine = vault
        .create(
            named("mine", CredentialKind::Password),
            password_secret("mine-pw"),
        )
        .await
        .unwrap();
    let theirs = vault
        .create(
            named("theirs", CredentialKind::Password),
            password_secret("theirs-pw"),
        )
        .await
        .unwrap();
    sqlx::query(
        "UPDATE credential_secrets SET \
         sealed_secret = (SELECT sealed_secret FROM credential_secrets WHERE credential_id = $1), \
         wrapped_key = (SELECT wrapped_key FROM credential_secrets WHERE credential_id = $1) \
         WHERE credential_id = $2",
    )
    .bind(&theirs.id)
    .bind(&mine.id)
    .execute(db.pool())
    .await
    .unwrap();
    let status = vault.reveal(&mine.id, "moved").await.unwrap_err();
    assert_eq!(status.code(), Code::Internal, "{status:?}");
    assert!(!status.message().contains("theirs-pw"));
    let revealed = vault.reveal(&theirs.id, "intact").await.unwrap();
    assert_eq!(revealed.secret, Some(password_secret("theirs-pw")));
    s.stop().await;
}
