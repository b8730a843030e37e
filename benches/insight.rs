//! The history and flakiness benchmark behind docs/BENCHMARKS.md:
//! `cargo bench --bench insight`.
//!
//! A store whose history holds 100,000 attempts (200 jobs of one pipeline
//! over 500 runs, 5% failing their first attempt and passing a retry):
//! - what `trackside flaky` does: read every attempt and rank the series
//!   (target: under 200 ms);
//! - the cost of recording one attempt as a run does it, one row in its own
//!   transaction (target: under 1 ms);
//! - the forecast: read 200 jobs' recent durations and simulate the run
//!   (target: under 50 ms);
//! - the failure knowledge base reading a step's output as it streams:
//!   100,000 lines of ordinary build output with the fixture logs' lines
//!   mixed in, every rule's patterns at once (target: under 1 µs a line,
//!   so a step printing 10,000 lines a second spends under 1% on it).

#[path = "support/stats.rs"]
mod stats;
use stats::stats;

use std::time::Instant;

use trackside::insight::flaky;
use trackside::store::history::{AttemptRow, Filter};
use trackside::store::index::Index;

fn row(run: usize, job: usize, attempt: u32, failed: bool) -> AttemptRow {
    AttemptRow {
        run_id: format!("20261205-{run:06}").into(),
        pipeline: "/work/shop/.github/workflows/ci.yml".into(),
        dialect: "github".into(),
        job: format!("test-{job:03}").into(),
        definition: format!("{:016x}", job * 7919).into(),
        commit: Some(format!("{:040x}", run / 5).into()),
        branch: Some("main".into()),
        default_branch: true,
        dirty: false,
        attempt,
        outcome: if failed { "failed" } else { "passed" }.into(),
        failure_class: failed.then(|| "script".into()),
        exit_code: Some(i32::from(failed)),
        duration_ms: 1_000 + (run * 37 + job * 11) as u64 % 900,
        peak_memory: None,
        cpu_ms: None,
        executor: "shell".into(),
        host: "ci-1".into(),
        signature: None,
        started_ms: 1_700_000_000_000 + (run * 1_000 + job) as u64,
        failure_line: None,
        allowed: false,
    }
}

fn main() {
    if std::env::args().any(|a| a == "--list" || a == "--test") {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let index = Index::open(dir.path()).expect("index");
    let mut rng = fastrand::Rng::with_seed(7);
    let mut batch = Vec::new();
    let mut total = 0;
    for run in 0..500 {
        for job in 0..200 {
            if total >= 100_000 {
                break;
            }
            let fails = rng.f64() < 0.05;
            batch.push(row(run, job, 1, fails));
            total += 1;
            if fails && total < 100_000 {
                batch.push(row(run, job, 2, false));
                total += 1;
            }
        }
        index.record_attempts(&batch).expect("insert");
        batch.clear();
    }
    let (mut samples, mut reads, mut ranks) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..11 {
        let t = Instant::now();
        // As `trackside flaky` reads them.
        let lean = Filter {
            lean: true,
            ..Filter::default()
        };
        let rows = index.attempts(&lean).expect("select");
        let read = t.elapsed();
        let found = flaky::analyse(&rows);
        samples.push(t.elapsed());
        reads.push(read);
        ranks.push(t.elapsed() - read);
        assert_eq!(rows.len(), 100_000);
        assert!(found.iter().any(|f| f.verdict == flaky::Verdict::Flaky));
    }
    stats(
        "history: read and rank 100,000 attempts (trackside flaky)",
        samples,
        "< 200 ms",
    );
    stats("  of which reading the rows", reads, "");
    stats("  of which ranking them", ranks, "");
    let mut samples = Vec::new();
    for i in 0..500 {
        let r = row(10_000 + i, 0, 1, false);
        let t = Instant::now();
        index.record_attempts(std::slice::from_ref(&r)).expect("insert");
        samples.push(t.elapsed());
    }
    stats("history: record one attempt (its own transaction)", samples, "< 1 ms");
    forecast(&index);
    knowledge();
}

/// What a run does before its first forecast, and `trackside forecast`:
/// read the 200 jobs' recent durations from the 100,000-attempt history,
/// then simulate the run (a DAG of 10 levels of 20 jobs, 8 at once).
fn forecast(index: &Index) {
    use trackside::insight::forecast::{MAX_SAMPLES, Node, SIMULATIONS, State, forecast};
    let mut samples = Vec::new();
    for seed in 0..11 {
        let t = Instant::now();
        let history = index
            .recent_durations("/work/shop/.github/workflows/ci.yml", 200, MAX_SAMPLES)
            .expect("durations");
        let nodes: Vec<Node> = (0..200)
            .map(|j| Node {
                deps: if j < 20 {
                    Vec::new()
                } else {
                    vec![j - 20, (j / 20 - 1) * 20]
                },
                state: State::Pending,
                history: history.get(&format!("test-{j:03}")).cloned().unwrap_or_default(),
                // Longest path to the end, in jobs: 10 levels of 20.
                priority: 10 - (j / 20) as u32,
            })
            .collect();
        let f = forecast(&nodes, 8, 0.0, SIMULATIONS, seed).expect("history");
        samples.push(t.elapsed());
        assert!(f.without_history.is_empty() && f.p50_ms > 0);
    }
    stats("forecast: read durations and simulate 200 jobs", samples, "< 50 ms");
}

fn knowledge() {
    use trackside::insight::knowledge::{Ending, KnowledgeBase};
    let fixtures = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/failures");
    let mut failing = Vec::new();
    for dir in std::fs::read_dir(&fixtures).expect("fixtures").flatten() {
        let text = std::fs::read_to_string(dir.path().join("match.log")).unwrap_or_default();
        failing.extend(text.lines().filter(|l| !l.starts_with("#!")).map(str::to_string));
    }
    let ordinary = [
        "   Compiling serde_json v1.0.133",
        "test store::index::tests::cache_entries_outlive_runs ... ok",
        "npm WARN deprecated inflight@1.0.6: This module is not supported, and leaks memory.",
        "[INFO] Downloaded from central: https://repo.maven.apache.org/maven2/org/slf4j/slf4j-api/2.0.9/slf4j-api-2.0.9.pom (2.8 kB at 112 kB/s)",
        "tests/test_orders.py::test_refund_partial PASSED                              [ 42%]",
        "#12 [build 4/7] RUN pip install --no-cache-dir -r requirements.txt",
        "ok  \tgithub.com/acme/ledger/internal/money\t0.412s\tcoverage: 91.3% of statements",
    ];
    let mut lines = Vec::with_capacity(100_000);
    let mut rng = fastrand::Rng::with_seed(11);
    while lines.len() < 100_000 {
        if rng.f64() < 0.02 && !failing.is_empty() {
            lines.push(failing[rng.usize(..failing.len())].clone());
        } else {
            lines.push(ordinary[rng.usize(..ordinary.len())].to_string());
        }
    }
    let kb = KnowledgeBase::builtin();
    let mut samples = Vec::new();
    for _ in 0..11 {
        let t = Instant::now();
        let mut scan = kb.scan();
        for l in &lines {
            scan.line(l, true);
        }
        let d = scan.finish(&Ending {
            signal: None,
            exit_code: Some(1),
        });
        samples.push(t.elapsed());
        assert!(d.is_some());
    }
    stats(
        "knowledge base: read 100,000 output lines (62 rules)",
        samples,
        "< 100 ms (1 µs a line)",
    );
}
