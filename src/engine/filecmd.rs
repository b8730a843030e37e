//! GitHub's file commands, for the steps of a job that has them
//! (`Job::file_commands`): before each step, empty files named by
//! `GITHUB_ENV`, `GITHUB_PATH`, `GITHUB_OUTPUT`, `GITHUB_STATE` and
//! `GITHUB_STEP_SUMMARY`; after it, what it wrote to `GITHUB_ENV` joins the
//! environment of the steps after it (above the job's `env`, below a
//! step's own), and what it wrote to `GITHUB_PATH` goes in front of their
//! `PATH`, as GitHub's runner does.
//!
//! Its workflow commands too: lines of a step's output such as
//! `::error file=a.py,line=3::message`, read by [`Commands`].
//!
//! The parsing is pure ([`parse_env`], [`Commands::line`]); reading a file
//! is bounded.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};

/// Most bytes read of one command file; the rest is ignored (and said).
pub const MAX_FILE: u64 = 1 << 20;

/// What the job's steps so far have set through the files.
#[derive(Debug, Default, Clone)]
pub struct Carried {
    pub env: BTreeMap<String, String>,
    /// Newest first.
    pub path: Vec<String>,
    /// The `steps` context: per step id, `outputs`, `outcome` and
    /// `conclusion`.
    pub steps: serde_json::Map<String, serde_json::Value>,
    /// A step failed (and may not): `failure()`, `job.status`.
    pub failed: bool,
    /// The job is cancelled or out of time: `cancelled()`.
    pub stopped: bool,
    /// Inside a composite action: its `inputs`.
    pub inputs: Option<serde_json::Value>,
    /// The composite action calls open now, innermost last; `steps`,
    /// `inputs` and `failed` above are the innermost's own.
    pub frames: Vec<Frame>,
    /// What JavaScript actions wrote to GITHUB_STATE, by call, for their
    /// post steps (`STATE_<name>`).
    pub states: std::collections::HashMap<usize, BTreeMap<String, String>>,
    /// How the `actions/cache` steps so far went, by step, for their post
    /// steps.
    pub caches: std::collections::HashMap<usize, super::actions::CacheUse>,
}

/// An open composite action call, holding what it hides of its caller's
/// scope until it ends.
#[derive(Debug, Clone)]
pub struct Frame {
    /// Index into the job's `actions`.
    pub call: usize,
    /// Its `if:` was false (or its caller was skipped): its steps do not run.
    pub skipped: bool,
    /// The first failure of its steps (passed to its caller as it ends).
    pub failure: Option<StepFailure>,
    steps: serde_json::Map<String, serde_json::Value>,
    inputs: Option<serde_json::Value>,
    failed: bool,
}

/// How a step failed, for the job's result.
#[derive(Debug, Clone)]
pub struct StepFailure {
    pub class: crate::pipeline::FailureClass,
    pub exit_code: Option<i32>,
    pub message: String,
}

impl Carried {
    /// Enters call `call`: its steps start with a `steps` context of their
    /// own, `inputs`, and nothing failed.
    pub fn enter(&mut self, call: usize, inputs: serde_json::Value, skipped: bool) {
        let frame = Frame {
            call,
            skipped,
            failure: None,
            steps: std::mem::take(&mut self.steps),
            inputs: self.inputs.replace(inputs),
            failed: std::mem::replace(&mut self.failed, false),
        };
        self.frames.push(frame);
    }

