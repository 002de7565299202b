//! The authorization matrix: every method of every served service, read from the descriptor
//! set, called by every kind of caller — no token, garbage, expired, wrongly signed, another
//! issuer, another audience, revoked, viewer, operator, admin, and each service identity — and
//! the outcome checked against the method's declared policy. Requests are empty: an admitted
//! caller gets past authorization and meets validation (or succeeds); no one else gets in.

use std::str::FromStr;
use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use opsconductor_api::auth::v1::RevokeAllTokensRequest;
use opsconductor_api::common::v1::{CallerPolicy, Role};
use opsconductor_platform::policy::PolicyTable;
use opsconductor_platform::ServiceKind;
use opsconductor_testkit::{now_secs, role_label, Sandbox, StorageBackend};
use opsconductor_tokens::Claims;
use tonic::transport::Channel;
use tonic::Code;

#[derive(Debug, Clone)]
enum Caller {
    NoToken,
    Garbage,
    Expired,
    WrongSignature,
    OtherIssuer,
    OtherAudience,
    Revoked,
    User(Role),
    Service(ServiceKind),
}

#[derive(Debug, PartialEq, Eq)]
enum Expect {
    Admitted,
    Unauthenticated,
    Denied,
}

/// What the policy says, worked out independently of the server's own check.
fn expected(policy: &CallerPolicy, caller: &Caller) -> Expect {
    if policy.public {
        return Expect::Admitted;
    }
    let admitted = match caller {
        Caller::User(role) => {
            policy.allow_self || (policy.min_role > 0 && *role as i32 >= policy.min_role)
        }
        Caller::Service(kind) => policy.services.iter().any(|s| s == kind.name()),
        _ => return Expect::Unauthenticated,
    };
    if admitted {
        Expect::Admitted
    } else {
        Expect::Denied
    }
}

/// What an admitted caller's empty request may get: success, or a refusal of its content.
const ADMITTED: [Code; 5] = [
    Code::Ok,
    Code::InvalidArgument,
    Code::NotFound,
    Code::FailedPrecondition,
    Code::AlreadyExists,
];

/// Calls `path` with an empty request and `token`; returns the status code.
async fn call(channel: Channel, path: &str, token: Option<&str>) -> Code {
    let mut grpc = tonic::client::Grpc::new(channel);
    if let Err(e) = grpc.ready().await {
        panic!("{path}: not ready: {e}");
    }
    let mut request = tonic::Request::new(());
    if let Some(token) = token {
        request
            .metadata_mut()
            .insert("authorization", format!("Bearer {token}").parse().unwrap());
    }
    let path = http::uri::PathAndQuery::from_str(path).unwrap();
    let codec = tonic_prost::ProstCodec::<(), ()>::default();
    match grpc.unary(request, path, codec).await {
        Ok(_) => Code::Ok,
        Err(status) => status.code(),
    }
}

/// The services a server advertises through reflection, besides health and reflection.
async fn advertised(channel: Channel) -> Vec<String> {
    use tokio_stream::StreamExt;
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
    use tonic_reflection::pb::v1::ServerReflectionRequest;

    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut responses = ServerReflectionClient::new(channel)
        .server_reflection_info(tokio_stream::iter([request]))
        .await
        .unwrap()
        .into_inner();
    let response = responses.next().await.unwrap().unwrap();
    let Some(MessageResponse::ListServicesResponse(list)) = response.message_response else {
        panic!("unexpected {response:?}");
    };
    list.service
        .into_iter()
        .map(|s| s.name)
        .filter(|name| !name.starts_with("grpc."))
        .collect()
}

