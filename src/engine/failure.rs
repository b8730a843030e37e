//! Failure classes: every failed attempt gets exactly one.
//!
//! The failure knowledge base (`assets/failure-rules.yml`, read by
//! `insight::knowledge`) decides most: how the step ended (an OOM kill, a
//! deadline, a service never ready) and then its output tell a network or
//! disk problem from a genuine script failure, which is what makes retrying
//! only transient failures possible. Rules are data: add them there, not
//! here. Without a rule, the exit status alone decides.

use crate::exec::StepEnd;
use crate::insight::knowledge::{Ending, Signal};
use crate::pipeline::FailureClass;

/// How a step ended, as the knowledge base's rules see it. `timed_out`:
/// its deadline had passed when it ended.
pub fn ending(end: &StepEnd, timed_out: bool) -> Ending {
    let (signal, exit_code) = match end {
        _ if timed_out => (Some(Signal::Timeout), None),
        StepEnd::Exited(137) => (Some(Signal::Oom), Some(137)),
        StepEnd::Exited(139) => (Some(Signal::Segfault), Some(139)),
        StepEnd::Exited(134) => (Some(Signal::Abort), Some(134)),
        StepEnd::Exited(c) => (None, Some(*c)),
        // SIGKILL that we did not send is almost always the kernel's OOM killer.
        StepEnd::Signaled(9) | StepEnd::OomKilled => (Some(Signal::Oom), None),
        StepEnd::Signaled(11) => (Some(Signal::Segfault), None),
        StepEnd::Signaled(6) => (Some(Signal::Abort), None),
        StepEnd::Signaled(_) => (Some(Signal::Killed), None),
        StepEnd::TimedOut => (Some(Signal::Timeout), None),
        StepEnd::Cancelled => (None, None),
        StepEnd::SpawnFailed(_) | StepEnd::Lost(_) | StepEnd::Unschedulable(_) => (Some(Signal::SpawnFailed), None),
    };
    Ending { signal, exit_code }
}

/// The class of a step's end, or `None` for success. `from_rules` is the
/// class of the knowledge base's rule that explains the failure, if one does.
pub fn classify(end: &StepEnd, from_rules: Option<FailureClass>) -> Option<FailureClass> {
    match end {
        StepEnd::Exited(0) => None,
        StepEnd::Cancelled => Some(FailureClass::Cancelled),
        StepEnd::TimedOut => Some(FailureClass::Timeout),
        // Settled by the scheduler: no rule makes it retryable.
        StepEnd::Unschedulable(_) => Some(FailureClass::Unschedulable),
        _ => Some(from_rules.unwrap_or(match end {
            StepEnd::Exited(137) | StepEnd::Signaled(9) | StepEnd::OomKilled => FailureClass::Oom,
            StepEnd::Signaled(_) => FailureClass::Signal,
            StepEnd::SpawnFailed(_) | StepEnd::Lost(_) => FailureClass::Infra,
            _ => FailureClass::Script,
        })),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::insight::knowledge::KnowledgeBase;

    /// The class the built-in rules give a step that printed `line` and
    /// ended with `end`.
    fn class_of(line: &str, end: StepEnd) -> Option<FailureClass> {
        let mut scan = KnowledgeBase::builtin().scan();
        scan.line(line, true);
        let d = scan.finish(&ending(&end, false));
        classify(&end, d.map(|d| d.class))
    }

    #[test]
    fn log_lines_map_to_classes() {
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
            ("assertion failed: left == right", Some(FailureClass::Script)),
        ];
        for (line, want) in cases {
            assert_eq!(class_of(line, StepEnd::Exited(1)), want, "{line}");
        }
    }

    #[test]
    fn the_end_decides_what_the_output_cannot() {
        assert_eq!(class_of("Connection refused", StepEnd::Exited(0)), None);
        assert_eq!(
            class_of("Connection refused", StepEnd::Exited(137)),
            Some(FailureClass::Oom),
            "an OOM kill outranks every pattern"
        );
        assert_eq!(class_of("", StepEnd::Exited(1)), Some(FailureClass::Script));
        assert_eq!(class_of("", StepEnd::Signaled(15)), Some(FailureClass::Signal));
        assert_eq!(class_of("", StepEnd::TimedOut), Some(FailureClass::Timeout));
        assert_eq!(class_of("", StepEnd::Cancelled), Some(FailureClass::Cancelled));
        assert_eq!(
            class_of("", StepEnd::SpawnFailed("cannot start `sh`".into())),
            Some(FailureClass::Infra)
        );
        assert_eq!(
            class_of(
                "Allocation failed - JavaScript heap out of memory",
                StepEnd::Exited(134)
            ),
            Some(FailureClass::Oom),
            "a pattern that says more outranks a generic abort"
        );
        assert_eq!(ending(&StepEnd::Exited(1), true).signal, Some(Signal::Timeout));
    }
}