    /// Leaves the innermost call, back in its caller's scope, where the
    /// call's `id` gets its `outputs`, `outcome` and `conclusion`. Returns
    /// its failure when that fails the job (no `continue-on-error`, called
    /// from the job's own steps); a failure inside an outer call becomes
    /// that call's.
    pub fn leave(
        &mut self,
        id: Option<&str>,
        outputs: Vec<(String, String)>,
        continue_on_error: bool,
    ) -> Option<StepFailure> {
        let frame = self.frames.pop()?;
        self.steps = frame.steps;
        self.inputs = frame.inputs;
        let failed = frame.failure.is_some();
        if let Some(id) = id {
            let outcome = match (frame.skipped, failed) {
                (true, _) => "skipped",
                (_, true) => "failure",
                _ => "success",
            };
            let conclusion = if failed && continue_on_error {
                "success"
            } else {
                outcome
            };
            let outputs: serde_json::Map<_, _> = outputs
                .into_iter()
                .map(|(k, v)| (k, serde_json::Value::String(v)))
                .collect();
            self.steps.insert(
                id.to_string(),
                serde_json::json!({"outputs": outputs, "outcome": outcome, "conclusion": conclusion}),
            );
        }
        let passed_on = frame.failure.filter(|_| !continue_on_error);
        self.failed = frame.failed || passed_on.is_some();
        if let (Some(f), Some(parent)) = (&passed_on, self.frames.last_mut()) {
            parent.failure.get_or_insert_with(|| f.clone());
            return None;
        }
        passed_on
    }

    /// A step failed (not a stop). Inside a call it is the call's failure;
    /// returned when it is the job's.
    pub fn failed_step(&mut self, failure: StepFailure) -> Option<StepFailure> {
        self.failed = true;
        match self.frames.last_mut() {
            Some(frame) => {
                frame.failure.get_or_insert(failure);
                None
            }
            None => Some(failure),
        }
    }

    /// A step that did not run: later steps see it `skipped`, with no
    /// outputs.
    pub fn skipped(&mut self, id: &str) {
        self.steps.insert(
            id.to_string(),
            serde_json::json!({"outputs": {}, "outcome": "skipped", "conclusion": "skipped"}),
        );
    }
}

/// How a step ended, in GitHub's words.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Success,
    Failure,
    Cancelled,
}

impl Outcome {
    fn as_str(self) -> &'static str {
        match self {
            Outcome::Success => "success",
            Outcome::Failure => "failure",
            Outcome::Cancelled => "cancelled",
        }
    }
}

/// One step's files.
pub struct StepFiles {
    pub env: PathBuf,
    pub path: PathBuf,
    pub output: PathBuf,
    pub state: PathBuf,
    pub summary: PathBuf,
}

impl StepFiles {
    /// The files of step `index` in `dir` (made 0700), not created: a
    /// script's `>>` creates the ones it writes. Creating five files per
    /// step was most of a short job's cost (an inode each).
    pub fn at(dir: &Path, index: usize) -> Result<StepFiles, crate::store::IoFailure> {
        crate::store::private_dir(dir)?;
        // Absolute: a step reads them from its own working directory (and a
        // relative `--state-dir` would leave them relative).
        let dir = &std::path::absolute(dir).map_err(|source| crate::store::IoFailure {
            action: "cannot resolve",
            path: dir.to_path_buf(),
            source,
        })?;
        let file = |name: &str| dir.join(format!("{name}.{index}"));
        Ok(StepFiles {
            env: file("env"),
            path: file("path"),
            output: file("output"),
            state: file("state"),
            summary: file("summary"),
        })
    }

    /// [`StepFiles::at`], the files created empty (0600): a JavaScript
    /// action's toolkit refuses a file command whose file is missing.
    pub fn create(dir: &Path, index: usize) -> Result<StepFiles, crate::store::IoFailure> {
        let files = StepFiles::at(dir, index)?;
        for p in [&files.env, &files.path, &files.output, &files.state, &files.summary] {
            crate::store::write_with_mode(p, b"", 0o600)?;
        }
        Ok(files)
    }

