//! Where a hole sits in a shell command, decided by a small POSIX-shell lexer.
//!
//! A value never becomes script text: in a shell (or ssh) command each hole renders to a
//! reference to a variable (`"${OPS_P_3}"` where the hole is a bare word, `${OPS_P_3}` inside a
//! double-quoted string or an unquoted heredoc body) and the value travels outside the script.
//! A reference is only safe where the shell expands it once and never parses the result again;
//! this lexer finds the contexts where that is not so and refuses the hole there, with its
//! position, when the job is saved:
//!
//! - inside single quotes, `$'…'` and quoted heredocs (`<<'EOF'`, `<<"EOF"`, `<<\EOF`): a
//!   reference would not expand;
//! - after a backslash or a `$`: the reference would be cut apart;
//! - inside backticks, `$(( ))`, `(( ))`, `[[ ]]`, `let` and `${ … }`: the value is parsed again
//!   (as a command, as arithmetic — bash runs `$(…)` found in an array subscript there — or
//!   as a pattern);
//! - as an argument of `eval`, `.`, `source`, `alias`, `trap`, `watch`; as the script of
//!   `sh -c`/`bash -c` (and other shells) or `su -c`/`runuser -c`/`flock -c`; before the script
//!   of a shell; as a variable *name* for `declare`, `export`, `local`, `read`, `unset`,
//!   `printf -v` and their kin (bash evaluates subscripts in names); as an `ssh -o` option or
//!   anywhere after the destination of `ssh` (the remote shell parses its command again); and
//!   as an argument of a wrapper (`sudo`, `env`, `timeout`, `xargs`, `nohup`, …) before the
//!   command it wraps is known;
//! - in command position: the value would choose the program;
//! - as a heredoc delimiter.
//!
//! `case` patterns are allowed: the reference is quoted, so the value matches literally and
//! globbing plays no part. Contexts it cannot see (a value passed to a program that itself hands
//! it to a shell) stay the author's responsibility; the documented list is what is checked.

/// How a hole is rendered, or why it may not be there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Placement {
    /// A bare word (or part of one): `"${OPS_P_n}"`.
    Word,
    /// Inside a double-quoted string or an unquoted heredoc body: `${OPS_P_n}`.
    InString,
    /// Refused: why.
    Refused(&'static str),
}

/// One unit of a template as the lexer sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Tok {
    Ch(char),
    Hole,
}

/// What the command a word belongs to does with its arguments.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// An ordinary program: arguments are data.
    Plain,
    /// Parses its arguments as shell code.
    Eval,
    /// A shell or another interpreter (python, perl, awk, sed, …): `-c`/`-e` make the next word
    /// a script, else the first operand is one; holes only after that script.
    Interp {
        expect_script: bool,
        script_done: bool,
    },
    /// `su`/`runuser`/`flock`: the word after `-c`/`--command` is a script.
    DashC { expect_script: bool },
    /// Takes variable names (bash evaluates array subscripts in them); `strict` after `-i`
    /// (integer: values are arithmetic) or `-n` (nameref: values are names).
    Names { strict: bool },
    /// `test` / `[`: the word after `-v` or `-R` is a variable name bash evaluates.
    Test { name_next: bool },
    /// `scp` / `rsync`: a remote path (`host:path`) is parsed by the remote shell; `-e`,
    /// `--rsh`, `-o`, `-S`, `-F`, `-J` name commands or ssh options.
    Copy { option_next: bool },
    /// `printf`: the word after `-v` is a name.
    Printf { expect_name: bool },
    /// `ssh`: options, a destination, then a remote command the remote shell parses again.
    Ssh {
        expect_arg: Option<bool>,
        destination_seen: bool,
    },
    /// Runs another command named by a later argument.
    Wrapper {
        name: &'static str,
        expect_arg: bool,
    },
    /// `find`: data, until `-exec` (and kin) names a command.
    Find,
    /// Inside `[[ … ]]`.
    DoubleBracket,
}

