//! From a positioned YAML tree to a [`Pipeline`], collecting every problem.
//!
//! The parser never stops at the first mistake: each field is checked on its
//! own, a bad field is reported and skipped, and the cross-checks (job names,
//! variables, expressions, the graph) run on whatever could be read. So one
//! run of `trackside validate` lists everything there is to fix.

use std::path::Path;
use std::time::Duration;

use super::diag::{Diagnostic, MAX_COLLECTED, Report, suggestion_hint};
use super::expr;
use super::model::*;
use super::vars::{Scope, VarError};
use super::yaml::{self, Node, Pos, Value};

/// Largest pipeline file read (a 10,000-job pipeline is about 1 MiB).
pub const MAX_FILE_BYTES: u64 = 16 << 20;

const TOP_KEYS: [&str; 6] = ["name", "global_env", "timeout", "retry_policy", "jobs", "kill_grace"];
const JOB_KEYS: [&str; 24] = [
    "steps",
    "depends_on",
    "environment",
    "timeout",
    "retry_count",
    "retry_when",
    "conditional",
    "when",
    "allow_failure",
    "working_directory",
    "image",
    "user",
    "entrypoint",
    "pull",
    "resources",
    "privileged",
    "cap_drop",
    "read_only_rootfs",
    "services",
    "docker_socket",
    "artifacts",
    "needs_artifacts",
    "cache",
    "deploy",
];
const STEP_KEYS: [&str; 8] = [
    "name",
    "script",
    "image",
    "environment",
    "working_directory",
    "timeout",
    "retry_count",
    "continue_on_failure",
];

/// Variables of the host that jobs see without being asked.
pub const HOST_ALLOWLIST: [&str; 5] = ["PATH", "HOME", "USER", "LANG", "TZ"];

/// Names of the variables trackside defines for every job.
pub const PREDEFINED: [&str; 10] = [
    "CI",
    "TRACKSIDE",
    "CI_PIPELINE_ID",
    "CI_PIPELINE_NAME",
    "CI_JOB_NAME",
    "CI_JOB_ATTEMPT",
    "CI_JOB_STEP",
    "CI_PROJECT_DIR",
    "TRACKSIDE_RUN_DIR",
    "TRACKSIDE_EXE",
];

/// Which executor the run will use; decides what `image:` means.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ExecutorChoice {
    /// Steps with an image run in containers, the rest on the host.
    #[default]
    Auto,
    /// Everything runs on the host; an image is ignored with a warning.
    Shell,
    /// Everything runs in containers; every step needs an image.
    Docker,
}

/// What the command line adds to a pipeline.
#[derive(Debug, Clone, Default)]
pub struct LoadOptions {
    /// `--var K=V`, highest precedence.
    pub cli_vars: Vec<(String, String)>,
    /// Names given with `--secret`; their values are injected at run time.
    pub secret_names: Vec<String>,
    /// Host variables jobs may see: the allowlist plus `--pass-env`, as found in the host.
    pub host_env: Vec<(String, String)>,
    pub executor: ExecutorChoice,
}

/// Reads and validates a pipeline file. `Err` holds at least one error;
/// `Ok` may carry warnings.
pub fn load(path: &Path, opts: &LoadOptions) -> Result<(Pipeline, Report), Report> {
    let source = match read_source(path) {
        Ok(s) => s,
        Err(d) => {
            let mut r = Report::new(path, String::new());
            r.items.push(d);
            return Err(r);
        }
    };
    parse_source(path, source, opts)
}

fn file_error(message: String, hint: &str) -> Diagnostic {
    Diagnostic::error(Pos { line: 1, col: 1 }, 1, "", message).with_hint(hint)
}

fn read_source(path: &Path) -> Result<String, Diagnostic> {
    use std::io::Read;
    let meta = std::fs::metadata(path).map_err(|e| {
        file_error(
            format!("cannot read pipeline file: {e}"),
            "check the path; `trackside validate FILE` takes a YAML file",
        )
    })?;
    if meta.is_dir() {
        return Err(file_error(
            "this is a directory, not a pipeline file".into(),
            "name the YAML file inside it, e.g. `trackside run dir/pipeline.yml`",
        ));
    }
    if !meta.is_file() {
        // A FIFO or device would block or never end.
        return Err(file_error(
            "this is not a regular file (a pipe, socket or device?)".into(),
            "give the path of a YAML file",
        ));
    }
    if meta.len() > MAX_FILE_BYTES {
        return Err(file_error(
            format!(
                "pipeline file is {:.1} MiB; trackside reads at most {} MiB",
                meta.len() as f64 / (1 << 20) as f64,
                MAX_FILE_BYTES >> 20
            ),
            "is this the right file? split generated pipelines into smaller ones",
        ));
    }
    let mut bytes = Vec::new();
    std::fs::File::open(path)
        .and_then(|f| f.take(MAX_FILE_BYTES + 1).read_to_end(&mut bytes))
        .map_err(|e| {
            file_error(
                format!("cannot read pipeline file: {e}"),
                "check the file's permissions",
            )
        })?;
    match String::from_utf8(bytes) {
        Ok(s) => Ok(s),
        Err(e) => {
            let good = &e.as_bytes()[..e.utf8_error().valid_up_to()];
            let line = good.iter().filter(|&&b| b == b'\n').count() + 1;
            let col = good.iter().rev().take_while(|&&b| b != b'\n').count() + 1;
            Err(Diagnostic::error(
                Pos { line, col },
                1,
                "",
                format!("file is not valid UTF-8 (bad byte at offset {})", good.len()),
            )
            .with_hint("save the file as UTF-8; is this a binary file?"))
        }
    }
}

/// The first character YAML does not allow in a stream (a NUL, other C0
/// controls but tab/LF/CR, DEL, C1 controls but NEL, U+FFFE/U+FFFF), as an
/// error at its line:col. Parsers stop at a NUL silently: everything after it
/// would vanish without a word.
fn forbidden_char(source: &str) -> Option<Diagnostic> {
    let allowed = |c: char| {
        matches!(c, '\t' | '\n' | '\r' | '\u{20}'..='\u{7e}' | '\u{85}' | '\u{a0}'..='\u{d7ff}' | '\u{e000}'..='\u{fffd}')
            || c >= '\u{10000}'
    };
    let (at, c) = source.char_indices().find(|&(_, c)| !allowed(c))?;
    let before = &source[..at];
    let line = before.matches('\n').count() + 1;
    let col = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    let what = match c {
        '\0' => "a NUL byte".to_string(),
        c => format!("the control character U+{:04X}", u32::from(c)),
    };
    Some(
        Diagnostic::error(
            Pos { line, col },
            1,
            "",
            format!("{what} is not allowed in YAML (byte offset {at})"),
        )
        .with_hint("remove it; is this a binary file, or was it saved with the wrong encoding?"),
    )
}

/// Parses and validates pipeline text already in memory.
pub fn parse_source(path: &Path, source: String, opts: &LoadOptions) -> Result<(Pipeline, Report), Report> {
    // A UTF-8 byte order mark is allowed at the start of a YAML stream.
    let source = match source.strip_prefix('\u{feff}') {
        Some(rest) => rest.to_string(),
        None => source,
    };
    if let Some(d) = forbidden_char(&source) {
        let mut report = Report::new(path, source);
        report.items.push(d);
        return Err(report);
    }
    let mut report = Report::new(path, source);
    let pipeline = {
        let mut cx = Cx {
            diags: Vec::new(),
            dropped: 0,
            src: &report.source,
            line_starts: line_starts(&report.source),
        };
        let p = if report.source.trim().is_empty() {
            cx.diags.push(file_error(
                "pipeline file is empty".into(),
                "start with `name: my-pipeline` and a `jobs:` mapping (see docs/pipeline-format.md)",
            ));
            None
        } else {
            let parsed = yaml::parse(&report.source);
            if parsed.root.is_none() && parsed.problems.is_empty() {
                cx.diags.push(file_error(
                    "pipeline file has no content: only comments or blank lines".into(),
                    "start with `name: my-pipeline` and a `jobs:` mapping (see docs/pipeline-format.md)",
                ));
            }
            for p in parsed.problems {
                let mut d = Diagnostic::error(p.pos, p.width, p.path, p.message);
                d.hint = p.hint;
                cx.diags.push(d);
            }
            parsed.root.and_then(|root| cx.pipeline(&root, opts))
        };
        report.items = cx.diags;
        report.dropped = cx.dropped;
        p
    };
    if let Some(p) = &pipeline
        && let Err(cycle_diags) = super::graph::Plan::build(p)
    {
        report.items.extend(cycle_diags);
    }
    report.sort();
    match pipeline {
        Some(p) if !report.has_errors() => Ok((p, report)),
        _ => {
            if !report.has_errors() {
                report.items.push(file_error(
                    "pipeline could not be read".into(),
                    "see the messages above",
                ));
            }
            Err(report)
        }
    }
}

struct Cx<'s> {
    diags: Vec<Diagnostic>,
    /// Diagnostics past [`MAX_COLLECTED`], counted but not kept.
    dropped: usize,
    src: &'s str,
    /// Byte offset where each line starts, so positions inside scalars are O(1).
    line_starts: Vec<usize>,
}

fn line_starts(src: &str) -> Vec<usize> {
    std::iter::once(0)
        .chain(src.match_indices('\n').map(|(i, _)| i + 1))
        .collect()
}

fn entries(node: &Node) -> &[(Node, Node)] {
    match &node.value {
        Value::Map(e) => e,
        _ => &[],
    }
}

fn get<'n>(node: &'n Node, key: &str) -> Option<&'n Node> {
    entries(node)
        .iter()
        .find(|(k, _)| k.as_str() == Some(key))
        .map(|(_, v)| v)
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

