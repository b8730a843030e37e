//! Reading a positioned YAML tree, the same way for every dialect: the
//! checking context [`Cx`] that collects every problem with its position
//! (within a budget), the typed readers of scalars, lists and maps built on
//! it, reading the file itself (size limit, BOM, bytes YAML forbids), and
//! the naming rules of the model.
//!
//! A dialect (`native/`, later `gitlab/` and `github/`) reads its keys with
//! these readers and lowers them into the one model; nothing here knows any
//! dialect's keys.

use std::path::Path;
use std::time::Duration;

use super::diag::{Diagnostic, MAX_COLLECTED, known_word_hint};
use super::expr;
use super::model::EnvVar;
use super::yaml::{Node, Pos, Value};

/// Largest pipeline file read (a 10,000-job pipeline is about 1 MiB).
pub const MAX_FILE_BYTES: u64 = 16 << 20;

/// The source as every dialect reads it: a byte order mark dropped (YAML
/// allows one), and a byte YAML forbids reported at its line and column.
pub(crate) fn checked_source(path: &Path, source: String) -> Result<String, crate::pipeline::diag::Report> {
    let source = match source.strip_prefix('\u{feff}') {
        Some(rest) => rest.to_string(),
        None => source,
    };
    match forbidden_char(&source) {
        Some(d) => {
            let mut report = crate::pipeline::diag::Report::new(path, source);
            report.items.push(d);
            Err(report)
        }
        None => Ok(source),
    }
}

/// The end of every dialect's reading: the shared checks over the model
/// (a dependency cycle, with its shortest path), the report in order, and
/// the pipeline only when nothing is wrong.
pub(crate) fn finish(
    pipeline: Option<crate::pipeline::Pipeline>,
    mut report: crate::pipeline::diag::Report,
) -> Result<(crate::pipeline::Pipeline, crate::pipeline::diag::Report), crate::pipeline::diag::Report> {
    if let Some(p) = &pipeline
        && let Err(cycle_diags) = crate::pipeline::graph::Plan::build(p)
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

pub(crate) fn file_error(message: String, hint: &str) -> Diagnostic {
    Diagnostic::error(Pos::at(1, 1), 1, "", message).with_hint(hint)
}

pub(crate) fn read_source(path: &Path) -> Result<String, Diagnostic> {
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
    // Room for the whole file (its size is checked above): read in one go,
    // not in reads that double from 32 bytes.
    let mut bytes = Vec::with_capacity(usize::try_from(meta.len()).unwrap_or(0).saturating_add(1));
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
                Pos::at(line, col),
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
pub(crate) fn forbidden_char(source: &str) -> Option<Diagnostic> {
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
            Pos::at(line, col),
            1,
            "",
            format!("{what} is not allowed in YAML (byte offset {at})"),
        )
        .with_hint("remove it; is this a binary file, or was it saved with the wrong encoding?"),
    )
}

pub(crate) struct Cx<'s> {
    pub(crate) diags: Vec<Diagnostic>,
    /// Diagnostics past [`MAX_COLLECTED`], counted but not kept.
    pub(crate) dropped: usize,
    pub(crate) src: &'s str,
    /// Byte offset where each line starts, so positions inside scalars are O(1).
    pub(crate) line_starts: Vec<usize>,
    /// Included files' texts and line starts: the file index `n` of a
    /// [`Pos`] is `included[n - 1]`.
    pub(crate) included: Vec<Source>,
}

/// An included file being read: its path, text and line starts.
pub(crate) struct Source {
    pub(crate) path: std::path::PathBuf,
    pub(crate) text: String,
    pub(crate) starts: Vec<usize>,
}

pub(crate) fn line_starts(src: &str) -> Vec<usize> {
    std::iter::once(0)
        .chain(src.match_indices('\n').map(|(i, _)| i + 1))
        .collect()
}

pub(crate) fn entries(node: &Node) -> &[(Node, Node)] {
    match &node.value {
        Value::Map(e) => e,
        _ => &[],
    }
}

pub(crate) fn get<'n>(node: &'n Node, key: &str) -> Option<&'n Node> {
    entries(node)
        .iter()
        .find(|(k, _)| k.as_str() == Some(key))
        .map(|(_, v)| v)
}