fn classify(word: &str) -> Kind {
    let base = word.rsplit('/').next().unwrap_or(word);
    match base {
        "eval" | "." | "source" | "alias" | "trap" | "watch" | "let" => Kind::Eval,
        "sh" | "bash" | "dash" | "ash" | "ksh" | "mksh" | "zsh" | "busybox" | "fish" | "python"
        | "python3" | "perl" | "ruby" | "node" | "php" | "awk" | "gawk" | "mawk" | "sed" => {
            Kind::Interp {
                expect_script: false,
                script_done: false,
            }
        }
        "su" | "runuser" | "flock" => Kind::DashC {
            expect_script: false,
        },
        "declare" | "typeset" | "local" | "export" | "readonly" | "read" | "unset" | "mapfile"
        | "readarray" | "getopts" => Kind::Names { strict: false },
        "test" | "[" => Kind::Test { name_next: false },
        "scp" | "rsync" => Kind::Copy { option_next: false },
        "printf" => Kind::Printf { expect_name: false },
        "find" => Kind::Find,
        "ssh" => Kind::Ssh {
            expect_arg: None,
            destination_seen: false,
        },
        "sudo" | "doas" | "env" | "timeout" | "nohup" | "exec" | "command" | "builtin" | "nice"
        | "ionice" | "setsid" | "stdbuf" | "xargs" | "time" | "chroot" | "taskset" | "chrt"
        | "unshare" | "nsenter" | "setpriv" => Kind::Wrapper {
            name: WRAPPERS
                .iter()
                .find(|w| w.0 == base)
                .map(|w| w.0)
                .unwrap_or("wrapper"),
            expect_arg: false,
        },
        _ => Kind::Plain,
    }
}

/// Wrappers and their options that take a value (so that value is not the wrapped command).
const WRAPPERS: &[(&str, &[&str])] = &[
    (
        "sudo",
        &["-u", "-g", "-h", "-p", "-C", "-D", "-r", "-t", "-U", "-T"],
    ),
    ("doas", &["-u", "-C"]),
    ("env", &["-u", "-C", "--unset", "--chdir"]),
    ("timeout", &["-s", "-k", "--signal", "--kill-after"]),
    ("nice", &["-n", "--adjustment"]),
    ("ionice", &["-c", "-n", "-p", "--class", "--classdata"]),
    ("stdbuf", &["-i", "-o", "-e"]),
    (
        "xargs",
        &[
            "-I",
            "-n",
            "-P",
            "-d",
            "-E",
            "-L",
            "-s",
            "-a",
            "--max-args",
            "--delimiter",
        ],
    ),
    ("nohup", &[]),
    ("exec", &["-a"]),
    ("command", &[]),
    ("builtin", &[]),
    ("setsid", &[]),
    ("time", &["-f", "-o"]),
    ("chroot", &["--userspec", "--groups"]),
    ("taskset", &[]),
    ("chrt", &[]),
    ("unshare", &[]),
    ("nsenter", &["-t", "--target"]),
    ("setpriv", &[]),
    ("find", &[]),
];

fn takes_value(wrapper: &str, option: &str) -> bool {
    WRAPPERS
        .iter()
        .find(|w| w.0 == wrapper)
        .is_some_and(|w| w.1.contains(&option))
}

/// A wrapper's argument that is not yet the wrapped command: options, `NAME=value`, numbers
/// and durations (`timeout 5s`, `nice 10`), `find`'s paths and tests.
fn is_wrapper_operand(wrapper: &str, word: &str) -> bool {
    word.starts_with('-')
        || (wrapper == "env" && word.contains('='))
        || (wrapper == "chroot" && word.starts_with('/'))
        || (wrapper == "taskset" || wrapper == "chrt")
            && word
                .chars()
                .all(|c| c.is_ascii_hexdigit() || c == 'x' || c == ',')
        || (!word.is_empty()
            && word
                .trim_end_matches(['s', 'm', 'h', 'd'])
                .chars()
                .all(|c| c.is_ascii_digit() || c == '.'))
}

/// ssh options that take a value (from ssh(1)).
const SSH_VALUE_OPTIONS: &str = "BbcDEeFIiJLlmOoPpQRSWw";

#[derive(Debug, Clone, PartialEq, Eq)]
enum CaseState {
    /// After `case`: the subject word, then `in`.
    Subject,
    In,
    /// Reading patterns up to `)`.
    Pattern,
    /// Commands of a branch, up to `;;`.
    Body,
}

#[derive(Debug, Clone)]
struct Heredoc {
    delimiter: String,
    quoted: bool,
    strip_tabs: bool,
    /// It is the input of a shell or interpreter (`sh <<EOF`, `ssh host <<EOF`): code.
    feeds_code: bool,
}

