//! Flakiness from history, with evidence and uncertainty.
//!
//! A series is one job of one pipeline with one definition, on the default
//! branch or on the others (kept apart). Each run of it counts once: it
//! failed if its first attempt failed. Cancelled attempts and runs in which
//! most jobs failed (the machine or a service, not the job) are left out.
//!
//! - **Evidence**: a job is flaky only when it passed on a retry, or
//!   passed and failed on the same commit (a clean work tree) with the same
//!   definition.
//! - **Rate**: the failure probability's posterior under a uniform prior,
//!   Beta(1 + failures, 1 + passes); its 90% equal-tailed interval.
//! - **Since**: where it most likely started failing: the change point of
//!   a two-segment Beta-Binomial model (posterior over every split, uniform
//!   prior), with its probability.
//! - **Broken**, not flaky: its latest runs failed on every attempt, with
//!   no pass since they began.

use std::collections::HashMap;

use serde::Serialize;
use statrs::distribution::{Beta, ContinuousCDF};
use statrs::function::beta::ln_beta;

use crate::store::history::AttemptRow;

/// A run's outcome in a series.
#[derive(Debug, Clone, PartialEq)]
struct RunOutcome<'a> {
    run_id: &'a str,
    commit: Option<&'a str>,
    dirty: bool,
    started_ms: u64,
    /// The first attempt failed.
    failed_first: bool,
    /// A later attempt passed after a failure.
    passed_on_retry: bool,
    /// Every attempt failed.
    failed_all: bool,
    class: Option<&'a str>,
    /// The failure's signature and the line that told it.
    signature: Option<&'a str>,
    line: Option<&'a str>,
}

/// What the evidence says of a series.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    /// Failed and passed with nothing changed.
    Flaky,
    /// Its latest runs all fail: a real failure.
    Broken,
    /// Failures, but no evidence of flakiness (yet).
    Failing,
    /// No failures.
    Stable,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Since {
    pub commit: Option<String>,
    pub run_id: String,
    /// The change point's posterior probability.
    pub probability: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LastFailure {
    pub run_id: String,
    pub started_ms: u64,
    pub class: Option<String>,
    pub signature: Option<String>,
    /// The output line that told it.
    pub line: Option<String>,
}

/// One series' flakiness.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Flakiness {
    pub pipeline: String,
    pub job: String,
    pub definition: String,
    /// `default` (the repository's default branch) or `other`.
    pub branches: &'static str,
    pub runs: u32,
    pub failures: u32,
    /// failures / runs.
    pub rate: f64,
    /// The 90% interval of the failure probability.
    pub low: f64,
    pub high: f64,
    pub verdict: Verdict,
    /// Runs that passed on a retry.
    pub passed_on_retry: u32,
    /// Commits on which it both passed and failed.
    pub mixed_commits: u32,
    pub since: Option<Since>,
    pub last_failure: Option<LastFailure>,
}

impl Flakiness {
    /// "flaky: 7 of 40 runs, 18% [9%, 30%]"
    pub fn summary(&self) -> String {
        let pct = |x: f64| format!("{:.0}%", x * 100.0);
        let word = match self.verdict {
            Verdict::Flaky => "flaky",
            Verdict::Broken => "broken",
            Verdict::Failing => "failing",
            Verdict::Stable => "stable",
        };
        format!(
            "{word}: {} of {} runs, {} [{}, {}]",
            self.failures,
            self.runs,
            pct(self.rate),
            pct(self.low),
            pct(self.high)
        )
    }
}

/// The 90% interval of the failure rate: equal-tailed of Beta(1 + f,
/// 1 + n - f), one-sided at the edges (no failure: from 0; every run
/// failed: up to 1), so the observed rate is always inside it.
pub fn interval(failures: u32, runs: u32) -> (f64, f64) {
    let a = 1.0 + f64::from(failures);
    let b = 1.0 + f64::from(runs.saturating_sub(failures));
    match Beta::new(a, b) {
        Ok(_) if runs == 0 => (0.0, 1.0),
        Ok(d) if failures == 0 => (0.0, d.inverse_cdf(0.90)),
        Ok(d) if failures >= runs => (d.inverse_cdf(0.10), 1.0),
        Ok(d) => (d.inverse_cdf(0.05), d.inverse_cdf(0.95)),
        Err(_) => (0.0, 1.0),
    }
}

