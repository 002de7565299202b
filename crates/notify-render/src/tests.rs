use std::collections::HashMap;
use std::time::{Duration, Instant};

use serde_json::json;

use super::*;

const CHANNELS: [Channel; 4] = [
    Channel::Email,
    Channel::Slack,
    Channel::Teams,
    Channel::Webhook,
];

fn body(body: &str) -> Source<'_> {
    Source {
        subject: "",
        body,
        html_body: "",
    }
}

#[test]
fn every_builtin_renders_its_sample() {
    let mut event_types = EVENT_TYPES.to_vec();
    event_types.push("something.else");
    for channel in CHANNELS {
        for event_type in &event_types {
            let source = builtin(channel, event_type);
            check(channel, &source).unwrap();
            let context = sample(event_type);
            let rendered = render(channel, &source, &context)
                .unwrap_or_else(|e| panic!("{channel:?} {event_type}: {e}"));
            assert!(
                rendered.missing_variables.is_empty(),
                "{channel:?} {event_type}: missing {:?}",
                rendered.missing_variables
            );
            assert!(!rendered.subject.is_empty(), "{channel:?} {event_type}");
            assert!(!rendered.body.is_empty(), "{channel:?} {event_type}");
            assert!(!rendered.body.contains("none"), "{channel:?} {event_type}");
            if channel == Channel::Webhook {
                let payload: Value = serde_json::from_str(&rendered.body).unwrap();
                assert_eq!(payload["type"], context["event"], "{event_type}");
                assert_eq!(payload["timestamp"], context["timestamp"], "{event_type}");
                assert!(payload["data"].is_object(), "{event_type}");
            }
            if channel == Channel::Email {
                assert!(rendered.subject.starts_with("[OpsConductor] "));
                assert!(rendered.html_body.starts_with("<!DOCTYPE html>"));
            }
        }
    }
}

#[test]
fn builtins_render_from_an_empty_context() {
    for channel in CHANNELS {
        for event_type in EVENT_TYPES {
            let source = builtin(channel, event_type);
            let rendered = render(channel, &source, &json!({}))
                .unwrap_or_else(|e| panic!("{channel:?} {event_type}: {e}"));
            assert!(!rendered.body.is_empty());
        }
    }
}

#[test]
fn failed_run_texts_carry_the_key_facts() {
    let context = sample("run.failed");
    let slack = render(
        Channel::Slack,
        &builtin(Channel::Slack, "run.failed"),
        &context,
    )
    .unwrap();
    assert_eq!(slack.subject, "Run failed: nightly-db-backup");
    for fact in [
        ":x: *Run failed: nightly-db-backup*",
        "(revision 7)",
        "`0195a1b2-9d8e-7f60-a1b2-c3d4e5f6a7b8`",
        "4m 12s",
        "*dump* on db-01: failed, exit code 2 - pg_dump",
        "*notify-backup-api*: failed, HTTP 503",
        "STEP_FAILED",
        "via scheduler",
    ] {
        assert!(slack.body.contains(fact), "{fact} not in\n{}", slack.body);
    }
    // No blank lines from left-out optional lines.
    assert!(!slack.body.contains("\n\n"), "{}", slack.body);

    let email = render(
        Channel::Email,
        &builtin(Channel::Email, "run.failed"),
        &context,
    )
    .unwrap();
    assert_eq!(
        email.subject,
        "[OpsConductor] Run failed: nightly-db-backup"
    );
    assert!(email.body.contains("Error: step \"dump\" failed"));
    assert!(email.html_body.contains("step &quot;dump&quot; failed"));
}

#[test]
fn timed_out_run_says_so() {
    let mut context = sample("run.failed");
    context["run"]["state"] = json!("timed_out");
    let r = render(
        Channel::Teams,
        &builtin(Channel::Teams, "run.failed"),
        &context,
    )
    .unwrap();
    assert_eq!(r.subject, "Run timed out: nightly-db-backup");
    assert!(r
        .body
        .starts_with("**Run timed out: nightly-db-backup**\n\n- **Job:**"));
}