/// Unquoted shell code: the top level, `$( … )`, `<( … )`.
#[derive(Debug, Clone)]
struct Code {
    /// `(` opened inside this frame and not closed yet.
    depth: usize,
    /// Whether a `)` at depth 0 closes this frame (it is a `$(`).
    nested: bool,
    /// The next word is a command name (or an assignment / reserved word).
    command_position: bool,
    kind: Kind,
    /// The literal text of the current word so far; None between words.
    word: Option<String>,
    /// The current word holds a hole.
    word_has_hole: bool,
    /// The current word holds quoting (so it is not a reserved word).
    word_quoted: bool,
    /// The current word is the target of a redirection.
    redirect: bool,
    /// The current word is a heredoc delimiter: (with `<<-`: strip tabs, feeds code).
    heredoc_word: Option<(bool, bool)>,
    pending: Vec<Heredoc>,
    case: Vec<CaseState>,
    /// The current command's input is a pipe.
    after_pipe: bool,
    /// Some command reads its script from a pipe (`echo … | sh`).
    pipes_into_code: bool,
    /// Variables declared integer (`declare -i n`): bash evaluates what is assigned to them.
    integers: Vec<String>,
    /// The last word closed a compound command (`done`, `fi`, `esac`, `}`, `)`): a heredoc
    /// here is that command's input.
    closed: bool,
}

impl Code {
    fn new(nested: bool) -> Code {
        Code {
            depth: 0,
            nested,
            command_position: true,
            kind: Kind::Plain,
            word: None,
            word_has_hole: false,
            word_quoted: false,
            redirect: false,
            heredoc_word: None,
            pending: Vec::new(),
            case: Vec::new(),
            integers: Vec::new(),
            after_pipe: false,
            pipes_into_code: false,
            closed: false,
        }
    }

    fn word_mut(&mut self) -> &mut String {
        self.word.get_or_insert_with(String::new)
    }

    /// A hole in the current word: where it may go.
    fn hole(&mut self) -> Placement {
        let prefix = self.word.clone().unwrap_or_default();
        self.word_mut();
        self.word_has_hole = true;
        if self.heredoc_word.is_some() {
            return Placement::Refused("a heredoc delimiter cannot be a value");
        }
        if self.redirect {
            return Placement::Word;
        }
        if matches!(
            self.case.last(),
            Some(CaseState::Subject | CaseState::Pattern)
        ) {
            return Placement::Word;
        }
        if self.kind == Kind::DoubleBracket {
            return Placement::Refused(
                "inside [[ ]] a value can be evaluated as arithmetic; use [ ] (test)",
            );
        }
        if is_assignment(&prefix) && self.integers.iter().any(|n| n == assigned_name(&prefix)) {
            return Placement::Refused(
                "the variable is declared integer (declare -i): bash evaluates what is assigned",
            );
        }
        if self.command_position {
            return if is_assignment(&prefix) {
                Placement::Word
            } else {
                Placement::Refused("in command position a value would choose the program to run")
            };
        }
        match self.kind {
            Kind::Plain | Kind::Find | Kind::DoubleBracket => Placement::Word,
            Kind::Eval => Placement::Refused(
                "an argument of eval, source, alias, trap, watch or let is parsed as shell code",
            ),
            Kind::Interp { script_done, .. } if script_done => Placement::Word,
            Kind::Interp { .. } => Placement::Refused(
                "a shell's script (and anything before it) is parsed as shell code; pass values \
                 as arguments after the script",
            ),
            Kind::DashC {
                expect_script: true,
            } => Placement::Refused("the argument of -c is parsed as shell code"),
            Kind::DashC { .. } => Placement::Word,
            Kind::Names { strict: true } => Placement::Refused(
                "with -i or -n, bash evaluates the value (arithmetic, or a name)",
            ),
            Kind::Names { .. } if !prefix.contains('=') => Placement::Refused(
                "a variable name here is evaluated by bash (array subscripts run commands)",
            ),
            Kind::Names { .. } => Placement::Word,
            Kind::Test { name_next: true } => Placement::Refused(
                "the name after -v or -R is evaluated by bash (array subscripts run commands)",
            ),
            Kind::Test { .. } => Placement::Word,
            Kind::Copy { option_next } if option_next || prefix.starts_with('-') => {
                Placement::Refused("this option of scp or rsync names a command or ssh option")
            }
            // A word is a local path only if it starts with '/' or '.' (else a ':' in it, from
            // the value or after it, makes it remote, which the remote shell parses again).
            Kind::Copy { .. } if prefix.contains(':') || !prefix.starts_with(['/', '.']) => {
                Placement::Refused(
                    "scp and rsync parse a remote path (host:path) again in the remote shell; \
                     give local paths as /… or ./…",
                )
            }
            Kind::Copy { .. } => Placement::Word,
            Kind::Printf { expect_name: true } => Placement::Refused(
                "the name after printf -v is evaluated by bash (array subscripts run commands)",
            ),
            Kind::Printf { .. } => Placement::Word,
            Kind::Ssh {
                expect_arg,
                destination_seen,
            } => {
                if expect_arg == Some(true) || prefix.starts_with("-o") {
                    Placement::Refused("an ssh -o option can run commands (ProxyCommand)")
                } else if expect_arg == Some(false) {
                    Placement::Word
                } else if destination_seen {
                    Placement::Refused(
                        "after the destination, ssh's arguments are parsed again by the remote \
                         shell",
                    )
                } else if prefix.starts_with('-') {
                    Placement::Refused("a value cannot be part of an ssh option")
                } else {
                    Placement::Word
                }
            }
            Kind::Wrapper {
                expect_arg: true, ..
            } => Placement::Word,
            Kind::Wrapper { .. } => Placement::Refused(
                "an argument of a command wrapper (sudo, env, timeout, xargs, …) could be the \
                 command it runs",
            ),
        }
    }

