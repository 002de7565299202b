//! Parameters and step outputs never become shell syntax, through real CreateJob/StartRun:
//! hostile values crossed with the shell contexts a hole can sit in, in shell steps (the
//! executor's /bin/sh, dash here) and ssh steps (a real sshd on loopback). Each pair is either
//! refused when the job is saved (with the step's field and the hole's byte), or the value
//! reaches the command byte-exact — checked by its SHA-256 — and no marker file appears.

use std::path::Path;

use opsconductor_api::jobs::v1::*;
use opsconductor_testkit::{JobsExt, Sandbox, StorageBackend};
use sha2::{Digest, Sha256};
use tonic::Code;
use tonic_types::StatusExt;

use crate::jobs::ssh::sshd_target;
use crate::jobs::{job, shell, string_param, unique_path, LIMIT};
use crate::support::assert_violations;

/// Hostile values; `M` stands for the marker file.
fn hostile_values(marker: &str) -> Vec<String> {
    let mut values: Vec<String> = [
        "$(touch M)",
        "`touch M`",
        "'; touch M; '",
        "\"; touch M; \"",
        "'\"$(touch M)\"'`touch M`",
        "x\ntouch M",
        "; touch M",
        "&& touch M",
        "| touch M",
        "*",
        "/*",
        "[a-z]*?",
        "~",
        "-oProxyCommand=touch M",
        "--help",
        "${IFS}touch${IFS}M",
        "a[$(touch M)]",
        "\\",
        "EOF\ntouch M\nEOF",
        ");; esac; touch M",
        "$HOME $OPS_P_0 ${OPS_P_1}",
        "x\n\n",
        "",
    ]
    .iter()
    .map(|v| v.replace('M', marker))
    .collect();
    values.push(format!("{}$(touch {marker})", "A".repeat(4000)));
    values
}

type Expect = fn(&str) -> String;

/// Templates a job may hold, and what each command prints for a value.
fn allowed_templates() -> Vec<(&'static str, Expect)> {
    vec![
        ("printf '%s' {{ params.v }}", |v| v.to_string()),
        ("printf '%s' \"<{{ params.v }}>\"", |v| format!("<{v}>")),
        ("printf '%s' \"$(printf '%s.' {{ params.v }})\"", |v| format!("{v}.")),
        ("cat <<EOF\n{{ params.v }}\nEOF", |v| format!("{v}\n")),
        (
            "case {{ params.v }} in {{ params.v }}) printf '%s' {{ params.v }};; *) printf no;; esac",
            |v| v.to_string(),
        ),
        ("sh -c 'printf %s \"$1\"' sh {{ params.v }}", |v| v.to_string()),
        ("X={{ params.v }}; printf '%s' \"$X\"", |v| v.to_string()),
        ("for a in {{ params.v }}; do printf '%s' \"$a\"; done", |v| v.to_string()),
    ]
}

/// Templates refused when saved: a reference there would not expand, or would be parsed again.
const REFUSED: &[&str] = &[
    "echo \"hi\" 'hi {{ params.v }}'",
    "cat <<'EOF'\n{{ params.v }}\nEOF",
    "cat <<\"EOF\"\n{{ params.v }}\nEOF",
    "echo $(( {{ params.v }} + 1 ))",
    "eval \"echo {{ params.v }}\"",
    "sh -c \"echo {{ params.v }}\"",
    "echo `echo {{ params.v }}`",
    "echo ${X:-{{ params.v }}}",
    "ssh -o {{ params.v }} host true",
    "ssh host echo {{ params.v }}",
    "{{ params.v }} --version",
    "declare {{ params.v }}=1",
    "arr[{{ params.v }}]=1",
    "[ -v {{ params.v }} ]",
    "declare -i n; n={{ params.v }}",
    "scp host:{{ params.v }} .",
];

fn sha(bytes: &str) -> String {
    hex::encode(Sha256::digest(bytes.as_bytes()))
}

