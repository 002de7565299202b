//! Template bombs: templates that build gigabytes in a few instructions. Each must fail with
//! INVALID_ARGUMENT naming a limit (or FAILED_PRECONDITION for a stored template at send time),
//! and the service, which a failed allocation would abort, must keep serving.

use std::collections::HashMap;

use opsconductor_api::common::v1::{NotificationChannel, Role};
use opsconductor_api::notification::v1::preview_template_request::Source as PreviewSource;
use opsconductor_api::notification::v1::send_notification_request::{Content, Recipient};
use opsconductor_api::notification::v1::*;
use opsconductor_testkit::{assert_code, Sandbox, StorageBackend};
use tonic::Code;
use tonic_types::StatusExt;

use crate::support::peak_rss_kib;

/// (name, body). Each needs far more than the sandbox's 256 MiB, or an argument over a cap.
const BOMBS: &[(&str, &str)] = &[
    ("indent", r#"{{ "a\nb"|indent(1099511627776) }}"#),
    (
        "indent by keyword",
        r#"{{ "a\nb"|indent(width=1099511627776) }}"#,
    ),
    (
        "tojson indent",
        r#"{{ {"a": [1, 2]}|tojson(indent=1099511627776) }}"#,
    ),
    (
        "tojson indent by keyword",
        r#"{{ [1]|tojson(1099511627776) }}"#,
    ),
    (
        "repeat then concatenate",
        r#"{% set a = 'x' * 100000000 %}{% set a = a ~ a ~ a ~ a %}{{ a|length }}"#,
    ),
    (
        "doubling in a loop",
        r#"{% set ns = namespace(a='x' * 1000000) %}{% for i in range(40) %}{% set ns.a = ns.a ~ ns.a %}{% endfor %}{{ ns.a|length }}"#,
    ),
    (
        "set blocks",
        r#"{% set a %}{{ 'x' * 60000000 }}{% endset %}{% set b %}{{ a }}{{ a }}{{ a }}{{ a }}{{ a }}{{ a }}{% endset %}{{ b|length }}"#,
    ),
    (
        "replace",
        r#"{% set a = 'x' * 10000000 %}{{ a|replace('x', 'yyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyy')|length }}"#,
    ),
    (
        "JSON escaping chain",
        r#"{% set a = '"' * 40000000 %}{{ a|tojson|tojson|tojson|tojson|length }}"#,
    ),
    (
        "recursive macro",
        r#"{% macro f(s, n) %}{% if n %}{{ f(s ~ s, n - 1) }}{% else %}{{ s|length }}{% endif %}{% endmacro %}{{ f('x' * 1000000, 40) }}"#,
    ),
    (
        "list concatenation",
        r#"{% set ns = namespace(l=[0] * 1000) %}{% for i in range(30) %}{% set ns.l = ns.l + ns.l %}{% endfor %}{{ ns.l|join(',')|length }}"#,
    ),
];

fn template(body: &str) -> Template {
    Template {
        channel: NotificationChannel::Slack as i32,
        event_type: "test".into(),
        body: body.into(),
        ..Default::default()
    }
}

/// The violation's description, which must name the limit that stopped the bomb.
#[track_caller]
fn assert_names_a_limit(status: &tonic::Status, bomb: &str) {
    assert_eq!(status.code(), Code::InvalidArgument, "{bomb}: {status:?}");
    let violations = status
        .get_details_bad_request()
        .map(|b| b.field_violations)
        .unwrap_or_default();
    let described = violations
        .iter()
        .any(|v| v.field == "template.body" && names_a_limit(&v.description));
    assert!(described, "{bomb}: {violations:?}");
}

fn names_a_limit(text: &str) -> bool {
    text.contains("is limited to")
        || text.contains("bytes of memory")
        || text.contains("larger than")
        || text.contains("longer than")
}

#[tokio::test]
async fn template_bombs_fail_with_a_named_limit_and_the_service_lives() {
    let s = Sandbox::start(StorageBackend::Sqlite).await;
    let (_, viewer) = s.user_with_role("bomb-viewer", Role::Viewer).await;
    let viewer = s.clients_as(&viewer.access_token);

    // A viewer may preview: every bomb is refused, and the service answers the next call.
    for (name, body) in BOMBS {
        let err = viewer
            .notification()
            .preview_template(PreviewTemplateRequest {
                source: Some(PreviewSource::Template(template(body))),
                variables: HashMap::new(),
            })
            .await
            .expect_err(name);
        assert_names_a_limit(&err, name);
    }

    // Saving one is refused too (templates are rendered with the event's sample when saved).
    for (name, body) in BOMBS {
        let err = s
            .notification()
            .create_template(CreateTemplateRequest {
                template: Some(template(body)),
            })
            .await
            .expect_err(name);
        assert_names_a_limit(&err, name);
    }

    // A stored template that only explodes on some values: saved, then sent with them.
    let armed = format!(
        r#"{{% if trigger == "now" %}}{}{{% else %}}quiet{{% endif %}}"#,
        BOMBS[5].1
    );
    let stored = s
        .notification()
        .create_template(CreateTemplateRequest {
            template: Some(template(&armed)),
        })
        .await
        .expect("an armed template renders quietly with the sample")
        .into_inner()
        .template
        .expect("the stored template");
    let err = s
        .notification()
        .send_notification(SendNotificationRequest {
            idempotency_key: uuid::Uuid::now_v7().to_string(),
            channel: NotificationChannel::Slack as i32,
            recipient: Some(Recipient::Destination("http://127.0.0.1:9/hook".into())),
            event_type: "test".into(),
            content: Some(Content::Template(TemplateContent {
                template_id: stored.id.clone(),
                variables: HashMap::from([("trigger".into(), "now".into())]),
            })),
            ..Default::default()
        })
        .await
        .expect_err("the armed template explodes");
    assert_code(&err, Code::FailedPrecondition, "TEMPLATE_FAILED");
    assert!(err.message().contains("bytes of memory"), "{err:?}");

    // Still serving, and rendering: the same stored template, quietly.
    let quiet = viewer
        .notification()
        .preview_template(PreviewTemplateRequest {
            source: Some(PreviewSource::TemplateId(stored.id)),
            variables: HashMap::from([("trigger".into(), "later".into())]),
        })
        .await
        .expect("a quiet render after the bombs")
        .into_inner();
    assert_eq!(quiet.body, "quiet");

    // The bombs ran in sandbox children: this process (every service of the sandbox, and the
    // other tests running beside this one) never came near what they asked for.
    let peak = peak_rss_kib();
    assert!(
        peak < 1536 * 1024,
        "peak RSS {peak} KiB: a bomb was built in-process"
    );
    s.stop().await;
}