    /// The current word is complete.
    fn end_word(&mut self) {
        let Some(word) = self.word.take() else {
            return;
        };
        let has_hole = std::mem::take(&mut self.word_has_hole);
        let quoted = std::mem::take(&mut self.word_quoted);
        let literal = !has_hole && !quoted;
        self.closed = literal && matches!(word.as_str(), "done" | "fi" | "esac" | "}");
        if let Some((strip_tabs, feeds_code)) = self.heredoc_word.take() {
            self.pending.push(Heredoc {
                delimiter: word,
                quoted,
                strip_tabs,
                feeds_code,
            });
            return;
        }
        if self.redirect {
            self.redirect = false;
            return;
        }
        match self.case.last().cloned() {
            Some(CaseState::Subject) => {
                *self.case.last_mut().unwrap_or(&mut CaseState::Body) = CaseState::In;
                return;
            }
            Some(CaseState::In) => {
                if literal && word == "in" {
                    *self.case.last_mut().unwrap_or(&mut CaseState::Body) = CaseState::Pattern;
                }
                return;
            }
            Some(CaseState::Pattern) => {
                if literal && word == "esac" {
                    self.case.pop();
                    self.command_position = false;
                    self.kind = Kind::Plain;
                }
                return;
            }
            _ => {}
        }
        if self.kind == Kind::DoubleBracket {
            if literal && word == "]]" {
                self.kind = Kind::Plain;
            }
            return;
        }
        if self.command_position {
            if literal && is_reserved(&word) {
                match word.as_str() {
                    "case" => self.case.push(CaseState::Subject),
                    "esac" if matches!(self.case.last(), Some(CaseState::Body)) => {
                        self.case.pop();
                        self.command_position = false;
                    }
                    "[[" => {
                        self.kind = Kind::DoubleBracket;
                        self.command_position = false;
                    }
                    // `for NAME in words`: data words, then `do`.
                    "for" | "select" => {
                        self.command_position = false;
                        self.kind = Kind::Plain;
                    }
                    _ => {}
                }
                return;
            }
            if is_assignment(&word) {
                return;
            }
            self.command_position = false;
            self.kind = classify(&word);
            return;
        }
        self.argument(&word, literal);
    }