    /// The variables that name them.
    pub fn variables(&self) -> [(&'static str, String); 5] {
        let s = |p: &PathBuf| p.display().to_string();
        [
            ("GITHUB_ENV", s(&self.env)),
            ("GITHUB_PATH", s(&self.path)),
            ("GITHUB_OUTPUT", s(&self.output)),
            ("GITHUB_STATE", s(&self.state)),
            ("GITHUB_STEP_SUMMARY", s(&self.summary)),
        ]
    }

    /// What the step wrote to GITHUB_STEP_SUMMARY (Markdown, at most
    /// [`MAX_FILE`] bytes: GitHub's limit too), and a problem if any.
    pub fn summary(&self) -> (String, Option<String>) {
        match read_bounded(&self.summary) {
            Ok((text, false)) => (text, None),
            Ok((text, true)) => (
                text,
                Some(format!(
                    "GITHUB_STEP_SUMMARY: only its first {MAX_FILE} bytes were read"
                )),
            ),
            Err(e) => (String::new(), Some(format!("cannot read GITHUB_STEP_SUMMARY: {e}"))),
        }
    }

    /// What the step wrote to GITHUB_STATE, added to `into`; problems, for
    /// the log.
    pub fn collect_state(&self, into: &mut BTreeMap<String, String>) -> Vec<String> {
        match read_bounded(&self.state) {
            Ok((text, cut)) => {
                let (vars, problems) = parse_env(&text);
                into.extend(vars);
                let mut notes: Vec<String> = problems.into_iter().map(|p| format!("GITHUB_STATE: {p}")).collect();
                if cut {
                    notes.push(format!("GITHUB_STATE: only its first {MAX_FILE} bytes were read"));
                }
                notes
            }
            Err(e) => vec![format!("cannot read GITHUB_STATE: {e}")],
        }
    }

    /// Takes what the step wrote into `carried`; problems, for the log.
    /// A step with an `id` is known to later steps: its outputs, its
    /// outcome, and its conclusion (`success` when it failed but may:
    /// `continue-on-error`).
    pub fn collect(&self, carried: &mut Carried, id: Option<&str>, outcome: Outcome, may_fail: bool) -> Vec<String> {
        let mut notes = Vec::new();
        if let Some(id) = id {
            let mut outputs = serde_json::Map::new();
            match read_bounded(&self.output) {
                Ok((text, cut)) => {
                    let (vars, problems) = parse_env(&text);
                    for (k, v) in vars {
                        outputs.insert(k, serde_json::Value::String(v));
                    }
                    notes.extend(problems.into_iter().map(|p| format!("GITHUB_OUTPUT: {p}")));
                    if cut {
                        notes.push(format!("GITHUB_OUTPUT: only its first {MAX_FILE} bytes were read"));
                    }
                }
                Err(e) => notes.push(format!("cannot read GITHUB_OUTPUT: {e}")),
            }
            let conclusion = if outcome == Outcome::Failure && may_fail {
                Outcome::Success
            } else {
                outcome
            };
            carried.steps.insert(
                id.to_string(),
                serde_json::json!({
                    "outputs": outputs,
                    "outcome": outcome.as_str(),
                    "conclusion": conclusion.as_str(),
                }),
            );
        }
        match read_bounded(&self.env) {
            Ok((text, cut)) => {
                let (vars, problems) = parse_env(&text);
                carried.env.extend(vars);
                notes.extend(problems.into_iter().map(|p| format!("GITHUB_ENV: {p}")));
                if cut {
                    notes.push(format!("GITHUB_ENV: only its first {MAX_FILE} bytes were read"));
                }
            }
            Err(e) => notes.push(format!("cannot read GITHUB_ENV: {e}")),
        }
        match read_bounded(&self.path) {
            Ok((text, _)) => {
                for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
                    carried.path.insert(0, line.to_string());
                }
            }
            Err(e) => notes.push(format!("cannot read GITHUB_PATH: {e}")),
        }
        notes
    }
}

/// A file's first [`MAX_FILE`] bytes as text, and whether there was more.
/// A step's file, at most [`MAX_FILE`] bytes (and whether it was cut); a
/// file the step did not write reads as empty. Only a regular file is
/// read: a FIFO left there would block.
fn read_bounded(path: &Path) -> std::io::Result<(String, bool)> {
    match std::fs::symlink_metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((String::new(), false)),
        Err(e) => return Err(e),
        Ok(m) if !m.is_file() => {
            return Err(std::io::Error::other(format!(
                "{} is not a regular file",
                path.display()
            )));
        }
        Ok(_) => {}
    }
    let mut bytes = Vec::new();
    std::fs::File::open(path)?.take(MAX_FILE + 1).read_to_end(&mut bytes)?;
    let cut = bytes.len() as u64 > MAX_FILE;
    bytes.truncate(usize::try_from(MAX_FILE).unwrap_or(usize::MAX));
    Ok((String::from_utf8_lossy(&bytes).into_owned(), cut))
}

