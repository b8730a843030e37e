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

/// `trackside actions pull` fetches an action of another repository (here
/// from a local bare repository, as `--from` allows) into the actions
/// folder, where a workflow's `uses: owner/repo@ref` finds it; before the
/// pull, the run says which command fetches it.
#[test]
fn an_action_of_another_repository_runs_once_pulled() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let git = |dir: &Path, args: &[&str]| {
        if !common::corpus::git(dir, args) {
            assert!(std::env::var_os("CI").is_none(), "CI must have git");
            return false;
        }
        true
    };
    // The action's repository: a composite action, tagged v1.
    let src = tmp.path().join("src");
    std::fs::create_dir_all(src.join("greet")).expect("mkdir");
    std::fs::write(
        src.join("greet/action.yml"),
        "name: Greet\ninputs:\n  who: {default: world}\noutputs:\n  said: {value: '${{ steps.s.outputs.said }}'}\nruns:\n  using: composite\n  steps:\n    - id: s\n      shell: bash\n      run: |\n        echo \"hello ${{ inputs.who }} from $(basename \"$(dirname \"$GITHUB_ACTION_PATH\")\")\"\n        echo \"said=hello ${{ inputs.who }}\" >> \"$GITHUB_OUTPUT\"\n",
    )
    .expect("write");
    if !git(&src, &["init", "-q", "-b", "main"]) {
        return;
    }
    assert!(git(&src, &["add", "-A"]));
    assert!(git(&src, &["commit", "-qm", "greet"]));
    assert!(git(&src, &["tag", "v1"]));
    let bare = tmp.path().join("octo-tools.git");
    assert!(git(tmp.path(), &["clone", "-q", "--bare", "src", "octo-tools.git"]));
    // The workflow that uses it.
    let project = tmp.path().join("project");
    std::fs::create_dir_all(project.join(".github/workflows")).expect("mkdir");
    std::fs::write(
        project.join(".github/workflows/ci.yml"),
        "on: push\njobs:\n  a:\n    runs-on: ubuntu-latest\n    steps:\n      - id: g\n        uses: octo/tools/greet@v1\n        with: {who: mona}\n      - run: echo \"output=${{ steps.g.outputs.said }}\"\n",
    )
    .expect("write");
    assert!(git(&project, &["init", "-q", "-b", "main"]));
    assert!(git(&project, &["add", "-A"]));
    assert!(git(&project, &["commit", "-qm", "ci"]));
    let trackside = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_trackside"))
            .current_dir(&project)
            .args(args)
            .env("TRACKSIDE_STATE_DIR", tmp.path().join("state"))
            .env("NO_COLOR", "1")
            .env("HOME", tmp.path())
            .stdin(std::process::Stdio::null())
            .output()
            .expect("run trackside")
    };
    let before = trackside(&["run", ".github/workflows/ci.yml", "--headless", "--no-watch"]);
    let err = String::from_utf8_lossy(&before.stderr);
    assert_eq!(before.status.code(), Some(2), "{err}");
    assert!(
        err.contains("action `octo/tools/greet@v1` is not in the actions folder"),
        "{err}"
    );
    assert!(err.contains("trackside actions pull octo/tools/greet@v1"), "{err}");
    let from = bare.display().to_string();
    let pulled = trackside(&["actions", "pull", "octo/tools/greet@v1", "--from", &from]);
    let out = String::from_utf8_lossy(&pulled.stdout);
    assert_eq!(
        pulled.status.code(),
        Some(0),
        "{out}{}",
        String::from_utf8_lossy(&pulled.stderr)
    );
    assert!(out.contains("octo/tools/greet@v1: commit "), "{out}");
    let run = trackside(&["run", ".github/workflows/ci.yml", "--headless", "--no-watch"]);
    let out = String::from_utf8_lossy(&run.stdout);
    assert_eq!(
        run.status.code(),
        Some(0),
        "{out}{}",
        String::from_utf8_lossy(&run.stderr)
    );
    assert!(out.contains("a > hello mona from tools@v1"), "{out}");
    assert!(out.contains("a > output=hello mona"), "{out}");
    // A ref that is not there: a clear error, nothing left behind.
    let missing = trackside(&["actions", "pull", "octo/tools/greet@v9", "--from", &from]);
    assert_eq!(missing.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&missing.stderr).contains("cannot fetch octo/tools/greet@v9"));
    let left: Vec<_> = std::fs::read_dir(tmp.path().join("state/actions/octo"))
        .expect("actions folder")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(left, ["tools@v1"], "a failed pull leaves nothing");
}

