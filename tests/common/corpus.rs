//! What the corpus tests (GitLab's and GitHub's) share: a case's files
//! copied into a fresh repository, git run there, and the output made
//! comparable.

use std::path::Path;
use std::process::Command;

/// Copies a case's files, less its expectations (`expected.txt`,
/// `EXPECT.md`, `args`).
pub fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for entry in std::fs::read_dir(from).expect("read case").flatten() {
        let name = entry.file_name();
        if name == "expected.txt" || name == "EXPECT.md" || name == "args" {
            continue;
        }
        let target = to.join(&name);
        if entry.file_type().expect("type").is_dir() {
            copy_tree(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).expect("copy");
        }
    }
}

/// Runs git in `dir` as the corpus's one author, at a fixed date.
pub fn git(dir: &Path, args: &[&str]) -> bool {
    Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(["-c", "user.name=Corpus", "-c", "user.email=corpus@example.com"])
        .args(args)
        .env("GIT_AUTHOR_DATE", "2026-01-01T00:00:00Z")
        .env("GIT_COMMITTER_DATE", "2026-01-01T00:00:00Z")
        .output()
        .is_ok_and(|o| o.status.success())
}

/// What varies between runs, replaced by placeholders.
pub fn normalise(text: &str, project: &Path) -> String {
    let run_id = regex::Regex::new(r"\b\d{8}-\d{6}-[0-9a-f]{4}\b").expect("re");
    let manifest = regex::Regex::new(r"\b[0-9a-f]{64}\b").expect("re");
    let seconds = regex::Regex::new(r"\b\d+\.\ds\b").expect("re");
    let text = text.replace(&project.display().to_string(), "<project>");
    let text = run_id.replace_all(&text, "<run>");
    let text = manifest.replace_all(&text, "<digest>");
    seconds
        .replace_all(&text, |c: &regex::Captures| {
            c[0].chars()
                .map(|ch| if ch.is_ascii_digit() { '#' } else { ch })
                .collect::<String>()
        })
        .into_owned()
}
