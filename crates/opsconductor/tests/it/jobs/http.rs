//! HTTP steps against a local server: templated method, URL, headers and body (a parameter is
//! percent-encoded in the URL and stays one path segment), expected statuses, redirects not
//! followed, responses cut at 1 MiB; and step and run timeouts.

use std::sync::{Arc, Mutex};

use opsconductor_api::jobs::v1::*;
use opsconductor_testkit::{on_both_backends, JobsExt, Sandbox};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};

use super::{job, shell, string_param, LIMIT};

/// What the server received.
#[derive(Debug, Clone)]
pub(crate) struct Seen {
    pub(crate) method: String,
    pub(crate) path: String,
    pub(crate) headers: Vec<(String, String)>,
    pub(crate) body: String,
}

/// An HTTP/1.1 server on a loopback port that records each request and answers by path.
pub(crate) async fn server() -> (u16, Arc<Mutex<Vec<Seen>>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let log = log.clone();
            tokio::spawn(async move {
                let (read, mut write) = stream.into_split();
                let mut reader = BufReader::new(read);
                let mut line = String::new();
                reader.read_line(&mut line).await.unwrap();
                let mut parts = line.split_whitespace();
                let (method, path) = (
                    parts.next().unwrap().to_string(),
                    parts.next().unwrap().to_string(),
                );
                let mut headers = Vec::new();
                let mut length = 0usize;
                loop {
                    let mut header = String::new();
                    reader.read_line(&mut header).await.unwrap();
                    let header = header.trim_end();
                    if header.is_empty() {
                        break;
                    }
                    let (name, value) = header.split_once(':').unwrap();
                    let (name, value) = (name.to_ascii_lowercase(), value.trim().to_string());
                    if name == "content-length" {
                        length = value.parse().unwrap();
                    }
                    headers.push((name, value));
                }
                let mut body = vec![0; length];
                reader.read_exact(&mut body).await.unwrap();
                log.lock().unwrap().push(Seen {
                    method,
                    path: path.clone(),
                    headers,
                    body: String::from_utf8_lossy(&body).into_owned(),
                });
                let (status, extra, body): (&str, &str, Vec<u8>) = if path.starts_with("/redirect")
                {
                    ("302 Found", "location: /ok\r\n", Vec::new())
                } else if path.starts_with("/big") {
                    ("200 OK", "", vec![b'x'; 2 * 1024 * 1024])
                } else if path.starts_with("/missing") {
                    ("404 Not Found", "", b"nope".to_vec())
                } else {
                    ("200 OK", "", b"{\"ok\": true}\nsecond line".to_vec())
                };
                let head = format!(
                    "HTTP/1.1 {status}\r\n{extra}content-length: {}\r\nconnection: close\r\n\r\n",
                    body.len()
                );
                let _ = write.write_all(head.as_bytes()).await;
                let _ = write.write_all(&body).await;
            });
        }
    });
    (port, seen)
}

pub(crate) fn http(name: &str, method: &str, url: &str) -> Step {
    Step {
        name: name.into(),
        action: Some(step::Action::Http(HttpStep {
            method: method.into(),
            url: url.into(),
            ..Default::default()
        })),
        ..Default::default()
    }
}

