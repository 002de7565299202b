//! The auth service and the token checks in front of every service, end to end: sessions with
//! rotating refresh tokens, reuse detection, logout, revoke-all reaching another service within
//! a second, key rotation, service identities, calls on a user's behalf, life without the auth
//! service, and one token fetch for a hundred callers.

use std::sync::Arc;
use std::time::Duration;

use opsconductor_api::auth::v1::*;
use opsconductor_api::common::v1::Role;
use opsconductor_api::targets::v1::{ListTargetsRequest, TestTargetConnectivityRequest};
use opsconductor_api::user::v1::{ListUsersRequest, User};
use opsconductor_platform::auth::{ServiceCredentials, TokenSource, ON_BEHALF_OF};
use opsconductor_platform::client::Clients;
use opsconductor_platform::ServiceKind;
use opsconductor_testkit::{
    bearer, on_both_backends, AuthExt, Sandbox, StorageBackend, TargetsExt, UsersExt, PASSWORD,
};
use tonic::Code;

use crate::support::{assert_code, assert_violations, list_targets, until_refused};

on_both_backends!(sessions_refresh_rotate_and_a_reused_token_ends_the_family);
async fn sessions_refresh_rotate_and_a_reused_token_ends_the_family(s: &Sandbox) {
    let (operator, first) = s.user_with_role("oscar", Role::Operator).await;
    assert_eq!(first.token_type, "Bearer");
    assert_eq!(first.role, Role::Operator as i32);
    assert_eq!(first.user_id, operator.id);
    let mut auth = s.anonymous().auth();

    let second = auth.refresh(&first.refresh_token).await.unwrap();
    assert_eq!(
        second.session_id, first.session_id,
        "same session, new tokens"
    );
    assert_ne!(second.refresh_token, first.refresh_token);
    assert_ne!(second.access_token, first.access_token);
    // The new access token works where the old one did.
    list_targets(&s.clients_as(&second.access_token))
        .await
        .unwrap();

    // The first refresh token again: a thief or a replay. The whole session ends.
    let reused = auth.refresh(&first.refresh_token).await.unwrap_err();
    assert_code(&reused, Code::Unauthenticated, "REFRESH_TOKEN_INVALID");
    let after = auth.refresh(&second.refresh_token).await.unwrap_err();
    assert_code(&after, Code::Unauthenticated, "REFRESH_TOKEN_INVALID");
    // And the access tokens of the session stop working everywhere.
    let clients = s.clients_as(&second.access_token);
    until_refused(Code::Unauthenticated, Duration::from_secs(1), || {
        list_targets(&clients)
    })
    .await;
    let sessions = s.auth().sessions(&operator.id).await.unwrap();
    assert!(sessions.is_empty(), "{sessions:?}");

    // A fresh login works, and shows as one session.
    let third = s.login("oscar", PASSWORD).await;
    let mine = s
        .clients_as(&third.access_token)
        .auth()
        .sessions(&operator.id)
        .await
        .unwrap();
    assert_eq!(mine.len(), 1);
    assert_eq!(mine[0].id, third.session_id);
    assert!(
        mine[0].client_address.starts_with("127.0.0.1"),
        "{:?}",
        mine[0]
    );
}

