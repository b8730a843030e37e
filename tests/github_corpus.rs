//! The GitHub Actions corpus: real-shaped workflows under
//! tests/corpus/github/, each a folder holding a repository's files (its
//! workflow under `.github/workflows/`) and `EXPECT.md`, what GitHub does
//! with it (read it when reviewing `expected.txt`).
//!
//! The cases named in `tests/corpus/github/RUNS` are the ones trackside
//! runs today: each is run headless as a user would (`trackside run
//! .github/workflows/FILE` in a fresh git repository holding the case's
//! files, one commit on `main`) and its whole output compared with the
//! case's `expected.txt`. Every other case needs something trackside does
//! not do yet (docs/github.md): it must be refused with an error that
//! says so, never run differently from GitHub.
//!
//! `UPDATE_EXPECT=1 cargo test --test github_corpus` writes the files
//! afresh; review the diff against EXPECT.md before committing it.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn corpus() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/corpus/github")
}

fn cases() -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = std::fs::read_dir(corpus())
        .expect("read the corpus")
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.join(".github/workflows").is_dir())
        .collect();
    out.sort();
    out
}

/// The cases trackside runs today.
fn runs() -> Vec<String> {
    std::fs::read_to_string(corpus().join("RUNS"))
        .expect("tests/corpus/github/RUNS")
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(str::to_string)
        .collect()
}

/// The workflow a case runs: the one that is not only `workflow_call`ed.
fn entry(project: &Path) -> String {
    let mut files: Vec<PathBuf> = std::fs::read_dir(project.join(".github/workflows"))
        .expect("workflows")
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "yml" || x == "yaml"))
        .collect();
    files.sort();
    let called = |p: &PathBuf| std::fs::read_to_string(p).is_ok_and(|t| t.contains("workflow_call"));
    let pick = files.iter().find(|p| !called(p)).or(files.first()).expect("a workflow");
    format!(
        ".github/workflows/{}",
        pick.file_name().expect("name").to_string_lossy()
    )
}

/// Runs the case's workflow again in `project` (state in `tmp`).
fn run_again(project: &Path, tmp: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_trackside"))
        .current_dir(project)
        .arg("run")
        .arg(entry(project))
        .args(["--headless", "-j", "1", "--no-watch"])
        .env("TRACKSIDE_STATE_DIR", tmp.join("state"))
        .env("NO_COLOR", "1")
        .env("HOME", tmp)
        .env_remove("GIT_DIR")
        .stdin(std::process::Stdio::null())
        .output()
        .expect("run trackside")
}

/// The second run of a workflow with `actions/cache` restores what the
/// first saved, and says it hit: its install step is skipped.
#[test]
fn a_cache_saved_by_one_run_is_restored_by_the_next() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let Some((first, project)) = run(&corpus().join("cache-miss-then-save"), tmp.path()) else {
        return;
    };
    let first = String::from_utf8_lossy(&first.stdout).into_owned();
    assert!(first.contains("Cache saved with key: deps-Linux-"), "{first}");
    let second = run_again(&project, tmp.path());
    let out = String::from_utf8_lossy(&second.stdout);
    assert_eq!(second.status.code(), Some(0), "{out}");
    assert!(out.contains("Cache restored from key: deps-Linux-9612f9c6"), "{out}");
    assert!(out.contains("cache-hit=[true]"), "{out}");
    assert!(
        !out.contains("installing left-pad"),
        "the install step is skipped: {out}"
    );
    assert!(out.contains("Cache hit occurred on the primary key"), "{out}");
    // A changed dependency list misses the key and restores by prefix.
    std::fs::write(project.join("deps.txt"), "left-pad\nis-odd\n").expect("write");
    let third = run_again(&project, tmp.path());
    let out = String::from_utf8_lossy(&third.stdout);
    assert!(out.contains("Cache restored from key: deps-Linux-9612f9c6"), "{out}");
    assert!(out.contains("cache-hit=[false]"), "{out}");
    assert!(out.contains("installing is-odd"), "{out}");
}