async fn http_steps_send_templated_requests(s: &Sandbox) {
    let (port, seen) = server().await;
    let base = format!("http://127.0.0.1:{port}");
    let mut post = http(
        "post",
        "POST",
        &format!("{base}/ok/{{{{ params.q }}}}?run={{{{ run.id }}}}"),
    );
    if let Some(step::Action::Http(h)) = &mut post.action {
        h.headers.insert("x-job".into(), "{{ job.name }}".into());
        h.body = "{\"q\": \"{{ params.q }}\"}".into();
        h.expected_status_codes = vec![200];
    }
    let mut redirect_ok = http("redirect-expected", "GET", &format!("{base}/redirect"));
    if let Some(step::Action::Http(h)) = &mut redirect_ok.action {
        h.expected_status_codes = vec![302];
    }
    let mut j = job(
        "http",
        vec![
            post,
            redirect_ok,
            http("big", "GET", &format!("{base}/big")),
            http("redirect", "GET", &format!("{base}/redirect")),
        ],
    );
    j.parameters = vec![string_param("q")];
    let j = s.jobs().create(j).await.unwrap();
    let run = s.jobs().start(&j.id, &[("q", "a/b c?d")]).await.unwrap();
    let (run, _) = s.jobs().finish(&run.id, LIMIT).await.unwrap();
    // The last step's 302 is not a success, and it is not followed.
    assert_eq!(
        RunState::try_from(run.state),
        Ok(RunState::Failed),
        "{}",
        run.error
    );
    let by_name = |name: &str| {
        run.steps
            .iter()
            .find(|st| st.step_name == name)
            .unwrap()
            .clone()
    };
    assert_eq!(by_name("post").http_status, Some(200));
    assert_eq!(
        by_name("redirect-expected").state,
        StepState::Succeeded as i32
    );
    assert_eq!(by_name("big").state, StepState::Succeeded as i32);
    let redirect = by_name("redirect");
    assert_eq!(
        (redirect.state, redirect.http_status),
        (StepState::Failed as i32, Some(302))
    );
    let seen = seen.lock().unwrap().clone();
    let paths: Vec<&str> = seen.iter().map(|r| r.path.as_str()).collect();
    assert_eq!(
        paths,
        [
            format!("/ok/a%2Fb%20c%3Fd?run={}", run.id).as_str(),
            "/redirect",
            "/big",
            "/redirect"
        ],
        "one request each, redirects not followed"
    );
    let first = &seen[0];
    assert_eq!(first.method, "POST");
    assert_eq!(first.body, "{\"q\": \"a/b c?d\"}");
    assert!(
        first.headers.contains(&("x-job".into(), "http".into())),
        "{:?}",
        first.headers
    );
    let lines = s.jobs().log_text(&run.id).await.unwrap();
    assert!(
        lines.iter().any(|l| l == "{\"ok\": true}") && lines.iter().any(|l| l == "second line")
    );
    assert!(
        lines.iter().any(|l| l.contains("body cut at 1 MiB")),
        "{lines:?}"
    );
    // The query string, which may hold a token, is not logged.
    assert!(
        !lines.iter().any(|l| l.contains(&format!("run={}", run.id))),
        "{lines:?}"
    );
}
on_both_backends!(http_steps_send_templated_requests);

async fn timeouts_end_steps_and_runs(s: &Sandbox) {
    let mut slow = shell("slow", "sleep 30");
    slow.timeout = Some(prost_types::Duration {
        seconds: 1,
        nanos: 0,
    });
    let j = s
        .jobs()
        .create(job("step-timeout", vec![slow]))
        .await
        .unwrap();
    let run = s.jobs().start(&j.id, &[]).await.unwrap();
    let (run, _) = s.jobs().finish(&run.id, LIMIT).await.unwrap();
    assert_eq!(RunState::try_from(run.state), Ok(RunState::Failed));
    assert_eq!(run.steps[0].state, StepState::TimedOut as i32);

    let mut j = job("run-timeout", vec![shell("slow", "sleep 30")]);
    j.timeout = Some(prost_types::Duration {
        seconds: 1,
        nanos: 0,
    });
    let j = s.jobs().create(j).await.unwrap();
    let run = s.jobs().start(&j.id, &[]).await.unwrap();
    let (run, _) = s.jobs().finish(&run.id, LIMIT).await.unwrap();
    assert_eq!(RunState::try_from(run.state), Ok(RunState::TimedOut));
    assert_eq!(run.error_reason, "RUN_TIMEOUT");
}
on_both_backends!(timeouts_end_steps_and_runs);