    /// Updates the command's state after an argument word.
    fn argument(&mut self, word: &str, literal: bool) {
        match &mut self.kind {
            Kind::Interp {
                expect_script,
                script_done,
            } => {
                if *expect_script && !word.starts_with('-') {
                    *expect_script = false;
                    *script_done = true;
                } else if !*script_done
                    && word.starts_with('-')
                    && !word.starts_with("--")
                    && (word.contains('c') || word.contains('e'))
                {
                    *expect_script = true;
                } else if !*script_done && !word.starts_with('-') && !word.starts_with('+') {
                    // `sh script.sh args`: the script is a file; what follows is data.
                    *script_done = true;
                }
            }
            Kind::DashC { expect_script } => {
                *expect_script = matches!(word, "-c" | "--command");
            }
            Kind::Printf { expect_name } => *expect_name = word == "-v",
            Kind::Names { strict } => {
                let option = (word.starts_with('-') || word.starts_with('+')) && word.len() > 1;
                if option && literal && (word.contains('i') || word.contains('n')) {
                    *strict = true;
                } else if *strict && !option {
                    let name = assigned_name(word).to_string();
                    self.integers.push(name);
                }
            }
            Kind::Test { name_next } => *name_next = matches!(word, "-v" | "-R"),
            Kind::Copy { option_next } => {
                *option_next = matches!(word, "-e" | "--rsh" | "-o" | "-S" | "-F" | "-J");
            }
            Kind::Find if literal && matches!(word, "-exec" | "-execdir" | "-ok" | "-okdir") => {
                self.kind = Kind::Wrapper {
                    name: "find",
                    expect_arg: false,
                };
            }
            Kind::Ssh {
                expect_arg,
                destination_seen,
            } => {
                if expect_arg.take().is_some() {
                    return;
                }
                if *destination_seen {
                    return;
                }
                if let Some(options) = word.strip_prefix('-').filter(|o| !o.is_empty()) {
                    // `-p22` carries its value; `-p` takes the next word.
                    if let Some(last) = options.chars().last() {
                        let first_valued = options.find(|c| SSH_VALUE_OPTIONS.contains(c));
                        if first_valued == Some(options.len() - last.len_utf8()) {
                            *expect_arg = Some(last == 'o');
                        }
                    }
                } else {
                    *destination_seen = true;
                }
            }
            Kind::Wrapper { name, expect_arg } => {
                let name: &'static str = name;
                if *expect_arg {
                    *expect_arg = false;
                } else if literal && takes_value(name, word) {
                    *expect_arg = true;
                } else if literal && !is_wrapper_operand(name, word) {
                    self.kind = classify(word);
                } else if !literal {
                    // A quoted or templated word we cannot read: stay careful.
                }
            }
            _ => {}
        }
    }

    /// An operator that ends a simple command (`;`, `&`, `|`, `&&`, `||`, newline).
    fn end_command(&mut self) {
        self.end_word();
        // `… | sh`: a shell reading its script from the pipe runs what the pipeline printed.
        if self.after_pipe
            && matches!(
                self.kind,
                Kind::Interp {
                    script_done: false,
                    ..
                }
            )
        {
            self.pipes_into_code = true;
        }
        self.after_pipe = false;
        self.command_position = true;
        self.kind = Kind::Plain;
        self.redirect = false;
    }
}

fn is_reserved(word: &str) -> bool {
    matches!(
        word,
        "if" | "then"
            | "else"
            | "elif"
            | "fi"
            | "do"
            | "done"
            | "while"
            | "until"
            | "for"
            | "select"
            | "case"
            | "esac"
            | "in"
            | "{"
            | "}"
            | "!"
            | "[["
            | "function"
    )
}

/// The name an assignment word (or a bare name) sets: `n` of `n=1`, `n+=1`, `n[2]=1`, `n`.
fn assigned_name(word: &str) -> &str {
    let name = word.split(['=', '[']).next().unwrap_or(word);
    name.strip_suffix('+').unwrap_or(name)
}

/// `NAME=…` (the name part of the word so far).
fn is_assignment(word: &str) -> bool {
    match word.split_once('=') {
        Some((name, _)) => {
            let name = name.strip_suffix('+').unwrap_or(name);
            name.chars()
                .next()
                .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
                && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        }
        None => false,
    }
}

#[derive(Debug, Clone)]
enum Frame {
    Code(Code),
    /// `"…"` (also bash's `$"…"`).
    Double,
    /// An unquoted heredoc body (`quoted`: a quoted one, where nothing expands).
    Heredoc(Heredoc),
    /// `` `…` ``: its text is parsed again.
    Backtick,
    /// `$(( … ))` or `(( … ))`: parentheses open inside.
    Arith(usize),
    /// `${ … }`: braces open inside.
    Brace(usize),
    /// bash's `$[ … ]` arithmetic: brackets open inside.
    Bracket(usize),
}

