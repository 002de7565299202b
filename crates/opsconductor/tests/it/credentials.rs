//! The credentials service: every kind of secret round-trips and shows only its metadata; bad
//! material is refused field by field with nothing written; the database (the SQLite file, a
//! PostgreSQL dump) never holds a plaintext; rotations keep the previous version for its grace.
//! Reveals, refusals, the key rotation and the deletion guard are in [`access`] and [`keys`].

mod access;
mod keys;

use opsconductor_api::credentials::v1::secret_material::Material;
use opsconductor_api::credentials::v1::*;
use opsconductor_platform::ServiceKind;
use opsconductor_testkit::{
    assert_code, assert_violations, on_both_backends, CredentialsExt, Sandbox, StorageBackend,
};
use prost_types::Duration as ProtoDuration;
use tonic::Code;

use crate::support::password_secret;

pub const ED25519: &str = include_str!("../fixtures/credentials/ed25519");
const RSA_ENCRYPTED: &str = include_str!("../fixtures/credentials/rsa_encrypted");
const ECDSA_P256: &str = include_str!("../fixtures/credentials/ecdsa_p256");
const ED25519_COSTLY: &str = include_str!("../fixtures/credentials/ed25519_costly");
const RSA_PEM_FORMAT: &str = include_str!("../fixtures/credentials/rsa_pem_format");
const CERT: &str = include_str!("../fixtures/credentials/cert.pem");
const CERT_KEY: &str = include_str!("../fixtures/credentials/cert_key.pem");
const CERT_KEY_ENCRYPTED: &str = include_str!("../fixtures/credentials/cert_key_encrypted.pem");
const CERT_KEY_COSTLY: &str = include_str!("../fixtures/credentials/cert_key_costly.pem");
const CERT_KEY_SEC1: &str = include_str!("../fixtures/credentials/cert_key_sec1.pem");

pub fn named(name: &str, kind: CredentialKind) -> Credential {
    Credential {
        name: name.into(),
        kind: kind as i32,
        ..Default::default()
    }
}

fn ssh(private_key: &str, passphrase: &str) -> SecretMaterial {
    SecretMaterial {
        material: Some(Material::SshKey(SshKeySecret {
            private_key: private_key.into(),
            passphrase: passphrase.into(),
        })),
    }
}

fn token(token: &str) -> SecretMaterial {
    SecretMaterial {
        material: Some(Material::ApiToken(ApiTokenSecret {
            token: token.into(),
        })),
    }
}

fn certificate(key: &str, passphrase: &str) -> SecretMaterial {
    SecretMaterial {
        material: Some(Material::Certificate(CertificateSecret {
            certificate_chain_pem: CERT.into(),
            private_key_pem: key.into(),
            passphrase: passphrase.into(),
        })),
    }
}

/// A line from the middle of a PEM body: bytes that only the secret itself holds.
fn body_line(pem: &str) -> &str {
    let lines: Vec<&str> = pem.lines().filter(|l| !l.starts_with("-----")).collect();
    lines[lines.len() / 2]
}

/// Everything the credentials database holds, as bytes: the SQLite file with its WAL, or a
/// `pg_dump` of the PostgreSQL database.
pub async fn stored_bytes(s: &Sandbox) -> Vec<u8> {
    let url = s.database_url(ServiceKind::Credentials).to_string();
    match s.backend {
        StorageBackend::Sqlite => {
            // Everything committed is in the file or its WAL.
            let path = url
                .trim_start_matches("sqlite://")
                .split('?')
                .next()
                .unwrap_or_default()
                .to_string();
            let mut bytes = std::fs::read(&path).unwrap();
            if let Ok(wal) = std::fs::read(format!("{path}-wal")) {
                bytes.extend(wal);
            }
            bytes
        }
        StorageBackend::Postgres => {
            let out = std::process::Command::new("pg_dump")
                .args(["--data-only", "--inserts", &url])
                .output()
                .expect("pg_dump");
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            assert!(!out.stdout.is_empty());
            with_bytea_decoded(out.stdout)
        }
    }
}

