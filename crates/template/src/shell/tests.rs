//! The lexer's decisions, and a property-style check that crosses hostile values with shell
//! contexts under dash and bash: each pair is refused, or the value arrives byte-exact and no
//! marker file appears.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use super::Placement;
use crate::{RenderError, Template, Values};

fn placements(source: &str) -> Vec<Placement> {
    Template::parse(source)
        .unwrap()
        .shell_placements()
        .into_iter()
        .map(|(_, p)| p)
        .collect()
}

fn allowed(source: &str) -> bool {
    Template::parse(source).unwrap().check_shell().is_ok()
}

#[track_caller]
fn assert_refused(source: &str) {
    assert!(!allowed(source), "should be refused: {source:?}");
}

#[track_caller]
fn assert_allowed(source: &str) {
    let t = Template::parse(source).unwrap();
    assert_eq!(t.check_shell(), Ok(()), "should be allowed: {source:?}");
}

#[test]
fn bare_and_double_quoted_holes_render_as_references() {
    assert_eq!(placements("echo {{ params.a }}"), [Placement::Word]);
    assert_eq!(
        placements("echo \"hi {{ params.a }}\""),
        [Placement::InString]
    );
    assert_eq!(
        placements("echo x{{ params.a }}y \"$(echo {{ params.a }})\""),
        [Placement::Word, Placement::Word]
    );
    assert_eq!(
        placements("cat <<EOF\nhi {{ params.a }}\nEOF\necho {{ params.a }}"),
        [Placement::InString, Placement::Word]
    );
}

#[test]
fn single_quotes_and_quoted_heredocs_are_refused() {
    assert_refused("echo 'hi {{ params.a }}'");
    assert_refused("echo $'hi {{ params.a }}'");
    assert_refused("cat <<'EOF'\n{{ params.a }}\nEOF");
    assert_refused("cat <<\"EOF\"\n{{ params.a }}\nEOF");
    assert_refused("cat <<\\EOF\n{{ params.a }}\nEOF");
    assert_refused("cat <<-'EOF'\n\t{{ params.a }}\n\tEOF");
    // After the quoted heredoc ends, a hole is a plain word again.
    assert_allowed("cat <<'EOF'\nliteral 'quotes' $x\nEOF\necho {{ params.a }}");
    // A quote character inside a double-quoted string is not a single quote.
    assert_allowed("echo \"it's {{ params.a }}\"");
    // Nor inside an unquoted heredoc.
    assert_allowed("cat <<EOF\nit's {{ params.a }}\nEOF");
}