pub(crate) fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}
impl<'s> Cx<'s> {
    /// A context for reading `src`, with no problem found yet.
    pub(crate) fn new(src: &'s str) -> Cx<'s> {
        Cx {
            diags: Vec::new(),
            dropped: 0,
            src,
            line_starts: line_starts(src),
            included: Vec::new(),
        }
    }

    /// Registers an included file's text; its nodes carry the index returned.
    pub(crate) fn add_source(&mut self, path: &Path, text: String) -> u16 {
        let starts = line_starts(&text);
        self.included.push(Source {
            path: path.to_path_buf(),
            text,
            starts,
        });
        u16::try_from(self.included.len()).unwrap_or(u16::MAX)
    }
}

impl Cx<'_> {
    /// Reads `file` as one more source (an included file, an action.yml, a
    /// called workflow), shown as `shown` in diagnostics, and parses it
    /// (with `header`: GitLab's `spec:` document first). `None` when it
    /// cannot be read (said at `at`, `path`, as "`what` FILE: why") or is
    /// not text; YAML problems point into it.
    pub(crate) fn read_more(
        &mut self,
        file: &Path,
        shown: &Path,
        (at, path, what): (&Node, &str, &str),
        header: bool,
    ) -> Option<super::yaml::Parsed> {
        let text = match read_source(file) {
            Ok(t) => t,
            Err(d) => {
                self.err(
                    at,
                    path,
                    format!("{what} {}: {}", shown.display(), d.message),
                    d.hint.unwrap_or_default(),
                );
                return None;
            }
        };
        let text = text.strip_prefix('\u{feff}').map(str::to_string).unwrap_or(text);
        let bad = forbidden_char(&text);
        let index = self.add_source(shown, text);
        if let Some(mut d) = bad {
            d.file = index;
            self.diags.push(d);
            return None;
        }
        let mut parsed = super::yaml::parse_with(
            &self.included.last()?.text,
            super::yaml::Options { file: index, header },
        );
        self.yaml_problems(std::mem::take(&mut parsed.problems));
        Some(parsed)
    }

    /// Whether one more diagnostic fits the budget (else it is counted).
    pub(crate) fn room(&mut self) -> bool {
        if self.diags.len() < MAX_COLLECTED {
            return true;
        }
        self.dropped += 1;
        false
    }

    pub(crate) fn err(&mut self, node: &Node, path: &str, msg: impl Into<String>, hint: impl Into<String>) {
        if self.room() {
            self.diags
                .push(Diagnostic::error(node.pos, node.width, path, msg).with_hint(hint));
        }
    }

    pub(crate) fn warn(&mut self, node: &Node, path: &str, msg: impl Into<String>, hint: impl Into<String>) {
        if self.room() {
            self.diags
                .push(Diagnostic::warning(node.pos, node.width, path, msg).with_hint(hint));
        }
    }

    /// The YAML reader's problems, as diagnostics.
    pub(crate) fn yaml_problems(&mut self, problems: Vec<super::yaml::YamlProblem>) {
        for p in problems {
            let mut d = Diagnostic::error(p.pos, p.width, p.path, p.message);
            d.hint = p.hint;
            self.diags.push(d);
        }
    }

    /// Checks that `node` is a mapping whose keys are all in `allowed`.
    pub(crate) fn mapping(&mut self, node: &Node, path: &str, allowed: &[&str], what: &str) -> bool {
        self.mapping_of(node, path, allowed, &[], what)
    }

