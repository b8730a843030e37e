//! The malformed-pipeline corpus: each file in tests/corpus/invalid starts
//! with `# expect: LINE:COL message` lines, one per error it must produce,
//! and must produce no other error ("every mistake, once, precisely").

use std::path::{Path, PathBuf};

use trackside::pipeline::{LoadOptions, load};

fn files(dir: &str) -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join(dir);
    let mut out: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "yml"))
        .collect();
    out.sort();
    out
}

struct Expect {
    line: usize,
    column: usize,
    message: String,
}

fn expectations(text: &str) -> Vec<Expect> {
    text.lines()
        .filter_map(|l| l.strip_prefix("# expect: "))
        .map(|rest| {
            let (pos, message) = rest.split_once(' ').expect("`# expect: L:C message`");
            let (l, c) = pos.split_once(':').expect("L:C");
            Expect {
                line: l.parse().expect("line"),
                column: c.parse().expect("column"),
                message: message.to_string(),
            }
        })
        .collect()
}

#[test]
fn every_malformed_pipeline_gets_exactly_its_diagnostics() {
    let all = files("tests/corpus/invalid");
    assert!(all.len() >= 40, "the corpus needs at least 40 cases, has {}", all.len());
    check_malformed(&all);
}

/// Malformed GitHub workflows (read as GitHub's by their content: `on:`
/// and `jobs:`), in GitHub's terms.
#[test]
fn every_malformed_workflow_gets_exactly_its_diagnostics() {
    let all = files("tests/corpus/github-invalid");
    assert!(all.len() >= 30, "the corpus needs at least 30 cases, has {}", all.len());
    check_malformed(&all);
}

fn check_malformed(all: &[PathBuf]) {
    let mut failures = Vec::new();
    for path in all {
        let text = std::fs::read_to_string(path).expect("read");
        let want = expectations(&text);
        assert!(!want.is_empty(), "{}: no `# expect:` line", path.display());
        let report = match load(path, &LoadOptions::default()) {
            Ok(_) => {
                failures.push(format!("{}: accepted, but should be invalid", path.display()));
                continue;
            }
            Err(r) => r,
        };
        let errors: Vec<_> = report.items.iter().filter(|d| d.is_error()).collect();
        for w in &want {
            let hit = errors
                .iter()
                .any(|d| d.line == w.line && d.column == w.column && d.message.contains(&w.message));
            if !hit {
                failures.push(format!(
                    "{}: expected {}:{} `{}`, got: {:?}",
                    path.display(),
                    w.line,
                    w.column,
                    w.message,
                    errors
                        .iter()
                        .map(|d| format!("{}:{} {}", d.line, d.column, d.message))
                        .collect::<Vec<_>>()
                ));
            }
        }
        if errors.len() != want.len() {
            failures.push(format!(
                "{}: {} errors, expected {}",
                path.display(),
                errors.len(),
                want.len()
            ));
        }
        for d in &errors {
            assert!(d.hint.is_some(), "{}: `{}` has no hint", path.display(), d.message);
        }
        // Rendering must work for every diagnostic and show the position.
        let rendered = report.render(false);
        assert!(rendered.contains(&format!(":{}:{}", want[0].line, want[0].column)) || rendered.contains("-->"));
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn every_example_pipeline_is_valid() {
    let opts = LoadOptions {
        host_env: vec![("PATH".into(), "/usr/bin:/bin".into()), ("HOME".into(), "/root".into())],
        ..LoadOptions::default()
    };
    for path in files("examples") {
        if let Err(r) = load(&path, &opts) {
            panic!("{} is invalid:\n{}", path.display(), r.render(false));
        }
    }
}