/// Runs a case as a user would; its output and the project's path.
fn run(case: &Path, tmp: &Path) -> Option<(Output, PathBuf)> {
    let name = case.file_name().expect("name").to_string_lossy().into_owned();
    let project = tmp.join(&name);
    common::corpus::copy_tree(case, &project);
    if !common::corpus::git(&project, &["init", "-q", "-b", "main"]) {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI must have git (.ci/run installs it)"
        );
        eprintln!("SKIPPED: git is not installed");
        return None;
    }
    assert!(common::corpus::git(&project, &["add", "-A"]), "{name}: git add");
    assert!(
        common::corpus::git(&project, &["commit", "-qm", "corpus case"]),
        "{name}: git commit"
    );
    let args: Vec<String> = std::fs::read_to_string(case.join("args"))
        .map(|t| t.lines().filter(|l| !l.is_empty()).map(str::to_string).collect())
        .unwrap_or_default();
    let out = Command::new(env!("CARGO_BIN_EXE_trackside"))
        .current_dir(&project)
        .arg("run")
        .arg(entry(&project))
        .args(["--headless", "-j", "1", "--no-watch"])
        .args(&args)
        .env("TRACKSIDE_STATE_DIR", tmp.join("state"))
        .env("NO_COLOR", "1")
        .env("HOME", tmp)
        .env_remove("GIT_DIR")
        .stdin(std::process::Stdio::null())
        .output()
        .expect("run trackside");
    Some((out, project))
}

#[test]
fn every_case_trackside_runs_prints_its_expected_output() {
    let runs = runs();
    assert!(runs.len() >= 20, "RUNS names {} cases", runs.len());
    let update = std::env::var_os("UPDATE_EXPECT").is_some();
    let mut failures = Vec::new();
    for name in &runs {
        let case = corpus().join(name);
        assert!(case.is_dir(), "RUNS names `{name}`, which is not a case");
        let tmp = tempfile::tempdir().expect("tempdir");
        let Some((out, project)) = run(&case, tmp.path()) else {
            return;
        };
        let got = format!(
            "exit: {}\n--- stdout\n{}\n--- stderr\n{}",
            out.status.code().map_or("signal".to_string(), |c| c.to_string()),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let got = common::corpus::normalise(&got, &project);
        let expected_path = case.join("expected.txt");
        if update {
            std::fs::write(&expected_path, &got).expect("write expected.txt");
            continue;
        }
        match std::fs::read_to_string(&expected_path) {
            Ok(want) if want == got => {}
            Ok(want) => {
                let first = want
                    .lines()
                    .zip(got.lines())
                    .position(|(a, b)| a != b)
                    .unwrap_or_else(|| want.lines().count().min(got.lines().count()));
                failures.push(format!(
                    "{name}: output differs from expected.txt at line {}:\n  want: {:?}\n  got:  {:?}\n--- whole output:\n{got}",
                    first + 1,
                    want.lines().nth(first).unwrap_or("<end>"),
                    got.lines().nth(first).unwrap_or("<end>")
                ));
            }
            Err(_) => failures.push(format!("{name}: no expected.txt (UPDATE_EXPECT=1 writes it)\n{got}")),
        }
    }
    assert!(
        failures.is_empty(),
        "{} case(s) differ:\n{}",
        failures.len(),
        failures.join("\n\n")
    );
}

/// The cases trackside does not run yet are refused, each with an error
/// naming what it does not do: never run differently from GitHub.
#[test]
fn every_other_case_is_refused_with_what_is_missing() {
    let runs = runs();
    let all = cases();
    assert!(
        all.len() >= 50,
        "the corpus needs at least 50 workflows, has {}",
        all.len()
    );
    let mut failures = Vec::new();
    for case in all {
        let name = case.file_name().expect("name").to_string_lossy().into_owned();
        if runs.contains(&name) {
            continue;
        }
        let tmp = tempfile::tempdir().expect("tempdir");
        let Some((out, _)) = run(&case, tmp.path()) else {
            return;
        };
        let stderr = String::from_utf8_lossy(&out.stderr);
        let said = stderr.contains("trackside does not evaluate") || stderr.contains("trackside does not run");
        if out.status.code() != Some(2) || !said {
            failures.push(format!(
                "{name}: exit {:?}, and no error naming what is missing:\n{stderr}",
                out.status.code()
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}
