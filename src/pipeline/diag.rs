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
    pub items: Vec<Diagnostic>,
}

impl Report {
    pub fn new(file: &Path, source: String) -> Self {
        Report {
            file: file.to_path_buf(),
            source,
            items: Vec::new(),
        }
    }

    pub fn has_errors(&self) -> bool {
        self.items.iter().any(Diagnostic::is_error)
    }

    pub fn error_count(&self) -> usize {
        self.items.iter().filter(|d| d.is_error()).count()
    }

    pub fn warnings(&self) -> impl Iterator<Item = &Diagnostic> {
        self.items.iter().filter(|d| !d.is_error())
    }

    /// Orders by position so the output reads top to bottom.
    pub fn sort(&mut self) {
        self.items.sort_by_key(|d| (d.line, d.column));
        self.items.dedup();
    }

    /// Byte range of a diagnostic's underline in `source`, clamped to the line.
    fn byte_range(&self, d: &Diagnostic) -> std::ops::Range<usize> {
        let mut start_of_line = 0;
        for (i, line) in self.source.split_inclusive('\n').enumerate() {
            if i + 1 == d.line {
                let text = line.trim_end_matches(['\n', '\r']);
                let col_byte = |col: usize| text.char_indices().nth(col).map_or(text.len(), |(b, _)| b);
                let start = col_byte(d.column.saturating_sub(1));
                let end = col_byte(d.column.saturating_sub(1) + d.width).max(start);
                return start_of_line + start..start_of_line + end;
            }
            start_of_line += line.len();
        }
        let end = self.source.len();
        end..end
    }

    /// Compiler-style text: message, `--> file:line:col`, source line, caret, hint.
    pub fn render(&self, color: bool) -> String {
        let name = self.file.display().to_string();
        let file = SimpleFile::new(name.as_str(), self.source.as_str());
        let config = term::Config {
            chars: term::Chars::ascii(),
            ..term::Config::default()
        };
        let mut out = String::new();
        for d in &self.items {
            if self.source.is_empty() {
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
            let mut label = Label::primary((), self.byte_range(d));
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
        out
    }

    /// `file:line:col: error: message (path)`: one line per diagnostic, grep-friendly.
    pub fn one_line(&self, d: &Diagnostic) -> String {
        let sev = match d.severity {
            Severity::Error => "error",
            Severity::Warning => "warning",
        };
        let mut s = format!("{}:{}:{}: {sev}: {}", self.file.display(), d.line, d.column, d.message);
        if !d.path.is_empty() {
            let _ = write!(s, " (at {})", d.path);
        }
        s
    }

    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "file": self.file.display().to_string(),
            "valid": !self.has_errors(),
            "diagnostics": self.items,
        })
    }
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
    let list = if candidates.len() > 12 {
        format!("{}, ... ({} in all)", candidates[..12].join(", "), candidates.len())
    } else {
        candidates.join(", ")
    };
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
            Diagnostic::error(
                Pos { line: 4, col: 18 },
                5,
                "jobs.a.depends_on[0]",
                "unknown job `biuld`",
            )
            .with_hint("did you mean `build`?"),
        );
        let text = r.render(false);
        assert!(text.contains("p.yml:4:18"), "{text}");
        assert!(text.contains("depends_on: [biuld]"), "{text}");
        assert!(text.contains("^^^^^"), "{text}");
        assert!(text.contains("help: did you mean `build`?"), "{text}");
    }

    #[test]
    fn suggestions_pick_the_closest_name() {
        assert_eq!(did_you_mean("biuld", ["build", "test", "lint"]), Some("build"));
        assert_eq!(did_you_mean("zzz", ["build", "test"]), None);
        let hint = suggestion_hint("tset", &["build", "test"], "jobs");
        assert!(hint.starts_with("did you mean `test`?"), "{hint}");
    }
}
