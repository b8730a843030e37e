//! A job's JUnit reports: the files its `junit` globs match in the
//! workspace once its steps have run, read with `junit-parser` (pytest,
//! jest-junit, go-junit-report/gotestsum, cargo-nextest, Maven Surefire and
//! Gradle shapes, `flakyFailure`/`rerunFailure` included) into one row per
//! test case for the store. Bounded: at most [`MAX_FILES`] files of
//! [`MAX_FILE_BYTES`] each and [`MAX_CASES`] cases per attempt, checked
//! before reading.

use std::path::{Path, PathBuf};

use crate::protocol::{TestCaseView, TestReport};
use crate::store::history::TestCaseRow;

pub const MAX_FILES: usize = 200;
pub const MAX_FILE_BYTES: u64 = 32 << 20;
pub const MAX_CASES: usize = 100_000;
/// Files looked at while searching the workspace, at most.
const MAX_WALK: usize = 200_000;

/// The test cases of the reports `globs` match under `ws` (run, job and
/// attempt left empty for the caller), and what went wrong reading them.
pub fn read_reports(ws: &Path, globs: &[String]) -> (Vec<TestCaseRow>, Vec<String>) {
    let mut problems = Vec::new();
    let set = {
        let mut b = globset::GlobSetBuilder::new();
        for g in globs {
            match globset::GlobBuilder::new(g).literal_separator(true).build() {
                Ok(glob) => {
                    b.add(glob);
                }
                Err(e) => problems.push(format!("JUnit report pattern `{g}`: {e}")),
            }
        }
        match b.build() {
            Ok(s) => s,
            Err(e) => return (Vec::new(), vec![format!("JUnit report patterns: {e}")]),
        }
    };
    let files = matching(ws, &set, &mut problems);
    if files.is_empty() {
        problems.push(format!("no JUnit report matches {}", globs.join(", ")));
    }
    let mut cases = Vec::new();
    for rel in files {
        let path = ws.join(&rel);
        let size = std::fs::symlink_metadata(&path).map(|m| m.len()).unwrap_or(0);
        if size > MAX_FILE_BYTES {
            problems.push(format!(
                "JUnit report {} is over {} MiB: not read",
                rel.display(),
                MAX_FILE_BYTES >> 20
            ));
            continue;
        }
        let parsed = std::fs::File::open(&path)
            .map_err(|e| e.to_string())
            .and_then(|f| junit_parser::from_reader(std::io::BufReader::new(f)).map_err(|e| e.to_string()));
        match parsed {
            Ok(report) => {
                let file = rel.display().to_string();
                for suite in &report.suites {
                    suite_cases(suite, &file, &mut cases);
                }
            }
            Err(e) => problems.push(format!("cannot read JUnit report {}: {e}", rel.display())),
        }
        if cases.len() >= MAX_CASES {
            cases.truncate(MAX_CASES);
            problems.push(format!("more than {MAX_CASES} test cases: the rest are not kept"));
            break;
        }
    }
    (cases, problems)
}

/// The regular files under `ws` that `set` matches (relative, sorted).
fn matching(ws: &Path, set: &globset::GlobSet, problems: &mut Vec<String>) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![PathBuf::new()];
    let mut seen = 0usize;
    while let Some(rel) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(ws.join(&rel)) else {
            continue;
        };
        for e in entries.flatten() {
            seen += 1;
            if seen > MAX_WALK {
                problems.push(format!(
                    "the workspace has over {MAX_WALK} files: the search for reports stopped"
                ));
                return out;
            }
            let Ok(kind) = e.file_type() else { continue };
            let child = rel.join(e.file_name());
            if kind.is_dir() {
                if e.file_name() != ".git" {
                    stack.push(child);
                }
            } else if kind.is_file() && set.is_match(&child) {
                if out.len() >= MAX_FILES {
                    problems.push(format!("more than {MAX_FILES} JUnit reports: the rest are not read"));
                    return out;
                }
                out.push(child);
            }
        }
    }
    out.sort();
    out
}

/// Whether test case `name` (`classname::name`) is among a job's
/// quarantined test `entries`: an entry names it whole, or by what follows
/// its last `::` or `.` (the test's own name).
pub fn quarantined(entries: &[String], name: &str) -> bool {
    let own = name.rsplit(['.', ':']).next().unwrap_or(name);
    entries.iter().any(|e| e == name || (!own.is_empty() && e == own))
}

