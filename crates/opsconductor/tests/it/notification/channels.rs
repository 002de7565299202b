//! Each channel against a real receiver: webhooks signed per Standard Webhooks (checked by the
//! `standardwebhooks` Python package, not by our code), Slack Block Kit and Teams Adaptive
//! Cards with values escaped, email through aiosmtpd with the rendered text and HTML parts.

use std::collections::HashMap;

use opsconductor_api::common::v1::NotificationChannel;
use opsconductor_api::notification::v1::send_notification_request::Content;
use opsconductor_api::notification::v1::*;
use opsconductor_platform::ServiceKind;
use opsconductor_testkit::{python, HttpSink, Sandbox, SmtpSink, StorageBackend};

use super::{reaches, send, signing_credential, to};
use crate::jobs::LIMIT;

/// Verifies a received webhook with the reference implementation; returns its verdict.
fn verify_with_python(secret: &str, body: &[u8], headers: &http::HeaderMap) -> String {
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string()
    };
    let script = r#"
import sys
from standardwebhooks.webhooks import Webhook, WebhookVerificationError
secret, msg_id, ts, sig = sys.argv[1:5]
body = sys.stdin.buffer.read()
try:
    Webhook(secret).verify(body, {"webhook-id": msg_id, "webhook-timestamp": ts, "webhook-signature": sig})
    print("valid")
except WebhookVerificationError as e:
    print("invalid:", e)
