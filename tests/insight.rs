//! History and flakiness over real runs: a job failing on a seeded
//! schedule is ranked flaky with an interval holding its rate; a job
//! broken at a commit is broken from there, not flaky.

mod common;

use std::path::Path;
use std::process::Command;

/// Runs a command with `input` on its standard input: (succeeded, stdout
/// and stderr).
trait OutputWith {
    fn output_with(&mut self, input: &str) -> (bool, String);
}

impl OutputWith for Command {
    fn output_with(&mut self, input: &str) -> (bool, String) {
        use std::io::Write;
        let mut child = self
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("spawn");
        if let Some(mut stdin) = child.stdin.take() {
            stdin.write_all(input.as_bytes()).expect("write stdin");
        }
        let out = child.wait_with_output().expect("wait");
        (
            out.status.success(),
            format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        )
    }
}

fn git(dir: &Path, args: &[&str]) {
    assert!(common::corpus::git(dir, args), "git {args:?}");
}

fn trackside(project: &Path, state: &Path, args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_trackside"))
        .current_dir(project)
        .args(args)
        .arg("--state-dir")
        .arg(state)
        .env("NO_COLOR", "1")
        .stdin(std::process::Stdio::null())
        .output()
        .expect("run trackside")
}

/// `test` fails its first attempt when the schedule says so (a file the
/// runs count through, outside the project) and passes its retry; `build`
/// fails on every attempt once the project has a file `broken`.
const PIPELINE: &str = r#"name: flakes
retry_policy:
  backoff: {initial: 0, jitter: 0}
jobs:
  build:
    retry_count: 1
    retry_when: [script]
    steps:
      - script: ['if [ -e broken ]; then echo "error: broken build in $PWD/main.c:$RANDOM" >&2; exit 2; fi', 'echo built']
  test:
    retry_count: 1
    retry_when: [script]
    steps:
      - script:
          - 'n=$(cat "$COUNTER"); echo $((n + 1)) > "$COUNTER"'
          - 'if sed -n "$((n + 1))p" "$SCHEDULE" | grep -q fail; then echo "flaked"; exit 1; fi'
          - 'echo passed'
"#;

