//! Diagnostics for pipeline files: one type that knows file, line, column,
//! YAML path, message and hint, rendered like a compiler error.
//!
//! Validation collects every problem in one pass, so this module is about a
//! *list* of diagnostics over one source text. Rendering is done by
//! codespan-reporting (source line + caret); the JSON form is for tools.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use codespan_reporting::diagnostic::{Diagnostic as CsDiagnostic, Label};
use codespan_reporting::files::SimpleFile;
use codespan_reporting::term::{self, termcolor};
use serde::Serialize;

use super::yaml::Pos;

/// Diagnostics printed in text form; the rest are counted (JSON has all).
pub const MAX_RENDERED: usize = 50;
/// Diagnostics collected for one file: past this, more are only counted.
pub const MAX_COLLECTED: usize = 10_000;
/// Characters of a source line quoted around a diagnostic's column.
const WINDOW: usize = 120;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Error,
    Warning,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Diagnostic {
    pub severity: Severity,
    pub line: usize,
    pub column: usize,
    /// The file it is in: 0 the pipeline file, `n` the report's `n`-th
    /// included file (JSON names it in `file`).
    #[serde(skip)]
    pub file: u16,
    /// Characters to underline, starting at `column`.
    #[serde(skip)]
    pub width: usize,
    /// YAML path of the node, e.g. `jobs.test.depends_on[1]`. Empty for the document.
    pub path: String,
    pub message: String,
    pub hint: Option<String>,
}

impl Diagnostic {
    pub fn error(pos: Pos, width: usize, path: impl Into<String>, message: impl Into<String>) -> Self {
        Diagnostic {
            severity: Severity::Error,
            line: pos.line,
            column: pos.col,
            file: pos.file,
            width: width.max(1),
            path: path.into(),
            message: message.into(),
            hint: None,
        }
    }

    pub fn warning(pos: Pos, width: usize, path: impl Into<String>, message: impl Into<String>) -> Self {
        Diagnostic {
            severity: Severity::Warning,
            ..Diagnostic::error(pos, width, path, message)
        }
    }

    pub fn with_hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }

    pub fn is_error(&self) -> bool {
        self.severity == Severity::Error
    }
}

/// All diagnostics of one pipeline file, with the text they point into.
#[derive(Debug, Clone)]
pub struct Report {
    pub file: PathBuf,
    pub source: String,
    /// Files the pipeline file included, in the order read: a diagnostic
    /// with `file: n` points into `includes[n - 1]`.
    pub includes: Vec<(PathBuf, String)>,
    pub items: Vec<Diagnostic>,
    /// Diagnostics past [`MAX_COLLECTED`]: counted, not kept.
    pub dropped: usize,
}

impl Report {
    pub fn new(file: &Path, source: String) -> Self {
        Report {
            file: file.to_path_buf(),
            source,
            includes: Vec::new(),
            items: Vec::new(),
            dropped: 0,
        }
    }

    pub fn has_errors(&self) -> bool {
        self.items.iter().any(Diagnostic::is_error)
    }

    /// Errors found, those past the collection budget included (they are
    /// counted with the errors: most diagnostics are).
    pub fn error_count(&self) -> usize {
        self.items.iter().filter(|d| d.is_error()).count() + self.dropped
    }

    pub fn warnings(&self) -> impl Iterator<Item = &Diagnostic> {
        self.items.iter().filter(|d| !d.is_error())
    }

    /// Orders by position so the output reads top to bottom.
    pub fn sort(&mut self) {
        self.items.sort_by_key(|d| (d.file, d.line, d.column));
        self.items.dedup();
    }

    /// The path and text a diagnostic points into.
    pub fn source_of(&self, d: &Diagnostic) -> (&Path, &str) {
        match d.file {
            0 => (&self.file, &self.source),
            n => match self.includes.get(usize::from(n) - 1) {
                Some((path, text)) => (path, text),
                None => (&self.file, ""),
            },
        }
    }
}

/// One source text being quoted.
struct Quoted<'a> {
    text: &'a str,
    /// Byte offsets where each line starts.
    starts: Vec<usize>,
}

impl<'a> Quoted<'a> {
    fn new(text: &'a str) -> Self {
        let starts = std::iter::once(0)
            .chain(text.match_indices('\n').map(|(i, _)| i + 1))
            .collect();
        Quoted { text, starts }
    }

    /// The text of line `line` (1-based), without its line break.
    fn line_text(&self, line: usize) -> Option<&'a str> {
        let start = *self.starts.get(line.checked_sub(1)?)?;
        let end = self.starts.get(line).map_or(self.text.len(), |&e| e);
        Some(self.text[start..end].trim_end_matches(['\n', '\r']))
    }

    /// Byte range of a diagnostic's underline in the text, clamped to the line.
    fn byte_range(&self, d: &Diagnostic) -> std::ops::Range<usize> {
        let Some(text) = self.line_text(d.line) else {
            let end = self.text.len();
            return end..end;
        };
        let starts = &self.starts;
        let start_of_line = starts[d.line - 1];
        let col_byte = |col: usize| text.char_indices().nth(col).map_or(text.len(), |(b, _)| b);
        let start = col_byte(d.column.saturating_sub(1));
        let end = col_byte(d.column.saturating_sub(1) + d.width).max(start);
        start_of_line + start..start_of_line + end
    }
}