#[test]
fn test_event_mentions_itself() {
    let r = render(Channel::Email, &builtin(Channel::Email, "test"), &json!({})).unwrap();
    assert!(r
        .body
        .contains("This is a test notification from OpsConductor"));
    let r = render(
        Channel::Slack,
        &builtin(Channel::Slack, "test"),
        &json!({"message": "hello"}),
    )
    .unwrap();
    assert!(r.body.contains("hello"));
}

#[test]
fn generic_builtin_lists_the_context() {
    let context = json!({"event": "disk.full", "message": "Disk full", "host": {"name": "db-01"}, "empty": ""});
    let r = render(
        Channel::Email,
        &builtin(Channel::Email, "disk.full"),
        &context,
    )
    .unwrap();
    assert_eq!(
        r.body,
        "OpsConductor notification: disk.full\n\nDisk full\n\nhost.name: db-01"
    );
    let r = render(
        Channel::Webhook,
        &builtin(Channel::Webhook, "disk.full"),
        &context,
    )
    .unwrap();
    let payload: Value = serde_json::from_str(&r.body).unwrap();
    assert_eq!(payload["type"], "disk.full");
    assert_eq!(payload["data"]["host"]["name"], "db-01");
}

#[test]
fn slack_escapes_mentions_in_values() {
    let source = Source {
        subject: "Run failed: {{ job.name }}",
        body: "*{{ job.name }}* <https://ops/x|link>",
        html_body: "",
    };
    let r = render(
        Channel::Slack,
        &source,
        &json!({"job": {"name": "<!channel> & <@U123>"}}),
    )
    .unwrap();
    assert_eq!(
        r.subject,
        "Run failed: &lt;!channel&gt; &amp; &lt;@U123&gt;"
    );
    // The template's own markup is kept.
    assert_eq!(
        r.body,
        "*&lt;!channel&gt; &amp; &lt;@U123&gt;* <https://ops/x|link>"
    );
    // So do the built-ins.
    let mut context = sample("run.failed");
    context["job"]["name"] = json!("<!channel>");
    let r = render(
        Channel::Slack,
        &builtin(Channel::Slack, "run.failed"),
        &context,
    )
    .unwrap();
    assert!(!r.body.contains("<!channel>"));
    assert!(r.body.contains("&lt;!channel&gt;"));
}

#[test]
fn email_html_escapes_and_text_does_not() {
    let source = Source {
        subject: "{{ x }}",
        body: "{{ x }}",
        html_body: "<p>{{ x }}</p>",
    };
    let r = render(
        Channel::Email,
        &source,
        &json!({"x": "<script>alert(1)</script>"}),
    )
    .unwrap();
    assert_eq!(r.subject, "<script>alert(1)</script>");
    assert_eq!(r.body, "<script>alert(1)</script>");
    assert!(!r.html_body.contains("<script>"));
    assert!(r
        .html_body
        .starts_with("<p>&lt;script&gt;alert(1)&lt;&#x2f;script&gt;"));
}

#[test]
fn teams_does_not_escape() {
    let r = render(Channel::Teams, &body("{{ x }}"), &json!({"x": "<b>&\"x\""})).unwrap();
    assert_eq!(r.body, "<b>&\"x\"");
}

