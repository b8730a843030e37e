//! A job's JUnit reports: the files its `junit` globs match in the
//! workspace once its steps have run, read with `junit-parser` (pytest,
//! jest-junit, go-junit-report/gotestsum, cargo-nextest, Maven Surefire and
//! Gradle shapes, `flakyFailure`/`rerunFailure` included) into one row per
//! test case for the store. Bounded: at most [`MAX_FILES`] files of
//! [`MAX_FILE_BYTES`] each and [`MAX_CASES`] cases per attempt, checked
//! before reading.

use std::path::{Path, PathBuf};

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