impl Report {
    /// Compiler-style text: message, `--> file:line:col`, source line, caret,
    /// hint. At most [`MAX_RENDERED`] diagnostics, errors first; a long
    /// source line is quoted as a window around the column.
    pub fn render(&self, color: bool) -> String {
        let config = term::Config {
            chars: term::Chars::ascii(),
            ..term::Config::default()
        };
        let mut out = String::new();
        let shown: Vec<&Diagnostic> = self
            .items
            .iter()
            .filter(|d| d.is_error())
            .chain(self.items.iter().filter(|d| !d.is_error()))
            .take(MAX_RENDERED)
            .collect();
        for d in shown.iter().copied() {
            let (path, text) = self.source_of(d);
            let quoted = Quoted::new(text);
            let long = quoted.line_text(d.line).is_some_and(|l| l.chars().count() > WINDOW);
            if long {
                out.push_str(&windowed(path, &quoted, d));
                continue;
            }
            let name = path.display().to_string();
            let file = SimpleFile::new(name.as_str(), text);
            if text.is_empty() {
                // Nothing to quote (unreadable file): one line and the hint.
                let _ = writeln!(out, "{}", self.one_line(d));
                if let Some(h) = &d.hint {
                    let _ = writeln!(out, "  = help: {h}");
                }
                continue;
            }
            let mut cs = match d.severity {
                Severity::Error => CsDiagnostic::error(),
                Severity::Warning => CsDiagnostic::warning(),
            }
            .with_message(&d.message);
            let mut label = Label::primary((), quoted.byte_range(d));
            if !d.path.is_empty() {
                label = label.with_message(format!("at {}", d.path));
            }
            cs = cs.with_labels(vec![label]);
            if let Some(h) = &d.hint {
                cs = cs.with_notes(vec![format!("help: {h}")]);
            }
            let mut buf: Vec<u8> = Vec::new();
            let rendered = if color {
                let mut w = termcolor::Ansi::new(&mut buf);
                term::emit(&mut w, &config, &file, &cs)
            } else {
                let mut w = termcolor::NoColor::new(&mut buf);
                term::emit(&mut w, &config, &file, &cs)
            };
            match rendered {
                Ok(()) => out.push_str(&String::from_utf8_lossy(&buf)),
                // The renderer only fails on positions outside the text; fall back to one line.
                Err(_) => {
                    let _ = writeln!(out, "{}", self.one_line(d));
                }
            }
        }
        let left = self.items.len() - shown.len() + self.dropped;
        if left > 0 {
            let errors = self.error_count() - shown.iter().filter(|d| d.is_error()).count();
            let _ = writeln!(
                out,
                "... and {left} more ({errors} error(s)) left out; `--format json` lists every one"
            );
        }
        out
    }

    /// `file:line:col: error: message (path)`: one line per diagnostic, grep-friendly.
    pub fn one_line(&self, d: &Diagnostic) -> String {
        let sev = match d.severity {
            Severity::Error => "error",
            Severity::Warning => "warning",
        };
        let (path, _) = self.source_of(d);
        let mut s = format!("{}:{}:{}: {sev}: {}", path.display(), d.line, d.column, d.message);
        if !d.path.is_empty() {
            let _ = write!(s, " (at {})", d.path);
        }
        s
    }

    pub fn to_json(&self) -> serde_json::Value {
        let diagnostics: Vec<serde_json::Value> = self
            .items
            .iter()
            .map(|d| {
                let mut v = serde_json::to_value(d).unwrap_or(serde_json::Value::Null);
                if d.file != 0
                    && let Some(map) = v.as_object_mut()
                {
                    let (path, _) = self.source_of(d);
                    map.insert("file".into(), path.display().to_string().into());
                }
                v
            })
            .collect();
        serde_json::json!({
            "file": self.file.display().to_string(),
            "valid": !self.has_errors(),
            "diagnostics": diagnostics,
            "left_out": self.dropped,
        })
    }
}