/// `NAME=value` lines and `NAME<<DELIMITER` ... `DELIMITER` blocks, as
/// GitHub reads `GITHUB_ENV` and `GITHUB_OUTPUT`: the pairs in order, and
/// what could not be read.
pub fn parse_env(text: &str) -> (Vec<(String, String)>, Vec<String>) {
    let mut out = Vec::new();
    let mut problems = Vec::new();
    let mut lines = text.lines();
    while let Some(line) = lines.next() {
        if line.trim().is_empty() {
            continue;
        }
        let eq = line.find('=');
        let heredoc = line.find("<<");
        match (eq, heredoc) {
            // `<<` before any `=`: a block.
            (e, Some(h)) if e.is_none_or(|e| h < e) => {
                let name = line[..h].to_string();
                let delimiter = &line[h + 2..];
                if name.is_empty() || delimiter.is_empty() {
                    problems.push(format!("`{line}` names no variable or no delimiter"));
                    continue;
                }
                let mut value: Vec<&str> = Vec::new();
                let mut closed = false;
                for l in lines.by_ref() {
                    if l == delimiter {
                        closed = true;
                        break;
                    }
                    value.push(l);
                }
                if !closed {
                    problems.push(format!("`{name}`: its delimiter `{delimiter}` never comes"));
                    continue;
                }
                out.push((name, value.join("\n")));
            }
            (Some(e), _) if e > 0 => out.push((line[..e].to_string(), line[e + 1..].to_string())),
            _ => problems.push(format!("`{line}` is not `NAME=value` or `NAME<<DELIMITER`")),
        }
    }
    (out, problems)
}

/// What a line of a step's output is, read as a workflow command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Said {
    /// Shown as this text.
    Show(String),
    /// `::group::title`: a group starts, shown as `▸ title`.
    Group(String),
    /// `::endgroup::`: the group ends (not shown).
    EndGroup,
    /// Not shown (`::debug::`, the end of a group, a command).
    Hide,
    /// `::add-mask::VALUE`: masked from now on; the line is not shown.
    Mask(String),
    /// `::error`, `::warning`, `::notice`: shown as this text, and an
    /// annotation.
    Annotate(String, Annotation),
    /// The deprecated `::set-output name=N::V` and `::save-state name=N::V`:
    /// `N<<delimiter` `V` appended to the step's GITHUB_OUTPUT (`file`
    /// "GITHUB_OUTPUT") or GITHUB_STATE, with GitHub's warning shown.
    Append {
        file: &'static str,
        name: String,
        value: String,
        warning: String,
    },
}

/// An annotation a step made, with its place when it gave one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Annotation {
    pub level: &'static str,
    pub message: String,
    pub title: Option<String>,
    pub file: Option<String>,
    pub line: Option<u64>,
    pub col: Option<u64>,
}

/// `file=app.py,line=3,col=5,title=Lint` of a command.
fn annotation(level: &'static str, properties: &str, message: String) -> Annotation {
    let mut a = Annotation {
        level,
        message,
        title: None,
        file: None,
        line: None,
        col: None,
    };
    for p in properties.split(',') {
        let Some((k, v)) = p.split_once('=') else { continue };
        let v = unescape_property(v.trim());
        match k.trim() {
            "file" => a.file = Some(v),
            "line" => a.line = v.parse().ok(),
            "col" => a.col = v.parse().ok(),
            "title" => a.title = Some(v),
            _ => {}
        }
    }
    a
}

/// A property's value as GitHub escapes it: `%2C`, `%3A` too.
fn unescape_property(s: &str) -> String {
    unescape(&s.replace("%2C", ",").replace("%3A", ":"))
}