/// Claims a sandbox token of `role` carries (issuer and audience are the defaults).
fn user_claims(user_id: &str, role: Role) -> Claims {
    Claims::user(
        "opsconductor",
        "opsconductor",
        user_id,
        role_label(role),
        0,
        now_secs(),
        900,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_method_of_every_served_service_admits_exactly_its_declared_callers() {
    let s = Sandbox::start(StorageBackend::Sqlite).await;
    let now = now_secs();
    let id = || uuid::Uuid::now_v7().to_string();

    // Valid tokens for each role, real service tokens for each identity.
    let mut callers: Vec<(Caller, Option<String>)> = vec![
        (Caller::NoToken, None),
        (Caller::Garbage, Some("garbage".into())),
    ];
    let mut expired = user_claims(&id(), Role::Admin);
    expired.iat = now - 7200;
    expired.nbf = now - 7200;
    expired.exp = now - 3600;
    callers.push((Caller::Expired, Some(s.mint(&expired))));
    let genuine = s.mint(&user_claims(&id(), Role::Admin));
    let signed = genuine.rsplit_once('.').unwrap().0;
    let forged = format!("{signed}.{}", URL_SAFE_NO_PAD.encode([7u8; 64]));
    callers.push((Caller::WrongSignature, Some(forged)));
    let mut other_issuer = user_claims(&id(), Role::Admin);
    other_issuer.iss = "someone-else".into();
    callers.push((Caller::OtherIssuer, Some(s.mint(&other_issuer))));
    let mut other_audience = user_claims(&id(), Role::Admin);
    other_audience.aud = "another-platform".into();
    callers.push((Caller::OtherAudience, Some(s.mint(&other_audience))));

    // A revoked admin token: its user's tokens were revoked after it was issued.
    let revoked_user = id();
    let revoked = s.mint(&user_claims(&revoked_user, Role::Admin));
    s.auth()
        .revoke_all_tokens(RevokeAllTokensRequest {
            user_id: revoked_user,
            reason: 0,
        })
        .await
        .unwrap();
    callers.push((Caller::Revoked, Some(revoked.clone())));

    for role in [Role::Viewer, Role::Operator, Role::Admin] {
        callers.push((Caller::User(role), Some(s.mint(&user_claims(&id(), role)))));
    }
    for kind in ServiceKind::ALL {
        callers.push((Caller::Service(kind), Some(s.service_token(kind).await)));
    }
    assert_eq!(callers.len(), 19);

    let table = PolicyTable::global().unwrap();
    // Every service of the catalog: a new one is walked as soon as it is in the table.
    let served: Vec<(ServiceKind, std::net::SocketAddr)> = opsconductor_catalog::implemented()
        .map(|kind| (kind, s.addr(kind)))
        .collect();
    // The revocation reached every service before the walk: any method that needs a token
    // refuses the revoked one.
    for (kind, addr) in &served {
        let channel = Channel::from_shared(format!("http://{addr}"))
            .unwrap()
            .connect_lazy();
        let probe = table
            .service_methods(kind.grpc_name())
            .unwrap()
            .iter()
            .find(|path| {
                table
                    .method(path)
                    .and_then(|m| m.policy.as_ref())
                    .is_some_and(|p| !p.public)
            })
            .unwrap_or_else(|| panic!("{kind} has no method that needs a token"));
        let mut waited = Duration::ZERO;
        while call(channel.clone(), probe, Some(&revoked)).await != Code::Unauthenticated {
            assert!(
                waited < Duration::from_secs(5),
                "{kind} never heard of the revocation"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
            waited += Duration::from_millis(50);
        }
    }

    let mut walked = 0;
    let mut outcomes = std::collections::BTreeMap::<&str, usize>::new();
    let mut failures = Vec::new();
    let mut methods_walked = 0;
    for (kind, addr) in &served {
        let channel = Channel::from_shared(format!("http://{addr}"))
            .unwrap()
            .connect_lazy();
        // Every service the server advertises (e.g. DeadLetterService beside its own).
        let services = advertised(channel.clone()).await;
        assert!(services.iter().any(|name| name == kind.grpc_name()));
        let methods: Vec<&String> = services
            .iter()
            .flat_map(|name| table.service_methods(name).unwrap())
            .collect();
        assert!(!methods.is_empty());
        methods_walked += methods.len();
        for path in methods {
            let policy = table
                .method(path)
                .and_then(|m| m.policy.clone())
                .unwrap_or_else(|| panic!("{path} has no policy"));
            for (caller, token) in &callers {
                let code = call(channel.clone(), path, token.as_deref()).await;
                let want = expected(&policy, caller);
                *outcomes
                    .entry(match want {
                        Expect::Admitted => "admitted",
                        Expect::Unauthenticated => "unauthenticated",
                        Expect::Denied => "denied",
                    })
                    .or_default() += 1;
                let ok = match want {
                    // Past authorization an empty request meets the handler: it succeeds or is
                    // refused as a client's mistake. A server fault (INTERNAL, UNKNOWN,
                    // UNIMPLEMENTED, ...) is no admission.
                    Expect::Admitted => ADMITTED.contains(&code),
                    Expect::Unauthenticated => code == Code::Unauthenticated,
                    Expect::Denied => code == Code::PermissionDenied,
                };
                if !ok {
                    failures.push(format!("{path} by {caller:?}: got {code:?}, want {want:?}"));
                }
                walked += 1;
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {walked}:\n{}",
        failures.len(),
        failures.join("\n")
    );
    assert_eq!(walked, 19 * methods_walked);
    assert!(
        methods_walked >= 9 + 10 + 6,
        "every method of auth, user and targets at least"
    );
    // Not a vacuous walk: every kind of outcome was checked, many times.
    for kind in ["admitted", "unauthenticated", "denied"] {
        assert!(
            outcomes.get(kind).copied().unwrap_or(0) >= 50,
            "{outcomes:?}"
        );
    }

    // Health and reflection answer without a token.
    for (_, addr) in &served {
        let channel = Channel::from_shared(format!("http://{addr}"))
            .unwrap()
            .connect_lazy();
        assert_eq!(
            call(channel, "/grpc.health.v1.Health/Check", None).await,
            Code::Ok
        );
    }
    s.stop().await;
}