#[test]
fn contexts_that_parse_again_are_refused() {
    assert_refused("echo `echo {{ params.a }}`");
    assert_refused("echo \"`echo {{ params.a }}`\"");
    assert_refused("echo $(( {{ params.a }} + 1 ))");
    assert_refused("(( {{ params.a }} > 1 )) && echo big");
    assert_refused("let x={{ params.a }}");
    assert_refused("[[ {{ params.a }} -eq 1 ]]");
    assert_refused("echo ${x:-{{ params.a }}}");
    assert_refused("eval {{ params.a }}");
    assert_refused("eval \"echo {{ params.a }}\"");
    assert_refused(". {{ params.a }}");
    assert_refused("sh -c {{ params.a }}");
    assert_refused("sh -c \"echo {{ params.a }}\"");
    assert_refused("bash -ec \"echo {{ params.a }}\"");
    assert_refused("bash -e -c \"echo {{ params.a }}\"");
    assert_refused("/bin/sh {{ params.a }}");
    assert_refused("su -c \"echo {{ params.a }}\" root");
    assert_refused("sudo -u root bash -c \"echo {{ params.a }}\"");
    assert_refused("env A=1 sh -c {{ params.a }}");
    assert_refused("timeout 5 bash -c {{ params.a }}");
    assert_refused("find . -exec sh -c {{ params.a }} \\;");
    assert_refused("xargs {{ params.a }}");
    assert_refused("python3 -c \"print('{{ params.a }}')\"");
    assert_refused("awk \"{print {{ params.a }}}\"");
    assert_refused("sed \"s/x/{{ params.a }}/\" f");
    assert_refused("declare {{ params.a }}");
    assert_refused("export {{ params.a }}=1");
    assert_refused("read -r {{ params.a }}");
    assert_refused("printf -v {{ params.a }} %s x");
    assert_refused("sh <<EOF\necho {{ params.a }}\nEOF");
    assert_refused("ssh host <<EOF\necho {{ params.a }}\nEOF");
    // bash evaluates these as arithmetic or as names with subscripts (verified: each ran
    // `touch` with a value such as `a[$(touch x)]`).
    assert_refused("arr[{{ params.a }}]=1");
    assert_refused("[ -v {{ params.a }} ]");
    assert_refused("test -R \"{{ params.a }}\"");
    assert_refused("declare -i n={{ params.a }}");
    assert_refused("local -n ref={{ params.a }}");
    assert_refused("declare -i n; n={{ params.a }}");
    assert_refused("typeset -i n\necho \"$(n={{ params.a }})\"");
    assert_refused("echo $[ {{ params.a }} + 1 ]");
    assert_refused("for (( i = 0; i < {{ params.a }}; i++ )); do :; done");
    assert_refused("[[ -n x && {{ params.a }} -eq 1 ]]");
    assert_refused("[[ -n x || ( {{ params.a }} -eq 1 ) ]]");
    assert_refused("scp {{ params.a }}:/etc/x .");
    assert_refused("scp host:{{ params.a }} .");
    assert_refused("rsync -e {{ params.a }} src host:dst");
    assert_refused("scp -o {{ params.a }} f host:");
    assert_refused("scp {{ params.a }} host:/tmp/");
    assert_allowed("scp ./{{ params.a }} /srv/{{ params.a }} host:/tmp/");
    assert_allowed("[[ -n x ]] && echo {{ params.a }}");
    assert_allowed("[ {{ params.a }} = x ] && echo {{ params.a }}");
    assert_allowed("declare -i n=1; m={{ params.a }}; echo \"$m\"");
    assert_refused("echo {{ params.a }} | sh");
    assert_refused("echo ok {{ params.a }}; printf '%s' x | bash -s");
    assert_refused("echo \"$(printf '%s' {{ params.a }} | python3)\"");
    assert_allowed("echo {{ params.a }} | sh -c 'cat'");
    assert_allowed("echo {{ params.a }} | grep x || sh script.sh");
    // And in a $( ) the same rules hold.
    assert_refused("echo \"$(eval {{ params.a }})\"");
    // Passing values as arguments after a script is the safe way.
    assert_allowed("sh -c 'printf %s \"$1\"' sh {{ params.a }}");
    assert_allowed("bash -c 'echo \"$@\"' bash \"{{ params.a }}\" x");
    assert_allowed("export A={{ params.a }} B=\"x{{ params.a }}\"");
    assert_allowed("sudo -u root systemctl restart {{ params.a }}");
    assert_allowed("timeout 5s ping -c 1 {{ params.a }}");
    assert_allowed("find {{ params.a }} -name x");
    assert_allowed("awk '{print $1}' {{ params.a }}");
    assert_allowed("printf '%s\\n' {{ params.a }}");
    assert_allowed("[ {{ params.a }} -eq 1 ] && echo one");
    assert_allowed("X={{ params.a }} env");
}

#[test]
fn ssh_options_and_remote_commands_are_refused_destinations_are_not() {
    assert_allowed("ssh -o BatchMode=yes {{ params.host }} true");
    assert_allowed("ssh -p 22 -l me {{ params.host }} uptime");
    assert_allowed("ssh -p {{ params.port }} host uptime");
    assert_refused("ssh -o {{ params.opt }} host true");
    assert_refused("ssh -o\"{{ params.opt }}\" host true");
    assert_refused("ssh -oProxyCommand={{ params.opt }} host true");
    assert_refused("ssh host echo {{ params.x }}");
    assert_refused("ssh -p 22 host \"echo {{ params.x }}\"");
}

#[test]
fn command_position_backslashes_dollars_and_delimiters_are_refused() {
    assert_refused("{{ params.cmd }} --version");
    assert_refused("x; \"{{ params.cmd }}\"");
    assert_refused("echo a | {{ params.cmd }}");
    assert_refused("echo \\{{ params.a }}");
    assert_refused("echo \"\\{{ params.a }}\"");
    assert_refused("echo ${{ params.a }}");
    assert_refused("echo \"${{ params.a }}\"");
    assert_refused("cat <<{{ params.a }}\nx\n");
}

