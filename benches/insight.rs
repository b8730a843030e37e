//! The history and flakiness benchmark behind docs/BENCHMARKS.md:
//! `cargo bench --bench insight`.
//!
//! A store whose history holds 100,000 attempts (200 jobs of one pipeline
//! over 500 runs, 5% failing their first attempt and passing a retry):
//! - what `trackside flaky` does: read every attempt and rank the series
//!   (target: under 200 ms);
//! - the cost of recording one attempt as a run does it, one row in its own
//!   transaction (target: under 1 ms).

#[path = "support/stats.rs"]
mod stats;
use stats::stats;

use std::time::Instant;

use trackside::insight::flaky;
use trackside::store::history::{AttemptRow, Filter};
use trackside::store::index::Index;

fn row(run: usize, job: usize, attempt: u32, failed: bool) -> AttemptRow {
    AttemptRow {
        run_id: format!("20261205-{run:06}"),
        pipeline: "/work/shop/.github/workflows/ci.yml".into(),
        dialect: "github".into(),
        job: format!("test-{job:03}"),
        definition: format!("{:016x}", job * 7919),
        commit: Some(format!("{:040x}", run / 5)),
        branch: Some("main".into()),
        default_branch: true,
        dirty: false,
        attempt,
        outcome: if failed { "failed" } else { "passed" }.into(),
        failure_class: failed.then(|| "script".into()),
        exit_code: Some(i32::from(failed)),
        duration_ms: 1_000 + (run * 37 + job * 11) as u64 % 900,
        peak_memory: None,
        executor: "shell".into(),
        host: "ci-1".into(),
        signature: None,
        started_ms: 1_700_000_000_000 + (run * 1_000 + job) as u64,
        failure_line: None,
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
        let rows = index.attempts(&Filter::default()).expect("select");
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
}
