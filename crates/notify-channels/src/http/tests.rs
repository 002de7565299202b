use std::net::SocketAddr;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

use super::*;

const TOKEN: &str = "T0KEN-s3cr3t";

/// What the tiny test server does with each request.
#[derive(Clone)]
enum Reply {
    /// Writes these bytes verbatim.
    Raw(&'static str),
    /// Answers with `status` and the request line echoed in the body (to prove it is scrubbed).
    Echo(u16),
    /// Waits before answering 200.
    Slow(Duration),
    /// Announces a long body, sends part of it, then stalls.
    Stall { announced: usize, sent: usize },
}

struct Server {
    addr: SocketAddr,
    requests: mpsc::UnboundedReceiver<String>,
}

async fn serve(reply: Reply) -> Server {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    serve_on(listener, reply)
}

fn serve_on(listener: TcpListener, reply: Reply) -> Server {
    let addr = listener.local_addr().unwrap();
    let (tx, requests) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(answer(stream, reply.clone(), tx.clone()));
        }
    });
    Server { addr, requests }
}

async fn answer(mut stream: TcpStream, reply: Reply, tx: mpsc::UnboundedSender<String>) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        let Ok(n) = stream.read(&mut chunk).await else {
            return;
        };
        if n == 0 {
            return;
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
    let length: usize = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse().ok())?
        })
        .unwrap_or(0);
    while buf.len() < head_end + length {
        let Ok(n) = stream.read(&mut chunk).await else {
            return;
        };
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let _ = tx.send(String::from_utf8_lossy(&buf).to_string());
    match reply {
        Reply::Raw(text) => {
            let _ = stream.write_all(text.as_bytes()).await;
        }
        Reply::Echo(status) => {
            let line = head.lines().next().unwrap_or("").to_string();
            let resp = format!(
                "HTTP/1.1 {status} X\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{line}",
                line.len()
            );
            let _ = stream.write_all(resp.as_bytes()).await;
        }
        Reply::Slow(d) => {
            tokio::time::sleep(d).await;
            let _ = stream
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
                .await;
        }
        Reply::Stall { announced, sent } => {
            let head = format!("HTTP/1.1 200 OK\r\ncontent-length: {announced}\r\n\r\n");
            let _ = stream.write_all(head.as_bytes()).await;
            let _ = stream.write_all(&vec![b'x'; sent]).await;
            tokio::time::sleep(Duration::from_secs(60)).await;
        }
    }
    let _ = stream.flush().await;
}

fn sender(timeout: Duration) -> HttpSender {
    HttpSender::new(HttpSettings {
        timeout,
        connect_timeout: Duration::from_millis(500),
        max_response_bytes: 1024,
        allow_plain_http: true,
        allow_private_addresses: true,
    })
    .unwrap()
}

fn secret_url(addr: SocketAddr) -> String {
    format!("http://{addr}/hooks/{TOKEN}?token={TOKEN}-q")
}

fn assert_no_secret(a: &Attempt) {
    assert!(
        !a.error.contains(TOKEN) && !a.error.contains("/hooks"),
        "error leaks the URL: {}",
        a.error
    );
}

async fn post(reply: Reply) -> Attempt {
    let server = serve(reply).await;
    sender(Duration::from_secs(5))
        .post_json(
            &secret_url(server.addr),
            Bytes::from_static(b"{}"),
            HeaderMap::new(),
        )
        .await
}