/// Where each hole of `toks` sits, in order.
pub(crate) fn place(toks: &[Tok]) -> Vec<Placement> {
    let mut out = Vec::new();
    let mut stack = vec![Frame::Code(Code::new(false))];
    let mut i = 0;
    // At the start of a line of a heredoc body (the delimiter is checked there).
    let mut line_start = false;
    let mut piped_code = false;
    while i < toks.len() {
        let next = toks.get(i + 1).copied();
        let Some(frame) = stack.last_mut() else {
            break;
        };
        match frame {
            Frame::Heredoc(doc) => {
                if line_start {
                    line_start = false;
                    let end = toks[i..]
                        .iter()
                        .position(|t| *t == Tok::Ch('\n'))
                        .map_or(toks.len(), |p| i + p);
                    let line: Option<String> = toks[i..end]
                        .iter()
                        .map(|t| match t {
                            Tok::Ch(c) => Some(*c),
                            Tok::Hole => None,
                        })
                        .collect();
                    let matches = line.is_some_and(|l| {
                        let l = if doc.strip_tabs {
                            l.trim_start_matches('\t')
                        } else {
                            &l
                        };
                        l == doc.delimiter
                    });
                    if matches {
                        stack.pop();
                        i = end + 1;
                        line_start = start_heredoc(&mut stack);
                        continue;
                    }
                }
                let quoted = doc.quoted;
                let feeds_code = doc.feeds_code;
                match toks[i] {
                    Tok::Hole if quoted => out.push(Placement::Refused(
                        "inside a quoted heredoc (<<'EOF') nothing expands",
                    )),
                    Tok::Hole if feeds_code => out.push(Placement::Refused(
                        "this heredoc is the input of a shell or interpreter, which parses it",
                    )),
                    Tok::Hole => out.push(Placement::InString),
                    Tok::Ch('\n') => line_start = true,
                    Tok::Ch(_) if quoted => {}
                    Tok::Ch('\\') => {
                        if next == Some(Tok::Hole) {
                            out.push(Placement::Refused("a value cannot follow a backslash"));
                        } else if next == Some(Tok::Ch('\n')) {
                            line_start = true;
                        }
                        i += 1;
                    }
                    Tok::Ch('$') => i += dollar(&mut stack, &toks[i..], &mut out),
                    Tok::Ch('`') => stack.push(Frame::Backtick),
                    Tok::Ch(_) => {}
                }
                i += 1;
            }
            Frame::Double => {
                match toks[i] {
                    Tok::Hole => {
                        // The string is part of a word of the command around it: that
                        // command decides too (`eval "…"`, `sh -c "…"`).
                        let around = stack.iter_mut().rev().find_map(|f| match f {
                            Frame::Code(code) => Some(code.hole()),
                            _ => None,
                        });
                        out.push(match around {
                            Some(Placement::Refused(why)) => Placement::Refused(why),
                            _ => Placement::InString,
                        });
                    }
                    Tok::Ch('"') => {
                        stack.pop();
                    }
                    Tok::Ch('\\') => {
                        if next == Some(Tok::Hole) {
                            out.push(Placement::Refused("a value cannot follow a backslash"));
                        }
                        i += 1;
                    }
                    Tok::Ch('$') => i += dollar(&mut stack, &toks[i..], &mut out),
                    Tok::Ch('`') => stack.push(Frame::Backtick),
                    Tok::Ch(_) => {}
                }
                i += 1;
            }
            Frame::Backtick => {
                match toks[i] {
                    Tok::Hole => out.push(Placement::Refused(
                        "inside backticks the text is parsed again; use $( )",
                    )),
                    Tok::Ch('\\') => i += usize::from(next == Some(Tok::Ch('`'))),
                    Tok::Ch('`') => {
                        stack.pop();
                    }
                    Tok::Ch(_) => {}
                }
                i += 1;
            }
            Frame::Arith(depth) => {
                match toks[i] {
                    Tok::Hole => out.push(Placement::Refused(
                        "inside arithmetic a value is evaluated again (bash runs commands in \
                         array subscripts)",
                    )),
                    Tok::Ch('(') => *depth += 1,
                    Tok::Ch(')') if *depth > 0 => *depth -= 1,
                    Tok::Ch(')') if next == Some(Tok::Ch(')')) => {
                        stack.pop();
                        i += 1;
                    }
                    Tok::Ch(_) => {}
                }
                i += 1;
            }
            Frame::Bracket(depth) => {
                match toks[i] {
                    Tok::Hole => out.push(Placement::Refused(
                        "inside $[ ] a value is evaluated as arithmetic",
                    )),
                    Tok::Ch('[') => *depth += 1,
                    Tok::Ch(']') if *depth > 0 => *depth -= 1,
                    Tok::Ch(']') => {
                        stack.pop();
                    }
                    Tok::Ch(_) => {}
                }
                i += 1;
            }
            Frame::Brace(depth) => {
                match toks[i] {
                    Tok::Hole => out.push(Placement::Refused(
                        "inside ${ } a value can be read as a pattern; use a plain reference",
                    )),
                    Tok::Ch('{') => *depth += 1,
                    Tok::Ch('}') if *depth > 0 => *depth -= 1,
                    Tok::Ch('}') => {
                        stack.pop();
                    }
                    Tok::Ch('\\') => i += 1,
                    Tok::Ch(_) => {}
                }
                i += 1;
            }
            Frame::Code(code) => {
                let c = match toks[i] {
                    Tok::Hole => {
                        out.push(code.hole());
                        i += 1;
                        continue;
                    }
                    Tok::Ch(c) => c,
                };
                if code.kind == Kind::DoubleBracket
                    && matches!(c, '&' | '|' | '(' | ')' | '<' | '>')
                {
                    // Inside [[ ]] these are operators of the test, not of the command line.
                    code.word_mut().push(c);
                    i += 1;
                    continue;
                }
                match c {
                    ' ' | '\t' => code.end_word(),
                    '\n' => {
                        code.end_command();
                        if matches!(code.case.last(), Some(CaseState::Pattern)) {
                            code.command_position = false;
                        }
                        i += 1;
                        line_start = start_heredoc(&mut stack);
                        continue;
                    }
                    '#' if code.word.is_none() => {
                        // A comment, to the end of the line (a hole there renders harmlessly).
                        while i + 1 < toks.len() && toks[i + 1] != Tok::Ch('\n') {
                            if toks[i + 1] == Tok::Hole {
                                out.push(Placement::Word);
                            }
                            i += 1;
                        }
                    }
                    '\\' => {
                        match next {
                            Some(Tok::Hole) => {
                                out.push(Placement::Refused("a value cannot follow a backslash"));
                            }
                            Some(Tok::Ch('\n')) => {}
                            Some(Tok::Ch(c)) => {
                                code.word_quoted = true;
                                code.word_mut().push(c);
                            }
                            None => {}
                        }
                        i += 1;
                    }
                    '\'' => {
                        code.word_quoted = true;
                        code.word_mut();
                        i += 1;
                        while i < toks.len() && toks[i] != Tok::Ch('\'') {
                            if toks[i] == Tok::Hole {
                                out.push(Placement::Refused(
                                    "inside single quotes a reference does not expand",
                                ));
                            } else if let Tok::Ch(c) = toks[i] {
                                code.word_mut().push(c);
                            }
                            i += 1;
                        }
                    }
                    '"' => {
                        code.word_quoted = true;
                        code.word_mut();
                        stack.push(Frame::Double);
                    }
                    '`' => {
                        code.word_quoted = true;
                        code.word_mut();
                        stack.push(Frame::Backtick);
                    }
                    '$' => {
                        code.word_quoted = true;
                        code.word_mut();
                        i += dollar(&mut stack, &toks[i..], &mut out);
                    }
                    ';' => {
                        let double = next == Some(Tok::Ch(';'));
                        let fall = next == Some(Tok::Ch('&'));
                        code.end_command();
                        if (double || fall) && matches!(code.case.last(), Some(CaseState::Body)) {
                            if let Some(state) = code.case.last_mut() {
                                *state = CaseState::Pattern;
                            }
                            code.command_position = false;
                            i += 1;
                            if toks.get(i + 1) == Some(&Tok::Ch('&')) {
                                i += 1;
                            }
                        }
                    }
                    '&' | '|' => {
                        if matches!(code.case.last(), Some(CaseState::Pattern)) && c == '|' {
                            code.end_word();
                        } else if c == '&' && next == Some(Tok::Ch('>')) {
                            // `&>file` (bash): a redirection.
                            code.end_word();
                            code.redirect = true;
                            i += 1;
                        } else {
                            code.end_command();
                            if next == Some(Tok::Ch(c)) {
                                i += 1;
                            } else if c == '|' {
                                code.after_pipe = true;
                            }
                        }
                    }
                    '(' => {
                        // `(( … ))` and `for (( … ))`: arithmetic.
                        if code.word.is_none() && next == Some(Tok::Ch('(')) {
                            stack.push(Frame::Arith(0));
                            i += 2;
                            continue;
                        }
                        let case_pattern = matches!(code.case.last(), Some(CaseState::Pattern));
                        code.end_word();
                        if !case_pattern {
                            code.depth += 1;
                            code.command_position = true;
                            code.kind = Kind::Plain;
                        }
                    }
                    ')' => {
                        code.end_word();
                        if matches!(code.case.last(), Some(CaseState::Pattern)) {
                            if let Some(state) = code.case.last_mut() {
                                *state = CaseState::Body;
                            }
                            code.command_position = true;
                            code.kind = Kind::Plain;
                        } else if code.depth > 0 {
                            code.end_command();
                            code.depth -= 1;
                            code.command_position = false;
                            code.closed = true;
                        } else if code.nested {
                            code.end_command();
                            piped_code |= code.pipes_into_code;
                            stack.pop();
                        } else {
                            code.end_command();
                        }
                    }
                    '<' | '>' => {
                        // `2>`: the digits were a file descriptor, not a word.
                        if code
                            .word
                            .as_deref()
                            .is_some_and(|w| !w.is_empty() && w.chars().all(|c| c.is_ascii_digit()))
                            && !code.word_has_hole
                            && !code.word_quoted
                        {
                            code.word = None;
                        }
                        code.end_word();
                        if c == '<' && next == Some(Tok::Ch('<')) {
                            if toks.get(i + 2) == Some(&Tok::Ch('<')) {
                                // `<<<word`: a here-string, a plain word.
                                i += 2;
                                code.redirect = true;
                            } else {
                                i += 1;
                                let strip = toks.get(i + 1) == Some(&Tok::Ch('-'));
                                if strip {
                                    i += 1;
                                }
                                let feeds_code = (code.command_position && !code.closed)
                                    || matches!(
                                        code.kind,
                                        Kind::Eval
                                            | Kind::Interp {
                                                script_done: false,
                                                ..
                                            }
                                            | Kind::Ssh { .. }
                                            | Kind::Wrapper { .. }
                                    );
                                code.heredoc_word = Some((strip, feeds_code));
                            }
                        } else if next == Some(Tok::Ch('(')) {
                            // `<( … )`: process substitution, shell code.
                            i += 1;
                            let code = nested_code(&stack);
                            stack.push(Frame::Code(code));
                        } else {
                            if matches!(next, Some(Tok::Ch('>' | '&' | '|'))) {
                                i += 1;
                            }
                            code.redirect = true;
                        }
                    }
                    c => code.word_mut().push(c),
                }
                i += 1;
            }
        }
    }
    for frame in &mut stack {
        if let Frame::Code(code) = frame {
            code.end_command();
            piped_code |= code.pipes_into_code;
        }
    }
    if piped_code {
        // Which hole's text reaches that shell is not for a lexer to tell: none may be used.
        out.fill(Placement::Refused(
            "the command pipes into a shell or interpreter (… | sh), which would run what a \
             value makes the pipeline print",
        ));
    }
    out
}

