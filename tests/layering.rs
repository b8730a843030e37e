//! The layering docs/architecture.md draws, checked on the sources:
//! front-ends → protocol ← engine. The protocol imports nothing else of
//! the crate; the terminal UI and the headless printer reach a run only
//! through the protocol (their link); the engine knows no terminal.

use std::path::{Path, PathBuf};

fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
    let entries = std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            sources(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// Every `crate::<module>` a file names (in code, not comments), with its line.
fn crate_paths(path: &Path) -> Vec<(usize, String)> {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut found = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let code = line.split("//").next().unwrap_or("");
        let mut rest = code;
        while let Some(at) = rest.find("crate::") {
            let after = &rest[at + "crate::".len()..];
            let module: String = after.chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect();
            found.push((n + 1, module));
            rest = after;
        }
    }
    found
}

fn offenders(dirs: &[&str], files: &[&str], allowed: &[&str]) -> Vec<String> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut paths = Vec::new();
    for d in dirs {
        sources(&root.join(d), &mut paths);
    }
    paths.extend(files.iter().map(|f| root.join(f)));
    let mut bad = Vec::new();
    for path in &paths {
        for (line, module) in crate_paths(path) {
            if !allowed.contains(&module.as_str()) {
                bad.push(format!("{}:{line}: crate::{module}", path.display()));
            }
        }
    }
    assert!(!paths.is_empty());
    bad
}

#[test]
fn the_protocol_is_a_leaf() {
    let bad = offenders(&["src/protocol"], &[], &["protocol"]);
    assert!(
        bad.is_empty(),
        "the protocol imports the rest of the crate:\n{}",
        bad.join("\n")
    );
}

#[test]
fn front_ends_reach_a_run_only_through_the_protocol() {
    let bad = offenders(&["src/ui"], &["src/headless.rs"], &["protocol", "ui", "headless"]);
    assert!(bad.is_empty(), "a front-end reaches past its link:\n{}", bad.join("\n"));
}

#[test]
fn the_engine_knows_no_terminal() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut paths = Vec::new();
    sources(&root.join("src/engine"), &mut paths);
    let bad: Vec<String> = paths
        .iter()
        .filter(|p| {
            let text = std::fs::read_to_string(p).unwrap_or_default();
            text.contains("ratatui") || text.contains("crossterm") || text.contains("crate::ui")
        })
        .map(|p| p.display().to_string())
        .collect();
    assert!(bad.is_empty(), "the engine imports the terminal UI: {bad:?}");
}

#[test]
fn insight_is_pure_functions_over_history() {
    // The protocol is a leaf: its types (failure classes, diagnoses) are
    // what insight's answers are made of.
    let bad = offenders(&["src/insight"], &[], &["insight", "store", "protocol"]);
    assert!(
        bad.is_empty(),
        "insight reaches past history's rows:\n{}",
        bad.join("\n")
    );
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut paths = Vec::new();
    sources(&root.join("src/insight"), &mut paths);
    for p in paths {
        let text = std::fs::read_to_string(&p).unwrap_or_default();
        for line in text.lines().filter(|l| l.contains("crate::store::")) {
            assert!(line.contains("crate::store::history"), "{}: {line}", p.display());
        }
        for io in ["std::fs", "std::process", "tokio", "rusqlite", "std::net"] {
            assert!(!text.contains(io), "{} does I/O ({io})", p.display());
        }
    }
}