#[test]
fn a_seeded_flake_is_ranked_flaky_and_a_broken_build_is_broken_from_its_commit() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let project = tmp.path().join("project");
    let state = tmp.path().join("state");
    std::fs::create_dir_all(&project).expect("mkdir");
    std::fs::write(project.join("p.yml"), PIPELINE).expect("write");
    git(&project, &["init", "-q", "-b", "main"]);
    git(&project, &["add", "-A"]);
    git(&project, &["commit", "-qm", "first"]);
    // The schedule: each first attempt fails with probability 0.25.
    let mut rng = fastrand::Rng::with_seed(20261205);
    let mut schedule = String::new();
    let mut first_failures = 0;
    for _ in 0..40 {
        // Attempt 1 of the run, then its retry (which passes).
        if rng.f64() < 0.25 {
            first_failures += 1;
            schedule.push_str("fail\npass\n");
        } else {
            schedule.push_str("pass\n");
        }
    }
    let counter = tmp.path().join("counter");
    std::fs::write(&counter, "0").expect("write");
    let sched = tmp.path().join("schedule");
    std::fs::write(&sched, &schedule).expect("write");
    let vars = [
        format!("COUNTER={}", counter.display()),
        format!("SCHEDULE={}", sched.display()),
    ];
    let run = |n: usize| {
        for _ in 0..n {
            let out = trackside(
                &project,
                &state,
                &["run", "p.yml", "--headless", "--var", &vars[0], "--var", &vars[1]],
            );
            let code = out.status.code();
            assert!(matches!(code, Some(0 | 1)), "{}", String::from_utf8_lossy(&out.stderr));
        }
    };
    run(30);
    let good = String::from_utf8_lossy(
        &Command::new("git")
            .args(["rev-parse", "HEAD"])
            .current_dir(&project)
            .output()
            .expect("git")
            .stdout,
    )
    .trim()
    .to_string();
    // Broken at a commit, then run ten more times.
    std::fs::write(project.join("broken"), "yes\n").expect("write");
    git(&project, &["add", "-A"]);
    git(&project, &["commit", "-qm", "break the build"]);
    run(10);
    let bad = String::from_utf8_lossy(
        &Command::new("git")
            .args(["rev-parse", "HEAD"])
            .current_dir(&project)
            .output()
            .expect("git")
            .stdout,
    )
    .trim()
    .to_string();
    assert_ne!(good, bad);

    let out = trackside(&project, &state, &["flaky", "--format", "json", "--pipeline", "p.yml"]);
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    let found: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    let by_job = |j: &str| {
        found
            .as_array()
            .and_then(|a| a.iter().find(|f| f["job"] == j))
            .cloned()
            .unwrap_or_else(|| panic!("{j} in {found}"))
    };
    let test = by_job("test");
    assert_eq!(test["verdict"], "flaky", "{test}");
    assert_eq!(test["runs"], 40);
    let counted = test["failures"].as_u64().expect("failures");
    // The runs consumed the schedule's first 40 run entries.
    let expected = schedule
        .lines()
        .scan(false, |retry, l| {
            let first = !*retry;
            *retry = first && l == "fail";
            Some(first.then_some(l == "fail"))
        })
        .flatten()
        .take(40)
        .filter(|&f| f)
        .count() as u64;
    assert_eq!(counted, expected);
    assert!(first_failures > 0);
    let (low, high) = (test["low"].as_f64().expect("low"), test["high"].as_f64().expect("high"));
    assert!(
        low < 0.25 && 0.25 < high,
        "the interval [{low}, {high}] holds the true rate"
    );
    assert_eq!(found[0]["job"], "test", "the flaky job comes first");
    let build = by_job("build");
    assert_eq!(build["verdict"], "broken", "{build}");
    assert_eq!(build["since"]["commit"], bad.as_str());
    assert_eq!(build["failures"], 10);

    // The text says the same, and history lists the attempts.
    let text = trackside(&project, &state, &["flaky"]);
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(text.contains(&format!("test  flaky: {counted} of 40 runs")), "{text}");
    assert!(text.contains("evidence: passed on a retry"), "{text}");
    assert!(
        text.contains("build  broken: 10 of 40 runs") && text.contains(&bad[..8]),
        "{text}"
    );
    // The line that told the failure, and its signature across runs (the
    // paths and numbers in it differ from run to run).
    assert!(text.contains("    error: broken build in /"), "{text}");
    assert!(
        text.contains(": seen 20 times in 30 days, first in run "),
        "10 runs, 2 attempts each: {text}"
    );
    let history = trackside(&project, &state, &["history", "build", "--limit", "4"]);
    let history = String::from_utf8_lossy(&history.stdout);
    assert!(history.starts_with("build: 4 attempts, 4 failed"), "{history}");
    assert!(history.contains(&bad[..8]) && history.contains("main"), "{history}");
    // The next run tells the UI each job's record (the detail pane's
    // `history:` line).
    let next = trackside(
        &project,
        &state,
        &["run", "p.yml", "--json", "--var", &vars[0], "--var", &vars[1]],
    );
    let events: Vec<serde_json::Value> = String::from_utf8_lossy(&next.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .collect();
    // History is read beside the run: the last plan carries what it says.
    let planned = events
        .iter()
        .rev()
        .find(|e| e["type"] == "plan_changed")
        .expect("plan_changed");
    // The flaky job's box carries its rate; the broken one's does not.
    let flake_pct = |job: &str| {
        planned["jobs"]
            .as_array()
            .and_then(|js| js.iter().find(|j| j["name"] == job))
            .and_then(|j| j["flake_pct"].as_u64())
    };
    assert!(flake_pct("test").is_some_and(|p| (1..=100).contains(&p)), "{planned}");
    assert_eq!(flake_pct("build"), None, "{planned}");
    // The dashboard's figures: the past runs of this pipeline, oldest first.
    let history = events.iter().find(|e| e["type"] == "history").expect("a history event");
    assert_eq!(
        history["stats"]["runs"].as_u64(),
        Some(30),
        "the last 30 of 40: {history}"
    );
    assert_eq!(history["stats"]["durations_ms"].as_array().map(Vec::len), Some(30));
    assert!(
        history["stats"]["flaky"]
            .as_array()
            .is_some_and(|f| f.iter().any(|f| f["job"] == "test")),
        "{history}"
    );
    let fact = |job: &str| {
        planned["jobs"]
            .as_array()
            .and_then(|js| js.iter().find(|j| j["name"] == job))
            .and_then(|j| j["facts"].as_array().cloned())
            .unwrap_or_default()
            .iter()
            .find(|f| f[0] == "history")
            .and_then(|f| f[1].as_str().map(str::to_string))
    };
    assert!(fact("test").is_some_and(|t| t.starts_with("flaky: ")), "{planned}");
    assert!(
        fact("build").is_some_and(|t| t.starts_with("broken: ") && t.contains(&bad[..8])),
        "{planned}"
    );
    let json = trackside(&project, &state, &["history", "--format", "json", "--since", "1h"]);
    let rows: serde_json::Value = serde_json::from_slice(&json.stdout).expect("json");
    assert!(rows.as_array().is_some_and(|r| r.len() >= 80), "every attempt is there");
}