on_both_backends!(logout_ends_one_session_and_its_tokens);
async fn logout_ends_one_session_and_its_tokens(s: &Sandbox) {
    let (operator, kept) = s.user_with_role("olive", Role::Operator).await;
    let ended = s.login("olive", PASSWORD).await;
    let mut as_olive = s.clients_as(&ended.access_token).auth();
    as_olive
        .logout(LogoutRequest {
            refresh_token: ended.refresh_token.clone(),
        })
        .await
        .unwrap();
    // That session's access token is revoked now; from her other session, ending it again
    // succeeds: logout is idempotent.
    s.clients_as(&kept.access_token)
        .auth()
        .logout(LogoutRequest {
            refresh_token: ended.refresh_token.clone(),
        })
        .await
        .unwrap();
    let clients = s.clients_as(&ended.access_token);
    until_refused(Code::Unauthenticated, Duration::from_secs(1), || {
        list_targets(&clients)
    })
    .await;
    // The other session is untouched.
    list_targets(&s.clients_as(&kept.access_token))
        .await
        .unwrap();

    // Someone else's session is not yours to end; listing it neither.
    let (_, other) = s.user_with_role("otto", Role::Viewer).await;
    let err = s
        .clients_as(&other.access_token)
        .auth()
        .logout(LogoutRequest {
            refresh_token: kept.refresh_token.clone(),
        })
        .await
        .unwrap_err();
    assert_code(&err, Code::PermissionDenied, "PERMISSION_DENIED");
    let err = s
        .clients_as(&other.access_token)
        .auth()
        .sessions(&operator.id)
        .await
        .unwrap_err();
    assert_code(&err, Code::PermissionDenied, "PERMISSION_DENIED");
    let err = s
        .clients_as(&other.access_token)
        .auth()
        .sessions("")
        .await
        .unwrap_err();
    assert_violations(&err, &["user_id"]);
    // An administrator sees everyone's.
    let all = s.auth().sessions("").await.unwrap();
    assert!(all.iter().any(|x| x.id == kept.session_id));
    assert!(!all.iter().any(|x| x.id == ended.session_id));
}

on_both_backends!(wrong_passwords_and_disabled_users_do_not_sign_in);
async fn wrong_passwords_and_disabled_users_do_not_sign_in(s: &Sandbox) {
    let mut auth = s.anonymous().auth();
    let (user, session) = s.user_with_role("dora", Role::Viewer).await;
    for (username, password) in [("dora", "not her password"), ("nobody", PASSWORD)] {
        let err = auth.sign_in(username, password).await.unwrap_err();
        assert_code(&err, Code::Unauthenticated, "INVALID_CREDENTIALS");
        assert!(
            err.message().ends_with("invalid username or password"),
            "no hint which: {}",
            err.message()
        );
    }
    let err = auth.sign_in("", "").await.unwrap_err();
    assert_violations(&err, &["username", "password"]);

    // Disabled: her tokens stop working, she cannot sign in or refresh.
    s.user()
        .update(
            User {
                id: user.id.clone(),
                disabled: true,
                ..Default::default()
            },
            &["disabled"],
        )
        .await
        .unwrap();
    let clients = s.clients_as(&session.access_token);
    until_refused(Code::Unauthenticated, Duration::from_secs(1), || {
        list_targets(&clients)
    })
    .await;
    let err = auth.sign_in("dora", PASSWORD).await.unwrap_err();
    assert_code(&err, Code::Unauthenticated, "INVALID_CREDENTIALS");
    let err = auth.refresh(&session.refresh_token).await.unwrap_err();
    assert_code(&err, Code::Unauthenticated, "REFRESH_TOKEN_INVALID");
}