"#;
    let mut child = std::process::Command::new(python())
        .args([
            "-c",
            script,
            secret,
            &header("webhook-id"),
            &header("webhook-timestamp"),
            &header("webhook-signature"),
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("python3 with standardwebhooks (pip install standardwebhooks)");
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all(body).unwrap();
    }
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhooks_are_signed_and_a_credential_not_meant_for_signing_is_refused() {
    let s = Sandbox::start(StorageBackend::Postgres).await;
    let sink = HttpSink::start().await;
    let secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    let key = signing_credential(&s, "hook-key", secret, true).await;
    let mut request = to(
        NotificationChannel::Webhook,
        &sink.url("/signed"),
        r#"{"type": "deploy.done", "data": {"version": "1.2.3"}}"#,
    );
    request.signing_credential_id = key.clone();
    let d = send(&s, request).await;
    let got = sink.wait_for("/signed", 1, LIMIT).await;
    assert_eq!(got[0].headers["webhook-id"], d.id.as_str());
    assert_eq!(
        got[0].headers["content-type"], "application/json",
        "{:?}",
        got[0].headers
    );
    assert_eq!(
        verify_with_python(secret, &got[0].body, &got[0].headers),
        "valid"
    );
    // The same body under another secret does not verify: the check can fail.
    let other = "whsec_dGhpcyBpcyBub3QgdGhlIGtleSB0aGF0IHNpZ25lZCBpdA==";
    assert!(verify_with_python(other, &got[0].body, &got[0].headers).starts_with("invalid"));
    reaches(&s, &d.id, DeliveryState::Delivered).await;

    // Naming no credential does not mean unsigned: the generated default secret signs it.
    let default_secret = s
        .service_env(ServiceKind::Notification)
        .secret("NOTIFICATION_WEBHOOK_SIGNING_SECRET")
        .unwrap()
        .expect("the sandbox generates the notification service's secrets");
    assert!(default_secret.starts_with("whsec_"));
    let d = send(
        &s,
        to(NotificationChannel::Webhook, &sink.url("/default"), "{}"),
    )
    .await;
    let got = sink.wait_for("/default", 1, LIMIT).await;
    assert_eq!(
        verify_with_python(&default_secret, &got[0].body, &got[0].headers),
        "valid",
        "{:?}",
        got[0].headers
    );
    assert!(verify_with_python(secret, &got[0].body, &got[0].headers).starts_with("invalid"));
    reaches(&s, &d.id, DeliveryState::Delivered).await;

    // An operator's SSH key or API token must not become anyone's signing key: a credential
    // whose revealable_by does not name the notification service is refused (and audited).
    let not_for_us = signing_credential(&s, "cloud-token", "prod-api-token", false).await;
    let mut request = to(NotificationChannel::Webhook, &sink.url("/stolen"), "{}");
    request.signing_credential_id = not_for_us;
    let d = send(&s, request).await;
    let failed = reaches(&s, &d.id, DeliveryState::Failed).await;
    assert!(
        failed.last_error.contains("revealable_by"),
        "{}",
        failed.last_error
    );
    assert!(!failed.last_error.contains("prod-api-token"));
    assert!(sink.received("/stolen").is_empty());
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slack_gets_block_kit_and_teams_an_adaptive_card_with_values_escaped() {
    let s = Sandbox::start(StorageBackend::Sqlite).await;
    let sink = HttpSink::start().await;
    let variables: HashMap<String, String> = [
        ("job.name", "deploy <!channel> & \"friends\""),
        ("run.id", "r-1"),
        ("run.error", "exit 3\nsecond line"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    for (channel, path) in [
        (NotificationChannel::Slack, "/slack"),
        (NotificationChannel::Teams, "/teams"),
    ] {
        let mut request = to(channel, &sink.url(path), "");
        request.event_type = "run.failed".into();
        request.content = Some(Content::Template(TemplateContent {
            template_id: String::new(),
            variables: variables.clone(),
        }));
        let d = send(&s, request).await;
        reaches(&s, &d.id, DeliveryState::Delivered).await;
    }
    let slack = sink.wait_for("/slack", 1, LIMIT).await;
    let slack: serde_json::Value = serde_json::from_slice(&slack[0].body).unwrap();
    let blocks = slack["blocks"].as_array().expect("blocks");
    assert!(!blocks.is_empty());
    let text = slack.to_string();
    assert!(
        !text.contains("<!channel>"),
        "a mention got through: {text}"
    );
    assert!(text.contains("&lt;!channel&gt;"), "{text}");
    assert!(!text.contains("&amp;lt;"), "escaped twice: {text}");
    assert!(text.contains("r-1"), "{text}");

    let teams = sink.wait_for("/teams", 1, LIMIT).await;
    let teams: serde_json::Value = serde_json::from_slice(&teams[0].body).unwrap();
    assert_eq!(teams["type"], "message");
    let card = &teams["attachments"][0];
    assert_eq!(
        card["contentType"],
        "application/vnd.microsoft.card.adaptive"
    );
    assert_eq!(card["content"]["type"], "AdaptiveCard");
    assert!(
        card.to_string()
            .contains("deploy <!channel> & \\\"friends\\\""),
        "{card}"
    );
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn email_goes_through_smtp_with_the_rendered_text_and_escaped_html() {
    let smtp = SmtpSink::start().await;
    let port = smtp.port().to_string();
    let s = Sandbox::start_with(
        StorageBackend::Sqlite,
        &[
            ("NOTIFICATION_SMTP_HOST", "127.0.0.1"),
            ("NOTIFICATION_SMTP_PORT", &port),
            ("NOTIFICATION_SMTP_TLS", "none"),
            ("NOTIFICATION_SMTP_FROM", "OpsConductor <ops@example.test>"),
        ],
    )
    .await;
    let template = s
        .notification()
        .create_template(CreateTemplateRequest {
            template: Some(Template {
                channel: NotificationChannel::Email as i32,
                event_type: "deploy.done".into(),
                subject: "Deployed {{ app }}".into(),
                body: "{{ app }} {{ version }} is live.".into(),
                html_body: "<p>{{ app }} <b>{{ version }}</b></p>".into(),
                ..Default::default()
            }),
        })
        .await
        .unwrap()
        .into_inner()
        .template
        .unwrap();
    let mut request = to(NotificationChannel::Email, "oncall@example.test", "");
    request.event_type = "deploy.done".into();
    request.content = Some(Content::Template(TemplateContent {
        template_id: template.id,
        variables: [("app", "<script>shop</script>"), ("version", "2.0")]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    }));
    let d = send(&s, request).await;
    let delivered = reaches(&s, &d.id, DeliveryState::Delivered).await;
    assert_eq!(delivered.attempts, 1);
    let mail = smtp.wait_for(1, LIMIT).await;
    let mail = &mail[0];
    assert!(mail.contains("To: oncall@example.test"), "{mail}");
    assert!(
        mail.contains("Subject: Deployed <script>shop</script>"),
        "{mail}"
    );
    assert!(
        mail.contains("<script>shop</script> 2.0 is live."),
        "{mail}"
    );
    assert!(
        mail.contains("&lt;script&gt;shop&lt;&#x2f;script&gt; <b>2.0</b>"),
        "the HTML part escapes values: {mail}"
    );
    assert!(
        mail.contains(&format!("Message-ID: <{}@opsconductor>", d.id)),
        "{mail}"
    );
    s.stop().await;
}
