//! Values in http steps: a parameter (or an earlier step's output) that tries to choose the
//! request's host, climb the URL's path with `..`, or rewrite a JSON body with a `"`.

use opsconductor_api::jobs::v1::*;
use opsconductor_testkit::{JobsExt, Sandbox, StorageBackend};
use tonic::Code;
use tonic_types::StatusExt;

use crate::jobs::http::{http, server};
use crate::jobs::{job, string_param, LIMIT};

#[tokio::test]
async fn values_cannot_pick_the_host_climb_the_path_or_rewrite_a_json_body() {
    let s = Sandbox::start(StorageBackend::Sqlite).await;

    // Refused when saved, naming the field and the byte: no value picks where a request goes.
    for url in [
        "http://{{ params.v }}/x",
        "http://127.0.0.1:{{ params.v }}/x",
        "http://127.0.0.1{{ params.v }}",
        "http://u:{{ params.v }}@127.0.0.1/",
        "http://{{ params.v }}.example.com/",
    ] {
        let mut j = job("host", vec![http("probe", "GET", url)]);
        j.parameters = vec![string_param("v")];
        let err = s.jobs().create(j).await.expect_err(url);
        assert_eq!(err.code(), Code::InvalidArgument, "{url}: {err:?}");
        let violations = err
            .get_details_bad_request()
            .map(|b| b.field_violations)
            .unwrap_or_default();
        assert!(
            violations.iter().any(|v| v.field.ends_with("http.url")
                && v.description.contains("scheme, host or port")
                && v.description.contains("byte")),
            "{url}: {violations:?}"
        );
    }

    let (port, seen) = server().await;
    let mut step = http(
        "post",
        "POST",
        &format!("http://127.0.0.1:{port}/files/{{{{ params.v }}}}/raw?x={{{{ params.v }}}}"),
    );
    if let Some(step::Action::Http(h)) = &mut step.action {
        h.body = r#"{"name": "{{ params.v }}", "admin": false, "n": {{ params.v }}}"#.into();
    }
    let mut j = job("values", vec![step]);
    j.parameters = vec![string_param("v")];
    let j = s.jobs().create(j).await.unwrap();
    let hostile = [
        "../../admin",
        "a/b?c=d#e",
        "%2e%2e",
        "\", \"admin\": true, \"x\": \"",
        "\\\", \"admin\": true}",
        "} , \"admin\": true",
        "é <script>",
    ];
    for (i, value) in hostile.iter().enumerate() {
        let run = s.jobs().start(&j.id, &[("v", value)]).await.unwrap();
        let (run, _) = s.jobs().finish(&run.id, LIMIT).await.unwrap();
        assert_eq!(
            RunState::try_from(run.state),
            Ok(RunState::Succeeded),
            "{value:?}: {}",
            run.error
        );
        let got = seen.lock().unwrap()[i].clone();
        let url = url::Url::parse(&format!("http://127.0.0.1{}", got.path)).unwrap();
        let segments: Vec<String> = url.path_segments().unwrap().map(String::from).collect();
        assert_eq!(segments.len(), 3, "{value:?}: {}", got.path);
        let decoded = percent_decode(&segments[1]);
        assert_eq!(
            (segments[0].as_str(), decoded.as_str(), segments[2].as_str()),
            ("files", *value, "raw")
        );
        let query: Vec<(String, String)> = url.query_pairs().into_owned().collect();
        assert_eq!(query, vec![("x".to_string(), value.to_string())]);
        let body: serde_json::Value = serde_json::from_str(&got.body)
            .unwrap_or_else(|e| panic!("{value:?}: {}: {e}", got.body));
        assert_eq!(body["admin"], false, "{value:?}: {}", got.body);
        assert_eq!(body["name"], *value);
        assert_eq!(body["n"], *value);
        assert_eq!(body.as_object().map(|o| o.len()), Some(3), "{}", got.body);
    }

    // `.` and `..` would be a path segment of their own: the step fails, nothing is sent.
    let before = seen.lock().unwrap().len();
    for value in ["..", "."] {
        let run = s.jobs().start(&j.id, &[("v", value)]).await.unwrap();
        let (run, _) = s.jobs().finish(&run.id, LIMIT).await.unwrap();
        assert_eq!(
            RunState::try_from(run.state),
            Ok(RunState::Failed),
            "{value:?}"
        );
        let errors: Vec<&str> = run.steps.iter().map(|st| st.error.as_str()).collect();
        assert!(
            errors.iter().any(|e| e.contains("'..' segment")),
            "{value:?}: {errors:?}"
        );
    }
    assert_eq!(seen.lock().unwrap().len(), before, "a dot segment was sent");
    s.stop().await;
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 3 <= bytes.len() {
            if let Ok(b) = u8::from_str_radix(&text[i + 1..i + 3], 16) {
                out.push(b);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}