/// One step command that runs template `t` once per value (parameters v0, v1, …), each
/// printing `<tag>-<k> <sha256>  -`.
fn crossed(t: &str, tag: &str, values: usize) -> String {
    let mut command = String::new();
    for k in 0..values {
        let piece = t.replace("params.v ", &format!("params.v{k} "));
        command.push_str(&format!("printf '{tag}-{k} '\n(\n{piece}\n) | sha256sum\n"));
    }
    command
}

fn params(count: usize, allow_leading_dash: bool) -> Vec<ParameterSpec> {
    (0..count)
        .map(|k| ParameterSpec {
            allow_leading_dash,
            ..string_param(&format!("v{k}"))
        })
        .collect()
}

/// Every hostile value through every allowed context, locally and over SSH, in one run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_values_reach_shell_and_ssh_commands_byte_exact() {
    let s = Sandbox::start(StorageBackend::Sqlite).await;
    let (_sshd, _) = sshd_target(&s, "inj-host").await;

    let marker = unique_path("injected");
    let values = hostile_values(&marker);
    let templates = allowed_templates();
    let mut steps = Vec::new();
    for (i, (t, _)) in templates.iter().enumerate() {
        steps.push(shell(
            &format!("local-{i}"),
            &crossed(t, &format!("l{i}"), values.len()),
        ));
        steps.push(Step {
            name: format!("remote-{i}"),
            action: Some(step::Action::Ssh(SshStep {
                command: crossed(t, &format!("r{i}"), values.len()),
                credential_id: String::new(),
            })),
            ..Default::default()
        });
    }
    let mut j = job("injection", steps);
    j.parameters = params(values.len(), true);
    j.targets = Some(TargetSelector {
        names: vec!["inj-host".into()],
        ..Default::default()
    });
    let j = s.jobs().create(j).await.unwrap();
    let names: Vec<String> = (0..values.len()).map(|k| format!("v{k}")).collect();
    let given: Vec<(&str, &str)> = names
        .iter()
        .map(String::as_str)
        .zip(values.iter().map(String::as_str))
        .collect();
    let run = s.jobs().start(&j.id, &given).await.unwrap();
    let (run, _) = s.jobs().finish(&run.id, LIMIT * 3).await.unwrap();
    assert_eq!(
        RunState::try_from(run.state),
        Ok(RunState::Succeeded),
        "{} {:?}",
        run.error,
        run.steps
    );
    let lines = s.jobs().log_text(&run.id).await.unwrap();
    let mut checked = 0;
    for (i, (t, expect)) in templates.iter().enumerate() {
        for (k, value) in values.iter().enumerate() {
            for side in ["l", "r"] {
                let want = format!("{side}{i}-{k} {}  -", sha(&expect(value)));
                assert!(
                    lines.contains(&want),
                    "{side}: {t:?} with {:?} did not arrive exactly",
                    value.chars().take(60).collect::<String>()
                );
                checked += 1;
            }
        }
    }
    assert_eq!(checked, templates.len() * values.len() * 2);
    assert!(!Path::new(&marker).exists(), "a value ran as a command");
    s.stop().await;
}