/// The most likely change point of a 0/1 sequence (1 = failed) where the
/// rate goes up: (index of the first run of the new segment, its posterior
/// probability). `None` when no split is more likely than none.
pub fn change_point(xs: &[bool]) -> Option<(usize, f64)> {
    let n = xs.len();
    if n < 2 {
        return None;
    }
    // log marginal likelihood of a segment under Beta(1,1): ln B(1+f, 1+n-f).
    let seg = |f: usize, len: usize| ln_beta(1.0 + f as f64, 1.0 + (len - f) as f64);
    let total_f = xs.iter().filter(|&&x| x).count();
    let mut prefix = 0usize;
    // Split k: [0, k) and [k, n); k = 0 is "no change".
    let mut logs = Vec::with_capacity(n);
    logs.push(seg(total_f, n));
    for (k, &x) in xs.iter().enumerate() {
        if k > 0 {
            let (f0, f1) = (prefix, total_f - prefix);
            logs.push(seg(f0, k) + seg(f1, n - k));
        }
        prefix += usize::from(x);
    }
    let max = logs.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let weights: Vec<f64> = logs.iter().map(|l| (l - max).exp()).collect();
    let sum: f64 = weights.iter().sum();
    let (best, w) = weights.iter().enumerate().skip(1).max_by(|a, b| a.1.total_cmp(b.1))?;
    let before = xs[..best].iter().filter(|&&x| x).count() as f64 / best as f64;
    let after = xs[best..].iter().filter(|&&x| x).count() as f64 / (n - best) as f64;
    (after > before && *w > weights[0]).then_some((best, w / sum))
}

/// How often a failure of `signature` was seen in `rows` at or after
/// `since_ms`, and the first run it was seen in.
pub fn seen(rows: &[AttemptRow], signature: &str, since_ms: u64) -> (usize, Option<String>) {
    let mut matching = rows
        .iter()
        .filter(|r| r.signature.as_deref() == Some(signature) && r.started_ms >= since_ms);
    let first = matching.next();
    let count = usize::from(first.is_some()) + matching.count();
    let first_run = rows
        .iter()
        .filter(|r| r.signature.as_deref() == Some(signature))
        .min_by_key(|r| r.started_ms)
        .map(|r| r.run_id.to_string());
    (count, first_run)
}

/// Every series in `rows` (oldest first), most flaky first.
pub fn analyse(rows: &[AttemptRow]) -> Vec<Flakiness> {
    // A cancelled attempt tells nothing; a cache hit reused an earlier pass.
    let counts = |r: &AttemptRow| !matches!(r.outcome.as_str(), "cancelled" | "cached" | "preempted");
    // Runs in which most jobs failed on their first attempt are left out.
    let mut per_run: HashMap<&str, (u32, u32)> = HashMap::new();
    for r in rows.iter().filter(|r| r.attempt == 1 && counts(r)) {
        let e = per_run.entry(r.run_id.as_str()).or_default();
        e.0 += 1;
        e.1 += u32::from(r.outcome == "failed");
    }
    let infra: std::collections::HashSet<&str> = per_run
        .into_iter()
        .filter(|&(_, (jobs, failed))| jobs >= 3 && failed * 2 > jobs)
        .map(|(run, _)| run)
        .collect();
    // Series, then runs, then attempts, by sorting: a run's attempts lie
    // together, a series' runs too. Series and runs are numbered first,
    // so the sort compares numbers, not the long strings that name them.
    let mut series_no: HashMap<(&str, &str, bool, &str), u32> = HashMap::new();
    let mut run_no: HashMap<&str, u32> = HashMap::new();
    // Rows come run by run: the last run's number is usually the one.
    let mut last_run: Option<(&str, u32)> = None;
    let mut kept: Vec<Keyed> = Vec::with_capacity(rows.len());
    for r in rows
        .iter()
        .filter(|r| counts(r) && (infra.is_empty() || !infra.contains(r.run_id.as_str())))
    {
        let next = u32::try_from(series_no.len()).unwrap_or(u32::MAX);
        let key = (
            r.job.as_str(),
            r.definition.as_str(),
            r.default_branch,
            r.pipeline.as_str(),
        );
        let series = *series_no.entry(key).or_insert(next);
        let run = match last_run {
            Some((id, n)) if id == r.run_id => n,
            _ => {
                let next = u32::try_from(run_no.len()).unwrap_or(u32::MAX);
                let n = *run_no.entry(r.run_id.as_str()).or_insert(next);
                last_run = Some((r.run_id.as_str(), n));
                n
            }
        };
        kept.push(Keyed { series, run, row: r });
    }
    kept.sort_unstable_by_key(|k| (k.series, k.run, k.row.attempt));
    let mut out = Vec::new();
    for series in kept.chunk_by(|a, b| a.series == b.series) {
        let mut outcomes: Vec<RunOutcome> = series.chunk_by(|a, b| a.run == b.run).map(run_outcome).collect();
        outcomes.sort_by(|a, b| a.started_ms.cmp(&b.started_ms).then_with(|| a.run_id.cmp(b.run_id)));
        let first = series[0].row;
        out.push(judge(
            &first.pipeline,
            &first.job,
            &first.definition,
            first.default_branch,
            &outcomes,
        ));
    }
    out.sort_by(|a, b| {
        let rank = |f: &Flakiness| match f.verdict {
            Verdict::Flaky => 0,
            Verdict::Broken => 1,
            Verdict::Failing => 2,
            Verdict::Stable => 3,
        };
        rank(a).cmp(&rank(b)).then(b.rate.total_cmp(&a.rate)).then_with(|| {
            (&a.job, &a.definition, a.branches, &a.pipeline).cmp(&(&b.job, &b.definition, b.branches, &b.pipeline))
        })
    });
    out
}