/// `test` writes a pytest-shaped report: `test_gateway` fails on the first
/// attempt of every other run and passes its retry; a nextest-shaped one
/// has a test the framework re-ran until it passed.
const WITH_REPORTS: &str = r#"name: reports
retry_policy:
  backoff: {initial: 0, jitter: 0}
jobs:
  test:
    retry_count: 1
    retry_when: [script]
    reports: {junit: ['reports/*.xml']}
    steps:
      - script:
          - 'n=$(cat "$COUNTER"); echo $((n + 1)) > "$COUNTER"; mkdir -p reports'
          - 'echo "<testsuites><testsuite name=\"shop::api\"><testcase name=\"orders\" classname=\"shop::api\" time=\"0.2\"><flakyFailure message=\"assertion failed\">panicked</flakyFailure></testcase></testsuite></testsuites>" > reports/nextest.xml'
          - 'if [ $((n % 4)) -eq 0 ]; then r=''<failure message="ConnectionError: gateway timed out">trace</failure>''; else r=""; fi'
          - 'printf "<testsuites><testsuite name=\"pytest\"><testcase classname=\"tests.test_pay\" name=\"test_refund\" time=\"0.01\"/><testcase classname=\"tests.test_pay\" name=\"test_gateway\" time=\"1.5\">%s</testcase></testsuite></testsuites>" "$r" > reports/pytest.xml'
          - 'test -z "$r"'
"#;

#[test]
fn junit_reports_are_kept_per_attempt_and_their_flaky_tests_ranked() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let project = tmp.path().join("project");
    let state = tmp.path().join("state");
    std::fs::create_dir_all(&project).expect("mkdir");
    std::fs::write(project.join("p.yml"), WITH_REPORTS).expect("write");
    git(&project, &["init", "-q", "-b", "main"]);
    git(&project, &["add", "-A"]);
    git(&project, &["commit", "-qm", "first"]);
    let counter = tmp.path().join("counter");
    std::fs::write(&counter, "0").expect("write");
    let var = format!("COUNTER={}", counter.display());
    for _ in 0..6 {
        let out = trackside(&project, &state, &["run", "p.yml", "--headless", "--var", &var]);
        assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stdout));
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains("tests: "), "{text}");
    }
    // The first run: attempt 1 failed test_gateway, attempt 2 passed it.
    let runs = trackside(&project, &state, &["runs", "--format", "json"]);
    let runs: serde_json::Value = serde_json::from_slice(&runs.stdout).expect("json");
    let first = runs
        .as_array()
        .and_then(|r| r.last())
        .and_then(|r| r["run_id"].as_str())
        .expect("run");
    let out = trackside(&project, &state, &["tests", first, "test"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.starts_with("6 test cases: 1 failed, 5 passed, 0 skipped"),
        "{text}"
    );
    let lines: Vec<&str> = text.lines().collect();
    assert!(
        lines[1].starts_with("FAILED   test › tests.test_pay::test_gateway"),
        "failed first: {text}"
    );
    assert!(lines[1].ends_with("(attempt 1)"), "{text}");
    assert!(lines[2].contains("ConnectionError: gateway timed out"), "{text}");
    assert!(
        text.contains("FLAKY (1 rerun failed) test › shop::api::orders"),
        "{text}"
    );
    let json = trackside(&project, &state, &["tests", first, "--format", "json"]);
    let cases: serde_json::Value = serde_json::from_slice(&json.stdout).expect("json");
    assert_eq!(cases.as_array().map(Vec::len), Some(6));

    let out = trackside(&project, &state, &["flaky", "--format", "json"]);
    let found: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    let names: Vec<&str> = found
        .as_array()
        .expect("list")
        .iter()
        .filter_map(|f| f["job"].as_str())
        .collect();
    assert!(names.contains(&"test › tests.test_pay::test_gateway"), "{names:?}");
    assert!(
        names.contains(&"test › shop::api::orders"),
        "a test the framework re-ran: {names:?}"
    );
    assert!(
        !names.iter().any(|n| n.ends_with("test_refund")),
        "a test that always passed: {names:?}"
    );
    let gateway = found
        .as_array()
        .and_then(|a| a.iter().find(|f| f["job"] == "test › tests.test_pay::test_gateway"))
        .expect("gateway");
    assert_eq!(
        (gateway["runs"].as_u64(), gateway["failures"].as_u64()),
        (Some(6), Some(2))
    );
}