impl Cx<'_> {
    /// Whether one more diagnostic fits the budget (else it is counted).
    fn room(&mut self) -> bool {
        if self.diags.len() < MAX_COLLECTED {
            return true;
        }
        self.dropped += 1;
        false
    }

    fn err(&mut self, node: &Node, path: &str, msg: impl Into<String>, hint: impl Into<String>) {
        if self.room() {
            self.diags
                .push(Diagnostic::error(node.pos, node.width, path, msg).with_hint(hint));
        }
    }

    fn warn(&mut self, node: &Node, path: &str, msg: impl Into<String>, hint: impl Into<String>) {
        if self.room() {
            self.diags
                .push(Diagnostic::warning(node.pos, node.width, path, msg).with_hint(hint));
        }
    }

    /// Checks that `node` is a mapping whose keys are all in `allowed`.
    fn mapping(&mut self, node: &Node, path: &str, allowed: &[&str], what: &str) -> bool {
        let Value::Map(items) = &node.value else {
            self.err(
                node,
                path,
                format!("{what} must be a mapping, found {}", node.type_name()),
                format!("write {what} as `key: value` lines; valid keys: {}", allowed.join(", ")),
            );
            return false;
        };
        for (k, _) in items {
            let name = k.key_text();
            if !allowed.contains(&name.as_str()) {
                self.err(
                    k,
                    &join(path, &name),
                    format!("unknown key `{name}` in {what}"),
                    suggestion_hint(&name, allowed, "keys"),
                );
            }
        }
        true
    }

    fn string(&mut self, node: &Node, path: &str) -> Option<String> {
        match &node.value {
            Value::Str(s) => Some(s.clone()),
            Value::Int(_) | Value::Float(_) | Value::Bool(_) => Some(node.key_text()),
            Value::Map(_) => {
                self.err(
                    node,
                    path,
                    "expected a string, found a mapping",
                    "an unquoted `: ` makes YAML read `key: value`; put the whole value in quotes",
                );
                None
            }
            _ => {
                self.err(
                    node,
                    path,
                    format!("expected a string, found {}", node.type_name()),
                    "write a single value here",
                );
                None
            }
        }
    }

    fn boolean(&mut self, node: &Node, path: &str) -> Option<bool> {
        match node.value {
            Value::Bool(b) => Some(b),
            _ => {
                self.err(
                    node,
                    path,
                    format!("expected true or false, found {}", node.type_name()),
                    "write `true` or `false`",
                );
                None
            }
        }
    }

    fn int_in(&mut self, node: &Node, path: &str, min: i64, max: i64) -> Option<u32> {
        match node.value {
            Value::Int(i) if (min..=max).contains(&i) => u32::try_from(i).ok(),
            Value::Int(i) => {
                self.err(
                    node,
                    path,
                    format!("{i} is out of range"),
                    format!("use a whole number from {min} to {max}"),
                );
                None
            }
            _ => {
                self.err(
                    node,
                    path,
                    format!("expected a whole number, found {}", node.type_name()),
                    format!("use a whole number from {min} to {max}"),
                );
                None
            }
        }
    }

    /// Seconds as a number (`90`, `0.5`) or a string with a unit (`"90s"`, `"2m"`).
    fn seconds_in(&mut self, node: &Node, path: &str, min: f64, max: f64) -> Option<Duration> {
        let secs = match &node.value {
            Value::Int(i) => Some(*i as f64),
            Value::Float(f) => Some(*f),
            Value::Str(s) => humantime::parse_duration(s.trim()).ok().map(|d| d.as_secs_f64()),
            _ => None,
        };
        let hint = format!("give seconds from {min} to {max}, as a number (`90`) or with a unit (`\"90s\"`, `\"2m\"`)");
        match secs {
            Some(s) if s.is_finite() && s >= min && s <= max => Some(Duration::from_secs_f64(s)),
            Some(s) => {
                self.err(node, path, format!("{s} seconds is out of range"), hint);
                None
            }
            None => {
                self.err(
                    node,
                    path,
                    format!("expected a duration, found {}", node.type_name()),
                    hint,
                );
                None
            }
        }
    }

    /// A list of strings, or a single string as a one-item list.
    fn string_list(&mut self, node: &Node, path: &str) -> Vec<(String, Node)> {
        match &node.value {
            Value::Seq(items) => items
                .iter()
                .enumerate()
                .filter_map(|(i, n)| self.string(n, &format!("{path}[{i}]")).map(|s| (s, n.clone())))
                .collect(),
            Value::Str(_) | Value::Int(_) | Value::Float(_) | Value::Bool(_) => {
                self.string(node, path).map(|s| (s, node.clone())).into_iter().collect()
            }
            _ => {
                self.err(
                    node,
                    path,
                    format!("expected a list of strings, found {}", node.type_name()),
                    "write `[a, b]` or one `- item` per line",
                );
                Vec::new()
            }
        }
    }

    fn env_map(&mut self, node: &Node, path: &str) -> Vec<EnvVar> {
        let Value::Map(items) = &node.value else {
            if node.value != Value::Null {
                self.err(
                    node,
                    path,
                    format!("environment must be a mapping, found {}", node.type_name()),
                    "write one `NAME: value` per line",
                );
            }
            return Vec::new();
        };
        let mut out = Vec::new();
        for (k, v) in items {
            let name = k.key_text();
            let vpath = join(path, &name);
            if !valid_var_name(&name) {
                self.err(
                    k,
                    &vpath,
                    format!("`{name}` is not a valid variable name"),
                    "use letters, digits and `_`, not starting with a digit",
                );
                continue;
            }
            let value = match &v.value {
                Value::Null => Some(String::new()),
                Value::Seq(_) | Value::Map(_) => {
                    self.err(
                        v,
                        &vpath,
                        format!("variable values must be scalars, found {}", v.type_name()),
                        "quote the value, or encode it as JSON in a string",
                    );
                    None
                }
                _ => Some(v.key_text()),
            };
            if let Some(value) = value {
                self.expressions_in(&value, v, &vpath);
                out.push(EnvVar {
                    name,
                    value,
                    pos: self.pos_in(v, 0),
                });
            }
        }
        out
    }

    /// Position of a character inside a scalar (exact for one-line scalars).
    fn pos_in(&self, node: &Node, char_offset: usize) -> Pos {
        let idx = node.pos.line.saturating_sub(1);
        let line = match (self.line_starts.get(idx), self.line_starts.get(idx + 1)) {
            (Some(&a), Some(&b)) => &self.src[a..b],
            (Some(&a), None) => &self.src[a..],
            _ => "",
        };
        let at = line.chars().nth(node.pos.col.saturating_sub(1));
        let quote = usize::from(matches!(at, Some('"' | '\'')));
        let text_width = node.width;
        if char_offset <= text_width {
            Pos {
                line: node.pos.line,
                col: node.pos.col + quote + char_offset,
            }
        } else {
            node.pos
        }
    }

    /// Validates every `${{ ... }}` inside a string.
    fn expressions_in(&mut self, text: &str, node: &Node, path: &str) {
        if let Err(e) = expr::placeholders(text) {
            let offset = text[..e.offset.min(text.len())].chars().count();
            let pos = self.pos_in(node, offset);
            let mut d = Diagnostic::error(pos, 1, path, format!("invalid expression: {}", e.message));
            d.hint = e
                .hint
                .or(Some("see the expression syntax in docs/pipeline-format.md".into()));
            self.diags.push(d);
        }
    }

    fn pipeline(&mut self, root: &Node, opts: &LoadOptions) -> Option<Pipeline> {
        if !self.mapping(root, "", &TOP_KEYS, "the pipeline") {
            return None;
        }
        let name = match get(root, "name") {
            Some(n) => self.string(n, "name").unwrap_or_default(),
            None => {
                self.diags.push(
                    Diagnostic::error(root.pos, 1, "", "missing required key `name`")
                        .with_hint("add `name: my-pipeline` at the top"),
                );
                String::new()
            }
        };
        let global_env = get(root, "global_env")
            .map(|n| self.env_map(n, "global_env"))
            .unwrap_or_default();
        let timeout = get(root, "timeout")
            .and_then(|n| self.seconds_in(n, "timeout", 1.0, 7.0 * 86400.0))
            .unwrap_or(DEFAULT_PIPELINE_TIMEOUT);
        let kill_grace = get(root, "kill_grace")
            .and_then(|n| self.seconds_in(n, "kill_grace", 0.0, 3600.0))
            .unwrap_or(DEFAULT_KILL_GRACE);
        let retry_policy = get(root, "retry_policy")
            .map(|n| self.retry_policy(n))
            .unwrap_or_default();

        let mut jobs = Vec::new();
        match get(root, "jobs") {
            None => self.diags.push(
                Diagnostic::error(root.pos, 1, "", "missing required key `jobs`")
                    .with_hint("add a `jobs:` mapping with at least one job"),
            ),
            Some(node) => match &node.value {
                Value::Map(items) if !items.is_empty() => {
                    for (k, v) in items {
                        if let Some(job) = self.job(k, v, &retry_policy) {
                            jobs.push(job);
                        }
                    }
                }
                Value::Map(_) => self.err(node, "jobs", "`jobs` has no jobs", "add at least one job under `jobs:`"),
                _ => self.err(
                    node,
                    "jobs",
                    format!(
                        "`jobs` must be a mapping with at least one job, found {}",
                        node.type_name()
                    ),
                    "write `jobs:` followed by indented `name:` entries",
                ),
            },
        }
        let pipeline = Pipeline {
            name,
            global_env,
            timeout,
            kill_grace,
            retry_policy,
            jobs,
        };
        self.cross_check(root, &pipeline, opts);
        Some(pipeline)
    }

    fn retry_policy(&mut self, node: &Node) -> RetryPolicy {
        let mut rp = RetryPolicy::default();
        if !self.mapping(node, "retry_policy", &["max_attempts", "backoff"], "retry_policy") {
            return rp;
        }
        if let Some(n) = get(node, "max_attempts") {
            rp.max_attempts = self.int_in(n, "retry_policy.max_attempts", 1, 6).unwrap_or(1);
        }
        if let Some(b) = get(node, "backoff") {
            let keys = ["initial", "max", "multiplier", "jitter"];
            if self.mapping(b, "retry_policy.backoff", &keys, "backoff") {
                if let Some(n) = get(b, "initial") {
                    rp.backoff.initial = self
                        .seconds_in(n, "retry_policy.backoff.initial", 0.0, 3600.0)
                        .unwrap_or(rp.backoff.initial);
                }
                if let Some(n) = get(b, "max") {
                    rp.backoff.max = self
                        .seconds_in(n, "retry_policy.backoff.max", 0.0, 86400.0)
                        .unwrap_or(rp.backoff.max);
                }
                for (key, lo, hi) in [("multiplier", 1.0, 10.0), ("jitter", 0.0, 1.0)] {
                    if let Some(n) = get(b, key) {
                        let v = match n.value {
                            Value::Int(i) => Some(i as f64),
                            Value::Float(f) => Some(f),
                            _ => None,
                        };
                        match v {
                            Some(v) if (lo..=hi).contains(&v) => {
                                if key == "multiplier" {
                                    rp.backoff.multiplier = v;
                                } else {
                                    rp.backoff.jitter = v;
                                }
                            }
                            _ => self.err(
                                n,
                                &format!("retry_policy.backoff.{key}"),
                                format!("`{key}` must be a number from {lo} to {hi}"),
                                format!("e.g. `{key}: {}`", if key == "multiplier" { "2" } else { "0.25" }),
                            ),
                        }
                    }
                }
            }
        }
        rp
    }

    fn job(&mut self, key: &Node, node: &Node, rp: &RetryPolicy) -> Option<Job> {
        let name = key.key_text();
        let path = format!("jobs.{name}");
        if !valid_job_name(&name) {
            self.err(
                key,
                &path,
                format!("`{name}` is not a valid job name"),
                "use letters, digits, `-`, `_` and `.` (at most 100), starting with a letter or digit",
            );
        }
        if !self.mapping(node, &path, &JOB_KEYS, &format!("job `{name}`")) {
            return None;
        }
        let job_image = get(node, "image").and_then(|n| self.string(n, &join(&path, "image")));
        let mut steps = Vec::new();
        let deploy_node = get(node, "deploy");
        match get(node, "steps") {
            None if deploy_node.is_some() => {}
            Some(s) if deploy_node.is_some() => self.err(
                s,
                &join(&path, "steps"),
                format!("job `{name}` has both `deploy` and `steps`"),
                "a deploy job rolls a service out and runs no steps: move the steps to a job it depends on",
            ),
            None => self.err(
                key,
                &path,
                format!("job `{name}` has no `steps`"),
                "add `steps:` with at least one `- script: ...`",
            ),
            Some(s) => match &s.value {
                Value::Seq(items) if !items.is_empty() => {
                    for (i, st) in items.iter().enumerate() {
                        if let Some(step) = self.step(st, &format!("{path}.steps[{i}]"), i) {
                            steps.push(step);
                        }
                    }
                    let mut seen: std::collections::HashMap<&str, usize> = std::collections::HashMap::new();
                    for (i, st) in steps.iter().enumerate() {
                        if let Some(&first) = seen.get(st.name.as_str()) {
                            let n = get(&items[i], "name").unwrap_or(&items[i]);
                            self.err(
                                n,
                                &format!("{path}.steps[{i}].name"),
                                format!("duplicate step name `{}` in job `{name}`", st.name),
                                format!(
                                    "step {} already uses this name; step names must be unique within a job",
                                    first + 1
                                ),
                            );
                        } else {
                            seen.insert(&st.name, i);
                        }
                    }
                }
                Value::Seq(_) => self.err(
                    s,
                    &join(&path, "steps"),
                    "`steps` is empty",
                    "add at least one `- script: ...` entry",
                ),
                _ => self.err(
                    s,
                    &join(&path, "steps"),
                    format!("`steps` must be a non-empty list, found {}", s.type_name()),
                    "write one `- script: ...` entry per step",
                ),
            },
        }
        if let Some(img) = job_image {
            for st in &mut steps {
                st.image.get_or_insert_with(|| img.clone());
            }
        }
        let mut depends_on = Vec::new();
        let mut depends_on_pos = Vec::new();
        if let Some(d) = get(node, "depends_on") {
            for (dep, n) in self.string_list(d, &join(&path, "depends_on")) {
                depends_on.push(dep);
                depends_on_pos.push(n.pos);
            }
        }
        let environment = get(node, "environment")
            .map(|n| self.env_map(n, &join(&path, "environment")))
            .unwrap_or_default();
        let timeout = get(node, "timeout")
            .and_then(|n| self.seconds_in(n, &join(&path, "timeout"), 1.0, 86400.0))
            .unwrap_or(DEFAULT_JOB_TIMEOUT);
        let retry_count = match get(node, "retry_count") {
            Some(n) => self.int_in(n, &join(&path, "retry_count"), 0, 5).unwrap_or(0),
            None => rp.max_attempts.saturating_sub(1),
        };
        let mut retry_when = Vec::new();
        if let Some(n) = get(node, "retry_when") {
            let rpath = join(&path, "retry_when");
            let items: Vec<(String, Node)> = self.string_list(n, &rpath);
            for (i, (s, item)) in items.iter().enumerate() {
                match FailureClass::parse(s) {
                    Some(c) if !retry_when.contains(&c) => retry_when.push(c),
                    Some(_) => {}
                    None => {
                        let names: Vec<&str> = FailureClass::ALL.iter().map(|c| c.as_str()).collect();
                        self.err(
                            item,
                            &format!("{rpath}[{i}]"),
                            format!("unknown failure class `{s}`"),
                            suggestion_hint(s, &names, "classes"),
                        );
                    }
                }
            }
        }
        if retry_when.is_empty() {
            retry_when = FailureClass::TRANSIENT.to_vec();
        }
        let conditional = get(node, "conditional").and_then(|n| {
            let cpath = join(&path, "conditional");
            let src = self.string(n, &cpath)?;
            let inner = src
                .trim()
                .strip_prefix("${{")
                .and_then(|s| s.strip_suffix("}}"))
                .unwrap_or(&src)
                .to_string();
            let lead = src.find(inner.as_str()).unwrap_or(0);
            match expr::parse(&inner) {
                Ok(e) => Some(Condition {
                    source: inner.trim().to_string(),
                    expr: e,
                    pos: n.pos,
                }),
                Err(e) => {
                    let offset = src[..(lead + e.offset).min(src.len())].chars().count();
                    let pos = self.pos_in(n, offset);
                    let mut d = Diagnostic::error(pos, 1, &cpath, format!("invalid expression: {}", e.message));
                    d.hint = e
                        .hint
                        .or(Some("see the expression syntax in docs/pipeline-format.md".into()));
                    self.diags.push(d);
                    None
                }
            }
        });
        let when = match get(node, "when") {
            Some(n) => {
                let wpath = join(&path, "when");
                match self.string(n, &wpath) {
                    Some(s) => match When::ALL.iter().find(|(k, _)| *k == s) {
                        Some((_, w)) => *w,
                        None => {
                            let names: Vec<&str> = When::ALL.iter().map(|(k, _)| *k).collect();
                            self.err(
                                n,
                                &wpath,
                                format!("unknown `when` value `{s}`"),
                                suggestion_hint(&s, &names, "values"),
                            );
                            When::OnSuccess
                        }
                    },
                    None => When::OnSuccess,
                }
            }
            None => When::OnSuccess,
        };
        let allow_failure = get(node, "allow_failure")
            .and_then(|n| self.boolean(n, &join(&path, "allow_failure")))
            .unwrap_or(false);
        let working_directory = get(node, "working_directory").and_then(|n| {
            let wd = self.string(n, &join(&path, "working_directory"))?;
            self.check_workdir(&wd, n, &join(&path, "working_directory"));
            Some(wd)
        });
        let container = self.container(node, &path);
        let services = get(node, "services")
            .map(|n| self.services(n, &path))
            .unwrap_or_default();
        let artifacts = get(node, "artifacts").and_then(|n| self.artifacts(n, &join(&path, "artifacts")));
        let needs_artifacts = get(node, "needs_artifacts").map(|n| {
            self.string_list(n, &join(&path, "needs_artifacts"))
                .into_iter()
                .map(|(s, _)| s)
                .collect()
        });
        let deploy = deploy_node.and_then(|n| self.deploy(n, &join(&path, "deploy")));
        let (cache, dir_cache) = match get(node, "cache") {
            Some(n) => self.cache(n, &join(&path, "cache")),
            None => (None, None),
        };
        Some(Job {
            name,
            steps,
            depends_on,
            depends_on_pos,
            environment,
            timeout,
            retry_count,
            retry_when,
            conditional,
            when,
            allow_failure,
            working_directory,
            container,
            services,
            artifacts,
            needs_artifacts,
            cache,
            dir_cache,
            deploy,
            pos: key.pos,
        })
    }

    fn required_string(&mut self, node: &Node, path: &str, key: &str, example: &str) -> Option<String> {
        match get(node, key) {
            Some(n) => self.string(n, &join(path, key)),
            None => {
                self.err(
                    node,
                    path,
                    format!("`deploy` needs `{key}`"),
                    format!("e.g. `{key}: {example}`"),
                );
                None
            }
        }
    }

    /// `deploy:` of a job (a canary rollout of local processes).
    fn deploy(&mut self, node: &Node, path: &str) -> Option<Deploy> {
        let keys = [
            "service",
            "listen",
            "metrics_listen",
            "version",
            "run",
            "image",
            "port",
            "replicas",
            "router",
            "metrics",
            "health",
            "traffic",
            "strategy",
            "progress_deadline",
            "abort_delay",
            "judge",
        ];
        if !self.mapping(node, path, &keys, "deploy") {
            return None;
        }
        let service = self.required_string(node, path, "service", "web");
        let listen = self.required_string(node, path, "listen", "127.0.0.1:8080");
        if let (Some(l), Some(n)) = (&listen, get(node, "listen"))
            && l.parse::<std::net::SocketAddr>().is_err()
        {
            self.err(
                n,
                &join(path, "listen"),
                format!("`{l}` is not an address"),
                "write IP:PORT, e.g. `127.0.0.1:8080`",
            );
        }
        let metrics_listen = get(node, "metrics_listen").and_then(|n| {
            let v = self.string(n, &join(path, "metrics_listen"))?;
            if v.parse::<std::net::SocketAddr>().is_err() {
                self.err(
                    n,
                    &join(path, "metrics_listen"),
                    format!("`{v}` is not an address"),
                    "write IP:PORT, e.g. `127.0.0.1:9464`",
                );
                return None;
            }
            Some(v)
        });
        let target = self.deploy_target(node, path);
        let version = get(node, "version")
            .and_then(|n| self.string(n, &join(path, "version")))
            .unwrap_or_else(|| "new".into());
        let replicas = get(node, "replicas")
            .and_then(|n| self.int_in(n, &join(path, "replicas"), 1, 50))
            .unwrap_or(1);
        let hpath = join(path, "health");
        let mut health = HealthCheck {
            probe: Probe::Http {
                path: "/healthz".into(),
                status: None,
            },
            interval: Duration::from_secs(1),
            success_threshold: 3,
            failure_threshold: 2,
            timeout: Duration::from_secs(300),
        };
        if let Some(h) = get(node, "health")
            && self.mapping(
                h,
                &hpath,
                &[
                    "http",
                    "status",
                    "tcp",
                    "command",
                    "interval",
                    "success_threshold",
                    "failure_threshold",
                    "timeout",
                ],
                "health",
            )
        {
            let kinds: Vec<&str> = ["http", "tcp", "command"]
                .into_iter()
                .filter(|k| get(h, k).is_some())
                .collect();
            if kinds.len() > 1 {
                self.err(
                    h,
                    &hpath,
                    format!("`health` has {}: give one", kinds.join(" and ")),
                    "`http: /healthz`, `tcp: true` or `command: \"./check ${PORT}\"`",
                );
            }
            let status = get(h, "status")
                .and_then(|n| self.int_in(n, &join(&hpath, "status"), 100, 599))
                .map(|v| v as u16);
            if let Some(p) = get(h, "http").and_then(|n| self.string(n, &join(&hpath, "http"))) {
                health.probe = Probe::Http {
                    path: if p.starts_with('/') { p } else { format!("/{p}") },
                    status,
                };
            } else if let Some(n) = get(h, "tcp") {
                if self.boolean(n, &join(&hpath, "tcp")) == Some(true) {
                    health.probe = Probe::Tcp;
                }
            } else if let Some(c) = get(h, "command").and_then(|n| self.string(n, &join(&hpath, "command"))) {
                health.probe = Probe::Command(c);
            } else if let Some(st) = status {
                health.probe = Probe::Http {
                    path: "/healthz".into(),
                    status: Some(st),
                };
            }
            if let Some(d) = get(h, "interval").and_then(|n| self.seconds_in(n, &join(&hpath, "interval"), 0.05, 600.0))
            {
                health.interval = d;
            }
            if let Some(v) =
                get(h, "success_threshold").and_then(|n| self.int_in(n, &join(&hpath, "success_threshold"), 1, 100))
            {
                health.success_threshold = v;
            }
            if let Some(v) =
                get(h, "failure_threshold").and_then(|n| self.int_in(n, &join(&hpath, "failure_threshold"), 1, 100))
            {
                health.failure_threshold = v;
            }
            if let Some(d) = get(h, "timeout").and_then(|n| self.seconds_in(n, &join(&hpath, "timeout"), 1.0, 86400.0))
            {
                health.timeout = d;
            }
        }
        let rps = match get(node, "traffic") {
            Some(t) if self.mapping(t, &join(path, "traffic"), &["rps"], "traffic") => get(t, "rps")
                .and_then(|n| self.int_in(n, &join(path, "traffic.rps"), 0, 10_000))
                .unwrap_or(0),
            _ => 0,
        };
        let (mut confidence, mut tolerance) = (0.98, 0.25);
        if let Some(j) = get(node, "judge")
            && self.mapping(j, &join(path, "judge"), &["confidence", "tolerance"], "judge")
        {
            for (key, slot) in [("confidence", &mut confidence), ("tolerance", &mut tolerance)] {
                if let Some(n) = get(j, key) {
                    match n.value {
                        Value::Float(f) if f > 0.0 && f < 1.0 => *slot = f,
                        _ => self.err(
                            n,
                            &format!("{path}.judge.{key}"),
                            format!("`{key}` must be a number between 0 and 1"),
                            "e.g. `confidence: 0.98`, `tolerance: 0.25`",
                        ),
                    }
                }
            }
        }
        let strategy = self.rollout_steps(node, path);
        let rolling = self.rolling(node, path);
        // Every part is read (and its mistakes reported) before any is missing.
        let router = match get(node, "router") {
            Some(n) => self.router(n, &join(path, "router")),
            None => Some(RouterSpec::Builtin),
        };
        let metrics = match get(node, "metrics") {
            Some(n) => self.metrics_source(n, &join(path, "metrics")),
            None => Some(MetricsSpec::Builtin),
        };
        let progress_deadline = get(node, "progress_deadline")
            .and_then(|n| self.seconds_in(n, &join(path, "progress_deadline"), 1.0, 86400.0))
            .unwrap_or(Duration::from_secs(600));
        let abort_delay = get(node, "abort_delay")
            .and_then(|n| self.seconds_in(n, &join(path, "abort_delay"), 0.0, 3600.0))
            .unwrap_or(Duration::from_secs(30));
        Some(Deploy {
            service: service?,
            listen: listen?,
            metrics_listen,
            version,
            target: target?,
            replicas,
            router: router?,
            metrics: metrics?,
            health,
            rps,
            strategy: strategy.as_ref()?.0,
            steps: strategy?.1,
            rolling,
            progress_deadline,
            abort_delay,
            confidence,
            tolerance,
        })
    }

    /// `run: "cmd ${PORT}"` or `image:` + `port:`, one of them.
    fn deploy_target(&mut self, node: &Node, path: &str) -> Option<Target> {
        match (get(node, "run"), get(node, "image")) {
            (Some(_), Some(i)) => {
                self.err(
                    i,
                    &join(path, "image"),
                    "`deploy` has both `run` and `image`",
                    "a replica is a command (`run`) or a container (`image` + `port`): keep one",
                );
                None
            }
            (None, Some(i)) => {
                let image = self.string(i, &join(path, "image"))?;
                let Some(p) = get(node, "port") else {
                    self.err(
                        i,
                        &join(path, "image"),
                        "a container target needs `port`",
                        "the port the service listens on inside the container, e.g. `port: 8080`",
                    );
                    return None;
                };
                let port = self.int_in(p, &join(path, "port"), 1, 65535)?;
                Some(Target::Container {
                    image,
                    port: port as u16,
                })
            }
            (run, None) => {
                if let Some(p) = get(node, "port") {
                    self.err(
                        p,
                        &join(path, "port"),
                        "`port` belongs to a container target",
                        "with `run`, pass `${PORT}` to the command instead",
                    );
                }
                if run.is_none() {
                    self.err(
                        node,
                        path,
                        "`deploy` needs `run` or `image`",
                        "e.g. `run: \"./server --port ${PORT}\"` or `image: web:v2` with `port: 8080`",
                    );
                    return None;
                }
                let r = self.required_string(node, path, "run", "\"./server --port ${PORT}\"")?;
                if !r.contains("${PORT}") {
                    if let Some(n) = get(node, "run") {
                        self.err(
                            n,
                            &join(path, "run"),
                            "`run` does not use `${PORT}`",
                            "each replica gets its own port: pass `${PORT}` to the command",
                        );
                    }
                    return None;
                }
                Some(Target::Process { run: r })
            }
        }
    }

    /// `strategy: {rolling: {batch_size, max_unavailable, drain_timeout}}`.
    fn rolling(&mut self, node: &Node, path: &str) -> Rolling {
        let mut out = Rolling::default();
        let rpath = format!("{path}.strategy.rolling");
        let Some(r) = get(node, "strategy").and_then(|s| get(s, "rolling")) else {
            return out;
        };
        if matches!(r.value, Value::Null) {
            return out;
        }
        if !self.mapping(
            r,
            &rpath,
            &["batch_size", "max_unavailable", "drain_timeout"],
            "rolling",
        ) {
            return out;
        }
        if let Some(v) = get(r, "batch_size").and_then(|n| self.int_in(n, &join(&rpath, "batch_size"), 1, 50)) {
            out.batch_size = v;
        }
        if let Some(v) = get(r, "max_unavailable").and_then(|n| self.int_in(n, &join(&rpath, "max_unavailable"), 0, 50))
        {
            out.max_unavailable = v;
        }
        if let Some(d) =
            get(r, "drain_timeout").and_then(|n| self.seconds_in(n, &join(&rpath, "drain_timeout"), 0.0, 3600.0))
        {
            out.drain_timeout = d;
        }
        out
    }

    /// `router: builtin`, `router: haproxy`, or `router: {haproxy: {binary, socket, backend, log_listen}}`.
    fn router(&mut self, n: &Node, path: &str) -> Option<RouterSpec> {
        let default = Haproxy {
            binary: "haproxy".into(),
            socket: None,
            backend: None,
            log_listen: None,
        };
        if let Value::Str(s) = &n.value {
            return match s.as_str() {
                "builtin" => Some(RouterSpec::Builtin),
                "haproxy" => Some(RouterSpec::Haproxy(default)),
                other => {
                    self.err(
                        n,
                        path,
                        format!("unknown router `{other}`"),
                        "use `builtin` (the default) or `haproxy`",
                    );
                    None
                }
            };
        }
        if !self.mapping(n, path, &["builtin", "haproxy"], "router") {
            return None;
        }
        let Some(h) = get(n, "haproxy") else {
            return Some(RouterSpec::Builtin);
        };
        let hpath = join(path, "haproxy");
        let mut spec = default;
        if matches!(h.value, Value::Null) {
            return Some(RouterSpec::Haproxy(spec));
        }
        if !self.mapping(h, &hpath, &["binary", "socket", "backend", "log_listen"], "haproxy") {
            return None;
        }
        if let Some(b) = get(h, "binary").and_then(|v| self.string(v, &join(&hpath, "binary"))) {
            spec.binary = b;
        }
        spec.socket = get(h, "socket").and_then(|v| self.string(v, &join(&hpath, "socket")));
        spec.backend = get(h, "backend").and_then(|v| self.string(v, &join(&hpath, "backend")));
        spec.log_listen = get(h, "log_listen").and_then(|v| self.string(v, &join(&hpath, "log_listen")));
        if let (Some(l), Some(v)) = (&spec.log_listen, get(h, "log_listen"))
            && !l.starts_with('/')
        {
            let (message, hint) = if l.parse::<std::net::SocketAddr>().is_ok() {
                (
                    format!(
                        "`{l}` is a UDP address: any local user can send to it and forge the measurements the judge reads"
                    ),
                    "give a Unix socket path for HAProxy's `log` line, e.g. `/run/trackside/web.log.sock` (see docs/deployments.md)",
                )
            } else {
                (
                    format!("`{l}` is not an absolute path"),
                    "give the absolute path of a Unix socket, e.g. `/run/trackside/web.log.sock`",
                )
            };
            self.err(v, &join(&hpath, "log_listen"), message, hint);
            return None;
        }
        if spec.socket.is_none() && (spec.backend.is_some() || spec.log_listen.is_some()) {
            self.err(
                h,
                &hpath,
                "`backend` and `log_listen` are for a running HAProxy",
                "add `socket:` (its admin stats socket), or drop them to let trackside start HAProxy",
            );
            return None;
        }
        Some(RouterSpec::Haproxy(spec))
    }

    /// `metrics: builtin` or `metrics: {prometheus: {url, requests, errors, latency}}`.
    fn metrics_source(&mut self, n: &Node, path: &str) -> Option<MetricsSpec> {
        if let Value::Str(s) = &n.value {
            if s == "builtin" {
                return Some(MetricsSpec::Builtin);
            }
            self.err(
                n,
                path,
                format!("unknown metrics provider `{s}`"),
                "use `builtin` (the default) or `{prometheus: {url: http://127.0.0.1:9090}}`",
            );
            return None;
        }
        if !self.mapping(n, path, &["builtin", "prometheus"], "metrics") {
            return None;
        }
        let Some(p) = get(n, "prometheus") else {
            return Some(MetricsSpec::Builtin);
        };
        let ppath = join(path, "prometheus");
        if !self.mapping(p, &ppath, &["url", "requests", "errors", "latency"], "prometheus") {
            return None;
        }
        let url = self.required_string(p, &ppath, "url", "http://127.0.0.1:9090")?;
        if !(url.starts_with("http://") && url.len() > "http://".len()) {
            if let Some(u) = get(p, "url") {
                self.err(
                    u,
                    &join(&ppath, "url"),
                    format!("`{url}` is not an http:// address"),
                    "e.g. `url: http://127.0.0.1:9090` (https is not supported)",
                );
            }
            return None;
        }
        let mut query = |key: &str, default: &str| {
            get(p, key)
                .and_then(|v| self.string(v, &join(&ppath, key)))
                .unwrap_or_else(|| default.to_string())
        };
        Some(MetricsSpec::Prometheus(Prometheus {
            url: url.trim_end_matches('/').to_string(),
            requests: query("requests", PROM_REQUESTS),
            errors: query("errors", PROM_ERRORS),
            latency: query("latency", PROM_LATENCY),
        }))
    }

    /// `metrics: [{metric: error_rate, max: 0.01}, {metric: p95_ms, max_ratio: 1.2}]`.
    fn thresholds(&mut self, node: &Node, path: &str) -> Vec<Threshold> {
        let Value::Seq(items) = &node.value else {
            self.err(
                node,
                path,
                "`metrics` must be a list",
                "e.g. `metrics: [{metric: error_rate, max: 0.01}]`",
            );
            return Vec::new();
        };
        let mut out = Vec::new();
        for (i, item) in items.iter().enumerate() {
            let ipath = format!("{path}[{i}]");
            if !self.mapping(item, &ipath, &["metric", "max", "max_ratio"], "a metric check") {
                continue;
            }
            let names: Vec<&str> = ThresholdMetric::ALL.iter().map(|(n, _)| *n).collect();
            let metric = match get(item, "metric").and_then(|m| self.string(m, &join(&ipath, "metric")).map(|v| (v, m)))
            {
                Some((v, m)) => match ThresholdMetric::ALL.iter().find(|(n, _)| *n == v) {
                    Some((_, metric)) => Some(*metric),
                    None => {
                        let hint = suggestion_hint(&v, &names, "metrics");
                        self.err(m, &join(&ipath, "metric"), format!("unknown metric `{v}`"), hint);
                        None
                    }
                },
                None => {
                    self.err(
                        item,
                        &ipath,
                        "a metric check needs `metric`",
                        format!("one of {}", names.join(", ")),
                    );
                    None
                }
            };
            let mut number = |key: &str| -> Option<f64> {
                let n = get(item, key)?;
                match n.value {
                    Value::Int(v) if v > 0 => Some(v as f64),
                    Value::Float(v) if v > 0.0 && v.is_finite() => Some(v),
                    _ => {
                        self.err(
                            n,
                            &join(&ipath, key),
                            format!("`{key}` must be a positive number"),
                            "e.g. `max: 0.01`, `max_ratio: 1.2`",
                        );
                        None
                    }
                }
            };
            let (max, max_ratio) = (number("max"), number("max_ratio"));
            if max.is_none() && max_ratio.is_none() {
                self.err(
                    item,
                    &ipath,
                    "a metric check needs `max` or `max_ratio`",
                    "e.g. `{metric: p95_ms, max_ratio: 1.2}`",
                );
                continue;
            }
            if let Some(metric) = metric {
                out.push(Threshold { metric, max, max_ratio });
            }
        }
        out
    }

    /// `pause: {duration}` (timed) or `pause: {}` / `pause: {timeout, default}` (a gate).
    fn pause_step(&mut self, n: &Node, ppath: &str) -> Option<RolloutStep> {
        if !self.mapping(n, ppath, &["duration", "timeout", "default"], "pause") {
            return None;
        }
        if let Some(d) = get(n, "duration") {
            return self
                .seconds_in(d, &join(ppath, "duration"), 0.0, 86400.0)
                .map(RolloutStep::Pause);
        }
        let timeout = get(n, "timeout").and_then(|t| self.seconds_in(t, &join(ppath, "timeout"), 1.0, 86400.0));
        let action = match get(n, "default") {
            None => GateAction::Abort,
            Some(a) => match self.string(a, &join(ppath, "default")).as_deref() {
                Some("promote") => GateAction::Promote,
                Some("abort") | None => GateAction::Abort,
                Some(other) => {
                    self.err(
                        a,
                        &join(ppath, "default"),
                        format!("unknown gate action `{other}`"),
                        "use `promote` or `abort`",
                    );
                    GateAction::Abort
                }
            },
        };
        Some(RolloutStep::Gate {
            timeout: timeout.map(|t| (t, action)),
        })
    }

    /// `analysis: {interval, count, failure_limit, metrics}`.
    fn analysis_step(&mut self, n: &Node, apath: &str) -> Option<RolloutStep> {
        if !self.mapping(
            n,
            apath,
            &[
                "interval",
                "count",
                "failure_limit",
                "consecutive_error_limit",
                "metrics",
            ],
            "analysis",
        ) {
            return None;
        }
        let interval = get(n, "interval")
            .and_then(|v| self.seconds_in(v, &join(apath, "interval"), 0.1, 3600.0))
            .unwrap_or(Duration::from_secs(10));
        let count = get(n, "count")
            .and_then(|v| self.int_in(v, &join(apath, "count"), 1, 1000))
            .unwrap_or(1);
        let failure_limit = get(n, "failure_limit")
            .and_then(|v| self.int_in(v, &join(apath, "failure_limit"), 0, 1000))
            .unwrap_or(0);
        let consecutive_error_limit = get(n, "consecutive_error_limit")
            .and_then(|v| self.int_in(v, &join(apath, "consecutive_error_limit"), 0, 1000))
            .unwrap_or(DEFAULT_CONSECUTIVE_ERROR_LIMIT);
        let thresholds = get(n, "metrics")
            .map(|m| self.thresholds(m, &join(apath, "metrics")))
            .unwrap_or_default();
        Some(RolloutStep::Analysis {
            interval,
            count,
            failure_limit,
            consecutive_error_limit,
            thresholds,
        })
    }

    /// The strategy as rollout steps: a canary's own list, or the steps a
    /// blue-green switch amounts to.
    fn rollout_steps(&mut self, node: &Node, path: &str) -> Option<(Strategy, Vec<RolloutStep>)> {
        let spath = join(path, "strategy");
        let Some(strategy) = get(node, "strategy") else {
            self.err(
                node,
                path,
                "`deploy` needs a `strategy`",
                "e.g. `strategy: {canary: {steps: [{set_weight: 10}, {pause: {}}]}}`",
            );
            return None;
        };
        if !self.mapping(strategy, &spath, &["canary", "blue_green", "rolling"], "strategy") {
            return None;
        }
        if get(strategy, "rolling").is_some() {
            // Its settings are read by `rolling`.
            return Some((Strategy::Rolling, Vec::new()));
        }
        if let Some(bg) = get(strategy, "blue_green") {
            let bpath = join(&spath, "blue_green");
            if !self.mapping(
                bg,
                &bpath,
                &[
                    "pre_promotion_analysis",
                    "gate",
                    "post_promotion_analysis",
                    "scale_down_delay",
                ],
                "blue_green",
            ) {
                return None;
            }
            let mut steps = Vec::new();
            if let Some(a) = get(bg, "pre_promotion_analysis") {
                steps.extend(self.analysis_step(a, &join(&bpath, "pre_promotion_analysis")));
            }
            if let Some(g) = get(bg, "gate") {
                match self.pause_step(g, &join(&bpath, "gate")) {
                    Some(gate @ RolloutStep::Gate { .. }) => steps.push(gate),
                    Some(_) => self.err(
                        g,
                        &join(&bpath, "gate"),
                        "a blue-green gate waits for a person: no `duration`",
                        "`gate: {}` or `gate: {timeout: 600, default: abort}`",
                    ),
                    None => {}
                }
            }
            steps.push(RolloutStep::SetWeight(1000));
            if let Some(a) = get(bg, "post_promotion_analysis") {
                steps.extend(self.analysis_step(a, &join(&bpath, "post_promotion_analysis")));
            }
            let delay = get(bg, "scale_down_delay")
                .and_then(|d| self.seconds_in(d, &join(&bpath, "scale_down_delay"), 0.0, 86400.0))
                .unwrap_or(Duration::from_secs(30));
            steps.push(RolloutStep::Pause(delay));
            return Some((Strategy::BlueGreen, steps));
        }
        let Some(canary) = get(strategy, "canary") else {
            self.err(
                strategy,
                &spath,
                "`strategy` needs `canary`, `blue_green` or `rolling`",
                "e.g. `canary: {steps: [...]}`",
            );
            return None;
        };
        let cpath = join(&spath, "canary");
        if !self.mapping(canary, &cpath, &["steps"], "canary") {
            return None;
        }
        let Some(Value::Seq(items)) = get(canary, "steps").map(|n| &n.value) else {
            self.err(
                canary,
                &cpath,
                "`canary` needs a list of `steps`",
                "e.g. `steps: [{set_weight: 10}, {pause: {}}]`",
            );
            return None;
        };
        let mut out = Vec::new();
        for (i, item) in items.iter().enumerate() {
            let ipath = format!("{cpath}.steps[{i}]");
            let Value::Map(entries) = &item.value else {
                self.err(
                    item,
                    &ipath,
                    "a step is a mapping with one key",
                    "e.g. `- set_weight: 10`",
                );
                continue;
            };
            if entries.len() != 1 {
                self.err(
                    item,
                    &ipath,
                    "a step has exactly one key",
                    "`set_weight`, `pause` or `analysis`",
                );
                continue;
            }
            if !self.mapping(item, &ipath, &["set_weight", "pause", "analysis"], "a canary step") {
                continue;
            }
            if let Some(n) = get(item, "set_weight") {
                let pct = match n.value {
                    Value::Int(v) => Some(v as f64),
                    Value::Float(v) => Some(v),
                    _ => None,
                };
                match pct {
                    Some(p) if (0.0..=100.0).contains(&p) => {
                        out.push(RolloutStep::SetWeight((p * 10.0).round() as u32))
                    }
                    _ => self.err(
                        n,
                        &join(&ipath, "set_weight"),
                        "`set_weight` is a percentage from 0 to 100",
                        "e.g. `set_weight: 12.5` (0.1% resolution)",
                    ),
                }
            } else if let Some(n) = get(item, "pause") {
                out.extend(self.pause_step(n, &join(&ipath, "pause")));
            } else if let Some(n) = get(item, "analysis") {
                out.extend(self.analysis_step(n, &join(&ipath, "analysis")));
            }
        }
        Some((Strategy::Canary, out))
    }

    /// Globs that must stay inside the workspace or project; bad ones are reported.
    fn relative_globs(&mut self, list: Vec<(String, Node)>, path: &str, key: &str) -> Vec<String> {
        let mut out = Vec::new();
        for (i, (p, n)) in list.into_iter().enumerate() {
            let escapes = Path::new(&p).is_absolute()
                || Path::new(&p)
                    .components()
                    .any(|c| matches!(c, std::path::Component::ParentDir));
            if escapes {
                self.err(
                    &n,
                    &format!("{path}.{key}[{i}]"),
                    format!("path `{p}` leaves the workspace"),
                    "use a path or glob relative to the workspace, without `..`",
                );
            } else if let Err(e) = globset::Glob::new(p.trim_start_matches("./")) {
                self.err(
                    &n,
                    &format!("{path}.{key}[{i}]"),
                    format!("bad glob `{p}`: {e}"),
                    "see the glob syntax in docs/pipeline-format.md",
                );
            } else {
                out.push(p);
            }
        }
        out
    }

    /// A non-empty list of relative globs under `key`, or an error naming `example`.
    fn glob_list(&mut self, node: &Node, path: &str, key: &str, example: &str) -> Vec<String> {
        let Some(n) = get(node, key) else {
            return Vec::new();
        };
        let list = self.string_list(n, &join(path, key));
        if list.is_empty() {
            self.err(
                n,
                &join(path, key),
                format!("`{key}` is empty"),
                format!("e.g. `{example}`"),
            );
        }
        self.relative_globs(list, path, key)
    }

    /// `cache:` is a result cache (`inputs`), a directory cache (`key`, `paths`, `policy`), or both.
    fn cache(&mut self, node: &Node, path: &str) -> (Option<ResultCache>, Option<DirCache>) {
        if !self.mapping(node, path, &["inputs", "key", "paths", "policy"], "cache") {
            return (None, None);
        }
        let result = get(node, "inputs").map(|_| ResultCache {
            inputs: self.glob_list(node, path, "inputs", "inputs: [src/**, Cargo.lock]"),
        });
        let has_dir = ["key", "paths", "policy"].iter().any(|k| get(node, k).is_some());
        if result.is_none() && !has_dir {
            self.err(
                node,
                path,
                "`cache` needs `inputs` (skip the job when they did not change) or `paths` (keep folders between runs)",
                "e.g. `cache: {inputs: [src/**]}` or `cache: {key: deps, paths: [node_modules/]}`",
            );
            return (None, None);
        }
        if !has_dir {
            return (result, None);
        }
        if get(node, "paths").is_none() {
            self.err(
                node,
                path,
                "a directory cache needs `paths`",
                "e.g. `cache: {key: deps, paths: [node_modules/]}`",
            );
            return (result, None);
        }
        let paths = self.glob_list(node, path, "paths", "paths: [node_modules/]");
        let key = match get(node, "key") {
            None => None,
            Some(n) if matches!(n.value, Value::Map(_)) => {
                let kpath = join(path, "key");
                if self.mapping(n, &kpath, &["files", "prefix"], "a cache key") {
                    let files = self.glob_list(n, &kpath, "files", "files: [Cargo.lock]");
                    if get(n, "files").is_none() {
                        self.err(
                            n,
                            &kpath,
                            "a cache key mapping needs `files`",
                            "e.g. `key: {files: [Cargo.lock]}`",
                        );
                    }
                    let prefix = get(n, "prefix").and_then(|p| self.string(p, &join(&kpath, "prefix")));
                    Some(DirCacheKey::Files { files, prefix })
                } else {
                    None
                }
            }
            Some(n) => self.string(n, &join(path, "key")).map(DirCacheKey::Name),
        };
        let policy = match get(node, "policy") {
            None => CachePolicy::default(),
            Some(n) => match self.string(n, &join(path, "policy")) {
                Some(v) => match CachePolicy::ALL.iter().find(|(name, _)| *name == v) {
                    Some((_, p)) => *p,
                    None => {
                        let names: Vec<&str> = CachePolicy::ALL.iter().map(|(n, _)| *n).collect();
                        let hint = suggestion_hint(&v, &names, "policies");
                        self.err(n, &join(path, "policy"), format!("unknown cache policy `{v}`"), hint);
                        CachePolicy::default()
                    }
                },
                None => CachePolicy::default(),
            },
        };
        let dir = DirCache {
            key: key.unwrap_or_else(|| DirCacheKey::Name("${CI_JOB_NAME}".into())),
            paths,
            policy,
        };
        (result, Some(dir))
    }

    fn artifacts(&mut self, node: &Node, path: &str) -> Option<Artifacts> {
        if !self.mapping(node, path, &["paths", "exclude", "when", "expire_in"], "artifacts") {
            return None;
        }
        let paths = match get(node, "paths") {
            Some(n) => {
                let list = self.string_list(n, &join(path, "paths"));
                if list.is_empty() {
                    self.err(
                        n,
                        &join(path, "paths"),
                        "`paths` is empty",
                        "list the files or directories to keep, e.g. `[dist/]`",
                    );
                }
                self.relative_globs(list, path, "paths")
            }
            None => {
                self.err(
                    node,
                    path,
                    "artifacts need `paths`",
                    "e.g. `artifacts: {paths: [dist/]}`",
                );
                Vec::new()
            }
        };
        let exclude = get(node, "exclude")
            .map(|n| self.string_list(n, &join(path, "exclude")))
            .unwrap_or_default();
        let exclude = self.relative_globs(exclude, path, "exclude");
        let when = match get(node, "when") {
            None => ArtifactWhen::OnSuccess,
            Some(n) => match self.string(n, &join(path, "when")).as_deref() {
                Some("on_success") => ArtifactWhen::OnSuccess,
                Some("on_failure") => ArtifactWhen::OnFailure,
                Some("always") => ArtifactWhen::Always,
                Some(other) => {
                    let hint = suggestion_hint(other, &["on_success", "on_failure", "always"], "values");
                    self.err(n, &join(path, "when"), format!("unknown `when` value `{other}`"), hint);
                    ArtifactWhen::OnSuccess
                }
                None => ArtifactWhen::OnSuccess,
            },
        };
        let expire_in = get(node, "expire_in")
            .and_then(|n| self.seconds_in(n, &join(path, "expire_in"), 1.0, 10.0 * 365.0 * 86400.0));
        Some(Artifacts {
            paths,
            exclude,
            when,
            expire_in,
        })
    }

    fn services(&mut self, node: &Node, path: &str) -> Vec<Service> {
        let spath = join(path, "services");
        let Value::Seq(items) = &node.value else {
            self.err(
                node,
                &spath,
                format!("`services` must be a list, found {}", node.type_name()),
                "write one `- name: ...` entry per service",
            );
            return Vec::new();
        };
        let keys = ["name", "image", "port", "environment", "command", "ready_timeout"];
        let mut out: Vec<Service> = Vec::new();
        for (i, item) in items.iter().enumerate() {
            let ipath = format!("{spath}[{i}]");
            if !self.mapping(item, &ipath, &keys, "a service") {
                continue;
            }
            let name = get(item, "name").and_then(|n| self.string(n, &join(&ipath, "name")));
            let image = get(item, "image").and_then(|n| self.string(n, &join(&ipath, "image")));
            let (Some(name), Some(image)) = (name, image) else {
                self.err(
                    item,
                    &ipath,
                    "a service needs `name` and `image`",
                    "e.g. `- {name: db, image: postgres:16, port: 5432}`",
                );
                continue;
            };
            let valid = !name.is_empty()
                && name.len() <= 63
                && name
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
                && !name.starts_with('-');
            if !valid {
                let n = get(item, "name").unwrap_or(item);
                self.err(
                    n,
                    &join(&ipath, "name"),
                    format!("`{name}` is not a valid service name"),
                    "use lowercase letters, digits and `-`: it becomes a host name",
                );
                continue;
            }
            if out.iter().any(|s| s.name == name) {
                let n = get(item, "name").unwrap_or(item);
                self.err(
                    n,
                    &join(&ipath, "name"),
                    format!("duplicate service `{name}`"),
                    "service names must be unique within a job",
                );
                continue;
            }
            let port = get(item, "port")
                .and_then(|n| self.int_in(n, &join(&ipath, "port"), 1, 65535))
                .and_then(|p| u16::try_from(p).ok());
            let environment = get(item, "environment")
                .map(|n| self.env_map(n, &join(&ipath, "environment")))
                .unwrap_or_default();
            let command = get(item, "command").map(|n| {
                self.string_list(n, &join(&ipath, "command"))
                    .into_iter()
                    .map(|(s, _)| s)
                    .collect()
            });
            let ready_timeout = get(item, "ready_timeout")
                .and_then(|n| self.seconds_in(n, &join(&ipath, "ready_timeout"), 1.0, 3600.0))
                .unwrap_or(Duration::from_secs(60));
            out.push(Service {
                name,
                image,
                port,
                environment,
                command,
                ready_timeout,
            });
        }
        out
    }

    fn container(&mut self, node: &Node, path: &str) -> ContainerOptions {
        let mut c = ContainerOptions {
            user: get(node, "user").and_then(|n| self.string(n, &join(path, "user"))),
            ..ContainerOptions::default()
        };
        if let Some(n) = get(node, "entrypoint") {
            c.entrypoint = Some(match &n.value {
                Value::Seq(items) if items.is_empty() => Vec::new(),
                _ => self
                    .string_list(n, &join(path, "entrypoint"))
                    .into_iter()
                    .map(|(s, _)| s)
                    .collect(),
            });
        }
        if let Some(n) = get(node, "pull") {
            let ppath = join(path, "pull");
            if let Some(s) = self.string(n, &ppath) {
                match PullPolicy::ALL.iter().find(|(k, _)| *k == s) {
                    Some((_, p)) => c.pull = *p,
                    None => {
                        let names: Vec<&str> = PullPolicy::ALL.iter().map(|(k, _)| *k).collect();
                        self.err(
                            n,
                            &ppath,
                            format!("unknown pull policy `{s}`"),
                            suggestion_hint(&s, &names, "policies"),
                        );
                    }
                }
            }
        }
        if let Some(r) = get(node, "resources") {
            let rpath = join(path, "resources");
            if self.mapping(r, &rpath, &["cpus", "memory", "pids"], "resources") {
                if let Some(n) = get(r, "cpus") {
                    match n.value {
                        Value::Int(i) if (1..=1024).contains(&i) => c.cpus = Some(i as f64),
                        Value::Float(f) if (0.01..=1024.0).contains(&f) => c.cpus = Some(f),
                        _ => self.err(
                            n,
                            &join(&rpath, "cpus"),
                            "`cpus` must be a number from 0.01 to 1024",
                            "e.g. `cpus: 1.5`",
                        ),
                    }
                }
                if let Some(n) = get(r, "memory") {
                    match parse_bytes(n) {
                        Some(b) if b >= 6 << 20 => c.memory = Some(b),
                        _ => self.err(
                            n,
                            &join(&rpath, "memory"),
                            "`memory` must be a size of at least 6MiB",
                            "write bytes or a size with a unit: `512MiB`, `2GiB`, `256M`",
                        ),
                    }
                }
                if let Some(n) = get(r, "pids") {
                    c.pids = self.int_in(n, &join(&rpath, "pids"), 1, 1 << 22).map(i64::from);
                }
            }
        }
        if let Some(n) = get(node, "privileged") {
            c.privileged = self.boolean(n, &join(path, "privileged")).unwrap_or(false);
            if c.privileged {
                self.warn(
                    n,
                    &join(path, "privileged"),
                    "this job's containers run privileged",
                    "a privileged container can take over the host; drop it unless the job really needs it",
                );
            }
        }
        if let Some(n) = get(node, "cap_drop") {
            c.cap_drop = self
                .string_list(n, &join(path, "cap_drop"))
                .into_iter()
                .map(|(s, _)| s)
                .collect();
        }
        if let Some(n) = get(node, "read_only_rootfs") {
            c.read_only_rootfs = self.boolean(n, &join(path, "read_only_rootfs")).unwrap_or(false);
        }
        if let Some(n) = get(node, "docker_socket") {
            c.docker_socket = self.boolean(n, &join(path, "docker_socket")).unwrap_or(false);
            if c.docker_socket {
                self.warn(
                    n,
                    &join(path, "docker_socket"),
                    "this job gets the host's Docker socket",
                    "whoever controls the job controls the host's Docker daemon",
                );
            }
        }
        c
    }

    fn check_workdir(&mut self, wd: &str, node: &Node, path: &str) {
        let p = Path::new(wd);
        if p.is_absolute() || p.components().any(|c| matches!(c, std::path::Component::ParentDir)) {
            self.err(
                node,
                path,
                format!("working_directory `{wd}` leaves the job's workspace"),
                "give a path relative to the project directory, without `..`",
            );
        }
    }

    fn step(&mut self, node: &Node, path: &str, index: usize) -> Option<Step> {
        if !self.mapping(node, path, &STEP_KEYS, "a step") {
            return None;
        }
        let name = get(node, "name")
            .and_then(|n| self.string(n, &join(path, "name")))
            .unwrap_or_else(|| format!("step-{}", index + 1));
        if name.trim().is_empty()
            && let Some(n) = get(node, "name")
        {
            self.err(
                n,
                &join(path, "name"),
                "step name is empty",
                "give the step a short name",
            );
        }
        let mut script = Vec::new();
        match get(node, "script") {
            None => self.err(
                node,
                path,
                "step has no `script`",
                "add `script:` with one shell line or a list of lines",
            ),
            Some(s) => {
                let spath = join(path, "script");
                let lines = self.string_list(s, &spath);
                if lines.is_empty() && !matches!(s.value, Value::Seq(_) | Value::Str(_)) {
                    // type error already reported
                } else if lines.iter().all(|(l, _)| l.trim().is_empty()) {
                    self.err(s, &spath, "script is empty", "give at least one shell command");
                }
                for (i, (line, n)) in lines.into_iter().enumerate() {
                    self.expressions_in(&line, &n, &format!("{spath}[{i}]"));
                    script.push(line);
                }
            }
        }
        let image = get(node, "image").and_then(|n| self.string(n, &join(path, "image")));
        let environment = get(node, "environment")
            .map(|n| self.env_map(n, &join(path, "environment")))
            .unwrap_or_default();
        let working_directory = get(node, "working_directory").and_then(|n| {
            let wd = self.string(n, &join(path, "working_directory"))?;
            self.check_workdir(&wd, n, &join(path, "working_directory"));
            Some(wd)
        });
        let timeout = get(node, "timeout").and_then(|n| self.seconds_in(n, &join(path, "timeout"), 1.0, 86400.0));
        let retry_count = get(node, "retry_count")
            .and_then(|n| self.int_in(n, &join(path, "retry_count"), 0, 3))
            .unwrap_or(0);
        let continue_on_failure = get(node, "continue_on_failure")
            .and_then(|n| self.boolean(n, &join(path, "continue_on_failure")))
            .unwrap_or(false);
        Some(Step {
            name,
            script,
            image,
            environment,
            working_directory,
            timeout,
            retry_count,
            continue_on_failure,
        })
    }

    /// Checks that need the whole pipeline: job references, variables, images.
    fn cross_check(&mut self, root: &Node, p: &Pipeline, opts: &LoadOptions) {
        let names: Vec<&str> = p.jobs.iter().map(|j| j.name.as_str()).collect();
        let known: std::collections::HashSet<&str> = names.iter().copied().collect();
        let job_nodes: std::collections::HashMap<String, &Node> = get(root, "jobs")
            .map(|n| entries(n).iter().map(|(k, v)| (k.key_text(), v)).collect())
            .unwrap_or_default();
        for job in &p.jobs {
            let path = format!("jobs.{}", job.name);
            let job_node = job_nodes.get(&job.name).copied();
            // depends_on
            if let Some(dnode) = job_node.and_then(|n| get(n, "depends_on")) {
                let items: Vec<&Node> = match &dnode.value {
                    Value::Seq(items) => items.iter().collect(),
                    _ => vec![dnode],
                };
                let mut seen: std::collections::HashSet<&str> = std::collections::HashSet::new();
                for (i, item) in items.iter().enumerate() {
                    let Some(dep) = item.as_str() else { continue };
                    let ipath = format!("{path}.depends_on[{i}]");
                    if dep == job.name {
                        self.err(
                            item,
                            &ipath,
                            format!("job `{dep}` depends on itself"),
                            "remove this entry: a job cannot wait for itself",
                        );
                    } else if !known.contains(dep) {
                        self.err(
                            item,
                            &ipath,
                            format!("unknown job `{dep}`"),
                            suggestion_hint(dep, &names, "jobs"),
                        );
                    } else if seen.contains(&dep) {
                        self.warn(
                            item,
                            &ipath,
                            format!("`{dep}` is listed twice"),
                            "remove the repeated entry",
                        );
                    }
                    seen.insert(dep);
                }
            }
            // needs_artifacts: direct dependencies only
            if let Some(needs) = &job.needs_artifacts {
                let n = job_node
                    .and_then(|n| get(n, "needs_artifacts"))
                    .cloned()
                    .unwrap_or_else(|| root.clone());
                for need in needs {
                    if !job.depends_on.contains(need) {
                        self.err(
                            &n,
                            &format!("{path}.needs_artifacts"),
                            format!("`{need}` is not in `depends_on` of job `{}`", job.name),
                            format!("artifacts come from jobs this one waits for: add `{need}` to depends_on"),
                        );
                    }
                }
            }
            // job references in the conditional
            if let Some(c) = &job.conditional {
                let mut refs = Vec::new();
                c.expr.job_refs(&mut refs);
                for (name, _) in refs {
                    if !known.contains(name.as_str()) {
                        let n = job_node.and_then(|n| get(n, "conditional"));
                        if let Some(n) = n {
                            self.err(
                                n,
                                &format!("{path}.conditional"),
                                format!("expression refers to unknown job `{name}`"),
                                suggestion_hint(&name, &names, "jobs"),
                            );
                        }
                    }
                }
            }
            // images
            if let Some(img) = job.image() {
                let n = job_node
                    .and_then(|n| get(n, "image"))
                    .or_else(|| {
                        job_node.and_then(|n| get(n, "steps")).and_then(|s| match &s.value {
                            Value::Seq(items) => items.iter().find_map(|st| get(st, "image")),
                            _ => None,
                        })
                    })
                    .unwrap_or(&job_node.map_or(root.clone(), Node::clone))
                    .clone();
                if opts.executor == ExecutorChoice::Shell {
                    self.warn(
                        &n,
                        &path,
                        format!(
                            "job `{}` names image `{img}`, which the shell executor ignores",
                            job.name
                        ),
                        "its steps run on this host with the host's tools",
                    );
                }
            }
            if opts.executor == ExecutorChoice::Shell && !job.services.is_empty() {
                let n = job_node
                    .and_then(|n| get(n, "services"))
                    .cloned()
                    .unwrap_or_else(|| root.clone());
                self.err(
                    &n,
                    &format!("{path}.services"),
                    format!("job `{}` has services, which need the container executor", job.name),
                    "drop `--executor shell`, or remove `services:`",
                );
            }
            if opts.executor == ExecutorChoice::Docker
                && let Some(step) = job.steps.iter().find(|s| s.image.is_none())
            {
                let n = job_node.cloned().unwrap_or_else(|| root.clone());
                self.err(
                    &n,
                    &path,
                    format!(
                        "step `{}` of job `{}` has no image, but `--executor docker` runs every step in a container",
                        step.name, job.name
                    ),
                    "give the job or step an `image:`, or use `--executor auto`",
                );
            }
        }
        self.check_variables(root, p, opts);
    }

    fn check_variables(&mut self, root: &Node, p: &Pipeline, opts: &LoadOptions) {
        let base = |extra: &[&[EnvVar]]| {
            let mut scope = Scope::new();
            scope.push_layer(opts.cli_vars.iter().cloned());
            scope.push_layer(opts.secret_names.iter().map(|n| (n.clone(), "secret".to_string())));
            for layer in extra {
                scope.push_layer(layer.iter().map(|v| (v.name.clone(), v.value.clone())));
            }
            scope.push_layer(PREDEFINED.iter().map(|n| (n.to_string(), "x".to_string())));
            scope.push_layer(opts.host_env.iter().cloned());
            scope
        };
        let report = |cx: &mut Self, vars: &[EnvVar], scope: &Scope, layer: usize, path: &str| {
            // A cycle is one mistake: report it at its first member only.
            let mut in_reported_cycle: Vec<String> = Vec::new();
            for v in vars {
                if in_reported_cycle.contains(&v.name) {
                    continue;
                }
                if let Err(e) = scope.resolve_from(&v.name, layer) {
                    if let VarError::Cycle(names) = &e {
                        in_reported_cycle.extend(names.iter().cloned());
                    }
                    cx.var_error(v, &join(path, &v.name), e);
                }
            }
        };
        // global_env: layers = cli, secrets, global
        let scope = base(&[&p.global_env]);
        report(self, &p.global_env, &scope, 2, "global_env");
        for job in &p.jobs {
            let path = format!("jobs.{}", job.name);
            let scope = base(&[&job.environment, &p.global_env]);
            report(self, &job.environment, &scope, 2, &join(&path, "environment"));
            for (i, step) in job.steps.iter().enumerate() {
                let spath = format!("{path}.steps[{i}]");
                let scope = base(&[&step.environment, &job.environment, &p.global_env]);
                report(self, &step.environment, &scope, 2, &join(&spath, "environment"));
                let wd = step.working_directory.as_ref().or(job.working_directory.as_ref());
                for (key, text) in [("working_directory", wd), ("image", step.image.as_ref())] {
                    if let Some(text) = text
                        && let Err(e) = scope.expand(text)
                    {
                        let node = jobs_field(root, &job.name, i, key).unwrap_or(Node {
                            value: Value::Null,
                            pos: job.pos,
                            width: job.name.len(),
                        });
                        self.err(&node, &join(&spath, key), e.to_string(), e.hint());
                    }
                }
            }
        }
    }

    fn var_error(&mut self, v: &EnvVar, path: &str, e: VarError) {
        let first_line = v.value.lines().next().unwrap_or("");
        // Point at the reference itself when it is on the first line.
        let (pos, width) = match &e {
            VarError::Undefined(name) => {
                let found = [format!("${{{name}"), format!("${name}")]
                    .iter()
                    .find_map(|pat| first_line.find(pat.as_str()).map(|at| (at, pat.len())));
                match found {
                    Some((at, len)) => {
                        let col = v.pos.col + first_line[..at].chars().count();
                        let len = if first_line[at..].starts_with("${") {
                            first_line[at..].find('}').map_or(len, |end| end + 1)
                        } else {
                            len
                        };
                        (Pos { line: v.pos.line, col }, len)
                    }
                    None => (v.pos, first_line.chars().count().max(1)),
                }
            }
            _ => (v.pos, first_line.chars().count().max(1)),
        };
        self.diags
            .push(Diagnostic::error(pos, width, path, e.to_string()).with_hint(e.hint()));
    }
}

