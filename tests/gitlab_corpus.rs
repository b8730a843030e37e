//! The GitLab corpus: real-shaped pipelines under tests/corpus/gitlab/, each
//! run headless as a user would (`trackside run` in a fresh git repository
//! holding the case's files, one commit on `main`), its whole output
//! compared with the case's `expected.txt`.
//!
//! A case is a folder with a `.gitlab-ci.yml` and the files it needs,
//! `EXPECT.md` (what GitLab's documentation says happens; read it when
//! reviewing `expected.txt`), and optionally `args` (more arguments for
//! `trackside run`, one per line). The output is normalised where it may
//! vary between runs: durations, run ids, manifests, the project's path.
//! One job at a time (`-j 1`) keeps the order of lines fixed.
//!
//! `UPDATE_EXPECT=1 cargo test --test gitlab_corpus` writes the files
//! afresh; review the diff before committing it.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

fn cases() -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/corpus/gitlab");
    let mut out: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.join(".gitlab-ci.yml").is_file())
        .collect();
    out.sort();
    out
}

#[test]
fn every_gitlab_case_prints_its_expected_output() {
    let all = cases();
    assert!(
        all.len() >= 60,
        "the corpus needs at least 60 pipelines, has {}",
        all.len()
    );
    let update = std::env::var_os("UPDATE_EXPECT").is_some();
    let mut failures = Vec::new();
    for case in &all {
        let name = case.file_name().expect("name").to_string_lossy().into_owned();
        let tmp = tempfile::tempdir().expect("tempdir");
        // The folder's name is the project's name (CI_PROJECT_NAME).
        let project = tmp.path().join(&name);
        common::corpus::copy_tree(case, &project);
        if !common::corpus::git(&project, &["init", "-q", "-b", "main"]) {
            assert!(
                std::env::var_os("CI").is_none(),
                "CI must have git (.ci/run installs it)"
            );
            eprintln!("SKIPPED: git is not installed");
            return;
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
            .args(["run", "--headless", "-j", "1", "--no-watch"])
            .args(&args)
            .env("TRACKSIDE_STATE_DIR", tmp.path().join("state"))
            .env("NO_COLOR", "1")
            .env("HOME", tmp.path())
            .env_remove("GIT_DIR")
            .stdin(std::process::Stdio::null())
            .output()
            .expect("run trackside");
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