#[test]
fn a_quarantined_job_still_runs_and_its_failure_does_not_fail_the_run() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let project = tmp.path().join("project");
    let state = tmp.path().join("state");
    std::fs::create_dir_all(&project).expect("mkdir");
    std::fs::write(
        project.join("p.yml"),
        "name: q\njobs:\n  lint:\n    steps:\n      - script: ['echo lint']\n  e2e:\n    steps:\n      - script: ['echo e2e ran', 'exit 3']\n",
    )
    .expect("write");
    let run = || trackside(&project, &state, &["run", "p.yml", "--headless"]);
    assert_eq!(run().status.code(), Some(1), "a failing job fails the run");
    let add = trackside(
        &project,
        &state,
        &["quarantine", "add", "e2e", "--until", "14d", "--pipeline", "p.yml"],
    );
    assert_eq!(add.status.code(), Some(0), "{}", String::from_utf8_lossy(&add.stderr));
    assert!(String::from_utf8_lossy(&add.stdout).starts_with("quarantined `e2e` in "));
    let out = run();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert!(text.contains("> e2e ran"), "it still runs: {text}");
    assert!(
        text.lines().any(|l| l.starts_with("e2e ") && l.contains("QUARANTINED")),
        "{text}"
    );
    let list = trackside(&project, &state, &["quarantine", "list"]);
    let list = String::from_utf8_lossy(&list.stdout);
    assert!(list.starts_with("e2e  until "), "{list}");
    let bad = trackside(&project, &state, &["quarantine", "add", "e2e", "--until", "2001-01-01"]);
    assert_eq!(bad.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("has passed already"));
    let removed = trackside(&project, &state, &["quarantine", "remove", "e2e"]);
    assert_eq!(removed.status.code(), Some(0));
    assert_eq!(run().status.code(), Some(1), "out of quarantine, it fails runs again");
    let again = trackside(&project, &state, &["quarantine", "remove", "e2e"]);
    assert_eq!(again.status.code(), Some(1));
}

/// A run of `pipeline` (as `p.yml`) in a project of its own, and what the
/// history then says.
struct Ran {
    _tmp: tempfile::TempDir,
    project: std::path::PathBuf,
    state: std::path::PathBuf,
    rows: serde_json::Value,
}

impl Ran {
    fn new(pipeline: &str) -> Ran {
        let tmp = tempfile::tempdir().expect("tempdir");
        let project = tmp.path().join("project");
        let state = tmp.path().join("state");
        std::fs::create_dir_all(&project).expect("mkdir");
        std::fs::write(project.join("p.yml"), pipeline).expect("write");
        let out = trackside(&project, &state, &["run", "p.yml", "--headless"]);
        assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stdout));
        let json = trackside(&project, &state, &["history", "--format", "json"]);
        let rows = serde_json::from_slice(&json.stdout).expect("json");
        Ran {
            _tmp: tmp,
            project,
            state,
            rows,
        }
    }

    /// The peak memory the history has for `job`.
    fn peak(&self, job: &str) -> Option<u64> {
        self.rows
            .as_array()
            .and_then(|r| r.iter().find(|r| r["job"] == job))
            .and_then(|r| r["peak_memory"].as_u64())
    }
}

#[test]
fn a_host_jobs_peak_memory_is_recorded_and_shown_by_history() {
    // dd reads into a 256 MiB buffer, far above trackside's own size;
    // `small` holds next to nothing, so no figure is known for it.
    let ran = Ran::new(
        "name: mem\njobs:\n  big:\n    steps: [{script: ['dd if=/dev/zero of=/dev/null bs=256M count=1 2>/dev/null']}]\n  small:\n    steps: [{script: ['true']}]\n",
    );
    let big = ran.peak("big").expect("big's peak");
    assert!(big >= 256 << 20, "{big}");
    assert_eq!(ran.peak("small"), None, "below trackside's own size: not known");
    let text = trackside(&ran.project, &ran.state, &["history", "big"]);
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(text.contains("PEAK MEM"), "{text}");
    assert!(text.contains(" MiB "), "{text}");
}

