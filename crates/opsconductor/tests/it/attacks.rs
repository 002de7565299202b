//! Attacks on the platform, replayed against real services and the real broker, and what
//! stops each: forged revocations from anyone who can publish to the broker, replayed refresh
//! tokens, tokens naming unknown keys to tie up servers, and password guessing.

use std::time::{Duration, Instant};

use lapin::options::{BasicGetOptions, BasicPublishOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::BasicProperties;
use opsconductor_api::audit::v1::AuditOutcome;
use opsconductor_api::auth::v1::*;
use opsconductor_api::common::v1::Role;
use opsconductor_api::targets::v1::ListTargetsRequest;
use opsconductor_api::user::v1::ChangePasswordRequest;
use opsconductor_messaging::topology::platform;
use opsconductor_messaging::{headers, Broker, OutgoingMessage, Topology};
use opsconductor_platform::ServiceKind;
use opsconductor_testkit::{
    amqp_url, bearer, now_secs, on_both_backends, AuthExt, Sandbox, StorageBackend, UsersExt,
    PASSWORD,
};
use opsconductor_tokens::{Claims, SigningKey};
use prost::Message;
use tonic::Code;
use tonic_types::StatusExt;

use crate::support::{assert_code, count, drain_audit, list_targets, until_refused};

mod backfill_budget;
mod broker_forgeries;
mod containment;
mod credential_scope;
mod database_roles;
mod http_egress;
mod http_templates;
mod log_flood;
mod masks;
mod shell_injection;
mod template_bombs;

/// Publishes `message` as a plain AMQP client would: any account that may write to the
/// exchange can do this.
async fn publish_raw(exchange: &str, message: &OutgoingMessage) {
    let connection = lapin::Connection::connect(&amqp_url(), Default::default())
        .await
        .unwrap();
    let channel = connection.create_channel().await.unwrap();
    let mut table = FieldTable::default();
    for (key, value) in &message.headers {
        table.insert(
            key.as_str().into(),
            AMQPValue::LongString(LongString::from(value.as_bytes().to_vec())),
        );
    }
    let properties = BasicProperties::default()
        .with_type(message.message_type.as_str().into())
        .with_message_id(message.message_id.as_str().into())
        .with_timestamp(now_secs())
        .with_headers(table);
    channel
        .basic_publish(
            exchange.into(),
            message.routing_key.as_str().into(),
            BasicPublishOptions::default(),
            &message.body,
            properties,
        )
        .await
        .unwrap()
        .await
        .unwrap();
    let _ = connection.close(200, "done".into()).await;
}

/// Messages waiting in `queue` right now.
async fn waiting(queue: &str) -> u32 {
    let connection = lapin::Connection::connect(&amqp_url(), Default::default())
        .await
        .unwrap();
    let channel = connection.create_channel().await.unwrap();
    let declared = channel
        .queue_declare(
            queue.into(),
            QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
    let _ = connection.close(200, "done".into()).await;
    declared.message_count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_revocations_are_refused_dead_lettered_and_change_nothing() {
    let s = Sandbox::start(StorageBackend::Sqlite).await;
    let (_, session) = s.user_with_role("frida", Role::Operator).await;
    let frida = s.clients_as(&session.access_token);
    list_targets(&frida).await.unwrap();
    let kid = s
        .anonymous()
        .auth()
        .get_jwks(GetJwksRequest {})
        .await
        .unwrap()
        .into_inner()
        .keys[0]
        .kid
        .clone();
    // Revoke the key every token is signed with, until the year 9999: the whole platform.
    let forever = TokenRevoked {
        kid: kid.clone(),
        reason: RevocationReason::KeyRetired as i32,
        revoke_time: Some(prost_types::Timestamp {
            seconds: 253_402_300_799,
            nanos: 0,
        }),
        ..Default::default()
    };
    let exchange = s.broker.names().exchange(&platform::auth_exchange());
    let message = || OutgoingMessage::new(exchange.clone(), platform::TOKEN_REVOKED, &forever);
    let attacker = SigningKey::generate();
    // Signed by the attacker's key but claiming the auth service's key id.
    let mut misattributed = message().signed(&attacker);
    misattributed
        .headers
        .insert(headers::SIGNATURE_KID.into(), kid.clone());
    let forgeries = [
        ("unsigned", message()),
        (
            "signed by a key not in the JWKS",
            message().signed(&attacker),
        ),
        ("a signature that does not match", misattributed),
        // What even the auth service's own key cannot do: revoke beyond every token's life.
        ("dated in the future", message().signed(&s.keys.active())),
    ];
    // The unsigned one as any broker client would send it; the others with the auth service's
    // producer signature (as if its broker identity were stolen), so that what refuses them is
    // the revocation's own signature check.
    publish_raw(&exchange, &forgeries[0].1).await;
    let as_auth = Broker::start_trusted(
        s.broker.config("test-forger"),
        Topology::new(),
        s.producer_trust(ServiceKind::Auth),
    );
    for (_, forgery) in &forgeries[1..] {
        as_auth.publisher().publish(forgery).await.unwrap();
    }
    as_auth.close().await;

    // Every server refuses every forgery into the dead-letter queue, with the reason.
    let dlq = s
        .broker
        .names()
        .broadcast_dead_letter_queue(&platform::token_revocations());
    let expected = (forgeries.len() * opsconductor_catalog::SERVICES.len()) as u32;
    let started = Instant::now();
    while waiting(&dlq).await < expected {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "{} of {expected} forgeries dead-lettered",
            waiting(&dlq).await
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let connection = lapin::Connection::connect(&amqp_url(), Default::default())
        .await
        .unwrap();
    let channel = connection.create_channel().await.unwrap();
    let mut reasons = Vec::new();
    while let Some(dead) = channel
        .basic_get(dlq.as_str().into(), BasicGetOptions { no_ack: true })
        .await
        .unwrap()
    {
        let table = dead.delivery.properties.headers().clone().unwrap();
        let text = |name: &str| match table.inner().get(name) {
            Some(AMQPValue::LongString(s)) => String::from_utf8_lossy(s.as_bytes()).into_owned(),
            other => panic!("{name}: {other:?}"),
        };
        let reason = text(headers::LAST_ERROR);
        // The raw forger did not say who it is; a platform publisher does (as its broker
        // account, which RabbitMQ validates).
        assert_eq!(
            table.inner().contains_key(headers::ORIGINAL_USER_ID),
            !reason.contains("not signed by its producer"),
            "{reason}"
        );
        reasons.push(reason);
        assert_eq!(
            text(headers::ORIGINAL_QUEUE),
            s.broker
                .names()
                .broadcast_queue(&platform::token_revocations())
        );
        assert!(TokenRevoked::decode(dead.delivery.data.as_slice()).is_ok());
    }
    let _ = connection.close(200, "done".into()).await;
    assert_eq!(reasons.len() as u32, expected);
    for (why, fragment) in [
        ("unsigned", "not signed"),
        ("unknown key", "unknown key"),
        ("bad signature", "signature is invalid"),
        ("future", "dated in the future"),
    ] {
        let n = reasons.iter().filter(|r| r.contains(fragment)).count();
        assert_eq!(
            n,
            opsconductor_catalog::SERVICES.len(),
            "{why}: {reasons:?}"
        );
    }

    // Nothing changed: tokens of that key work everywhere, and signing in (which the auth
    // service does with its own token of that key) still works.
    list_targets(&frida).await.unwrap();
    s.user().get(&session.user_id).await.unwrap();
    s.login("frida", PASSWORD).await;
    // And the listeners still apply what the auth service really signs.
    s.auth()
        .revoke_all_tokens(RevokeAllTokensRequest {
            user_id: session.user_id.clone(),
            reason: 0,
        })
        .await
        .unwrap();
    until_refused(Code::Unauthenticated, Duration::from_secs(2), || {
        list_targets(&frida)
    })
    .await;
    s.stop().await;
}

on_both_backends!(a_hundred_replays_of_a_used_refresh_token_end_the_family_once);
async fn a_hundred_replays_of_a_used_refresh_token_end_the_family_once(s: &Sandbox) {
    let (_, first) = s.user_with_role("rex", Role::Viewer).await;
    let mut auth = s.anonymous().auth();
    auth.refresh(&first.refresh_token).await.unwrap();
    // A hundred replays at once of the used token.
    let replays: Vec<_> = (0..100)
        .map(|_| {
            let mut auth = s.anonymous().auth();
            let token = first.refresh_token.clone();
            tokio::spawn(async move { auth.refresh(&token).await })
        })
        .collect();
    for replay in replays {
        let err = replay.await.unwrap().unwrap_err();
        assert_code(&err, Code::Unauthenticated, "REFRESH_TOKEN_INVALID");
    }
    let (revocations,): (i64,) =
        sqlx::query_as("SELECT COUNT(*) FROM revocations WHERE session_id = $1")
            .bind(&first.session_id)
            .fetch_one(s.db(ServiceKind::Auth).pool())
            .await
            .unwrap();
    assert_eq!(revocations, 1, "one revocation, one broadcast");
    assert_eq!(
        s.auth_counters
            .refresh_token_replays
            .load(std::sync::atomic::Ordering::Relaxed),
        99,
        "the rest only counted"
    );
    let events = drain_audit(s).await;
    assert_eq!(
        count(&events, "auth.refresh_token_reuse", AuditOutcome::Denied),
        1,
        "one audit event"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_naming_unknown_keys_never_starve_real_callers() {
    // 64 slots: exactly as many as the real callers below need at once.
    let s = Sandbox::start_with(
        StorageBackend::Sqlite,
        &[("OPSCONDUCTOR_MAX_CONCURRENT_REQUESTS", "64")],
    )
    .await;
    let url = s.url(ServiceKind::Targets);
    let (_, session) = s.user_with_role("real", Role::Viewer).await;
    let real = s.clients_as(&session.access_token);
    list_targets(&real).await.unwrap();
    // Well-formed tokens, issued now, by a key the auth service never had.
    let stranger = SigningKey::generate();
    let forged: Vec<String> = (0..500)
        .map(|i| {
            stranger
                .sign(&Claims::user(
                    "opsconductor",
                    "opsconductor",
                    &format!("u{i}"),
                    "admin",
                    0,
                    now_secs(),
                    900,
                ))
                .unwrap()
        })
        .collect();
    // Ten connections: the calls are in flight together, not queued behind one.
    let channels: Vec<tonic::transport::Channel> = (0..10)
        .map(|_| {
            tonic::transport::Endpoint::from_shared(url.clone())
                .unwrap()
                .connect_lazy()
        })
        .collect();
    let mut attacks = Vec::new();
    for (i, token) in forged.into_iter().enumerate() {
        let channel = channels[i % channels.len()].clone();
        attacks.push(tokio::spawn(async move {
            let mut request = tonic::Request::new(ListTargetsRequest::default());
            bearer(&mut request, &token);
            opsconductor_api::targets::v1::targets_service_client::TargetsServiceClient::new(
                channel,
            )
            .list_targets(request)
            .await
        }));
    }
    let callers: Vec<_> = (0..64)
        .map(|_| {
            let real = s.clients_as(&session.access_token);
            tokio::spawn(async move {
                for _ in 0..5 {
                    list_targets(&real).await?;
                }
                Ok::<(), tonic::Status>(())
            })
        })
        .collect();
    for caller in callers {
        if let Err(status) = caller.await.unwrap() {
            panic!("a real caller was refused: {status:?}");
        }
    }
    for attack in attacks {
        let err = attack.await.unwrap().unwrap_err();
        assert_code(&err, Code::Unauthenticated, "TOKEN_INVALID");
    }
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guessing_passwords_and_secrets_is_throttled_and_audited() {
    let s = Sandbox::start_with(
        StorageBackend::Sqlite,
        &[
            ("OPSCONDUCTOR_CREDENTIAL_FAILURES_PER_ACCOUNT", "3/600s"),
            ("OPSCONDUCTOR_CREDENTIAL_FAILURES_PER_PEER", "8/600s"),
        ],
    )
    .await;
    let mut auth = s.anonymous().auth();
    let exhausted = |status: &tonic::Status| {
        assert_code(status, Code::ResourceExhausted, "RATE_LIMITED");
        let retry = status
            .get_details_retry_info()
            .and_then(|r| r.retry_delay)
            .expect("RetryInfo");
        assert!(retry >= Duration::from_secs(1), "{retry:?}");
    };

    // A service secret: three wrong guesses, then refused unchecked; another identity is not
    // locked out by it.
    let exchange = |service_id: &str, secret: &str| ExchangeServiceTokenRequest {
        service_id: service_id.into(),
        service_secret: secret.into(),
        ..Default::default()
    };
    for _ in 0..3 {
        let err = auth
            .exchange_service_token(exchange("targets", "a guess"))
            .await
            .unwrap_err();
        assert_code(&err, Code::Unauthenticated, "INVALID_CREDENTIALS");
    }
    let err = auth
        .exchange_service_token(exchange("targets", &s.secrets[&ServiceKind::Targets]))
        .await
        .unwrap_err();
    exhausted(&err);
    auth.exchange_service_token(exchange("user", &s.secrets[&ServiceKind::User]))
        .await
        .expect("another identity is not locked out");

    // A password, changed from a stolen session: three wrong current passwords, then refused.
    let (gina, session) = s.user_with_role("gina", Role::Operator).await;
    let mut as_gina = s.clients_as(&session.access_token).user();
    let change = |current: &str| ChangePasswordRequest {
        user_id: gina.id.clone(),
        current_password: current.into(),
        new_password: "a brand new passphrase".into(),
    };
    for _ in 0..3 {
        let err = as_gina
            .change_password(change("not it at all"))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument);
    }
    exhausted(&as_gina.change_password(change(PASSWORD)).await.unwrap_err());

    // Sign-in: three wrong passwords for one account, then even the right one waits.
    for _ in 0..3 {
        let err = auth.sign_in("gina", "a wrong guess").await.unwrap_err();
        assert_code(&err, Code::Unauthenticated, "INVALID_CREDENTIALS");
    }
    exhausted(&auth.sign_in("gina", PASSWORD).await.unwrap_err());
    // Spraying other usernames from the same address: the peer's budget of 8 failures (three
    // spent on the service secret, three on gina) runs out too.
    let mut refused = None;
    for i in 0..10 {
        match auth.sign_in(&format!("nobody{i}"), "a wrong guess").await {
            Err(status) if status.code() == Code::ResourceExhausted => {
                refused = Some(i);
                break;
            }
            Err(status) => assert_code(&status, Code::Unauthenticated, "INVALID_CREDENTIALS"),
            Ok(_) => panic!("signed in as nobody{i}"),
        }
    }
    assert_eq!(refused, Some(2), "8 failures from this peer: 3 + 3 + 2");
    assert!(
        s.auth_counters
            .throttled
            .load(std::sync::atomic::Ordering::Relaxed)
            >= 3
    );

    // Every failed check is in the audit trail; refused-unchecked attempts are not (an
    // attacker must not be able to flood it at network speed).
    let events = drain_audit(&s).await;
    assert_eq!(
        count(&events, "auth.service_token", AuditOutcome::Failure),
        3
    );
    assert_eq!(
        count(&events, "user.password_change", AuditOutcome::Failure),
        3
    );
    assert_eq!(count(&events, "auth.login", AuditOutcome::Failure), 5);
    assert_eq!(
        count(&events, "user.password_check", AuditOutcome::Failure),
        5
    );
    s.stop().await;
}
