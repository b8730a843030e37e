//! Failure classes: every failed attempt gets exactly one.
//!
//! The exit status decides most (timeout, cancel, signal, exit 137 = oom);
//! for an ordinary non-zero exit, log patterns from
//! `assets/failure-patterns.yml` can tell a network or disk problem from a
//! genuine script failure, which is what makes retrying only transient
//! failures possible. Patterns are data: add them there, not here.

use std::sync::OnceLock;

use regex::RegexSet;
use serde::Deserialize;

use crate::exec::StepEnd;
use crate::pipeline::FailureClass;

const PATTERNS_YAML: &str = include_str!("../../assets/failure-patterns.yml");

#[derive(Deserialize)]
struct PatternFile {
    patterns: Vec<PatternEntry>,
}

#[derive(Deserialize)]
struct PatternEntry {
    class: FailureClass,
    pattern: String,
}

/// Compiled log patterns.
pub struct Patterns {
    set: RegexSet,
    classes: Vec<FailureClass>,
}

impl Patterns {
    pub fn from_yaml(text: &str) -> Result<Patterns, String> {
        let file: PatternFile = serde_yaml::from_str(text).map_err(|e| e.to_string())?;
        let set = regex::RegexSetBuilder::new(file.patterns.iter().map(|p| p.pattern.as_str()))
            .case_insensitive(true)
            .build()
            .map_err(|e| e.to_string())?;
        Ok(Patterns {
            set,
            classes: file.patterns.iter().map(|p| p.class).collect(),
        })
    }

    /// The built-in patterns. They are compiled into the binary and checked
    /// by a unit test, so the fallback to no patterns never happens in a
    /// released build; it exists so a bad edit cannot crash a run.
    pub fn builtin() -> &'static Patterns {
        static P: OnceLock<Patterns> = OnceLock::new();
        P.get_or_init(|| {
            Patterns::from_yaml(PATTERNS_YAML).unwrap_or_else(|e| {
                tracing::error!("assets/failure-patterns.yml is invalid: {e}");
                Patterns {
                    set: RegexSet::empty(),
                    classes: Vec::new(),
                }
            })
        })
    }

    /// The class of the first pattern matching `line`.
    pub fn classify_line(&self, line: &str) -> Option<FailureClass> {
        self.set.matches(line).iter().next().map(|i| self.classes[i])
    }
}

/// The class of a step's end, or `None` for success. `from_log` is the class
/// of the first pattern that matched the step's output.
pub fn classify(end: &StepEnd, from_log: Option<FailureClass>) -> Option<FailureClass> {
    match end {
        StepEnd::Exited(0) => None,
        StepEnd::Exited(137) => Some(FailureClass::Oom),
        StepEnd::Exited(_) => Some(from_log.unwrap_or(FailureClass::Script)),
        // SIGKILL that we did not send is almost always the kernel's OOM killer.
        StepEnd::Signaled(9) => Some(FailureClass::Oom),
        StepEnd::Signaled(_) => Some(FailureClass::Signal),
        StepEnd::TimedOut => Some(FailureClass::Timeout),
        StepEnd::Cancelled => Some(FailureClass::Cancelled),
        StepEnd::OomKilled => Some(FailureClass::Oom),
        StepEnd::SpawnFailed(_) => Some(FailureClass::Infra),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_patterns_compile() {
        let p = Patterns::from_yaml(PATTERNS_YAML).expect("assets/failure-patterns.yml must be valid");
        assert!(p.classes.len() >= 10);
    }

    #[test]
    fn log_lines_map_to_classes() {
        let p = Patterns::builtin();
        let cases = [
            (
                "curl: (6) Could not resolve host: example.invalid",
                Some(FailureClass::Network),
            ),
            (
                "dial tcp 10.0.0.1:443: connect: connection refused",
                Some(FailureClass::Network),
            ),
            ("read: Connection reset by peer", Some(FailureClass::Network)),
            ("net/http: TLS handshake timeout", Some(FailureClass::Network)),
            (
                "cp: error writing 'x': No space left on device",
                Some(FailureClass::DiskFull),
            ),
            (
                "FATAL ERROR: Reached heap limit JavaScript heap out of memory",
                Some(FailureClass::Oom),
            ),
            ("assertion failed: left == right", None),
        ];
        for (line, want) in cases {
            assert_eq!(p.classify_line(line), want, "{line}");
        }
    }

    #[test]
    fn exit_status_decides_first() {
        assert_eq!(classify(&StepEnd::Exited(0), Some(FailureClass::Network)), None);
        assert_eq!(classify(&StepEnd::Exited(1), None), Some(FailureClass::Script));
        assert_eq!(
            classify(&StepEnd::Exited(1), Some(FailureClass::Network)),
            Some(FailureClass::Network)
        );
        assert_eq!(classify(&StepEnd::Exited(137), None), Some(FailureClass::Oom));
        assert_eq!(classify(&StepEnd::Signaled(15), None), Some(FailureClass::Signal));
        assert_eq!(classify(&StepEnd::TimedOut, None), Some(FailureClass::Timeout));
        assert_eq!(
            classify(&StepEnd::SpawnFailed("x".into()), None),
            Some(FailureClass::Infra)
        );
    }
}