/// What the UI and the event stream show of an attempt's test cases: the
/// counts, and the failed cases first, then those passed only on a rerun
/// (slowest first within each), at most [`TestReport::MAX_CASES`].
pub fn report(cases: &[TestCaseRow], entries: &[String]) -> TestReport {
    let count = |o: &str| cases.iter().filter(|c| c.outcome == o).count();
    let rerun = |c: &&TestCaseRow| c.outcome == "passed" && c.reruns_failed > 0;
    let mut shown: Vec<&TestCaseRow> = cases.iter().filter(|c| c.outcome == "failed").collect();
    shown.sort_by_key(|c| std::cmp::Reverse(c.duration_ms));
    let mut reruns: Vec<&TestCaseRow> = cases.iter().filter(rerun).collect();
    reruns.sort_by_key(|c| std::cmp::Reverse(c.duration_ms));
    shown.extend(reruns);
    TestReport {
        passed: count("passed"),
        failed: count("failed"),
        skipped: count("skipped"),
        rerun: cases.iter().filter(rerun).count(),
        cases: shown
            .into_iter()
            .take(TestReport::MAX_CASES)
            .map(|c| TestCaseView {
                name: c.name.clone(),
                outcome: c.outcome.clone(),
                message: c.message.clone(),
                duration_ms: c.duration_ms,
                reruns_failed: c.reruns_failed,
                quarantined: c.outcome == "failed" && quarantined(entries, &c.name),
            })
            .collect(),
    }
}

fn suite_cases(suite: &junit_parser::TestSuite, file: &str, out: &mut Vec<TestCaseRow>) {
    use junit_parser::{RerunOrFlakyKind as K, TestStatus as S};
    for c in &suite.cases {
        let (outcome, message) = match &c.status {
            S::Success => ("passed", None),
            S::Skipped(_) => ("skipped", None),
            S::Failure(f) => ("failed", Some(first_lines(&f.message, &f.text))),
            S::Error(e) => ("failed", Some(first_lines(&e.message, &e.text))),
        };
        // A passing test the framework had to re-run: its failed tries.
        let reruns_failed = c
            .reruns
            .iter()
            .filter(|r| {
                matches!(
                    r.kind,
                    K::FlakyFailure | K::FlakyError | K::RerunFailure | K::RerunError
                )
            })
            .count();
        let message = message.or_else(|| {
            c.reruns
                .first()
                .filter(|_| outcome == "passed")
                .map(|r| first_lines(&r.message, &r.text))
        });
        out.push(TestCaseRow {
            run_id: String::new(),
            job: String::new(),
            attempt: 0,
            suite: suite.name.clone(),
            name: c.name.clone(),
            outcome: outcome.to_string(),
            reruns_failed: u32::try_from(reruns_failed).unwrap_or(u32::MAX),
            duration_ms: (c.time.max(0.0) * 1000.0) as u64,
            message,
            file: Some(file.to_string()),
        });
    }
    for s in &suite.suites {
        suite_cases(s, file, out);
    }
}