/// Reads workflow commands in a step's standard output as GitHub's runner
/// does: `::group::title` and `::endgroup::`, `::error`, `::warning` and
/// `::notice` (shown as `Error: message` and so on, as GitHub shows them),
/// `::debug::` (hidden), `::add-mask::`, and `::stop-commands::TOKEN` up to
/// `::TOKEN::` (nothing is a command in between). Anything else is shown
/// as it is.
#[derive(Debug, Default)]
pub struct Commands {
    stopped: Option<String>,
}

impl Commands {
    pub fn line(&mut self, text: &str) -> Said {
        let Some(rest) = text.strip_prefix("::") else {
            return Said::Show(text.to_string());
        };
        if let Some(token) = &self.stopped {
            if rest.strip_suffix("::") == Some(token.as_str()) {
                self.stopped = None;
                return Said::Hide;
            }
            return Said::Show(text.to_string());
        }
        let Some((head, message)) = rest.split_once("::") else {
            return Said::Show(text.to_string());
        };
        let (command, properties) = head.split_once(' ').unwrap_or((head, ""));
        let message = unescape(message);
        match command {
            "group" => Said::Group(message),
            "endgroup" => Said::EndGroup,
            // `::echo::on|off` echoes commands in GitHub's log; not shown.
            "debug" | "echo" => Said::Hide,
            "error" => Said::Annotate(format!("Error: {message}"), annotation("error", properties, message)),
            "warning" => Said::Annotate(
                format!("Warning: {message}"),
                annotation("warning", properties, message),
            ),
            "notice" => Said::Annotate(format!("Notice: {message}"), annotation("notice", properties, message)),
            "set-output" | "save-state" => {
                let name = properties
                    .split(',')
                    .find_map(|p| p.trim().strip_prefix("name="))
                    .map(unescape_property)
                    .unwrap_or_default();
                let file = if command == "set-output" {
                    "GITHUB_OUTPUT"
                } else {
                    "GITHUB_STATE"
                };
                Said::Append {
                    file,
                    name,
                    value: message,
                    warning: format!(
                        "Warning: The `{command}` command is deprecated and will be disabled soon. Please upgrade to using Environment Files."
                    ),
                }
            }
            // Disabled on GitHub for years: said so, not applied.
            "set-env" | "add-path" => Said::Annotate(
                format!("Error: The `{command}` command is disabled. Please upgrade to using Environment Files."),
                annotation(
                    "error",
                    "",
                    format!("The `{command}` command is disabled. Please upgrade to using Environment Files."),
                ),
            ),
            "add-mask" if !message.trim().is_empty() => Said::Mask(message),
            "add-mask" => Said::Hide,
            "stop-commands" if !message.is_empty() => {
                self.stopped = Some(message);
                Said::Hide
            }
            _ => Said::Show(text.to_string()),
        }
    }
}