#[test]
fn a_steps_peak_is_weighed_against_tracksides_own_not_the_one_its_parent_passed_on() {
    // This test process touches 384 MiB and lets it go: trackside, started
    // from it `vfork`-like, is charged that peak at its exec, and
    // `getrusage` goes on saying so. A step's 128 MiB must still count.
    const SIZE: usize = 384 << 20;
    // SAFETY: a fresh private anonymous mapping, written within its
    // length, then unmapped; nothing else refers to it.
    unsafe {
        let p = libc::mmap(
            std::ptr::null_mut(),
            SIZE,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        );
        assert_ne!(p, libc::MAP_FAILED);
        std::ptr::write_bytes(p.cast::<u8>(), 1, SIZE);
        assert_eq!(libc::munmap(p, SIZE), 0);
    }
    let ran = Ran::new(
        "name: mem\njobs:\n  mid:\n    steps: [{script: ['dd if=/dev/zero of=/dev/null bs=128M count=1 2>/dev/null']}]\n",
    );
    let peak = ran.peak("mid");
    assert!(peak.is_some_and(|p| p >= 128 << 20), "{peak:?}");
}

/// `unit` fails in `test_clock` (and, when `$BOTH` is set, in
/// `test_money` too); `lint` passes.
const FAILING_TESTS: &str = r#"name: tq
jobs:
  lint:
    steps: [{script: ['echo lint']}]
  unit:
    reports: {junit: ['report.xml']}
    steps:
      - script:
          - 'if [ -n "$BOTH" ]; then m="<failure message=\"0.1 + 0.2 != 0.3\"/>"; else m=""; fi'
          - 'printf "<testsuite name=\"t\"><testcase classname=\"tests.time\" name=\"test_clock\"><failure message=\"clock skew 3s\"/></testcase><testcase classname=\"tests.money\" name=\"test_money\">%s</testcase></testsuite>" "$m" > report.xml'
          - 'echo "FAILED tests/time.py::test_clock"'
          - 'exit 1'
"#;