/// An attempt with the numbers of its series and run.
struct Keyed<'a> {
    series: u32,
    run: u32,
    row: &'a AttemptRow,
}

/// A run's attempts, in order.
fn run_outcome<'a>(attempts: &[Keyed<'a>]) -> RunOutcome<'a> {
    let first = attempts[0].row;
    let failed_first = first.outcome == "failed";
    let failed = attempts.iter().map(|k| k.row).rev().find(|a| a.outcome == "failed");
    let passed_later = attempts.iter().skip(1).any(|k| k.row.outcome == "passed");
    RunOutcome {
        run_id: &first.run_id,
        commit: first.commit.as_deref(),
        dirty: first.dirty,
        started_ms: first.started_ms,
        failed_first,
        passed_on_retry: failed_first && passed_later,
        failed_all: attempts.iter().all(|k| k.row.outcome == "failed"),
        class: failed.and_then(|a| a.failure_class.as_deref()),
        signature: failed.and_then(|a| a.signature.as_deref()),
        line: failed.and_then(|a| a.failure_line.as_deref()),
    }
}

fn judge(pipeline: &str, job: &str, definition: &str, default: bool, runs: &[RunOutcome]) -> Flakiness {
    let n = u32::try_from(runs.len()).unwrap_or(u32::MAX);
    let failures = u32::try_from(runs.iter().filter(|r| r.failed_first).count()).unwrap_or(u32::MAX);
    let passed_on_retry = u32::try_from(runs.iter().filter(|r| r.passed_on_retry).count()).unwrap_or(u32::MAX);
    // Commits (clean trees) with both a pass and a failure.
    let mut by_commit: HashMap<&str, (bool, bool)> = HashMap::new();
    for r in runs.iter().filter(|r| !r.dirty) {
        if let Some(c) = r.commit {
            let e = by_commit.entry(c).or_default();
            if r.failed_first {
                e.1 = true;
            } else {
                e.0 = true;
            }
            if r.passed_on_retry {
                e.0 = true;
            }
        }
    }
    let mixed_commits = u32::try_from(by_commit.values().filter(|(p, f)| *p && *f).count()).unwrap_or(u32::MAX);
    // Broken: the latest runs fail on every attempt, from a commit on
    // which it never passed.
    let tail = runs.iter().rev().take_while(|r| r.failed_all).count();
    let broken = tail > 0 && {
        let from = &runs[runs.len() - tail];
        let passed_there = from.commit.is_some_and(|c| {
            runs.iter()
                .any(|r| r.commit == Some(c) && !r.dirty && (!r.failed_first || r.passed_on_retry))
        });
        !passed_there
    };
    let verdict = if broken {
        Verdict::Broken
    } else if passed_on_retry > 0 || mixed_commits > 0 {
        Verdict::Flaky
    } else if failures > 0 {
        Verdict::Failing
    } else {
        Verdict::Stable
    };
    let (low, high) = interval(failures, n);
    let xs: Vec<bool> = runs.iter().map(|r| r.failed_first).collect();
    let since = match verdict {
        Verdict::Broken => runs.get(runs.len() - tail).map(|r| Since {
            commit: r.commit.map(str::to_string),
            run_id: r.run_id.to_string(),
            probability: 1.0,
        }),
        _ => change_point(&xs).map(|(k, p)| Since {
            commit: runs[k].commit.map(str::to_string),
            run_id: runs[k].run_id.to_string(),
            probability: p,
        }),
    };
    let last_failure = runs.iter().rev().find(|r| r.failed_first).map(|r| LastFailure {
        run_id: r.run_id.to_string(),
        started_ms: r.started_ms,
        class: r.class.map(str::to_string),
        signature: r.signature.map(str::to_string),
        line: r.line.map(str::to_string),
    });
    Flakiness {
        pipeline: pipeline.to_string(),
        job: job.to_string(),
        definition: definition.to_string(),
        branches: if default { "default" } else { "other" },
        runs: n,
        failures,
        rate: if n == 0 {
            0.0
        } else {
            f64::from(failures) / f64::from(n)
        },
        low,
        high,
        verdict,
        passed_on_retry,
        mixed_commits,
        since,
        last_failure,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attempt(run: usize, job: &str, attempt: u32, failed: bool, commit: &str) -> AttemptRow {
        AttemptRow {
            run_id: format!("r{run:03}").into(),
            pipeline: "ci.yml".into(),
            dialect: "native".into(),
            job: job.into(),
            definition: "d".into(),
            commit: Some(commit.into()),
            branch: Some("main".into()),
            default_branch: true,
            dirty: false,
            attempt,
            outcome: if failed { "failed" } else { "passed" }.into(),
            failure_class: failed.then(|| "script".into()),
            exit_code: Some(i32::from(failed)),
            duration_ms: 100,
            peak_memory: None,
            cpu_ms: None,
            executor: "shell".into(),
            host: "h".into(),
            signature: None,
            started_ms: run as u64 * 1_000 + u64::from(attempt),
            failure_line: None,
            allowed: false,
        }
    }

    #[test]
    fn a_job_failing_on_a_seeded_schedule_is_flaky_with_an_interval_holding_its_rate() {
        // Fails about one run in five, passing on its retry; 30 runs.
        let mut rng = fastrand::Rng::with_seed(11);
        let mut rows = Vec::new();
        let mut failed = 0;
        for run in 0..30 {
            let fails = rng.f64() < 0.2;
            failed += usize::from(fails);
            rows.push(attempt(run, "test", 1, fails, "c1"));
            if fails {
                rows.push(attempt(run, "test", 2, false, "c1"));
            }
            rows.push(attempt(run, "lint", 1, false, "c1"));
        }
        let found = analyse(&rows);
        let test = found.iter().find(|f| f.job == "test").unwrap();
        assert_eq!(test.verdict, Verdict::Flaky);
        assert_eq!(test.runs, 30);
        assert_eq!(test.failures as usize, failed);
        assert!(test.low < 0.2 && 0.2 < test.high, "{test:?}");
        assert_eq!(found[0].job, "test", "ranked first");
        let lint = found.iter().find(|f| f.job == "lint").unwrap();
        assert_eq!(lint.verdict, Verdict::Stable);
        assert!(test.summary().starts_with(&format!("flaky: {failed} of 30 runs")));
    }

    #[test]
    fn a_job_broken_at_a_commit_is_broken_from_there_not_flaky() {
        let mut rows = Vec::new();
        for run in 0..20 {
            let commit = if run < 12 { format!("c{run}") } else { "bad".to_string() };
            let broken = run >= 12;
            rows.push(attempt(run, "build", 1, broken, &commit));
            if broken {
                rows.push(attempt(run, "build", 2, true, &commit));
            }
        }
        let f = &analyse(&rows)[0];
        assert_eq!(f.verdict, Verdict::Broken);
        let since = f.since.as_ref().unwrap();
        assert_eq!(since.commit.as_deref(), Some("bad"));
        assert_eq!(since.run_id, "r012");
    }

    #[test]
    fn the_change_point_names_where_failures_began() {
        let mut xs = vec![false; 20];
        xs.extend([true, false, true, true, false, true, true, false, true, true]);
        let (k, p) = change_point(&xs).unwrap();
        assert!((19..=21).contains(&k), "{k}");
        assert!(p > 0.2, "{p}");
        assert_eq!(change_point(&[false; 10]), None);
    }

    #[test]
    fn runs_where_most_jobs_failed_are_not_counted() {
        let mut rows = Vec::new();
        for run in 0..10 {
            let outage = run == 4;
            for job in ["a", "b", "c", "d"] {
                rows.push(attempt(run, job, 1, outage, "c1"));
            }
        }
        for f in analyse(&rows) {
            assert_eq!((f.runs, f.failures, f.verdict), (9, 0, Verdict::Stable), "{f:?}");
        }
    }

    #[test]
    fn the_interval_narrows_with_runs() {
        let (l1, h1) = interval(1, 5);
        let (l2, h2) = interval(20, 100);
        assert!(h2 - l2 < h1 - l1);
        assert!(l2 < 0.2 && 0.2 < h2);
    }

    #[test]
    fn the_interval_holds_the_observed_rate_at_the_edges() {
        let (low, high) = interval(3, 3);
        assert_eq!(high, 1.0);
        assert!(low > 0.4 && low < 0.7, "{low}");
        let (low, high) = interval(0, 10);
        assert_eq!(low, 0.0);
        assert!(high > 0.1 && high < 0.3, "{high}");
    }
}