/// Step outputs are values like parameters: a compromised step's output stays data in the next
/// step, locally and over SSH, and one starting with '-' is not passed on at all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn step_outputs_never_become_shell_syntax() {
    let s = Sandbox::start(StorageBackend::Sqlite).await;
    let marker = unique_path("output-injected");
    // Values as an output keeps them: no trailing blanks, no carriage returns, no leading '-'.
    let values: Vec<String> = hostile_values(&marker)
        .into_iter()
        .filter(|v| !v.starts_with('-') && v.trim_end() == v && !v.is_empty())
        .collect();
    let mut steps = Vec::new();
    for k in 0..values.len() {
        steps.push(shell(
            &format!("emit-{k}"),
            &format!("printf '%s' {{{{ params.v{k} }}}}"),
        ));
    }
    let mut uses = String::new();
    for k in 0..values.len() {
        uses.push_str(&format!(
            "printf 'o-{k} '; printf '%s' {{{{ steps.emit-{k}.output }}}} | sha256sum\n\
             printf 'q-{k} '; printf '%s' \"[{{{{ steps.emit-{k}.output }}}}]\" | sha256sum\n"
        ));
    }
    steps.push(shell("use", &uses));
    let mut j = job("outputs-injection", steps);
    j.parameters = params(values.len(), true);
    let j = s.jobs().create(j).await.unwrap();
    let names: Vec<String> = (0..values.len()).map(|k| format!("v{k}")).collect();
    let given: Vec<(&str, &str)> = names
        .iter()
        .map(String::as_str)
        .zip(values.iter().map(String::as_str))
        .collect();
    let run = s.jobs().start(&j.id, &given).await.unwrap();
    let (run, _) = s.jobs().finish(&run.id, LIMIT).await.unwrap();
    assert_eq!(
        RunState::try_from(run.state),
        Ok(RunState::Succeeded),
        "{}",
        run.error
    );
    let lines = s.jobs().log_text(&run.id).await.unwrap();
    for (k, value) in values.iter().enumerate() {
        assert!(
            lines.contains(&format!("o-{k} {}  -", sha(value))),
            "{value:?}"
        );
        assert!(lines.contains(&format!("q-{k} {}  -", sha(&format!("[{value}]")))));
    }
    assert!(!Path::new(&marker).exists(), "an output ran as a command");

    // An output that starts with '-' would be an option: the step that uses it fails.
    let j = s
        .jobs()
        .create(job(
            "dash-output",
            vec![
                shell("emit", "echo -oProxyCommand=touch-it"),
                shell("use", "echo never {{ steps.emit.output }}"),
            ],
        ))
        .await
        .unwrap();
    let run = s.jobs().start(&j.id, &[]).await.unwrap();
    let (run, _) = s.jobs().finish(&run.id, LIMIT).await.unwrap();
    assert_eq!(RunState::try_from(run.state), Ok(RunState::Failed));
    let used = run.steps.iter().find(|st| st.step_name == "use").unwrap();
    assert!(used.error.contains("starts with '-'"), "{}", used.error);
    let lines = s.jobs().log_text(&run.id).await.unwrap();
    assert!(!lines.iter().any(|l| l.starts_with("never")), "{lines:?}");
    s.stop().await;
}

/// A hole where a reference would not expand or would be parsed again is refused by CreateJob
/// and UpdateJob, in shell and ssh steps, naming the field and the byte.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsafe_holes_are_refused_when_saved() {
    let s = Sandbox::start(StorageBackend::Sqlite).await;
    let saved = s
        .jobs()
        .create({
            let mut j = job("fine", vec![shell("a", "echo {{ params.v }}")]);
            j.parameters = vec![string_param("v")];
            j
        })
        .await
        .unwrap();
    for template in REFUSED {
        let byte = template.find("{{").unwrap();
        let ssh = Step {
            name: "a".into(),
            action: Some(step::Action::Ssh(SshStep {
                command: template.to_string(),
                credential_id: String::new(),
            })),
            targets: Some(TargetSelector {
                names: vec!["somewhere".into()],
                ..Default::default()
            }),
            ..Default::default()
        };
        for (step, field) in [
            (shell("a", template), "job.steps[0].shell.command"),
            (ssh, "job.steps[0].ssh.command"),
        ] {
            let mut j = job("unsafe", vec![step]);
            j.parameters = vec![string_param("v")];
            let status = s.jobs().create(j.clone()).await.unwrap_err();
            assert_violations(&status, &[field]);
            let said = &status.get_details_bad_request().unwrap().field_violations[0].description;
            assert!(
                said.contains(&format!("at byte {byte}:")),
                "{template:?}: {said}"
            );
            j.id = saved.id.clone();
            let status = s
                .jobs()
                .update_job(UpdateJobRequest {
                    job: Some(j),
                    update_mask: Some(prost_types::FieldMask {
                        paths: vec!["steps".into()],
                    }),
                    expected_revision: 0,
                })
                .await
                .unwrap_err();
            assert_violations(&status, &[field]);
        }
    }
    s.stop().await;
}