/// A payload whose `action` the workflow's `types:` do not list does not
/// start it (and says so); a malformed `--vars-file` or payload is an
/// error naming the file and the line.
#[test]
fn the_payload_meets_types_and_bad_context_files_are_refused() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let Some((_, project)) = run(&corpus().join("pull-request-payload"), tmp.path()) else {
        return;
    };
    let closed =
        r#"{"action": "closed", "pull_request": {"number": 1, "base": {"ref": "main"}, "head": {"ref": "x"}}}"#;
    std::fs::write(project.join("closed.json"), closed).expect("write");
    std::fs::write(project.join("bad.env"), "REGION=eu\nnot a line\n").expect("write");
    std::fs::write(project.join("list.json"), "[1, 2]").expect("write");
    let go = |extra: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_trackside"))
            .current_dir(&project)
            .args([
                "run",
                ".github/workflows/pr.yml",
                "--headless",
                "--no-watch",
                "--event",
                "pull_request",
            ])
            .args(extra)
            .env("TRACKSIDE_STATE_DIR", tmp.path().join("state"))
            .env("NO_COLOR", "1")
            .env("HOME", tmp.path())
            .stdin(std::process::Stdio::null())
            .output()
            .expect("run trackside")
    };
    let out = go(&["--event-payload", "closed.json"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}");
    assert!(stdout.contains("does not run for this pull_request"), "{stdout}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("its `types` do not list `closed`"));
    let out = go(&["--vars-file", "bad.env"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--vars-file bad.env:2: expected NAME=VALUE, found `not a line`"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = go(&["--event-payload", "list.json"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a JSON object"));
}

/// `::group::` and `::endgroup::` reach front-ends as `log_group` events
/// naming the title line and the first line after the group.
#[test]
fn groups_are_events_that_name_their_lines() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let Some((_, project)) = run(&corpus().join("workflow-commands-annotations"), tmp.path()) else {
        return;
    };
    let out = Command::new(env!("CARGO_BIN_EXE_trackside"))
        .current_dir(&project)
        .arg("run")
        .arg(entry(&project))
        .args(["--json", "-j", "1", "--no-watch"])
        .env("TRACKSIDE_STATE_DIR", tmp.path().join("state"))
        .env("HOME", tmp.path())
        .env_remove("GIT_DIR")
        .stdin(std::process::Stdio::null())
        .output()
        .expect("run trackside");
    let events: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    let kind = |e: &serde_json::Value, k: &str| e.get("type").and_then(|v| v.as_str()) == Some(k);
    let groups: Vec<&serde_json::Value> = events.iter().filter(|e| kind(e, "log_group")).collect();
    assert_eq!(groups.len(), 2, "a start and an end: {groups:?}");
    let start = groups[0]["line_no"].as_u64().expect("line_no");
    let end = groups[1]["line_no"].as_u64().expect("line_no");
    assert_eq!(groups[0]["title"], "Lint output");
    assert!(groups[1].get("title").is_none());
    let line = |n: u64| {
        events
            .iter()
            .find(|e| kind(e, "log_line") && e["line_no"].as_u64() == Some(n))
            .and_then(|e| e["line"].as_str())
            .map(str::to_string)
    };
    assert_eq!(line(start).as_deref(), Some("▸ Lint output"));
    assert!(end > start + 1, "the group holds lines");
    assert!(
        line(end - 1).is_some_and(|l| !l.contains("endgroup")),
        "the group's last line: {:?}",
        line(end - 1)
    );
}