#[tokio::test]
async fn ok_is_delivered_with_user_agent_and_content_type() {
    let mut server = serve(Reply::Raw("HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")).await;
    let mut headers = HeaderMap::new();
    headers.insert("webhook-id", HeaderValue::from_static("msg_1"));
    let a = sender(Duration::from_secs(5))
        .post_json(
            &secret_url(server.addr),
            Bytes::from_static(br#"{"a":1}"#),
            headers,
        )
        .await;
    assert_eq!(a.outcome, Outcome::Delivered, "{a:?}");
    assert_eq!(a.status, Some(200));
    assert!(a.error.is_empty());
    let req = server.requests.recv().await.unwrap().to_ascii_lowercase();
    assert!(
        req.contains(&format!(
            "user-agent: opsconductor-notifications/{}",
            env!("CARGO_PKG_VERSION")
        )),
        "{req}"
    );
    assert!(req.contains("content-type: application/json"), "{req}");
    assert!(req.contains("webhook-id: msg_1"), "{req}");
    assert!(req.ends_with(r#"{"a":1}"#), "{req}");
}

#[tokio::test]
async fn server_error_is_retried_and_scrubbed() {
    let a = post(Reply::Echo(500)).await;
    assert_eq!(a.outcome, Outcome::Retry { after: None }, "{a:?}");
    assert_eq!(a.status, Some(500));
    assert!(a.error.contains("500"), "{}", a.error);
    // The echoed request line was in the body; the excerpt keeps the method, not the path.
    assert!(a.error.contains("POST"), "{}", a.error);
    assert_no_secret(&a);
}

#[tokio::test]
async fn too_many_requests_honours_retry_after() {
    let a = post(Reply::Raw(
        "HTTP/1.1 429 Too Many Requests\r\nretry-after: 2\r\ncontent-length: 0\r\n\r\n",
    ))
    .await;
    assert_eq!(
        a.outcome,
        Outcome::Retry {
            after: Some(Duration::from_secs(2))
        }
    );
    assert_eq!(a.status, Some(429));
    assert_no_secret(&a);
}

#[tokio::test]
async fn request_timeout_status_is_retried() {
    let a = post(Reply::Raw(
        "HTTP/1.1 408 Request Timeout\r\ncontent-length: 0\r\n\r\n",
    ))
    .await;
    assert_eq!(a.outcome, Outcome::Retry { after: None });
}

#[tokio::test]
async fn gone_is_permanent() {
    let a = post(Reply::Echo(410)).await;
    assert_eq!(a.outcome, Outcome::Permanent, "{a:?}");
    assert_eq!(a.status, Some(410));
    assert_no_secret(&a);
}

#[tokio::test]
async fn redirect_is_not_followed() {
    let a = post(Reply::Raw(
        "HTTP/1.1 302 Found\r\nlocation: http://169.254.169.254/latest\r\ncontent-length: 0\r\n\r\n",
    ))
    .await;
    assert_eq!(a.outcome, Outcome::Permanent);
    assert_eq!(a.status, Some(302));
    assert_eq!(a.error, "redirects are not followed");
}

#[tokio::test]
async fn slow_server_times_out_and_is_retried() {
    let server = serve(Reply::Slow(Duration::from_secs(5))).await;
    let a = sender(Duration::from_millis(300))
        .post_json(&secret_url(server.addr), Bytes::new(), HeaderMap::new())
        .await;
    assert_eq!(a.outcome, Outcome::Retry { after: None }, "{a:?}");
    assert_eq!(a.status, None);
    assert!(a.error.contains("timed out"), "{}", a.error);
    assert!(a.latency < Duration::from_secs(2));
    assert_no_secret(&a);
}

#[tokio::test]
async fn refused_connection_is_retried() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    let a = sender(Duration::from_secs(2))
        .post_json(&secret_url(addr), Bytes::new(), HeaderMap::new())
        .await;
    assert_eq!(a.outcome, Outcome::Retry { after: None }, "{a:?}");
    assert!(a.error.contains("connection failed"), "{}", a.error);
    assert_no_secret(&a);
}

#[tokio::test]
async fn response_is_read_only_up_to_the_cap() {
    // The server announces 10 MB, sends 4 KiB and stalls: reading past the 1 KiB cap would
    // wait for the 3 s timeout.
    let server = serve(Reply::Stall {
        announced: 10 << 20,
        sent: 4096,
    })
    .await;
    let a = sender(Duration::from_secs(3))
        .post_json(&secret_url(server.addr), Bytes::new(), HeaderMap::new())
        .await;
    assert_eq!(a.outcome, Outcome::Delivered, "{a:?}");
    assert!(a.latency < Duration::from_millis(1500), "{:?}", a.latency);
}

#[tokio::test]
async fn large_error_body_gives_short_excerpt() {
    let body = "e".repeat(50_000);
    let resp: &'static str = Box::leak(
        format!(
            "HTTP/1.1 503 Unavailable\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        )
        .into_boxed_str(),
    );
    let a = post(Reply::Raw(resp)).await;
    assert_eq!(a.outcome, Outcome::Retry { after: None });
    let excerpt_chars = a.error.chars().filter(|&c| c == 'e').count();
    // A few letters of the prefix are e's too; the body's run is what is bounded.
    assert!(excerpt_chars <= 200 + 10, "{}", a.error);
    assert!(a.error.contains("HTTP 503"), "{}", a.error);
}

async fn guarded_post(allow: bool, url: &str) -> Attempt {
    HttpSender::new(HttpSettings {
        timeout: Duration::from_secs(2),
        connect_timeout: Duration::from_millis(300),
        max_response_bytes: 1024,
        allow_plain_http: true,
        allow_private_addresses: allow,
    })
    .unwrap()
    .post_json(url, Bytes::new(), HeaderMap::new())
    .await
}

#[tokio::test]
async fn private_destinations_are_refused() {
    let server = serve(Reply::Raw("HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")).await;
    let port = server.addr.port();
    for url in [
        format!("http://127.0.0.1:{port}/x"),
        "http://10.1.2.3/x".to_string(),
        "http://169.254.169.254/latest/meta-data".to_string(),
        format!("http://[::1]:{port}/x"),
        format!("http://[::ffff:127.0.0.1]:{port}/x"),
        format!("http://localhost:{port}/x"),
        format!("http://2130706433:{port}/x"),
    ] {
        let a = guarded_post(false, &url).await;
        assert_eq!(a.outcome, Outcome::Permanent, "{url}: {a:?}");
        assert!(a.error.contains("private address"), "{url}: {}", a.error);
    }
}

#[tokio::test]
async fn private_destinations_are_allowed_when_configured() {
    let server = serve(Reply::Raw("HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")).await;
    let port = server.addr.port();
    for url in [
        format!("http://127.0.0.1:{port}/x"),
        format!("http://localhost:{port}/x"),
        format!("http://[::ffff:127.0.0.1]:{port}/x"),
    ] {
        let a = guarded_post(true, &url).await;
        assert_eq!(a.outcome, Outcome::Delivered, "{url}: {a:?}");
    }
    // IPv6 loopback needs a listener of its own (when the host has IPv6).
    if let Ok(v6) = TcpListener::bind("[::1]:0").await {
        let s6 = serve_on(
            v6,
            Reply::Raw("HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n"),
        );
        let a = guarded_post(true, &format!("http://[::1]:{}/x", s6.addr.port())).await;
        assert_eq!(a.outcome, Outcome::Delivered, "{a:?}");
    }
    // Unreachable private addresses are tried (and fail to connect) rather than refused.
    for url in ["http://10.255.255.1/x", "http://169.254.169.254/x"] {
        let a = guarded_post(true, url).await;
        assert!(!a.error.contains("private address"), "{url}: {}", a.error);
    }
}

#[tokio::test]
async fn plain_http_is_refused_unless_allowed() {
    let sender = HttpSender::new(HttpSettings {
        allow_private_addresses: true,
        ..HttpSettings::default()
    })
    .unwrap();
    let a = sender
        .post_json("http://127.0.0.1:9/x", Bytes::new(), HeaderMap::new())
        .await;
    assert_eq!(a.outcome, Outcome::Permanent);
    assert!(a.error.contains("https"), "{}", a.error);
}

#[test]
fn check_url_rules() {
    use NotificationChannel::*;
    let ok = check_url(Slack, "https://hooks.slack.com/services/T/B/X", false).unwrap();
    assert_eq!(ok.host_str(), Some("hooks.slack.com"));
    assert!(check_url(
        Teams,
        "https://x.logic.azure.com:443/workflows/1?sig=abc",
        false
    )
    .is_ok());
    assert!(check_url(Webhook, "http://receiver.internal/hook", true).is_ok());

    let err = check_url(Webhook, "http://receiver/hook?token=s3cret", false).unwrap_err();
    assert!(err.contains("https") && !err.contains("s3cret"), "{err}");
    let err = check_url(Webhook, "https://user:s3cret@receiver/hook", false).unwrap_err();
    assert!(
        err.contains("user name") && !err.contains("s3cret"),
        "{err}"
    );
    assert!(check_url(Webhook, "https://user@receiver/hook", false).is_err());
    assert!(check_url(Webhook, "ftp://receiver/hook", true).is_err());
    assert!(check_url(Webhook, "file:///etc/passwd", true).is_err());
    assert!(check_url(Webhook, "javascript:alert(1)", true).is_err());
    assert!(check_url(Webhook, "/relative/path", true).is_err());
    assert!(check_url(Webhook, "receiver/hook", true).is_err());
    assert!(check_url(Webhook, "", true).is_err());
    let long = format!("https://receiver/{}", "a".repeat(2100));
    assert!(check_url(Webhook, &long, false).is_err());
    assert!(check_url(Email, "https://receiver/hook", false).is_err());
    assert!(check_url(Unspecified, "https://receiver/hook", false).is_err());
}

#[test]
fn retry_after_forms() {
    let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
    assert_eq!(parse_retry_after("2", now), Some(Duration::from_secs(2)));
    assert_eq!(parse_retry_after(" 0 ", now), Some(Duration::ZERO));
    assert_eq!(
        parse_retry_after("99999999", now),
        Some(Duration::from_secs(3600))
    );
    assert_eq!(
        parse_retry_after("999999999999999999999999", now),
        Some(Duration::from_secs(3600))
    );
    let later = httpdate::fmt_http_date(now + Duration::from_secs(120));
    assert_eq!(
        parse_retry_after(&later, now),
        Some(Duration::from_secs(120))
    );
    let earlier = httpdate::fmt_http_date(now - Duration::from_secs(120));
    assert_eq!(parse_retry_after(&earlier, now), Some(Duration::ZERO));
    assert_eq!(parse_retry_after("soon", now), None);
    assert_eq!(parse_retry_after("-5", now), None);
}
