//! `/metrics` of every service: the gRPC series after real grpcurl calls, the client side and
//! token cache of a service that called another, messaging counters, and what a caller
//! cannot do to the series.

use std::process::Command;

use opsconductor_platform::ServiceKind;
use opsconductor_testkit::{grpcurl, Sandbox, StorageBackend};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A plain HTTP/1.0 request: the status code and the body.
pub(crate) async fn http(method: &str, url: &str) -> (u16, String) {
    let rest = url.trim_start_matches("http://");
    let (host, path) = rest.split_once('/').unwrap_or((rest, ""));
    let mut stream = tokio::net::TcpStream::connect(host).await.unwrap();
    let request = format!("{method} /{path} HTTP/1.0\r\nHost: {host}\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut raw = String::new();
    stream.read_to_string(&mut raw).await.unwrap();
    let (head, body) = raw.split_once("\r\n\r\n").unwrap_or((&raw, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, body.to_string())
}

/// The value of the one sample of `name` whose labels include every one of `labels`.
pub(crate) fn sample(text: &str, name: &str, labels: &[&str]) -> Option<f64> {
    text.lines()
        .filter(|line| {
            line.starts_with(&format!("{name}{{")) || line.starts_with(&format!("{name} "))
        })
        .filter(|line| labels.iter().all(|label| line.contains(label)))
        .map(|line| {
            line.rsplit(' ')
                .next()
                .and_then(|v| v.parse().ok())
                .unwrap_or(f64::NAN)
        })
        .next()
}

fn grpcurl_call(args: &[&str]) -> String {
    let out = Command::new(grpcurl())
        .args(args)
        .output()
        .expect("run grpcurl");
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_service_serves_its_grpc_series_after_a_grpcurl_call() {
    let s = Sandbox::start(StorageBackend::Sqlite).await;
    let user = s.addr(ServiceKind::User).to_string();
    let header = format!("authorization: Bearer {}", s.admin.access_token);
    let out = grpcurl_call(&[
        "-plaintext",
        "-H",
        &header,
        "-d",
        "{}",
        &user,
        "opsconductor.user.v1.UserService/ListUsers",
    ]);
    assert!(out.contains("\"users\""), "{out}");
    let out = grpcurl_call(&[
        "-plaintext",
        "-H",
        &header,
        "-d",
        r#"{"id":""}"#,
        &user,
        "opsconductor.user.v1.UserService/GetUser",
    ]);
    assert!(out.contains("InvalidArgument"), "{out}");
    let out = grpcurl_call(&[
        "-plaintext",
        "-d",
        "{}",
        &user,
        "opsconductor.user.v1.UserService/ListUsers",
    ]);
    assert!(out.contains("Unauthenticated"), "{out}");

    let (status, text) = http("GET", &s.metrics_url(ServiceKind::User)).await;
    assert_eq!(status, 200, "{text}");
    let list = [
        "grpc_type=\"unary\"",
        "grpc_service=\"opsconductor.user.v1.UserService\"",
        "grpc_method=\"ListUsers\"",
    ];
    assert_eq!(
        sample(&text, "grpc_server_started_total", &list),
        Some(2.0),
        "{text}"
    );
    let ok = [&list[..], &["grpc_code=\"OK\""]].concat();
    assert_eq!(
        sample(&text, "grpc_server_handled_total", &ok),
        Some(1.0),
        "{text}"
    );
    let refused = [&list[..], &["grpc_code=\"Unauthenticated\""]].concat();
    assert_eq!(
        sample(&text, "grpc_server_handled_total", &refused),
        Some(1.0)
    );
    let invalid = ["grpc_method=\"GetUser\"", "grpc_code=\"InvalidArgument\""];
    assert_eq!(
        sample(&text, "grpc_server_handled_total", &invalid),
        Some(1.0)
    );
    assert_eq!(
        sample(&text, "grpc_server_handling_seconds_count", &list),
        Some(2.0)
    );
    assert!(text.contains("# TYPE grpc_server_handling_seconds histogram"));
    assert!(
        text.contains("# TYPE opsconductor_messaging_published counter"),
        "{text}"
    );
    assert!(text.ends_with("# EOF\n"));
    // The audit service's lag on the queue it ingests from, read from the broker.
    let (_, audit) = http("GET", &s.metrics_url(ServiceKind::Audit)).await;
    let queue = format!("queue=\"{}.audit.events\"", s.broker.prefix);
    assert!(
        sample(&audit, "opsconductor_consumer_lag_messages", &[&queue]).is_some(),
        "{audit}"
    );

    // The auth service asked the user service to check the administrator's password when the
    // sandbox signed in: its client side shows the call.
    let (_, auth) = http("GET", &s.metrics_url(ServiceKind::Auth)).await;
    let check = [
        "grpc_service=\"opsconductor.user.v1.UserService\"",
        "grpc_method=\"CheckPassword\"",
        "grpc_code=\"OK\"",
    ];
    assert!(
        sample(&auth, "grpc_client_handled_total", &check).is_some_and(|n| n >= 1.0),
        "{auth}"
    );
    assert!(
        sample(&auth, "opsconductor_token_cache_hits_total", &[])
            .zip(sample(&auth, "opsconductor_token_cache_misses_total", &[]))
            .is_some_and(|(hits, misses)| hits + misses >= 1.0),
        "{auth}"
    );

    let (status, _) = http(
        "GET",
        &s.metrics_url(ServiceKind::User)
            .replace("/metrics", "/debug"),
    )
    .await;
    assert_eq!(status, 404);
    let (status, _) = http("POST", &s.metrics_url(ServiceKind::User)).await;
    assert_eq!(status, 405);
    s.stop().await;
}

/// A caller inventing method paths would grow a series per path and exhaust the server's
/// memory: unknown paths are all counted under one "unknown" method.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invented_method_paths_do_not_create_series() {
    let s = Sandbox::start(StorageBackend::Sqlite).await;
    let channel = tonic::transport::Endpoint::from_shared(s.url(ServiceKind::Targets))
        .unwrap()
        .connect()
        .await
        .unwrap();
    for n in 0..50 {
        let mut grpc = tonic::client::Grpc::new(channel.clone());
        grpc.ready().await.unwrap();
        let path =
            http::uri::PathAndQuery::try_from(format!("/evil.Injected{n}/Method{n}")).unwrap();
        let status = grpc
            .unary::<(), (), _>(
                tonic::Request::new(()),
                path,
                tonic_prost::ProstCodec::default(),
            )
            .await
            .unwrap_err();
        assert_ne!(status.code(), tonic::Code::Ok);
    }
    let (_, text) = http("GET", &s.metrics_url(ServiceKind::Targets)).await;
    assert!(!text.contains("evil"), "{text}");
    let unknown = ["grpc_service=\"unknown\"", "grpc_method=\"unknown\""];
    assert_eq!(
        sample(&text, "grpc_server_started_total", &unknown),
        Some(50.0),
        "{text}"
    );
    s.stop().await;
}

/// Every series the shipped alert rules and dashboard query is one the services expose (a
/// renamed metric would otherwise leave an alert that can never fire).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alerts_and_dashboard_query_only_series_the_services_expose() {
    let s = Sandbox::start(StorageBackend::Sqlite).await;
    let mut exposed = std::collections::BTreeSet::new();
    for kind in [
        ServiceKind::Auth,
        ServiceKind::Jobs,
        ServiceKind::Notification,
        ServiceKind::Scheduler,
    ] {
        let (status, text) = http("GET", &s.metrics_url(kind)).await;
        assert_eq!(status, 200);
        for line in text.lines() {
            if let Some(name) = line
                .strip_prefix("# TYPE ")
                .and_then(|l| l.split(' ').next())
            {
                exposed.insert(name.to_string());
            }
        }
    }
    s.stop().await;
    let deploy = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy");
    let mut queried = std::collections::BTreeSet::new();
    for file in ["prometheus/alerts.yml", "grafana/opsconductor.json"] {
        let text = std::fs::read_to_string(deploy.join(file)).unwrap();
        for token in text.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
            let label = ["grpc_code", "grpc_service", "grpc_method", "grpc_type"].contains(&token);
            if !label && (token.starts_with("grpc_") || token.starts_with("opsconductor_")) {
                queried.insert(token.to_string());
            }
        }
    }
    assert!(queried.len() >= 8, "{queried:?}");
    for name in &queried {
        let family = ["_bucket", "_count", "_sum", "_total"]
            .iter()
            .find_map(|suffix| name.strip_suffix(suffix))
            .unwrap_or(name);
        assert!(
            exposed.contains(family),
            "{name} is queried but no service exposes {family}: {exposed:?}"
        );
    }
}