/// A command's message as GitHub escapes it: `%25`, `%0D`, `%0A`.
fn unescape(s: &str) -> String {
    s.replace("%0D", "\r").replace("%0A", "\n").replace("%25", "%")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deprecated_commands_as_github_treats_them_today() {
        let mut c = Commands::default();
        let Said::Append {
            file,
            name,
            value,
            warning,
        } = c.line("::set-output name=foo::bar")
        else {
            panic!("set-output is applied");
        };
        assert_eq!((file, name.as_str(), value.as_str()), ("GITHUB_OUTPUT", "foo", "bar"));
        assert!(warning.contains("`set-output` command is deprecated"));
        assert!(matches!(
            c.line("::save-state name=pid::42"),
            Said::Append {
                file: "GITHUB_STATE",
                ..
            }
        ));
        let Said::Annotate(text, a) = c.line("::set-env name=A::b") else {
            panic!("set-env is refused");
        };
        assert!(text.contains("`set-env` command is disabled") && a.level == "error");
        assert!(matches!(c.line("::add-path::/opt/x"), Said::Annotate(..)));
        assert_eq!(c.line("::echo::on"), Said::Hide);
    }

    #[test]
    fn workflow_commands_as_githubs_runner_reads_them() {
        let mut c = Commands::default();
        let said: Vec<Said> = [
            "::group::Lint output",
            "plain line",
            "::endgroup::",
            "::error file=app/a.py,line=3::Undefined name 'foo'",
            "::warning title=Style::Line too long",
            "::notice::2 files checked",
            "::debug::hidden",
            "::add-mask::s3cr3t",
            "::stop-commands::pause-1",
            "::error::not a command now",
            "::pause-1::",
            "::error::a%25 b%0Ac",
            "::unknown::kept",
        ]
        .into_iter()
        .map(|l| c.line(l))
        .collect();
        assert_eq!(
            said,
            [
                Said::Group("Lint output".into()),
                Said::Show("plain line".into()),
                Said::EndGroup,
                Said::Annotate(
                    "Error: Undefined name 'foo'".into(),
                    Annotation {
                        level: "error",
                        message: "Undefined name 'foo'".into(),
                        title: None,
                        file: Some("app/a.py".into()),
                        line: Some(3),
                        col: None
                    }
                ),
                Said::Annotate(
                    "Warning: Line too long".into(),
                    Annotation {
                        level: "warning",
                        message: "Line too long".into(),
                        title: Some("Style".into()),
                        file: None,
                        line: None,
                        col: None
                    }
                ),
                Said::Annotate(
                    "Notice: 2 files checked".into(),
                    Annotation {
                        level: "notice",
                        message: "2 files checked".into(),
                        title: None,
                        file: None,
                        line: None,
                        col: None
                    }
                ),
                Said::Hide,
                Said::Mask("s3cr3t".into()),
                Said::Hide,
                Said::Show("::error::not a command now".into()),
                Said::Hide,
                Said::Annotate(
                    "Error: a% b\nc".into(),
                    Annotation {
                        level: "error",
                        message: "a% b\nc".into(),
                        title: None,
                        file: None,
                        line: None,
                        col: None
                    }
                ),
                Said::Show("::unknown::kept".into()),
            ]
        );
    }

    #[test]
    fn lines_and_blocks_as_github_reads_them() {
        let (vars, problems) =
            parse_env("A=1\nB=x=y\n\nJSON<<EOF\n{\n  \"k\": 1\n}\nEOF\nEMPTY=\nA=2\nbroken\nOPEN<<END\nline\n");
        assert_eq!(
            vars,
            [
                ("A".into(), "1".into()),
                ("B".into(), "x=y".into()),
                ("JSON".into(), "{\n  \"k\": 1\n}".into()),
                ("EMPTY".into(), String::new()),
                ("A".into(), "2".into()),
            ]
        );
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert!(problems[1].contains("never comes"));
    }

    #[test]
    fn a_step_hands_env_and_path_to_the_next() {
        let dir = tempfile::tempdir().unwrap();
        let files = StepFiles::create(&dir.path().join("gh"), 0).unwrap();
        std::fs::write(&files.env, "GREETING=hi\nMULTI<<X\na\nb\nX\n").unwrap();
        std::fs::write(&files.path, "/opt/tool/bin\n/opt/other\n").unwrap();
        std::fs::write(&files.output, "version=1.2\nnotes<<EOF\nx\ny\nEOF\n").unwrap();
        let mut carried = Carried::default();
        assert!(
            files
                .collect(&mut carried, Some("meta"), Outcome::Failure, true)
                .is_empty()
        );
        assert_eq!(
            carried.steps.get("meta"),
            Some(&serde_json::json!({
                "outputs": {"version": "1.2", "notes": "x\ny"},
                "outcome": "failure",
                "conclusion": "success"
            }))
        );
        assert_eq!(carried.env.get("GREETING").map(String::as_str), Some("hi"));
        assert_eq!(carried.env.get("MULTI").map(String::as_str), Some("a\nb"));
        assert_eq!(carried.path, ["/opt/other", "/opt/tool/bin"]);
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&files.env).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }
}