#[test]
fn a_quarantined_test_case_keeps_a_job_that_fails_only_in_it_from_failing_the_run() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let project = tmp.path().join("project");
    let state = tmp.path().join("state");
    std::fs::create_dir_all(&project).expect("mkdir");
    std::fs::write(project.join("p.yml"), FAILING_TESTS).expect("write");
    let run = |extra: &[&str]| {
        let mut args = vec!["run", "p.yml", "--headless"];
        args.extend_from_slice(extra);
        trackside(&project, &state, &args)
    };
    let out = run(&[]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{text}");
    // The text output names the failed test case and its message.
    assert!(
        text.contains("unit failed test: tests.time::test_clock: clock skew 3s"),
        "{text}"
    );
    let add = trackside(
        &project,
        &state,
        &["quarantine", "add", "unit › tests.time::test_clock"],
    );
    assert_eq!(add.status.code(), Some(0), "{}", String::from_utf8_lossy(&add.stderr));
    assert!(
        String::from_utf8_lossy(&add.stdout).contains("a job that fails only in it is reported as QUARANTINED"),
        "{}",
        String::from_utf8_lossy(&add.stdout)
    );
    let out = run(&["--json"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "only the quarantined test failed: {text}");
    let events: Vec<serde_json::Value> = text.lines().filter_map(|l| serde_json::from_str(l).ok()).collect();
    let report = events
        .iter()
        .find(|e| e["type"] == "tests_reported")
        .expect("a tests_reported event");
    assert_eq!(report["job"], "unit");
    assert_eq!(report["report"]["failed"], 1);
    assert_eq!(report["report"]["passed"], 1);
    assert_eq!(report["report"]["cases"][0]["name"], "tests.time::test_clock");
    assert_eq!(report["report"]["cases"][0]["quarantined"], true);
    let finished = events
        .iter()
        .find(|e| e["type"] == "run_finished")
        .expect("run_finished");
    let unit = finished["summary"]["jobs"]
        .as_array()
        .and_then(|j| j.iter().find(|j| j["name"] == "unit"))
        .expect("unit");
    assert_eq!(unit["verdict"], "QUARANTINED", "{unit}");
    assert!(
        unit["reason"]
            .as_str()
            .is_some_and(|r| r.contains("failed only in quarantined test: tests.time::test_clock")),
        "{unit}"
    );
    // Another test failing too: the job fails the run as before.
    let both = run(&["--var", "BOTH=1"]);
    assert_eq!(both.status.code(), Some(1), "{}", String::from_utf8_lossy(&both.stdout));
    // A bare test name holds that test in any job.
    trackside(
        &project,
        &state,
        &["quarantine", "remove", "unit › tests.time::test_clock"],
    );
    assert_eq!(run(&[]).status.code(), Some(1), "out of quarantine");
    trackside(&project, &state, &["quarantine", "add", "test_clock"]);
    assert_eq!(run(&[]).status.code(), Some(0), "held by its own name");
    let empty = trackside(&project, &state, &["quarantine", "add", "unit › "]);
    assert_eq!(empty.status.code(), Some(2));
}

#[test]
fn junit_out_writes_the_run_with_retries_as_reruns() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let project = tmp.path().join("project");
    let state = tmp.path().join("state");
    std::fs::create_dir_all(&project).expect("mkdir");
    let counter = tmp.path().join("counter");
    std::fs::write(&counter, "0").expect("write");
    std::fs::write(
        project.join("p.yml"),
        "name: ci\nretry_policy:\n  backoff: {initial: 0, jitter: 0}\njobs:\n  flaky:\n    retry_count: 1\n    retry_when: [script]\n    steps:\n      - script: ['n=$(cat \"$COUNTER\"); echo $((n + 1)) > \"$COUNTER\"; test $n -gt 0']\n  broken:\n    steps:\n      - script: ['exit 4']\n  after:\n    depends_on: [broken]\n    steps:\n      - script: ['true']\n",
    )
    .expect("write");
    let out_file = tmp.path().join("out.xml");
    let out = trackside(
        &project,
        &state,
        &[
            "run",
            "p.yml",
            "--headless",
            "--var",
            &format!("COUNTER={}", counter.display()),
            "--junit-out",
            out_file.to_str().expect("utf-8"),
        ],
    );
    assert_eq!(out.status.code(), Some(1));
    let xml = std::fs::read_to_string(&out_file).expect("written");
    let report = junit_parser::from_reader(std::io::Cursor::new(xml.as_bytes())).expect("valid JUnit");
    let suite = &report.suites[0];
    assert_eq!(suite.name, "ci");
    let case = |n: &str| suite.cases.iter().find(|c| c.original_name == n).expect(n);
    assert!(case("flaky").status.is_success());
    assert_eq!(case("flaky").reruns.len(), 1, "{xml}");
    assert!(
        matches!(
            case("flaky").reruns[0].kind,
            junit_parser::RerunOrFlakyKind::FlakyFailure
        ),
        "{xml}"
    );
    assert!(case("broken").status.is_failure(), "{xml}");
    assert!(case("after").status.is_skipped(), "{xml}");
}

/// `fetch` fails on a DNS lookup (network: retried by default), `tls` on an
/// untrusted certificate (network too, but the rule says a retry cannot
/// pass). The host name is a secret: masked wherever the diagnosis shows it.
const EXPLAINED: &str = r#"name: explained
retry_policy:
  backoff: {initial: 0, jitter: 0}
jobs:
  fetch:
    retry_count: 1
    steps:
      - script: ['echo "fetching"', 'echo "curl: (6) Could not resolve host: $API_HOST" >&2', 'exit 6']
  tls:
    retry_count: 2
    steps:
      - script: ['echo "curl: (60) SSL certificate problem: unable to get local issuer certificate" >&2', 'exit 60']
"#;