#[test]
fn webhook_values_are_json_literals() {
    let error = "exit \"2\"\nline two \\ <tag> \u{1}";
    let r = render(
        Channel::Webhook,
        &body(r#"{"error": {{ run.error }}, "n": {{ run.attempt }}, "missing": {{ run.nope }}}"#),
        &json!({"run": {"error": error, "attempt": 3}}),
    )
    .unwrap();
    let payload: Value = serde_json::from_str(&r.body).unwrap();
    assert_eq!(payload["error"], error);
    assert_eq!(payload["n"], 3);
    assert_eq!(payload["missing"], Value::Null);
    assert_eq!(r.missing_variables, ["run.nope"]);

    // The built-in payload round-trips awkward values too.
    let mut context = sample("run.failed");
    context["run"]["error"] = json!(error);
    let r = render(
        Channel::Webhook,
        &builtin(Channel::Webhook, "run.failed"),
        &context,
    )
    .unwrap();
    let payload: Value = serde_json::from_str(&r.body).unwrap();
    assert_eq!(payload["data"]["run"]["error"], error);
    assert_eq!(payload["data"]["failed_steps"][0]["exit_code"], 2);
}

#[test]
fn webhook_body_must_be_json() {
    let err = render(
        Channel::Webhook,
        &body("{\n  \"a\": {{ a|safe }}\n}"),
        &json!({"a": "not json"}),
    )
    .unwrap_err();
    assert!(
        matches!(err, RenderError::NotJson { line: Some(2), .. }),
        "{err:?}"
    );
    assert_eq!(err.field(), "body");
    // Other channels do not care.
    render(Channel::Teams, &body("{ not json"), &json!({})).unwrap();
}

#[test]
fn fuel_stops_nested_loops() {
    let started = Instant::now();
    let err = render(
        Channel::Email,
        &body("{% for i in range(100000) %}{% for j in range(100000) %}{{ j }}{% endfor %}{% endfor %}"),
        &json!({}),
    )
    .unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(5));
    match err {
        RenderError::Template { field, message, .. } => {
            assert_eq!(field, "body");
            assert!(message.contains("fuel"), "{message}");
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn syntax_errors_point_at_the_line() {
    let source = Source {
        subject: "ok",
        body: "line one\nline two\n{% if x %}never closed",
        html_body: "",
    };
    for err in [
        check(Channel::Email, &source).unwrap_err(),
        render(Channel::Email, &source, &json!({})).unwrap_err(),
    ] {
        match &err {
            RenderError::Template {
                field,
                line,
                message,
            } => {
                assert_eq!(*field, "body");
                assert_eq!(*line, Some(3));
                assert!(message.starts_with("syntax error"), "{message}");
                assert!(!message.contains("email.body"), "{message}");
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(err.to_string().lines().count(), 1);
        assert!(err.to_string().starts_with("body line 3: syntax error"));
    }
    let err = check(
        Channel::Slack,
        &Source {
            subject: "{{ unclosed",
            body: "",
            html_body: "",
        },
    )
    .unwrap_err();
    assert_eq!(err.field(), "subject");
}

#[test]
fn runtime_errors_point_at_the_line() {
    let err = render(
        Channel::Teams,
        &Source {
            subject: "",
            body: "",
            html_body: "a\n{{ 1 + \"a\" }}",
        },
        &json!({}),
    )
    .unwrap_err();
    assert!(
        matches!(
            &err,
            RenderError::Template {
                field: "html_body",
                line: Some(2),
                ..
            }
        ),
        "{err:?}"
    );
}

#[test]
fn sandbox_loads_nothing() {
    for body in [
        "{% include 'x' %}",
        "{% import 'x' as m %}",
        "{% extends '/etc/passwd' %}",
    ] {
        let err = render(
            Channel::Email,
            &Source {
                subject: "",
                body,
                html_body: "",
            },
            &json!({}),
        )
        .unwrap_err();
        assert_eq!(err.field(), "body");
    }
}

#[test]
fn output_is_capped() {
    let big = "{% for i in range(300) %}{{ 'x' * 1000 }}{% endfor %}";
    let err = render(Channel::Email, &body(big), &json!({})).unwrap_err();
    assert_eq!(
        err,
        RenderError::TooLarge {
            field: "body",
            limit: BODY_LIMIT
        }
    );
    let err = render(
        Channel::Email,
        &Source {
            subject: "{{ 'x' * 1025 }}",
            body: "",
            html_body: "",
        },
        &json!({}),
    )
    .unwrap_err();
    assert_eq!(
        err,
        RenderError::TooLarge {
            field: "subject",
            limit: SUBJECT_LIMIT
        }
    );
    let ok = render(
        Channel::Email,
        &Source {
            subject: "{{ 'x' * 1024 }}",
            body: "",
            html_body: "",
        },
        &json!({}),
    )
    .unwrap();
    assert_eq!(ok.subject.len(), 1024);
}

#[test]
fn missing_variables_are_reported() {
    let source = Source {
        subject: "{{ job.name }} {{ nope }}",
        body: "{{ run.id }} {{ run.error }} {% for s in steps %}{{ s.name }}{% endfor %}{{ range(2)|length }}",
        html_body: "{{ nope }} {{ job.labels.env }} {% set local = 1 %}{{ local }}",
    };
    let r = render(
        Channel::Email,
        &source,
        &json!({"job": {"name": "backup", "labels": {}}, "run": {"id": "r1"}}),
    )
    .unwrap();
    assert_eq!(
        r.missing_variables,
        ["job.labels.env", "nope", "run.error", "steps"]
    );
    assert_eq!(r.subject, "backup");
    assert_eq!(r.body, "r1  2");
}

#[test]
fn dotted_variables_render() {
    let vars: HashMap<String, String> = [
        ("run.id", "r-42"),
        ("job.name", "backup"),
        ("run.state", "failed"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    let context = context_from_variables(&vars);
    let r = render(
        Channel::Email,
        &builtin(Channel::Email, "run.failed"),
        &context,
    )
    .unwrap();
    assert_eq!(r.subject, "[OpsConductor] Run failed: backup");
    assert!(r.body.contains("Run:          r-42"), "{}", r.body);
    assert!(r.missing_variables.contains(&"run.error".to_owned()));
    assert!(!r.missing_variables.contains(&"run.id".to_owned()));
}

#[test]
fn subject_is_one_line() {
    let r = render(
        Channel::Email,
        &Source {
            subject: "Run {{ name }}\ndone",
            body: "",
            html_body: "",
        },
        &json!({"name": "a\r\nBcc: victim@example.com"}),
    )
    .unwrap();
    assert_eq!(r.subject, "Run a  Bcc: victim@example.com done");
    assert!(!r.subject.contains(['\r', '\n']));
}

#[test]
fn none_prints_nothing_in_text() {
    let r = render(Channel::Email, &body("[{{ x }}]"), &json!({"x": null})).unwrap();
    assert_eq!(r.body, "[]");
}

#[test]
fn non_object_context_is_empty() {
    let r = render(Channel::Email, &body("[{{ x }}]"), &json!([1, 2])).unwrap();
    assert_eq!(r.body, "[]");
    assert_eq!(r.missing_variables, ["x"]);
}

#[test]
fn errors_name_their_field() {
    assert_eq!(
        RenderError::TooLarge {
            field: "html_body",
            limit: 1
        }
        .field(),
        "html_body"
    );
    assert_eq!(
        RenderError::NotJson {
            line: None,
            message: String::new()
        }
        .field(),
        "body"
    );
}

#[test]
fn indent_and_tojson_keep_their_meaning_under_their_caps() {
    let r = |t: &str| render(Channel::Email, &body(t), &json!({})).map(|r| r.body);
    assert_eq!(
        r(r#"{{ "a\nb\n\nc"|indent(2) }}"#).unwrap(),
        "a\n  b\n\n  c"
    );
    assert_eq!(
        r(r#"{{ "a\nb"|indent(width=3, first=true) }}"#).unwrap(),
        "   a\n   b"
    );
    assert_eq!(
        r(r#"{{ "a\n\nb"|indent(1, blank=true) }}"#).unwrap(),
        "a\n \n b"
    );
    assert_eq!(r(r#"{{ [1]|tojson(indent=2) }}"#).unwrap(), "[\n  1\n]");
    assert_eq!(r(r#"{{ [1]|tojson(true) }}"#).unwrap(), "[\n  1\n]");
    assert_eq!(r(r#"{{ [1]|tojson }}"#).unwrap(), "[1]");
    assert_eq!(r(r#"{{ "a\nb"|indent(64) }}"#).unwrap().len(), 3 + 64);
}

#[test]
fn indent_and_tojson_arguments_over_their_caps_are_errors_naming_the_cap() {
    for (template, limit) in [
        (r#"{{ "a\nb"|indent(1099511627776) }}"#, INDENT_LIMIT),
        (r#"{{ "a\nb"|indent(65) }}"#, INDENT_LIMIT),
        (r#"{{ "a\nb"|indent(-1) }}"#, INDENT_LIMIT),
        (
            r#"{{ "a\nb"|indent(width=18446744073709551616) }}"#,
            INDENT_LIMIT,
        ),
        (r#"{{ [1]|tojson(indent=17) }}"#, JSON_INDENT_LIMIT),
        (r#"{{ [1]|tojson(1099511627776) }}"#, JSON_INDENT_LIMIT),
    ] {
        let err = render(Channel::Email, &body(template), &json!({})).unwrap_err();
        assert!(
            err.to_string().contains(&format!("is limited to {limit}")),
            "{template}: {err}"
        );
    }
}