/// The node of `key` in step `step` of job `job`, or in the job itself.
fn jobs_field(root: &Node, job: &str, step: usize, key: &str) -> Option<Node> {
    let job_node = get(root, "jobs").and_then(|n| get(n, job))?;
    let from_step = get(job_node, "steps").and_then(|s| match &s.value {
        Value::Seq(items) => items.get(step).and_then(|st| get(st, key)).cloned(),
        _ => None,
    });
    from_step.or_else(|| get(job_node, key).cloned())
}

/// `512MiB`, `2GiB`, `256M`, `1g` or a number of bytes.
fn parse_bytes(n: &Node) -> Option<u64> {
    match &n.value {
        Value::Int(i) => u64::try_from(*i).ok(),
        Value::Str(s) => {
            let s = s.trim();
            let split = s.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(s.len());
            let (num, unit) = s.split_at(split);
            let num: f64 = num.parse().ok()?;
            let mult: f64 = match unit.trim().to_ascii_lowercase().as_str() {
                "" | "b" => 1.0,
                "k" | "kb" => 1e3,
                "kib" => 1024.0,
                "m" | "mb" => 1e6,
                "mib" => 1024.0 * 1024.0,
                "g" | "gb" => 1e9,
                "gib" => 1024.0 * 1024.0 * 1024.0,
                _ => return None,
            };
            let bytes = num * mult;
            (bytes.is_finite() && bytes >= 0.0).then_some(bytes as u64)
        }
        _ => None,
    }
}