/// A diagnostic on a long line: the same form, quoting [`WINDOW`]
/// characters around the column instead of the whole line.
fn windowed(path: &Path, quoted: &Quoted, d: &Diagnostic) -> String {
    let text = quoted.line_text(d.line).unwrap_or("");
    let col = d.column.saturating_sub(1);
    let from = col.saturating_sub(WINDOW / 3);
    let snippet: String = text.chars().skip(from).take(WINDOW).collect();
    let cut_left = from > 0;
    let cut_right = text.chars().count() > from + WINDOW;
    let sev = if d.is_error() { "error" } else { "warning" };
    let num = d.line.to_string();
    let pad = " ".repeat(num.len());
    let lead = if cut_left { "..." } else { "" };
    let caret_at = col - from + lead.len();
    let width = d.width.min(WINDOW.saturating_sub(col - from)).max(1);
    let mut out = format!("{sev}: {}\n", d.message);
    let _ = writeln!(out, "{pad}--> {}:{}:{}", path.display(), d.line, d.column);
    let _ = writeln!(out, "{pad} |");
    let _ = writeln!(out, "{num} | {lead}{snippet}{}", if cut_right { "..." } else { "" });
    let at = if d.path.is_empty() {
        String::new()
    } else {
        format!(" at {}", d.path)
    };
    let _ = writeln!(out, "{pad} | {}{}{at}", " ".repeat(caret_at), "^".repeat(width));
    let _ = writeln!(out, "{pad} |");
    if let Some(h) = &d.hint {
        let _ = writeln!(out, "{pad} = help: {h}");
    }
    out.push('\n');
    out
}

/// "did you mean `build`?" from the closest candidate, when one is close enough.
pub fn did_you_mean<'a>(word: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    candidates
        .into_iter()
        .map(|c| (strsim::jaro_winkler(word, c), c))
        .filter(|(score, _)| *score > 0.8)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, c)| c)
}

/// A hint naming the closest candidate and listing all valid ones.
pub fn suggestion_hint(word: &str, candidates: &[&str], what: &str) -> String {
    known_word_hint(word, &[], candidates, what)
}

/// [`suggestion_hint`], but a word another format uses for a candidate
/// (`known`: that word, the candidate) names the candidate, however little
/// the two look alike (GitLab's `needs` is trackside's `depends_on`).
pub fn known_word_hint(word: &str, known: &[(&str, &str)], candidates: &[&str], what: &str) -> String {
    let list = if candidates.len() > 12 {
        format!("{}, ... ({} in all)", candidates[..12].join(", "), candidates.len())
    } else {
        candidates.join(", ")
    };
    if let Some((_, ours)) = known.iter().find(|(theirs, _)| *theirs == word) {
        return format!("trackside's own format writes `{word}` as `{ours}`; valid {what}: {list}");
    }
    match did_you_mean(word, candidates.iter().copied()) {
        Some(best) => format!("did you mean `{best}`? valid {what}: {list}"),
        None => format!("valid {what}: {list}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_source_line_and_caret() {
        let mut r = Report::new(
            Path::new("p.yml"),
            "name: x\njobs:\n  a:\n    depends_on: [biuld]\n".into(),
        );
        r.items.push(
            Diagnostic::error(Pos::at(4, 18), 5, "jobs.a.depends_on[0]", "unknown job `biuld`")
                .with_hint("did you mean `build`?"),
        );
        let text = r.render(false);
        assert!(text.contains("p.yml:4:18"), "{text}");
        assert!(text.contains("depends_on: [biuld]"), "{text}");
        assert!(text.contains("^^^^^"), "{text}");
        assert!(text.contains("help: did you mean `build`?"), "{text}");
    }

    #[test]
    fn a_long_line_is_quoted_as_a_window_and_many_diagnostics_are_capped() {
        let deps: Vec<String> = (0..2000).map(|i| format!("nope{i}")).collect();
        let line = format!("    depends_on: [{}]", deps.join(", "));
        let mut r = Report::new(Path::new("p.yml"), format!("name: x\njobs:\n  a:\n{line}\n"));
        for (i, d) in deps.iter().enumerate() {
            let col = line
                .find(&format!("{d},"))
                .or_else(|| line.find(&format!("{d}]")))
                .unwrap_or(0)
                + 1;
            r.items.push(
                Diagnostic::error(
                    Pos::at(4, col),
                    d.len(),
                    format!("jobs.a.depends_on[{i}]"),
                    format!("unknown job `{d}`"),
                )
                .with_hint("define it"),
            );
        }
        let text = r.render(false);
        assert!(text.len() < 50 * 1000, "{} bytes for 50 diagnostics", text.len());
        assert_eq!(text.matches("error: unknown job").count(), MAX_RENDERED);
        assert!(
            text.contains("... and 1950 more (1950 error(s)) left out"),
            "{}",
            &text[text.len() - 200..]
        );
        // The 50th: its name under the caret, on a quoted window.
        let block = text
            .split("error: ")
            .find(|b| b.starts_with("unknown job `nope49`"))
            .unwrap_or_default();
        let lines: Vec<&str> = block.lines().collect();
        let (src, caret) = (lines[3], lines[4]);
        let at = caret.find('^').unwrap_or(0);
        assert_eq!(&src[at..at + 6], "nope49", "{src}\n{caret}");
        assert!(src.starts_with("4 | ...") && src.ends_with("..."), "{src}");
    }

    #[test]
    fn suggestions_pick_the_closest_name() {
        assert_eq!(did_you_mean("biuld", ["build", "test", "lint"]), Some("build"));
        assert_eq!(did_you_mean("zzz", ["build", "test"]), None);
        let hint = suggestion_hint("tset", &["build", "test"], "jobs");
        assert!(hint.starts_with("did you mean `test`?"), "{hint}");
    }
}