on_both_backends!(a_revoke_all_is_enforced_by_another_service_within_a_second);
async fn a_revoke_all_is_enforced_by_another_service_within_a_second(s: &Sandbox) {
    let (operator, session) = s.user_with_role("rita", Role::Operator).await;
    let clients = s.clients_as(&session.access_token);
    // Verified and cached by the targets service: from here on it is a hash lookup there.
    list_targets(&clients).await.unwrap();
    clients.user().get(&operator.id).await.unwrap();

    let revoked = s
        .auth()
        .revoke_all_tokens(RevokeAllTokensRequest {
            user_id: operator.id.clone(),
            reason: RevocationReason::Unspecified as i32,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(revoked.token_version, 1);
    assert_eq!(revoked.ended_session_count, 1);
    let took = until_refused(Code::Unauthenticated, Duration::from_secs(1), || {
        list_targets(&clients)
    })
    .await;
    assert!(took < Duration::from_secs(1), "{took:?}");
    let err = list_targets(&clients).await.unwrap_err();
    assert_code(&err, Code::Unauthenticated, "TOKEN_REVOKED");
    until_refused(Code::Unauthenticated, Duration::from_secs(1), || {
        let mut users = clients.user();
        let id = operator.id.clone();
        async move { users.get(&id).await }
    })
    .await;
    // A replica started after the broadcast still refuses the token: it caught up from
    // ListRevocations when it connected.
    let (replica, _db) = s.start_replica(ServiceKind::Targets).await;
    let late = opsconductor_api::targets::v1::targets_service_client::TargetsServiceClient::new(
        opsconductor_testkit::channel_as(&replica.url, session.access_token.clone()),
    );
    until_refused(Code::Unauthenticated, Duration::from_secs(10), || {
        let mut late = late.clone();
        async move { late.list(ListTargetsRequest::default()).await }
    })
    .await;
    // Signing in again gives tokens of the new version, accepted everywhere.
    let again = s.login("rita", PASSWORD).await;
    list_targets(&s.clients_as(&again.access_token))
        .await
        .unwrap();
    replica.stop().await.unwrap();

    // Users may revoke only their own tokens.
    let err = s
        .clients_as(&again.access_token)
        .auth()
        .revoke_all_tokens(RevokeAllTokensRequest {
            user_id: s.admin.user_id.clone(),
            reason: 0,
        })
        .await
        .unwrap_err();
    assert_code(&err, Code::PermissionDenied, "PERMISSION_DENIED");
    let err = s
        .auth()
        .revoke_all_tokens(RevokeAllTokensRequest {
            user_id: "x".into(),
            reason: 99,
        })
        .await
        .unwrap_err();
    assert_violations(&err, &["user_id", "reason"]);
}

on_both_backends!(rotated_keys_keep_old_tokens_valid_and_sign_new_ones);
async fn rotated_keys_keep_old_tokens_valid_and_sign_new_ones(s: &Sandbox) {
    let (_, before) = s.user_with_role("kim", Role::Viewer).await;
    let old_kid = opsconductor_tokens::decode_header(&before.access_token)
        .unwrap()
        .kid
        .unwrap();
    let rotated = s
        .auth()
        .rotate_signing_key(RotateSigningKeyRequest {
            revoke_previous: false,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(rotated.previous_kid, old_kid);
    let new_kid = rotated.key.unwrap().kid;
    assert_ne!(new_kid, old_kid);
    // The old key stays published until its last token has expired.
    let retire = rotated.previous_retire_time.unwrap();
    let lifetime =
        retire.seconds - prost_types::Timestamp::from(std::time::SystemTime::now()).seconds;
    assert!((900..=1000).contains(&lifetime), "retired in {lifetime}s");
    let jwks = s
        .anonymous()
        .auth()
        .get_jwks(GetJwksRequest {})
        .await
        .unwrap()
        .into_inner()
        .keys;
    let kids: Vec<&str> = jwks.iter().map(|k| k.kid.as_str()).collect();
    assert_eq!(kids, [new_kid.as_str(), old_kid.as_str()], "active first");

    // Tokens of the old key keep working; new tokens use the new key, and services that
    // never saw it fetch it on first sight.
    list_targets(&s.clients_as(&before.access_token))
        .await
        .unwrap();
    let after = s.login("kim", PASSWORD).await;
    let kid = opsconductor_tokens::decode_header(&after.access_token)
        .unwrap()
        .kid
        .unwrap();
    assert_eq!(kid, new_kid);
    list_targets(&s.clients_as(&after.access_token))
        .await
        .unwrap();

    // A leaked key: rotating with revoke_previous retires it at once, everywhere.
    let revoked = s
        .auth()
        .rotate_signing_key(RotateSigningKeyRequest {
            revoke_previous: true,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(revoked.previous_kid, new_kid);
    let clients = s.clients_as(&after.access_token);
    until_refused(Code::Unauthenticated, Duration::from_secs(1), || {
        list_targets(&clients)
    })
    .await;
    list_targets(&s.clients_as(&before.access_token))
        .await
        .expect("the first key was only retired, not revoked");
    let jwks = s
        .anonymous()
        .auth()
        .get_jwks(GetJwksRequest {})
        .await
        .unwrap()
        .into_inner()
        .keys;
    assert!(
        !jwks.iter().any(|k| k.kid == new_kid),
        "the leaked key is gone"
    );
    // Only administrators rotate.
    let err = s
        .clients_as(&s.login("kim", PASSWORD).await.access_token)
        .auth()
        .rotate_signing_key(RotateSigningKeyRequest::default())
        .await
        .unwrap_err();
    assert_code(&err, Code::PermissionDenied, "PERMISSION_DENIED");
}

on_both_backends!(services_exchange_their_secret_for_a_token);
async fn services_exchange_their_secret_for_a_token(s: &Sandbox) {
    let mut auth = s.anonymous().auth();
    let token = auth
        .exchange_service_token(ExchangeServiceTokenRequest {
            service_id: "jobs".into(),
            service_secret: s.secrets[&ServiceKind::Jobs].clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(token.token_type, "Bearer");
    let claims_kind = {
        let payload = token.access_token.split('.').nth(1).unwrap();
        use base64::Engine;
        let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(payload)
            .unwrap();
        serde_json::from_slice::<serde_json::Value>(&bytes).unwrap()
    };
    assert_eq!(claims_kind["kind"], "service");
    assert_eq!(claims_kind["sub"], "jobs");
    let lifetime = claims_kind["exp"].as_u64().unwrap() - claims_kind["iat"].as_u64().unwrap();
    assert_eq!(lifetime, 600, "service tokens live ten minutes");
    // jobs may read users and targets, not create them.
    let jobs = s.clients_as(&token.access_token);
    jobs.user().get(&s.admin.user_id).await.unwrap();
    let err = jobs
        .user()
        .list(ListUsersRequest::default())
        .await
        .unwrap_err();
    assert_code(&err, Code::PermissionDenied, "PERMISSION_DENIED");

    for (service_id, secret) in [
        ("jobs", "not the secret".to_string()),
        ("nosuch", s.secrets[&ServiceKind::Jobs].clone()),
        ("user", s.secrets[&ServiceKind::Jobs].clone()),
    ] {
        let err = auth
            .exchange_service_token(ExchangeServiceTokenRequest {
                service_id: service_id.into(),
                service_secret: secret,
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_code(&err, Code::Unauthenticated, "INVALID_CREDENTIALS");
    }
    let err = auth
        .exchange_service_token(ExchangeServiceTokenRequest::default())
        .await
        .unwrap_err();
    assert_violations(&err, &["service_id", "service_secret"]);
}

on_both_backends!(a_service_acting_for_a_user_is_authorized_for_both);
async fn a_service_acting_for_a_user_is_authorized_for_both(s: &Sandbox) {
    let (_, viewer) = s.user_with_role("vic", Role::Viewer).await;
    let (_, operator) = s.user_with_role("otis", Role::Operator).await;
    let executor = s.service_token(ServiceKind::Executor).await;
    let target_id = "01900000-0000-7000-8000-000000000001";
    // TestTargetConnectivity: operators, and the executor.
    let call = |user_token: Option<String>| {
        let clients = s.clients_as(&executor);
        async move {
            let mut request = tonic::Request::new(TestTargetConnectivityRequest {
                id: target_id.into(),
                ..Default::default()
            });
            if let Some(token) = user_token {
                request
                    .metadata_mut()
                    .insert(ON_BEHALF_OF, token.parse().unwrap());
            }
            clients.targets().test_target_connectivity(request).await
        }
    };
    // On its own, the executor may; the target is simply not there.
    assert_code(
        &call(None).await.unwrap_err(),
        Code::NotFound,
        "RESOURCE_NOT_FOUND",
    );
    // For an operator, it may too.
    assert_code(
        &call(Some(operator.access_token.clone())).await.unwrap_err(),
        Code::NotFound,
        "RESOURCE_NOT_FOUND",
    );
    // For a viewer it may not: a viewer cannot get it done by asking a service.
    assert_code(
        &call(Some(viewer.access_token.clone())).await.unwrap_err(),
        Code::PermissionDenied,
        "PERMISSION_DENIED",
    );
    // A forwarded token must itself be valid.
    assert_code(
        &call(Some("garbage".into())).await.unwrap_err(),
        Code::Unauthenticated,
        "TOKEN_INVALID",
    );
    // Only services forward: a user cannot claim to act for another.
    let mut request = tonic::Request::new(ListTargetsRequest::default());
    request
        .metadata_mut()
        .insert(ON_BEHALF_OF, operator.access_token.parse().unwrap());
    let err = s
        .clients_as(&viewer.access_token)
        .targets()
        .list_targets(request)
        .await
        .unwrap_err();
    assert_code(&err, Code::PermissionDenied, "PERMISSION_DENIED");
}

on_both_backends!(users_manage_only_themselves_unless_admin);
async fn users_manage_only_themselves_unless_admin(s: &Sandbox) {
    let (viewer, session) = s.user_with_role("val", Role::Viewer).await;
    let (other, _) = s.user_with_role("walt", Role::Viewer).await;
    let mut users = s.clients_as(&session.access_token).user();
    let changed = |id: &str| User {
        id: id.into(),
        display_name: "Changed".into(),
        email: "changed@example.com".into(),
        role: Role::Admin as i32,
        ..Default::default()
    };
    let mine = users
        .update(changed(&viewer.id), &["display_name", "email"])
        .await
        .unwrap();
    assert_eq!(mine.display_name, "Changed");
    assert_eq!(mine.role, Role::Viewer as i32);
    let refused: [(&str, &[&str]); 4] = [
        (&viewer.id, &["role"]),
        (&viewer.id, &["disabled"]),
        (&viewer.id, &[]),
        (&other.id, &["display_name"]),
    ];
    for (id, paths) in refused {
        let err = users.update(changed(id), paths).await.unwrap_err();
        assert_code(&err, Code::PermissionDenied, "PERMISSION_DENIED");
    }
    users.preferences(&viewer.id).await.unwrap();
    let err = users.preferences(&other.id).await.unwrap_err();
    assert_code(&err, Code::PermissionDenied, "PERMISSION_DENIED");
    // The notification service reads anyone's, to deliver to them.
    let notification = s.service_token(ServiceKind::Notification).await;
    s.clients_as(&notification)
        .user()
        .preferences(&other.id)
        .await
        .unwrap();
    // A role change ends the user's sessions: their next call needs a new sign-in.
    s.user()
        .update(changed(&viewer.id), &["role"])
        .await
        .unwrap();
    let clients = s.clients_as(&session.access_token);
    until_refused(Code::Unauthenticated, Duration::from_secs(1), || {
        list_targets(&clients)
    })
    .await;
    assert_eq!(s.login("val", PASSWORD).await.role, Role::Admin as i32);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_auth_service_down_verified_tokens_keep_working() {
    let mut s = Sandbox::start(StorageBackend::Sqlite).await;
    let (_, used) = s.user_with_role("una", Role::Viewer).await;
    let (_, unused) = s.user_with_role("uma", Role::Viewer).await;
    // The targets service sees one token, so it has the keys; the other it has never seen.
    list_targets(&s.clients_as(&used.access_token))
        .await
        .unwrap();
    // A service's own token source, with its background refresher.
    let secret = s.secrets[&ServiceKind::Jobs].clone();
    let channel = s.anonymous().raw_channel(ServiceKind::Auth);
    let tokens = TokenSource::new(ServiceCredentials::new(channel, "jobs", &secret));
    let jobs = Clients::from_env(s.env())
        .unwrap()
        .with_tokens(tokens.clone());
    list_targets(&jobs).await.unwrap();
    let _refresher = tokens.spawn_refresher();

    s.stop_service(ServiceKind::Auth).await;
    assert!(s
        .anonymous()
        .auth()
        .get_jwks(GetJwksRequest {})
        .await
        .is_err());
    // Verification is offline: cached tokens, and tokens signed by known keys, still pass.
    list_targets(&s.clients_as(&used.access_token))
        .await
        .unwrap();
    list_targets(&s.clients_as(&unused.access_token))
        .await
        .unwrap();
    for _ in 0..20 {
        list_targets(&jobs)
            .await
            .expect("the service's token is still valid");
    }
    assert_eq!(tokens.fetches(), 1, "nothing to refresh yet");
    // Garbage is still refused, without the auth service.
    let err = list_targets(&s.clients_as("not.a.token"))
        .await
        .unwrap_err();
    assert_code(&err, Code::Unauthenticated, "TOKEN_INVALID");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_calls_at_token_expiry_cause_one_token_fetch() {
    // Service tokens of 4 s, handed out while more than 2 s from expiry: each serves at most
    // 2 s (less, since expiry is counted from the whole second it was issued in).
    let s = Sandbox::start_with(
        StorageBackend::Sqlite,
        &[("AUTH_SERVICE_TOKEN_TTL_SECS", "4")],
    )
    .await;
    let secret = s.secrets[&ServiceKind::Jobs].clone();
    let channel = s.anonymous().raw_channel(ServiceKind::Auth);
    let tokens = TokenSource::new(ServiceCredentials::new(channel, "jobs", &secret));
    let jobs = Arc::new(
        Clients::from_env(s.env())
            .unwrap()
            .with_tokens(tokens.clone()),
    );
    let burst = |jobs: Arc<Clients>| async move {
        let calls: Vec<_> = (0..100)
            .map(|_| {
                let jobs = jobs.clone();
                tokio::spawn(async move { list_targets(&jobs).await })
            })
            .collect();
        for call in calls {
            call.await.unwrap().expect("every call is authenticated");
        }
    };
    burst(jobs.clone()).await;
    assert_eq!(tokens.fetches(), 1, "100 first calls, one fetch");
    tokio::time::sleep(Duration::from_millis(2300)).await;
    burst(jobs.clone()).await;
    assert_eq!(tokens.fetches(), 2, "100 calls at expiry, one more fetch");
    burst(jobs).await;
    assert_eq!(tokens.fetches(), 2);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_is_bootstrapped_once_and_never_reset() {
    let s = Sandbox::start(StorageBackend::Sqlite).await;
    assert_eq!(s.admin.role, Role::Admin as i32);
    // Restarting the user service with another password must not change the existing admin.
    let env = s
        .env()
        .clone()
        .with("OPSCONDUCTOR_ADMIN_PASSWORD", "a different admin password");
    let admin = opsconductor_user::AdminBootstrap::from_env(&env)
        .unwrap()
        .unwrap();
    let outbox = opsconductor_messaging::Outbox::new(s.db(ServiceKind::User).clone());
    let audit = opsconductor_messaging::AuditLog::new(&outbox, &s.broker.names(), "user");
    let store = opsconductor_user::UserStore::new(s.db(ServiceKind::User).clone(), audit);
    assert!(!admin.apply(&store).await.unwrap(), "an admin exists");
    s.login("admin", &s.admin_password).await;
    let err = s
        .anonymous()
        .auth()
        .sign_in("admin", "a different admin password")
        .await
        .unwrap_err();
    assert_code(&err, Code::Unauthenticated, "INVALID_CREDENTIALS");
    // A bearer header set by hand works like the token source's.
    let mut request = tonic::Request::new(ListUsersRequest::default());
    bearer(&mut request, &s.admin.access_token);
    s.anonymous().user().list_users(request).await.unwrap();
    s.stop().await;
}