pub fn valid_var_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c == '_' || c.is_ascii_alphabetic())
        && chars.all(|c| c == '_' || c.is_ascii_alphanumeric())
}

pub fn valid_job_name(name: &str) -> bool {
    let mut chars = name.chars();
    name.len() <= 100
        && matches!(chars.next(), Some(c) if c.is_ascii_alphanumeric())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(src: &str) -> Result<Pipeline, Vec<(usize, usize, String)>> {
        parse_source(Path::new("t.yml"), src.to_string(), &LoadOptions::default())
            .map(|(p, _)| p)
            .map_err(|r| r.items.iter().map(|d| (d.line, d.column, d.message.clone())).collect())
    }

    #[test]
    fn minimal_pipeline_parses_with_defaults() {
        let p = check("name: x\njobs:\n  a:\n    steps:\n      - script: echo hi\n").unwrap();
        assert_eq!(p.jobs[0].steps[0].name, "step-1");
        assert_eq!(p.jobs[0].timeout, DEFAULT_JOB_TIMEOUT);
        assert_eq!(p.jobs[0].retry_when, FailureClass::TRANSIENT.to_vec());
        assert_eq!(p.timeout, DEFAULT_PIPELINE_TIMEOUT);
    }

    #[test]
    fn all_errors_are_collected_in_one_pass() {
        let src = "name: x\njobs:\n  a:\n    steps:\n      - script: echo\n    depends_on: [bb]\n    timeout: 0\n  b:\n    stepz: []\n";
        let errs = check(src).unwrap_err();
        assert!(
            errs.iter().any(|e| e.0 == 6 && e.2.contains("unknown job `bb`")),
            "{errs:?}"
        );
        assert!(
            errs.iter().any(|e| e.0 == 7 && e.2.contains("out of range")),
            "{errs:?}"
        );
        assert!(
            errs.iter().any(|e| e.0 == 9 && e.2.contains("unknown key `stepz`")),
            "{errs:?}"
        );
        assert!(errs.iter().any(|e| e.2.contains("has no `steps`")), "{errs:?}");
    }

    #[test]
    fn undefined_variable_points_at_its_value() {
        let src = "name: x\nglobal_env:\n  A: \"$NOPE\"\n  B: \"${NOPE2:-ok}\"\njobs:\n  a:\n    steps:\n      - script: echo\n";
        let errs = check(src).unwrap_err();
        assert_eq!(errs.len(), 1, "{errs:?}");
        assert_eq!((errs[0].0, errs[0].1), (3, 7));
        assert!(errs[0].2.contains("undefined variable `NOPE`"));
    }

    #[test]
    fn conditional_error_column_is_inside_the_string() {
        let src = "name: x\njobs:\n  a:\n    conditional: \"env.A = 'x'\"\n    steps:\n      - script: echo\n";
        let errs = check(src).unwrap_err();
        assert_eq!((errs[0].0, errs[0].1), (4, 25), "{errs:?}");
    }

    #[test]
    fn job_images_apply_to_steps_and_executors_check_them() {
        let src = "name: x\njobs:\n  a:\n    image: alpine\n    steps:\n      - script: echo\n  b:\n    steps:\n      - script: echo\n";
        let with = |executor| LoadOptions {
            executor,
            ..Default::default()
        };
        let (p, report) = parse_source(Path::new("t.yml"), src.into(), &with(ExecutorChoice::Auto)).unwrap();
        assert_eq!(p.jobs[0].steps[0].image.as_deref(), Some("alpine"));
        assert_eq!(report.warnings().count(), 0);
        let (_, report) = parse_source(Path::new("t.yml"), src.into(), &with(ExecutorChoice::Shell)).unwrap();
        assert_eq!(report.warnings().count(), 1, "the shell executor ignores the image");
        let errs = parse_source(Path::new("t.yml"), src.into(), &with(ExecutorChoice::Docker)).unwrap_err();
        assert!(errs.items[0].message.contains("step `step-1` of job `b` has no image"));
    }
}