/// A failure's message, else its text's first lines (at most 5, 1,000
/// characters).
fn first_lines(message: &str, text: &str) -> String {
    let source = if message.trim().is_empty() { text } else { message };
    let mut s: String = source.lines().take(5).collect::<Vec<_>>().join("\n");
    if s.chars().count() > 1_000 {
        s = s.chars().take(1_000).collect();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, rel: &str, text: &str) {
        let p = dir.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    }

    fn case(name: &str, outcome: &str, duration_ms: u64, reruns_failed: u32) -> TestCaseRow {
        TestCaseRow {
            run_id: String::new(),
            job: String::new(),
            attempt: 1,
            suite: "s".into(),
            name: name.into(),
            outcome: outcome.into(),
            reruns_failed,
            duration_ms,
            message: None,
            file: None,
        }
    }

    #[test]
    fn a_quarantine_entry_names_a_test_whole_or_by_its_own_name() {
        let entries = vec!["test_clock".to_string(), "tests.money::test_sum".to_string()];
        assert!(quarantined(&entries, "tests.time::test_clock"));
        assert!(quarantined(&entries, "com.shop.TimeTest.test_clock"));
        assert!(quarantined(&entries, "tests.money::test_sum"));
        assert!(
            !quarantined(&entries, "tests.other::test_sum"),
            "the whole name differs"
        );
        assert!(!quarantined(&entries, "tests.time::test_clock_skew"));
        assert!(!quarantined(&[], "tests.time::test_clock"));
    }

    #[test]
    fn the_report_lists_failures_first_then_reruns_and_counts_them_all() {
        let mut cases = vec![
            case("a::ok", "passed", 5, 0),
            case("a::slow_fail", "failed", 900, 0),
            case("a::rerun", "passed", 50, 2),
            case("a::skip", "skipped", 0, 0),
            case("a::fast_fail", "failed", 10, 0),
        ];
        let r = report(&cases, &["fast_fail".to_string()]);
        assert_eq!((r.passed, r.failed, r.skipped, r.rerun), (2, 2, 1, 1));
        let names: Vec<&str> = r.cases.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, ["a::slow_fail", "a::fast_fail", "a::rerun"]);
        assert_eq!(r.cases.iter().filter(|c| c.quarantined).count(), 1);
        assert!(r.cases[1].quarantined);
        // Bounded: the counts keep every case, the list the first ones.
        cases = (0..TestReport::MAX_CASES + 7)
            .map(|i| case(&format!("b::t{i}"), "failed", 1, 0))
            .collect();
        let r = report(&cases, &[]);
        assert_eq!(r.failed, TestReport::MAX_CASES + 7);
        assert_eq!(r.cases.len(), TestReport::MAX_CASES);
    }

    #[test]
    fn pytest_nextest_and_surefire_shapes_are_read() {
        let dir = tempfile::tempdir().unwrap();
        // pytest: one <testsuites> with a suite, a failure and a skip.
        write(
            dir.path(),
            "reports/pytest.xml",
            r#"<?xml version="1.0" encoding="utf-8"?><testsuites><testsuite name="pytest" tests="3" failures="1" skipped="1"><testcase classname="tests.test_pay" name="test_refund" time="0.012"/><testcase classname="tests.test_pay" name="test_gateway" time="1.5"><failure message="ConnectionError: gateway timed out">Traceback...</failure></testcase><testcase classname="tests.test_pay" name="test_slow" time="0"><skipped message="slow"/></testcase></testsuite></testsuites>"#,
        );
        // nextest: a flaky test (failed, then passed on a retry).
        write(
            dir.path(),
            "target/nextest/default/junit.xml",
            r#"<testsuites name="nextest-run"><testsuite name="shop::api" tests="1" failures="0"><testcase name="orders_are_listed" classname="shop::api" time="0.2"><flakyFailure type="test failure" message="assertion failed">thread panicked</flakyFailure></testcase></testsuite></testsuites>"#,
        );
        // Maven Surefire: a lone <testsuite> with an error.
        write(
            dir.path(),
            "target/surefire-reports/TEST-com.acme.CartTest.xml",
            r#"<testsuite name="com.acme.CartTest" tests="1" errors="1"><testcase name="addsItem" classname="com.acme.CartTest" time="0.05"><error message="java.lang.NullPointerException" type="java.lang.NullPointerException">at com.acme.Cart.add</error></testcase></testsuite>"#,
        );
        write(dir.path(), "reports/broken.xml", "<testsuite><testcase name=");
        let globs = vec![
            "reports/*.xml".to_string(),
            "target/**/junit.xml".into(),
            "target/surefire-reports/TEST-*.xml".into(),
        ];
        let (cases, problems) = read_reports(dir.path(), &globs);
        let by = |n: &str| {
            cases
                .iter()
                .find(|c| c.name.ends_with(n))
                .unwrap_or_else(|| panic!("{n}: {cases:?}"))
        };
        assert_eq!(by("test_gateway").outcome, "failed");
        assert_eq!(
            by("test_gateway").message.as_deref(),
            Some("ConnectionError: gateway timed out")
        );
        assert_eq!(by("test_gateway").duration_ms, 1_500);
        assert_eq!(by("test_slow").outcome, "skipped");
        assert_eq!(by("test_refund").name, "tests.test_pay::test_refund");
        let flaky = by("orders_are_listed");
        assert_eq!((flaky.outcome.as_str(), flaky.reruns_failed), ("passed", 1));
        assert_eq!(by("addsItem").outcome, "failed");
        assert_eq!(cases.len(), 5);
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(
            problems[0].contains("cannot read JUnit report reports/broken.xml"),
            "{problems:?}"
        );
        let (none, problems) = read_reports(dir.path(), &["nothing/*.xml".into()]);
        assert!(none.is_empty());
        assert!(problems[0].contains("no JUnit report matches nothing/*.xml"));
    }
}
