//! Masks hold everywhere a step's text surfaces: a step prints a revealed secret raw,
//! percent-encoded, JSON-escaped, base64 (alone and inside `user:secret`), straddling the
//! 16 KiB line cut, and a multi-line SSH private key raw and as JSON; a later step echoes the
//! first one's output; an http step puts the secret in its URL path and fails. None of the
//! forms appears in the run's log, in GetRun (run and step errors) as a viewer, or in any
//! audit event.

use base64::Engine;
use opsconductor_api::common::v1::Role;
use opsconductor_api::credentials::v1::secret_material::Material;
use opsconductor_api::credentials::v1::*;
use opsconductor_api::jobs::v1::*;
use opsconductor_testkit::{on_both_backends, CredentialsExt, JobsExt, Sandbox};

use crate::jobs::{job, shell, LIMIT};
use crate::support::drain_audit;

async fn credential(s: &Sandbox, name: &str, kind: CredentialKind, material: Material) -> String {
    s.credentials()
        .create(
            Credential {
                name: name.into(),
                kind: kind as i32,
                ..Default::default()
            },
            SecretMaterial {
                material: Some(material),
            },
        )
        .await
        .unwrap()
        .id
}

fn ssh_private_key() -> String {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("key");
    let status = std::process::Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", "", "-f"])
        .arg(&path)
        .status()
        .unwrap();
    assert!(status.success());
    std::fs::read_to_string(path).unwrap()
}

/// Every form of `secret` that must never surface.
fn forms(secret: &str) -> Vec<String> {
    let b64 = base64::engine::general_purpose::STANDARD;
    let json = serde_json::to_string(secret).unwrap();
    let mut forms = vec![
        secret.to_string(),
        // Every byte but the unreserved ones, as jq's @uri and the URL template hole do.
        secret
            .bytes()
            .map(|b| match b {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                    char::from(b).to_string()
                }
                _ => format!("%{b:02X}"),
            })
            .collect(),
        json.trim_matches('"').to_string(),
        b64.encode(secret),
        b64.encode(format!("user:{secret}")),
    ];
    if secret.contains('\n') {
        forms.extend(
            secret
                .lines()
                .filter(|l| l.len() >= 16 && !l.starts_with("-----"))
                .map(str::to_string),
        );
    }
    forms
}

fn http_step(name: &str, url: &str) -> Step {
    Step {
        name: name.into(),
        action: Some(step::Action::Http(HttpStep {
            method: "GET".into(),
            url: url.into(),
            ..Default::default()
        })),
        ..Default::default()
    }
}

async fn a_secret_is_masked_in_every_form_and_place(s: &Sandbox) {
    let token = format!("Tk/{} +&\"é=;", uuid::Uuid::now_v7().simple());
    let key = ssh_private_key();
    let token_id = credential(
        s,
        "api-token",
        CredentialKind::ApiToken,
        Material::ApiToken(ApiTokenSecret {
            token: token.clone(),
        }),
    )
    .await;
    let key_id = credential(
        s,
        "deploy-key",
        CredentialKind::SshKey,
        Material::SshKey(SshKeySecret {
            private_key: key.clone(),
            passphrase: String::new(),
        }),
    )
    .await;
    let print = "T=\"$OPS_PARAM_TOKEN\"
printf 'raw %s\\n' \"$T\"
printf 'pct %s\\n' \"$(jq -rn --arg v \"$T\" '$v|@uri')\"
printf 'json %s\\n' \"$(jq -cn --arg v \"$T\" '{token:$v}')\"
printf 'b64 %s\\n' \"$(printf %s \"$T\" | base64 -w0)\"
printf 'basic %s\\n' \"$(printf 'user:%s' \"$T\" | base64 -w0)\"
head -c 16370 /dev/zero | tr '\\0' x; printf '%s tail\\n' \"$T\"
head -c 16000 /dev/zero | tr '\\0' x; printf 'mid %s\\n' \"$T\"
printf '%s\\n' \"$OPS_PARAM_KEY\"
jq -cn --arg v \"$OPS_PARAM_KEY\" '{key:$v}'";
    let mut j = job(
        "masks",
        vec![
            shell("print", print),
            shell("out", "printf '%s\\n' \"$OPS_PARAM_TOKEN\""),
            shell("reuse", "echo reused: {{ steps.out.output }}"),
            http_step("http-fail", "http://127.0.0.1:1/api/{{ params.token }}/x"),
        ],
    );
    j.parameters = [("token", &token_id), ("key", &key_id)]
        .into_iter()
        .map(|(name, id)| ParameterSpec {
            name: name.into(),
            r#type: ParameterType::Secret as i32,
            required: true,
            allowed_credential_ids: vec![id.to_string()],
            ..Default::default()
        })
        .collect();
    let j = s.jobs().create(j).await.unwrap();
    let run = s
        .jobs()
        .start(&j.id, &[("token", &token_id), ("key", &key_id)])
        .await
        .unwrap();
    s.jobs().finish(&run.id, LIMIT).await.unwrap();

    let (_, viewer) = s.user_with_role("viewer", Role::Viewer).await;
    let mut as_viewer = s.clients_as(&viewer.access_token).jobs();
    let got = as_viewer.run(&run.id).await.unwrap();
    assert_eq!(
        RunState::try_from(got.state),
        Ok(RunState::Failed),
        "{got:?}"
    );
    let lines = as_viewer.log_text(&run.id).await.unwrap();
    let events = drain_audit(s).await;

    // The defences did their work (the test is not passing on a log that never had them).
    let has = |text: &str| lines.iter().any(|l| l == text);
    for expected in [
        "raw ****",
        "pct ****",
        "b64 ****",
        "json {\"token\":\"****\"}",
    ] {
        assert!(has(expected), "no {expected:?} in {lines:#?}");
    }
    assert!(has("reused: ****"), "{lines:#?}");
    let http = got
        .steps
        .iter()
        .find(|st| st.step_name == "http-fail")
        .unwrap();
    assert!(
        http.error.contains("/api/****/x"),
        "the http step's error: {:?}",
        http.error
    );
    // Printed, the line is over the 16 KiB cut with the token across it; masked, it is under.
    assert!(
        has(&format!("{}**** tail", "x".repeat(16370))),
        "the line with the token across the cut is not there"
    );
    assert!(has(&format!("{}mid ****", "x".repeat(16000))));

    let shown = [
        ("the log", lines.join("\n")),
        ("GetRun", format!("{got:?}")),
        ("the audit trail", format!("{events:?}")),
    ];
    for secret in [&token, &key] {
        for form in forms(secret) {
            for (place, text) in &shown {
                assert!(
                    !text.contains(&form),
                    "{form:?} shows in {place}: {}",
                    &text[text.find(&form).unwrap().saturating_sub(80)..]
                        .chars()
                        .take(200)
                        .collect::<String>()
                );
            }
        }
    }
    // Not even a prefix of the token shows next to the 16 KiB cut.
    let prefix = &token[..8];
    assert!(
        !lines.join("\n").contains(prefix),
        "a prefix of the token shows"
    );
}
on_both_backends!(a_secret_is_masked_in_every_form_and_place);