#[test]
fn failures_are_explained_and_a_permanent_one_is_not_retried() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let project = tmp.path().join("project");
    let state = tmp.path().join("state");
    std::fs::create_dir_all(&project).expect("mkdir");
    std::fs::write(project.join("p.yml"), EXPLAINED).expect("write");
    let secret = "db-7f3a.secret-internal.example";
    let run = |json: bool| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_trackside"));
        cmd.current_dir(&project)
            .args(["run", "p.yml", "--secret", "API_HOST", "--state-dir"])
            .arg(&state)
            .env("API_HOST", secret)
            .env("NO_COLOR", "1")
            .stdin(std::process::Stdio::null());
        if json {
            cmd.arg("--json");
        }
        cmd.output().expect("run trackside")
    };
    let out = run(true);
    assert_eq!(out.status.code(), Some(1));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(!stdout.contains(secret), "the secret leaked: {stdout}");
    let events: Vec<serde_json::Value> = stdout.lines().filter_map(|l| serde_json::from_str(l).ok()).collect();
    let of = |kind: &str, job: &str| -> Vec<&serde_json::Value> {
        events.iter().filter(|e| e["type"] == kind && e["job"] == job).collect()
    };
    // fetch: retried once (network), both attempts explained as DNS.
    let retrying = of("job_retrying", "fetch");
    assert_eq!(retrying.len(), 1, "{stdout}");
    let d = &retrying[0]["diagnosis"];
    assert_eq!(d["rule"], "dns-failure", "{d}");
    assert_eq!(d["class"], "network");
    assert_eq!(d["runbook"], "docs/runbooks/dns.md#dns-failure");
    // The host is a secret: the hint is filled in from the masked line,
    // where no host name is left to capture.
    assert!(
        d["hint"]
            .as_str()
            .is_some_and(|h| h.starts_with("the host name did not resolve; ") && !h.contains("secret")),
        "{d}"
    );
    assert_eq!(d["lines"][0], "curl: (6) Could not resolve host: [MASKED]");
    let finished = of("job_finished", "fetch");
    assert_eq!(finished[0]["diagnosis"]["rule"], "dns-failure");
    // tls: its rule is retryable: false, so retry_count 2 is not used.
    assert!(of("job_retrying", "tls").is_empty(), "{stdout}");
    let finished = of("job_finished", "tls");
    assert_eq!(finished[0]["attempt"], 1);
    assert_eq!(finished[0]["failure_class"], "network");
    assert_eq!(finished[0]["diagnosis"]["rule"], "tls-untrusted");
    assert_eq!(finished[0]["diagnosis"]["retryable"], false);

    // The headless summary says why, and where to read on.
    let out = run(false);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("failed (exit 6, network: a host name did not resolve); retrying"),
        "{text}"
    );
    assert!(text.contains("(docs/runbooks/tls.md#tls-untrusted)"), "{text}");
    assert!(
        text.contains("not retried: a TLS certificate was not trusted, which a retry does not fix"),
        "{text}"
    );
    assert!(!text.contains(secret), "{text}");

    // trackside explain: every failed attempt, its hint, runbook, the
    // matched line, and how often the same failure was seen.
    let out = trackside(&project, &state, &["explain", "last", "fetch"]);
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout);
    for want in [
        "fetch attempt 1: a host name did not resolve (network, exit 6)",
        "fetch attempt 2: a host name did not resolve (network, exit 6)",
        "runbook: docs/runbooks/dns.md#dns-failure",
        "matched: curl: (6) Could not resolve host: [MASKED]",
        "retry:   may pass",
        "seen 4 times in 30 days",
    ] {
        assert!(text.contains(want), "want {want:?} in:\n{text}");
    }
    assert!(!text.contains(secret), "{text}");
    let out = trackside(&project, &state, &["explain", "last", "--format", "json"]);
    let all: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(
        all.as_array().map(Vec::len),
        Some(3),
        "two fetch attempts and one tls: {all}"
    );
    let out = trackside(&project, &state, &["explain", "last", "nope"]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("ran no job `nope`") && err.contains("fetch, tls"), "{err}");
}