/// The option injection from the review: `ssh -o BatchMode=yes {{ params.host }} true` with
/// "-oProxyCommand=…" is refused at StartRun naming the parameter, unless the parameter allows
/// a leading dash (or its pattern requires one); NUL is refused too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leading_dashes_and_nul_are_refused_at_start() {
    let s = Sandbox::start(StorageBackend::Sqlite).await;
    let marker = unique_path("proxy-command");
    let mut j = job(
        "option-injection",
        vec![shell(
            "connect",
            "ssh -o BatchMode=yes -o ConnectTimeout=1 {{ params.host }} true; echo done",
        )],
    );
    j.parameters = vec![string_param("host")];
    let j = s.jobs().create(j).await.unwrap();
    for value in [
        format!("-oProxyCommand=touch {marker}"),
        "--".to_string(),
        "-".to_string(),
        "a\0b".to_string(),
    ] {
        let status = s
            .jobs()
            .start(&j.id, &[("host", &value)])
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument);
        assert_violations(&status, &["parameters[host]"]);
    }

    // The author may allow options explicitly, or by a pattern that requires the dash.
    let mut opts = job(
        "with-options",
        vec![shell(
            "ls",
            "printf '%s|' {{ params.flag }} {{ params.mode }}",
        )],
    );
    opts.parameters = vec![
        ParameterSpec {
            allow_leading_dash: true,
            ..string_param("flag")
        },
        ParameterSpec {
            pattern: "--(fast|slow)".into(),
            ..string_param("mode")
        },
    ];
    let opts = s.jobs().create(opts).await.unwrap();
    let run = s
        .jobs()
        .start(&opts.id, &[("flag", "-l"), ("mode", "--fast")])
        .await
        .unwrap();
    let (run, _) = s.jobs().finish(&run.id, LIMIT).await.unwrap();
    assert_eq!(
        RunState::try_from(run.state),
        Ok(RunState::Succeeded),
        "{}",
        run.error
    );
    let lines = s.jobs().log_text(&run.id).await.unwrap();
    assert!(lines.contains(&"-l|--fast|".to_string()), "{lines:?}");
    assert!(!Path::new(&marker).exists());
    s.stop().await;
}

/// Any local user can read every process's argv (`/proc/*/cmdline`): a value (a secret, say)
/// must be in none of them while a step runs — not in the local shell's script, not in the
/// SSH exec request or the remote shell's. A control process that does put the value in its
/// argv shows the scan would see it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn values_are_in_no_process_argv() {
    let s = Sandbox::start(StorageBackend::Sqlite).await;
    let (_sshd, _) = sshd_target(&s, "argv-host").await;
    let scan = "sh -c 'sleep 3; :' control {{ params.token }} &\n\
                sleep 0.5\n\
                for f in /proc/[0-9]*/cmdline; do\n\
                  tr '\\0' '\\n' < \"$f\" 2>/dev/null | while IFS= read -r line; do\n\
                    case \"$line\" in *{{ params.token }}*) echo \"FOUND $f\";; esac\n\
                  done\n\
                done\n\
                wait\n\
                echo scanned";
    let mut j = job(
        "argv",
        vec![
            shell("local", scan),
            Step {
                name: "remote".into(),
                action: Some(step::Action::Ssh(SshStep {
                    command: scan.into(),
                    credential_id: String::new(),
                })),
                ..Default::default()
            },
        ],
    );
    j.parameters = vec![string_param("token")];
    j.targets = Some(TargetSelector {
        names: vec!["argv-host".into()],
        ..Default::default()
    });
    let j = s.jobs().create(j).await.unwrap();
    let token = format!("tok-{}", uuid::Uuid::now_v7().simple());
    let run = s.jobs().start(&j.id, &[("token", &token)]).await.unwrap();
    let (run, _) = s.jobs().finish(&run.id, LIMIT).await.unwrap();
    assert_eq!(
        RunState::try_from(run.state),
        Ok(RunState::Succeeded),
        "{}",
        run.error
    );
    let lines = s.jobs().log_text(&run.id).await.unwrap();
    assert_eq!(
        lines.iter().filter(|l| *l == "scanned").count(),
        2,
        "{lines:?}"
    );
    assert_eq!(
        lines.iter().filter(|l| l.starts_with("FOUND ")).count(),
        2,
        "only the two control processes hold the value in their argv: {lines:?}"
    );
    s.stop().await;
}
