//! The failure knowledge base's fixtures: for every rule of
//! `assets/failure-rules.yml`, a real-looking log that it must explain
//! (`tests/fixtures/failures/<id>/match.log`) and a near miss it must not
//! (`near.log`), and a runbook section it points to.
//!
//! A fixture's optional first line sets how the step ended:
//! `#! exit=5 signal=oom stream=stdout` (exit code, default 1 without a
//! signal; the signal as the rules name it; lines come on standard error
//! unless `stream=stdout`).

use std::path::Path;

use trackside::insight::knowledge::{Ending, KnowledgeBase, Signal};

struct Fixture {
    end: Ending,
    stderr: bool,
    lines: Vec<String>,
}

fn fixture(path: &Path) -> Fixture {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
    let mut end = Ending::default();
    let mut stderr = true;
    let mut exit = None;
    if lines.first().is_some_and(|l| l.starts_with("#!")) {
        let header = lines.remove(0);
        for kv in header[2..].split_whitespace() {
            match kv.split_once('=') {
                Some(("exit", v)) => exit = Some(v.parse().unwrap_or_else(|e| panic!("{}: exit: {e}", path.display()))),
                Some(("signal", v)) => {
                    end.signal = Some(
                        serde_yaml::from_str::<Signal>(v).unwrap_or_else(|e| panic!("{}: signal: {e}", path.display())),
                    )
                }
                Some(("stream", v)) => stderr = v != "stdout",
                _ => panic!("{}: unknown header item {kv}", path.display()),
            }
        }
    }
    end.exit_code = exit.or(if end.signal.is_none() { Some(1) } else { None });
    Fixture { end, stderr, lines }
}

fn diagnose(f: &Fixture) -> Option<String> {
    let mut scan = KnowledgeBase::builtin().scan();
    for l in &f.lines {
        scan.line(l, f.stderr);
    }
    scan.finish(&f.end).map(|d| d.rule)
}

#[test]
fn every_rule_explains_its_fixture_and_not_its_near_miss() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let kb = KnowledgeBase::builtin();
    assert!(
        kb.rules().len() >= 40,
        "the knowledge base has {} rules",
        kb.rules().len()
    );
    let mut problems = Vec::new();
    for rule in kb.rules() {
        let dir = root.join("tests/fixtures/failures").join(&rule.id);
        let matching = fixture(&dir.join("match.log"));
        assert!(
            !matching.lines.is_empty() || rule.signal.is_some(),
            "{}: an empty fixture",
            rule.id
        );
        match diagnose(&matching) {
            Some(id) if id == rule.id => {}
            other => problems.push(format!("{}/match.log is explained by {other:?}", rule.id)),
        }
        let near = fixture(&dir.join("near.log"));
        if diagnose(&near).as_deref() == Some(rule.id.as_str()) {
            problems.push(format!("{}/near.log is explained by the rule too", rule.id));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn every_rule_has_its_runbook_section() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut problems = Vec::new();
    for rule in KnowledgeBase::builtin().rules() {
        let Some((page, anchor)) = rule.runbook.split_once('#') else {
            problems.push(format!("{}: runbook {} has no #section", rule.id, rule.runbook));
            continue;
        };
        if anchor != rule.id || !page.starts_with("docs/runbooks/") {
            problems.push(format!(
                "{}: runbook {} is not docs/runbooks/PAGE#{}",
                rule.id, rule.runbook, rule.id
            ));
        }
        match std::fs::read_to_string(root.join(page)) {
            Ok(text) if text.lines().any(|l| l.trim() == format!("## {}", rule.id)) => {}
            Ok(_) => problems.push(format!("{page} has no section `## {}`", rule.id)),
            Err(e) => problems.push(format!("{page}: {e}")),
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}