/// Shell code nested in the innermost code around it (`$( … )`), which knows its integers.
fn nested_code(stack: &[Frame]) -> Code {
    let mut code = Code::new(true);
    if let Some(outer) = stack.iter().rev().find_map(|f| match f {
        Frame::Code(c) => Some(c),
        _ => None,
    }) {
        code.integers = outer.integers.clone();
    }
    code
}

/// After a newline in shell code: starts the first pending heredoc body, if any.
fn start_heredoc(stack: &mut Vec<Frame>) -> bool {
    let Some(Frame::Code(code)) = stack.last_mut() else {
        return false;
    };
    if code.pending.is_empty() {
        return false;
    }
    let doc = code.pending.remove(0);
    stack.push(Frame::Heredoc(doc));
    true
}

/// A `$` at `toks[0]` where expansions happen: pushes what it opens, returns how many tokens
/// beyond the `$` it consumed.
fn dollar(stack: &mut Vec<Frame>, toks: &[Tok], out: &mut Vec<Placement>) -> usize {
    match (toks.get(1), toks.get(2)) {
        (Some(Tok::Hole), _) => {
            out.push(Placement::Refused("a value cannot follow a $"));
            1
        }
        (Some(Tok::Ch('(')), Some(Tok::Ch('('))) => {
            stack.push(Frame::Arith(0));
            2
        }
        (Some(Tok::Ch('(')), _) => {
            let code = nested_code(stack);
            stack.push(Frame::Code(code));
            1
        }
        (Some(Tok::Ch('{')), _) => {
            stack.push(Frame::Brace(0));
            1
        }
        (Some(Tok::Ch('[')), _) => {
            stack.push(Frame::Bracket(0));
            1
        }
        (Some(Tok::Ch('\'')), _) if matches!(stack.last(), Some(Frame::Code(_))) => {
            // bash's $'…': nothing expands; skip to the closing quote.
            let mut j = 2;
            while j < toks.len() && toks[j] != Tok::Ch('\'') {
                match toks[j] {
                    Tok::Hole => out.push(Placement::Refused(
                        "inside $'…' a reference does not expand",
                    )),
                    Tok::Ch('\\') => j += 1,
                    Tok::Ch(_) => {}
                }
                j += 1;
            }
            j
        }
        (Some(Tok::Ch('"')), _) if matches!(stack.last(), Some(Frame::Code(_))) => {
            stack.push(Frame::Double);
            1
        }
        _ => 0,
    }
}

#[cfg(test)]
mod tests;
