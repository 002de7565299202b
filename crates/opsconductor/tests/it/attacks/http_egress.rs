//! http steps aimed inside: at loopback (the platform's own ports, the broker's management
//! API), the cloud metadata address, or a name that resolves to either. With the default policy
//! (public addresses only), each is refused before a connection is made, whatever spelling the
//! address takes.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use opsconductor_api::jobs::v1::*;
use opsconductor_testkit::{JobsExt, Sandbox, StorageBackend};

use crate::jobs::{job, LIMIT};

/// A loopback listener that counts connections: any would mean the guard let one through.
async fn counting_listener() -> (u16, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let count = Arc::new(AtomicUsize::new(0));
    let seen = count.clone();
    tokio::spawn(async move {
        while let Ok((_stream, _)) = listener.accept().await {
            seen.fetch_add(1, Ordering::SeqCst);
        }
    });
    (port, count)
}

fn http_step(url: &str) -> Step {
    Step {
        name: "probe".into(),
        action: Some(step::Action::Http(HttpStep {
            method: "GET".into(),
            url: url.into(),
            ..Default::default()
        })),
        ..Default::default()
    }
}

#[tokio::test]
async fn http_steps_cannot_reach_loopback_link_local_or_metadata_addresses() {
    // The sandbox allows loopback for the other http tests; this one runs with the default.
    let s = Sandbox::start_with(
        StorageBackend::Sqlite,
        &[("EXECUTOR_HTTP_ALLOW_NETWORKS", "")],
    )
    .await;
    let (port, connections) = counting_listener().await;
    let urls = [
        format!("http://127.0.0.1:{port}/x"),
        format!("http://localhost:{port}/x"),
        format!("http://127.1:{port}/x"),
        format!("http://2130706433:{port}/x"),
        format!("http://0x7f000001:{port}/x"),
        format!("http://0177.0.0.1:{port}/x"),
        format!("http://0.0.0.0:{port}/x"),
        format!("http://[::ffff:127.0.0.1]:{port}/x"),
        format!("http://[::ffff:7f00:1]:{port}/x"),
        format!("http://[::1]:{port}/x"),
        format!("https://user:pass@127.0.0.1:{port}/x"),
        "http://169.254.169.254/latest/meta-data/".to_string(),
        "http://[fd00:ec2::254]/latest/meta-data/".to_string(),
        "http://127.0.0.1:15672/api/overview".to_string(),
        "http://10.0.0.1/".to_string(),
        "http://192.168.0.1/".to_string(),
    ];
    for (i, url) in urls.iter().enumerate() {
        let j = s
            .jobs()
            .create(job(&format!("egress-{i}"), vec![http_step(url)]))
            .await
            .unwrap();
        let run = s.jobs().start(&j.id, &[]).await.unwrap();
        let (run, _) = s.jobs().finish(&run.id, LIMIT).await.unwrap();
        assert_eq!(
            RunState::try_from(run.state),
            Ok(RunState::Failed),
            "{url}: {}",
            run.error
        );
        let error = run
            .steps
            .iter()
            .map(|st| st.error.as_str())
            .collect::<Vec<_>>()
            .join(" | ");
        assert!(
            error.contains("private address") && error.contains("EXECUTOR_HTTP_ALLOW_NETWORKS"),
            "{url}: {error}"
        );
        assert!(
            !error.contains("pass"),
            "{url}: the error shows user info: {error}"
        );
    }
    assert_eq!(
        connections.load(Ordering::SeqCst),
        0,
        "a refused destination was connected to"
    );
    s.stop().await;
}