/// `pg_dump` writes `BYTEA` values as `'\x<hex>'` literals, in which no plaintext could ever
/// match: the decoded bytes of every such literal are appended, so a secret stored in a
/// `BYTEA` column in plain would be found.
fn with_bytea_decoded(mut dump: Vec<u8>) -> Vec<u8> {
    let mut decoded = Vec::new();
    let text = String::from_utf8_lossy(&dump).into_owned();
    for literal in text.split("'\\x").skip(1) {
        let digits = literal.split('\'').next().unwrap_or_default();
        decoded.extend(hex::decode(digits).expect("a bytea literal is hex"));
    }
    dump.extend(decoded);
    dump
}

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack
        .windows(needle.len())
        .any(|w| w == needle.as_bytes())
}

on_both_backends!(every_kind_round_trips_and_the_database_holds_no_plaintext);
async fn every_kind_round_trips_and_the_database_holds_no_plaintext(s: &Sandbox) {
    let mut vault = s.credentials();
    let cases = [
        (
            named("db-password", CredentialKind::Password),
            password_secret("pw-7f3a9c-unique"),
        ),
        (named("ed25519", CredentialKind::SshKey), ssh(ED25519, "")),
        (
            named("rsa-encrypted", CredentialKind::SshKey),
            ssh(RSA_ENCRYPTED, "fixture passphrase"),
        ),
        (named("ecdsa", CredentialKind::SshKey), ssh(ECDSA_P256, "")),
        (
            named("api-token", CredentialKind::ApiToken),
            token("tok-51be0d-unique"),
        ),
        (
            named("tls-client", CredentialKind::Certificate),
            certificate(CERT_KEY_ENCRYPTED, "fixture"),
        ),
        (
            named("tls-plain-key", CredentialKind::Certificate),
            certificate(CERT_KEY, ""),
        ),
    ];
    let mut created = Vec::new();
    for (i, (mut credential, secret)) in cases.iter().cloned().enumerate() {
        credential.username = format!("user-{i}");
        let made = vault.create(credential, secret.clone()).await.unwrap();
        assert_eq!((made.secret_version, made.key_version), (1, 1));
        assert!(made.last_reveal_time.is_none());
        let revealed = vault
            .reveal(&made.id, &format!("round-trip-{i}"))
            .await
            .unwrap();
        assert_eq!(revealed.secret.as_ref(), Some(&secret), "{}", made.name);
        assert_eq!(revealed.secret_version, 1);
        assert!(!revealed.audit_event_id.is_empty());
        // The generated Debug redacts what the contract marks sensitive.
        let debug = format!("{revealed:?}");
        assert!(!debug.contains("pw-7f3a9c") && !debug.contains(body_line(ED25519)));
        created.push(vault.get(&made.id).await.unwrap());
    }
    let by_name = |name: &str| created.iter().find(|c| c.name == name).unwrap();
    assert_eq!(
        by_name("ed25519").fingerprint,
        "SHA256:CLpV4znzEZHG4GxOOkXphFrjiT8rxVac/crFLQOi9pg"
    );
    assert_eq!(by_name("ed25519").algorithm, "ssh-ed25519");
    assert_eq!(
        by_name("rsa-encrypted").fingerprint,
        "SHA256:njx5q+iKNhZeB6ylgsQYT9o22yddqazlgRmw1EQh5o8"
    );
    assert_eq!(
        by_name("ecdsa").fingerprint,
        "SHA256:/yK1vQL6RgY3ZaPoiZQlIySRz8eIzP99Iig16GWtlyI"
    );
    let cert = by_name("tls-client");
    assert!(
        cert.subject.contains("CN=fixture.example"),
        "{}",
        cert.subject
    );
    assert_eq!(cert.subject, cert.issuer, "self-signed");
    assert_eq!(cert.algorithm, "id-ecPublicKey");
    // The certificate's notAfter is the credential's expiry (2036-11-25).
    let expire = cert.expire_time.unwrap().seconds;
    assert!((2_110_000_000..2_112_000_000).contains(&expire), "{expire}");
    assert!(created.iter().all(|c| c.last_reveal_time.is_some()));

    let listed = s
        .credentials()
        .list_credentials(ListCredentialsRequest {
            kind: CredentialKind::SshKey as i32,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let names: Vec<&str> = listed.credentials.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names, ["ed25519", "rsa-encrypted", "ecdsa"]);

    let stored = stored_bytes(s).await;
    assert!(
        contains(&stored, "rsa-encrypted"),
        "the dump holds the metadata"
    );
    for needle in [
        "pw-7f3a9c-unique",
        "tok-51be0d-unique",
        "fixture passphrase",
        body_line(ED25519),
        body_line(RSA_ENCRYPTED),
        body_line(ECDSA_P256),
        body_line(CERT_KEY),
        body_line(CERT_KEY_ENCRYPTED),
    ] {
        assert!(!contains(&stored, needle), "{needle} is stored in plain");
    }
    // The search can see inside PostgreSQL's binary columns: each sealed secret is found as it
    // is stored. (SQLite keeps a large blob across overflow pages, so this holds there only for
    // small ones; its file is searched as it is.)
    if s.backend != StorageBackend::Postgres {
        return;
    }
    let sealed: Vec<Vec<u8>> = sqlx::query_scalar("SELECT sealed_secret FROM credential_secrets")
        .fetch_all(s.db(ServiceKind::Credentials).pool())
        .await
        .unwrap();
    assert_eq!(sealed.len(), cases.len());
    for bytes in &sealed {
        assert!(
            stored.windows(bytes.len()).any(|w| w == bytes.as_slice()),
            "a sealed secret is not found in what the database holds"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_material_and_bad_requests_are_refused_field_by_field() {
    let s = Sandbox::start(StorageBackend::Sqlite).await;
    let mut vault = s.credentials();
    let refused = [
        (
            named("x", CredentialKind::Unspecified),
            password_secret("p"),
            "credential.kind",
        ),
        (
            named("x", CredentialKind::Password),
            ssh(ED25519, ""),
            "secret",
        ),
        (
            named("x", CredentialKind::Password),
            password_secret(""),
            "secret.password.password",
        ),
        (
            named("x", CredentialKind::ApiToken),
            token("two\nlines"),
            "secret.api_token.token",
        ),
        (
            named("x", CredentialKind::SshKey),
            ssh("-----BEGIN OPENSSH PRIVATE KEY-----\nbm90IGEga2V5\n", ""),
            "secret.ssh_key.private_key",
        ),
        (
            named("x", CredentialKind::SshKey),
            ssh(RSA_PEM_FORMAT, ""),
            "secret.ssh_key.private_key",
        ),
        (
            named("x", CredentialKind::SshKey),
            ssh(RSA_ENCRYPTED, ""),
            "secret.ssh_key.passphrase",
        ),
        (
            named("x", CredentialKind::SshKey),
            ssh(RSA_ENCRYPTED, "not the passphrase"),
            "secret.ssh_key.passphrase",
        ),
        (
            named("x", CredentialKind::SshKey),
            ssh(ED25519, "a passphrase for nothing"),
            "secret.ssh_key.passphrase",
        ),
        // A key that names its own cost: 300 bcrypt rounds, refused before any is run.
        (
            named("x", CredentialKind::SshKey),
            ssh(ED25519_COSTLY, "costly"),
            "secret.ssh_key.private_key",
        ),
        (
            named("x", CredentialKind::Certificate),
            certificate(CERT_KEY_SEC1, ""),
            "secret.certificate.private_key_pem",
        ),
        (
            named("x", CredentialKind::Certificate),
            certificate(CERT_KEY_COSTLY, "costly"),
            "secret.certificate.private_key_pem",
        ),
        (
            named("x", CredentialKind::Certificate),
            certificate(CERT_KEY_ENCRYPTED, "wrong"),
            "secret.certificate.passphrase",
        ),
        (
            named("Not A Name", CredentialKind::Password),
            password_secret("p"),
            "credential.name",
        ),
    ];
    for (credential, secret, field) in refused {
        let status = vault.create(credential, secret).await.unwrap_err();
        assert_violations(&status, &[field]);
    }
    let status = vault
        .create(
            named("x", CredentialKind::Certificate),
            SecretMaterial {
                material: Some(Material::Certificate(CertificateSecret {
                    certificate_chain_pem: "-----BEGIN CERTIFICATE-----\nAAAA\n".into(),
                    private_key_pem: CERT_KEY.into(),
                    passphrase: String::new(),
                })),
            },
        )
        .await
        .unwrap_err();
    assert_violations(&status, &["secret.certificate.certificate_chain_pem"]);
    let status = vault
        .create_credential(CreateCredentialRequest {
            credential: Some(named("x", CredentialKind::Password)),
            secret: None,
        })
        .await
        .unwrap_err();
    assert_violations(&status, &["secret"]);
    // Nothing of any of them was written.
    let (rows,): (i64,) = sqlx::query_as(
        "SELECT (SELECT COUNT(*) FROM credentials) + (SELECT COUNT(*) FROM credential_secrets)",
    )
    .fetch_one(s.db(ServiceKind::Credentials).pool())
    .await
    .unwrap();
    assert_eq!(rows, 0);

    let made = vault
        .create(
            named("kept", CredentialKind::Password),
            password_secret("p1"),
        )
        .await
        .unwrap();
    let status = vault
        .create(
            named("kept", CredentialKind::Password),
            password_secret("p2"),
        )
        .await
        .unwrap_err();
    assert_code(&status, Code::AlreadyExists, "RESOURCE_ALREADY_EXISTS");
    let status = vault
        .reveal_credential(RevealCredentialRequest {
            id: "not-a-uuid".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_violations(&status, &["id", "idempotency_key", "reason"]);
    let status = vault
        .rotate_credential(RotateCredentialRequest {
            id: made.id.clone(),
            secret: Some(token("a token for a password credential")),
            previous_grace: Some(ProtoDuration {
                seconds: 30 * 86_400,
                nanos: 0,
            }),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_violations(&status, &["previous_grace"]);
    let status = vault
        .rotate_credential(RotateCredentialRequest {
            id: made.id.clone(),
            secret: Some(token("a token for a password credential")),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_violations(&status, &["secret"]);
    let status = vault
        .update_credential(UpdateCredentialRequest {
            credential: Some(Credential {
                id: made.id.clone(),
                kind: CredentialKind::SshKey as i32,
                ..Default::default()
            }),
            update_mask: Some(prost_types::FieldMask {
                paths: vec!["kind".into()],
            }),
        })
        .await
        .unwrap_err();
    assert_violations(&status, &["update_mask.paths[0]"]);
    let status = vault
        .list_credentials(ListCredentialsRequest {
            kind: 99,
            names: vec!["Bad Name".into()],
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_violations(&status, &["kind", "names[0]"]);
    let unchanged = vault.get(&made.id).await.unwrap();
    assert_eq!(unchanged.secret_version, 1);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_secret_keeps_its_previous_version_for_the_grace_period() {
    let s = Sandbox::start(StorageBackend::Sqlite).await;
    let mut vault = s.credentials();
    let made = vault
        .create(
            named("rotating", CredentialKind::Password),
            password_secret("v1"),
        )
        .await
        .unwrap();
    let rotate = |secret: &str, grace: i64| RotateCredentialRequest {
        id: made.id.clone(),
        secret: Some(password_secret(secret)),
        previous_grace: Some(ProtoDuration {
            seconds: grace,
            nanos: 0,
        }),
        ..Default::default()
    };
    let second = vault
        .rotate_credential(rotate("v2", 3600))
        .await
        .unwrap()
        .into_inner()
        .credential
        .unwrap();
    assert_eq!(second.secret_version, 2);
    let reveal = |version: u32, key: &str| RevealCredentialRequest {
        id: made.id.clone(),
        reason: "in-flight run".into(),
        idempotency_key: key.into(),
        secret_version: version,
        ..Default::default()
    };
    let old = vault
        .reveal_credential(reveal(1, "a"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(old.secret, Some(password_secret("v1")));
    assert_eq!(old.secret_version, 1);
    // No grace this time: version 2 is gone the moment version 3 exists.
    vault.rotate_credential(rotate("v3", 0)).await.unwrap();
    let status = vault.reveal_credential(reveal(2, "b")).await.unwrap_err();
    assert_code(&status, Code::FailedPrecondition, "SECRET_VERSION_EXPIRED");
    let current = vault.reveal(&made.id, "c").await.unwrap();
    assert_eq!(
        (current.secret, current.secret_version),
        (Some(password_secret("v3")), 3)
    );
    // Version 1's grace still runs.
    let still = vault
        .reveal_credential(reveal(1, "d"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(still.secret, Some(password_secret("v1")));
    s.stop().await;
}