#[test]
fn case_patterns_match_the_value_literally() {
    assert_eq!(
        placements(
            "case {{ params.a }} in\n  {{ params.b }}|x) echo {{ params.a }};;\n  *) :;;\nesac"
        ),
        [Placement::Word, Placement::Word, Placement::Word]
    );
    // After esac, command position again.
    assert_refused("case x in a) :;; esac; {{ params.cmd }}");
    // A case inside $( ): its `)` does not close the substitution.
    assert_refused("echo \"$(case x in a) echo;; esac)\" `{{ params.a }}`");
    assert_allowed("echo \"$(case x in a) echo {{ params.a }};; esac)\" {{ params.a }}");
}

#[test]
fn redirections_comments_and_structure() {
    assert_allowed("echo hi > {{ params.file }}");
    assert_allowed("echo hi 2>{{ params.file }}");
    assert_allowed("> {{ params.file }} echo hi");
    assert_allowed("echo hi # {{ params.a }} in a comment");
    assert_allowed("if [ -n {{ params.a }} ]; then echo {{ params.a }}; fi");
    assert_allowed("for x in {{ params.a }} b; do echo \"$x\"; done");
    assert_allowed(
        "while read -r l; do echo \"$l\" {{ params.a }}; done <<EOF\n{{ params.a }}\nEOF",
    );
    assert_allowed("cat <<-EOF\n\t{{ params.a }}\n\tEOF\necho {{ params.a }}");
    assert_refused("cat <<A <<'B'\n{{ params.a }}\nA\n{{ params.a }}\nB");
    assert_allowed("cat <<A <<'B'\n{{ params.a }}\nA\nx\nB\necho {{ params.a }}");
    assert_allowed("(cd /tmp && echo {{ params.a }})");
    assert_allowed("{ echo {{ params.a }}; }");
}

#[test]
fn refusals_name_the_byte_of_the_hole() {
    let t = Template::parse("echo ok; echo '{{ params.a }}'").unwrap();
    let e = t.check_shell().unwrap_err();
    assert_eq!(e.offset, 15);
    assert!(e.to_string().contains("single quotes"), "{e}");
    let p = params("ok");
    let values = Values {
        params: Some(&p),
        ..Values::default()
    };
    assert!(matches!(
        t.render_shell(&values),
        Err(RenderError::Unsafe(_))
    ));
}

fn params(v: &str) -> BTreeMap<String, String> {
    BTreeMap::from([("v".to_string(), v.to_string())])
}

/// Hostile values; `M` stands for the marker file's path.
fn hostile_values(marker: &Path) -> Vec<String> {
    let m = marker.display().to_string();
    let mut values: Vec<String> = [
        "$(touch M)",
        "`touch M`",
        "'; touch M; '",
        "\"; touch M; \"",
        "'\"$(touch M)\"'",
        "x\ntouch M",
        "x\n\n",
        "; touch M",
        "&& touch M",
        "| touch M",
        "|| touch M &",
        "*",
        "/*",
        "?",
        "[a-z]*",
        "{a,b}",
        "~",
        "~root",
        "-oProxyCommand=touch M",
        "--help",
        "-n",
        "${IFS}touch${IFS}M",
        "$((1+1))",
        "a[$(touch M)]",
        "x[$(touch M)]=1",
        "\\",
        "\\\"",
        "EOF",
        "EOF\ntouch M\nEOF",
        ")",
        ";;",
        "esac",
        "$HOME",
        "!!",
        "%s%n%x",
        "\r\t\u{1b}[2J",
        " leading and trailing ",
        "é✓",
        "",
        "OPS_P_0",
        "${OPS_P_0}",
        "$(touch M)$(touch M)`touch M`",
    ]
    .iter()
    .map(|v| v.replace('M', &m))
    .collect();
    values.push(format!("{}$(touch {m})", "A".repeat(100_000)));
    values
}

/// What a command prints for a value.
type Expect = fn(&str) -> String;