#[test]
fn runs_forecast_their_finish_from_history_and_say_when_there_is_none() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let project = tmp.path().join("project");
    let state = tmp.path().join("state");
    std::fs::create_dir_all(&project).expect("mkdir");
    let pipeline = "name: timed\njobs:\n  build:\n    steps: [{script: ['sleep 0.3']}]\n  test:\n    depends_on: [build]\n    steps: [{script: ['sleep 0.2']}]\n  ship:\n    depends_on: [test]\n    when: manual\n    steps: [{script: ['true']}]\n";
    std::fs::write(project.join("p.yml"), pipeline).expect("write");
    let out = trackside(&project, &state, &["forecast", "p.yml"]);
    assert_eq!(out.status.code(), Some(0));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("no history for `timed` yet"), "{text}");
    // Without history the run sends no forecast.
    let out = trackside(&project, &state, &["run", "p.yml", "--json"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(!stdout.contains(r#""type":"forecast""#), "{stdout}");
    for _ in 0..3 {
        let out = trackside(&project, &state, &["run", "p.yml", "--approve", "ship"]);
        assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stdout));
    }
    let out = trackside(&project, &state, &["forecast", "p.yml", "-j", "0"]);
    assert_eq!(out.status.code(), Some(2), "no jobs at once is refused, not taken as 1");
    assert!(String::from_utf8_lossy(&out.stderr).contains("invalid value '0'"));
    let out = trackside(&project, &state, &["forecast", "p.yml", "-j", "2"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("forecast for `timed`: 3 jobs, 2 at once, from up to 4 past runs"),
        "{text}"
    );
    assert!(text.contains("finishes in 0:01 (p50)"), "{text}");
    assert!(
        text.contains("ship") && text.contains("manual: left out until approved"),
        "{text}"
    );
    let out = trackside(&project, &state, &["forecast", "p.yml", "--format", "json"]);
    let f: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    let p50 = f["p50_ms"].as_u64().expect("p50");
    // build and test take at least half a second together, and ran in well
    // under two seconds.
    assert!((500..2_000).contains(&p50), "{f}");
    assert!(f["p90_ms"].as_u64().expect("p90") >= p50);
    assert_eq!(f["jobs"][0]["runs"], 4);
    // With history, a run forecasts its finish as it goes.
    let out = trackside(&project, &state, &["run", "p.yml", "--json"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let forecasts: Vec<serde_json::Value> = stdout
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|e| e["type"] == "forecast")
        .collect();
    assert!(!forecasts.is_empty(), "{stdout}");
    let first = &forecasts[0];
    assert!(
        first["p50_ms"].as_u64().is_some_and(|p| (500..2_000).contains(&p)),
        "{first}"
    );
}

#[test]
fn metrics_and_stats_tell_the_recent_runs() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let project = tmp.path().join("project");
    let state = tmp.path().join("state");
    std::fs::create_dir_all(&project).expect("mkdir");
    // `net` fails on the second run only (a file counts the runs).
    let count = tmp.path().join("count");
    std::fs::write(&count, "0").expect("write");
    let pipeline = format!(
        "name: m\njobs:\n  build:\n    steps: [{{script: ['true']}}]\n  net:\n    steps: [{{script: ['n=$(cat {c}); echo $((n+1)) > {c}; if [ $n = 1 ]; then echo \"Connection refused\" >&2; exit 7; fi']}}]\n",
        c = count.display()
    );
    std::fs::write(project.join("p.yml"), pipeline).expect("write");
    for _ in 0..3 {
        trackside(&project, &state, &["run", "p.yml"]);
    }
    let out = trackside(&project, &state, &["metrics"]);
    assert_eq!(out.status.code(), Some(0));
    let text = String::from_utf8_lossy(&out.stdout);
    let key = std::fs::canonicalize(project.join("p.yml")).expect("path");
    let p = key.display();
    for want in [
        format!("trackside_runs_total{{pipeline=\"{p}\",result=\"passed\"}} 2"),
        format!("trackside_runs_total{{pipeline=\"{p}\",result=\"failed\"}} 1"),
        format!("trackside_job_failures_total{{pipeline=\"{p}\",job=\"net\",class=\"network\"}} 1"),
        format!("trackside_job_duration_seconds_count{{pipeline=\"{p}\",job=\"build\"}} 3"),
        "# TYPE trackside_job_duration_seconds histogram".to_string(),
    ] {
        assert!(text.contains(&want), "want {want} in:\n{text}");
    }
    // Prometheus' own checker takes it (Debian's prometheus package has it).
    if common::deploy::tool("promtool", "TRACKSIDE_REQUIRE_PROMETHEUS") {
        let (ok, said) = Command::new("promtool")
            .args(["check", "metrics"])
            .stdin(std::process::Stdio::piped())
            .output_with(&text);
        assert!(ok, "promtool check metrics: {said}");
    }
    let file = tmp.path().join("trackside.prom");
    let out = trackside(&project, &state, &["metrics", "-o", file.to_str().expect("utf-8")]);
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(std::fs::read_to_string(&file).expect("written"), text);
    let out = trackside(&project, &state, &["stats"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("failed    1 of 3 (33%)  .x."), "{text}");
    assert!(text.contains("failed attempts by class: network 1"), "{text}");
    let out = trackside(&project, &state, &["stats", "--format", "json"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(v[0]["runs"], 3);
    assert_eq!(v[0]["results"][1], "failed");
}