    /// [`Cx::mapping`], an unknown key that is another format's word for
    /// an allowed one (`known`: theirs, ours) told which it is.
    pub(crate) fn mapping_of(
        &mut self,
        node: &Node,
        path: &str,
        allowed: &[&str],
        known: &[(&str, &str)],
        what: &str,
    ) -> bool {
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
                    known_word_hint(&name, known, allowed, "keys"),
                );
            }
        }
        true
    }

    pub(crate) fn string(&mut self, node: &Node, path: &str) -> Option<String> {
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

    pub(crate) fn boolean(&mut self, node: &Node, path: &str) -> Option<bool> {
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

    pub(crate) fn int_in(&mut self, node: &Node, path: &str, min: i64, max: i64) -> Option<u32> {
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
    pub(crate) fn seconds_in(&mut self, node: &Node, path: &str, min: f64, max: f64) -> Option<Duration> {
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
    pub(crate) fn string_list(&mut self, node: &Node, path: &str) -> Vec<(String, Node)> {
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

    /// A list of strings that must be written as a list (GitLab's
    /// `artifacts:paths`, `cache:key:files`): a lone string is a mistake.
    pub(crate) fn string_seq(&mut self, node: &Node, path: &str) -> Vec<(String, Node)> {
        if matches!(node.value, Value::Seq(_)) {
            return self.string_list(node, path);
        }
        self.err(
            node,
            path,
            format!("expected a list, found {}", node.type_name()),
            "write `[a]` or one `- item` per line, even for one item",
        );
        Vec::new()
    }

    pub(crate) fn env_map(&mut self, node: &Node, path: &str) -> Vec<EnvVar> {
        let vars = self.env_map_with(node, path);
        for (v, value) in &vars {
            self.expressions_in(&v.value, value, &join(path, &v.name));
        }
        vars.into_iter().map(|(v, _)| v).collect()
    }

    /// The variables of an `env:` mapping with the node of each value
    /// (whose expressions the caller checks in its dialect's language).
    pub(crate) fn env_map_with(&mut self, node: &Node, path: &str) -> Vec<(EnvVar, Node)> {
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
                let pos = self.pos_in(v, 0);
                out.push((EnvVar { name, value, pos }, v.clone()));
            }
        }
        out
    }

    /// Position of a character inside a scalar (exact for one-line scalars).
    pub(crate) fn pos_in(&self, node: &Node, char_offset: usize) -> Pos {
        let idx = node.pos.line.saturating_sub(1);
        let (src, starts) = match node.pos.file {
            0 => (self.src, &self.line_starts),
            n => match self.included.get(usize::from(n) - 1) {
                Some(s) => (s.text.as_str(), &s.starts),
                None => return node.pos,
            },
        };
        let line = match (starts.get(idx), starts.get(idx + 1)) {
            (Some(&a), Some(&b)) => &src[a..b],
            (Some(&a), None) => &src[a..],
            _ => "",
        };
        let at = line.chars().nth(node.pos.col.saturating_sub(1));
        let quote = usize::from(matches!(at, Some('"' | '\'')));
        let text_width = node.width;
        if char_offset <= text_width {
            Pos {
                col: node.pos.col + quote + char_offset,
                ..node.pos
            }
        } else {
            node.pos
        }
    }

    /// Position of byte `offset` of `text`, the value of scalar `node`: as
    /// [`Cx::pos_in`], and exact in a literal block (`|`) too, where the
    /// value's lines are the source's lines after the `|`, less their
    /// indentation.
    pub(crate) fn pos_at(&self, node: &Node, text: &str, offset: usize) -> Pos {
        let before = &text[..offset.min(text.len())];
        let source_line = |n: usize| -> Option<&str> {
            let src = match node.pos.file {
                0 => self.src,
                f => self.included.get(usize::from(f) - 1)?.text.as_str(),
            };
            src.lines().nth(n.checked_sub(1)?)
        };
        let first = source_line(node.pos.line).and_then(|l| l.chars().nth(node.pos.col.saturating_sub(1)));
        // A block scalar's node starts at its `|` (or at its first line of
        // text, as this parser places it); a quoted one at its quote.
        let header = matches!(first, Some('|' | '>'));
        let block = header || (text.contains('\n') && !matches!(first, Some('"' | '\'')));
        if !block {
            return self.pos_in(node, before.chars().count());
        }
        let lines_before = before.matches('\n').count();
        let col_in_line = before.rsplit('\n').next().unwrap_or("").chars().count();
        let line = node.pos.line + usize::from(header) + lines_before;
        let indent = source_line(line).map_or(0, |l| l.chars().take_while(|c| *c == ' ').count());
        Pos {
            line,
            col: indent + col_in_line + 1,
            file: node.pos.file,
        }
    }

    /// Validates every `${{ ... }}` inside a string.
    pub(crate) fn expressions_in(&mut self, text: &str, node: &Node, path: &str) {
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
}

/// `512MiB`, `2GiB`, `256M`, `1g` or a number of bytes.
pub(crate) fn parse_bytes(n: &Node) -> Option<u64> {
    match &n.value {
        Value::Int(i) => u64::try_from(*i).ok(),
        Value::Str(s) => size_bytes(s),
        _ => None,
    }
}

/// `512MiB`, `2G`, `1048576`: bytes (decimal units are powers of 1000).
pub(crate) fn size_bytes(s: &str) -> Option<u64> {
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
    (bytes.is_finite() && bytes >= 0.0 && bytes < u64::MAX as f64).then_some(bytes as u64)
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