/// Templates and what the command prints for a value (None: must be refused at save time).
fn templates() -> Vec<(&'static str, Option<Expect>)> {
    fn same(v: &str) -> String {
        v.to_string()
    }
    vec![
        ("printf '%s' {{ params.v }}", Some(same)),
        ("printf '%s' \"<{{ params.v }}>\"", Some(|v| format!("<{v}>"))),
        ("printf '%s' x{{ params.v }}y", Some(|v| format!("x{v}y"))),
        ("printf '%s' '{{ params.v }}'", None),
        ("printf '%s' \"$(printf '%s.' {{ params.v }})\"", Some(|v| format!("{v}."))),
        ("printf '%s' \"$(printf '%s.' \"{{ params.v }}\")\"", Some(|v| format!("{v}."))),
        ("cat <<EOF\n{{ params.v }}\nEOF", Some(|v| format!("{v}\n"))),
        ("cat <<-EOF\n\t<{{ params.v }}>\n\tEOF", Some(|v| format!("<{v}>\n"))),
        ("cat <<'EOF'\n{{ params.v }}\nEOF", None),
        ("cat <<\"EOF\"\n{{ params.v }}\nEOF", None),
        ("echo $(( {{ params.v }} + 1 ))", None),
        ("case {{ params.v }} in {{ params.v }}) printf '%s' {{ params.v }};; *) printf no;; esac", Some(same)),
        ("case \"{{ params.v }}\" in\n  *) printf '%s' \"{{ params.v }}\";;\nesac", Some(same)),
        ("eval \"printf '%s' {{ params.v }}\"", None),
        ("sh -c \"printf '%s' {{ params.v }}\"", None),
        ("sh -c 'printf %s \"$1\"' sh {{ params.v }}", Some(same)),
        ("printf '%s' `echo {{ params.v }}`", None),
        ("X={{ params.v }}; printf '%s' \"$X\"", Some(same)),
        ("export V=\"{{ params.v }}\"; printf '%s' \"$V\"", Some(same)),
        ("for a in {{ params.v }}; do printf '%s' \"$a\"; done", Some(same)),
        ("if [ -n {{ params.v }} ] || true; then printf '%s' \"{{ params.v }}\"; fi", Some(same)),
        ("printf '%s' {{ params.v }} # {{ params.v }}", Some(same)),
        ("printf '%s' ${x:-{{ params.v }}}", None),
        ("arr[{{ params.v }}]=1", None),
        ("[ -v {{ params.v }} ]", None),
        ("declare -i n={{ params.v }}", None),
        ("echo $[ {{ params.v }} ]", None),
        ("printf '%s' {{ params.v }} > out; cat out", Some(same)),
    ]
}

/// Runs each (value, template) pair under each shell with the values in the environment.
#[test]
fn hostile_values_never_run_under_dash_or_bash() {
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("marker");
    let mut ran = 0;
    let mut refused = 0;
    for shell in ["dash", "bash"] {
        for (source, expected) in templates() {
            let template = Template::parse(source).unwrap();
            let check = template.check_shell();
            let Some(expected) = expected else {
                assert!(check.is_err(), "{source:?} should be refused at save time");
                refused += 1;
                continue;
            };
            assert_eq!(check, Ok(()), "{source:?}");
            for value in hostile_values(&marker) {
                let p = params(&value);
                let values = Values {
                    params: Some(&p),
                    ..Values::default()
                };
                let rendered = template.render_shell(&values).unwrap();
                assert!(
                    !rendered.script.contains("touch"),
                    "the script holds no value"
                );
                let out = Command::new(shell)
                    .arg("-c")
                    .arg(&rendered.script)
                    .env_clear()
                    .env("PATH", "/usr/bin:/bin")
                    .envs(rendered.vars.iter().map(|(k, v)| (k, v)))
                    .current_dir(dir.path())
                    .output()
                    .unwrap();
                assert!(
                    !marker.exists(),
                    "{shell}: {source:?} with {value:?} ran a command"
                );
                let shown: String = value.chars().take(80).collect();
                assert_eq!(
                    String::from_utf8_lossy(&out.stdout),
                    expected(&value),
                    "{shell}: {source:?} with {shown:?}: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
                ran += 1;
            }
        }
    }
    assert!(ran > 1000 && refused > 10, "ran {ran}, refused {refused}");
}

#[test]
fn nul_is_refused_and_step_outputs_may_not_start_with_a_dash() {
    let t = Template::parse("echo {{ params.v }}").unwrap();
    let p = params("a\0b");
    let values = Values {
        params: Some(&p),
        ..Values::default()
    };
    assert!(matches!(t.render_shell(&values), Err(RenderError::Nul(_))));

    struct Dash;
    impl crate::StepOutputs for Dash {
        fn lookup(&self, _: &str, _: &[String]) -> Result<String, RenderError> {
            Ok("-oProxyCommand=x".into())
        }
    }
    let t = Template::parse("ssh {{ steps.a.output }} true").unwrap();
    let values = Values {
        steps: Some(&Dash),
        ..Values::default()
    };
    assert_eq!(
        t.render_shell(&values),
        Err(RenderError::LeadingDash("a".into()))
    );
}
