//! Pipeline metrics from history, in Prometheus' text exposition format
//! (`trackside metrics`, for node_exporter's textfile collector), and the
//! per-run figures `trackside stats` charts. Pure functions over history
//! rows.

use std::collections::BTreeMap;
use std::fmt::Write;

use super::flaky::{Flakiness, Verdict};
use crate::protocol::view::{ClassCount, FlakyJob, PipelineStats};
use crate::store::history::AttemptRow;

/// Upper bounds of the duration histogram's buckets, in seconds.
pub const BUCKETS: [f64; 11] = [1.0, 5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0, 7200.0];

/// A label value as the text format wants it: `\`, `"` and newlines escaped.
fn label(v: &str) -> String {
    v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

/// One run of a pipeline, as history tells it.
#[derive(Debug, Clone, PartialEq)]
pub struct RunFigures {
    pub run_id: String,
    pub pipeline: String,
    pub started_ms: u64,
    /// From its first attempt's start to its last attempt's end.
    pub duration_ms: u64,
    /// Some job's last attempt failed, and the run did not allow it.
    pub failed: bool,
    /// Attempts that failed, by class.
    pub failures: BTreeMap<String, u32>,
}

/// The runs in `rows`, oldest first.
pub fn runs(rows: &[AttemptRow]) -> Vec<RunFigures> {
    let mut by_run: BTreeMap<&str, Vec<&AttemptRow>> = BTreeMap::new();
    for r in rows {
        by_run.entry(r.run_id.as_str()).or_default().push(r);
    }
    let mut out: Vec<RunFigures> = by_run
        .into_values()
        .map(|rs| {
            let start = rs.iter().map(|r| r.started_ms).min().unwrap_or(0);
            let end = rs.iter().map(|r| r.started_ms + r.duration_ms).max().unwrap_or(start);
            // A job's last attempt decides it.
            let mut last: BTreeMap<&str, &AttemptRow> = BTreeMap::new();
            for r in &rs {
                let e = last.entry(r.job.as_str()).or_insert(r);
                if r.attempt > e.attempt {
                    *e = r;
                }
            }
            let mut failures = BTreeMap::new();
            for r in rs.iter().filter(|r| r.outcome == "failed") {
                *failures
                    .entry(r.failure_class.as_deref().unwrap_or("script").to_string())
                    .or_insert(0) += 1;
            }
            RunFigures {
                run_id: rs[0].run_id.to_string(),
                pipeline: rs[0].pipeline.to_string(),
                started_ms: start,
                duration_ms: end.saturating_sub(start),
                failed: last.values().any(|r| r.outcome == "failed" && !r.allowed),
                failures,
            }
        })
        .collect();
    out.sort_by_key(|r| r.started_ms);
    out
}

/// Each pipeline's last `last` runs in `rows` (at least one), with the
/// flakiest of its jobs from `flaky`: what `trackside stats` prints and the
/// UI's dashboard charts. By pipeline key.
pub fn stats(rows: &[AttemptRow], flaky: &[Flakiness], last: usize) -> Vec<PipelineStats> {
    let mut by_pipeline: BTreeMap<String, Vec<RunFigures>> = BTreeMap::new();
    for r in runs(rows) {
        by_pipeline.entry(r.pipeline.clone()).or_default().push(r);
    }
    by_pipeline
        .into_iter()
        .map(|(pipeline, runs)| {
            let recent = &runs[runs.len().saturating_sub(last.max(1))..];
            let series: Vec<u64> = recent.iter().map(|r| r.duration_ms).collect();
            let mut sorted = series.clone();
            sorted.sort_unstable();
            let pick = |q: f64| {
                sorted
                    .get(((sorted.len().saturating_sub(1)) as f64 * q).round() as usize)
                    .copied()
                    .unwrap_or(0)
            };
            let mut classes: BTreeMap<&str, u32> = BTreeMap::new();
            for r in recent {
                for (c, n) in &r.failures {
                    *classes.entry(c.as_str()).or_insert(0) += n;
                }
            }
            let mut failures_by_class: Vec<ClassCount> = classes
                .into_iter()
                .map(|(class, attempts)| ClassCount {
                    class: class.to_string(),
                    attempts,
                })
                .collect();
            failures_by_class.sort_by(|a, b| b.attempts.cmp(&a.attempts).then(a.class.cmp(&b.class)));
            let mut flakiest: Vec<&Flakiness> = flaky
                .iter()
                .filter(|f| f.pipeline == pipeline && f.verdict == Verdict::Flaky)
                .collect();
            flakiest.sort_by(|a, b| b.rate.total_cmp(&a.rate).then(a.job.cmp(&b.job)));
            PipelineStats {
                runs: recent.len(),
                failed: recent.iter().filter(|r| r.failed).count(),
                p50_ms: pick(0.5),
                p90_ms: pick(0.9),
                durations_ms: series,
                results: recent
                    .iter()
                    .map(|r| if r.failed { "failed" } else { "passed" }.to_string())
                    .collect(),
                failures_by_class,
                flaky: flakiest
                    .into_iter()
                    .take(5)
                    .map(|f| FlakyJob {
                        job: f.job.clone(),
                        rate: f.rate,
                        low: f.low,
                        high: f.high,
                    })
                    .collect(),
                pipeline,
            }
        })
        .collect()
}

/// Everything `rows` and `flaky` say, as Prometheus metrics.
pub fn prometheus(rows: &[AttemptRow], flaky: &[Flakiness]) -> String {
    let mut run_counts: BTreeMap<(String, &str), u64> = BTreeMap::new();
    for r in runs(rows) {
        *run_counts
            .entry((r.pipeline, if r.failed { "failed" } else { "passed" }))
            .or_insert(0) += 1;
    }
    let mut attempts: BTreeMap<(&str, &str, &str), u64> = BTreeMap::new();
    let mut failures: BTreeMap<(&str, &str, String), u64> = BTreeMap::new();
    let mut retries: BTreeMap<(&str, &str), u64> = BTreeMap::new();
    let mut durations: BTreeMap<(&str, &str), Vec<f64>> = BTreeMap::new();
    // An attempt after a preempted one is the job run again, not a retry.
    let preempted: std::collections::HashSet<(&str, &str, u32)> = rows
        .iter()
        .filter(|r| r.outcome == "preempted")
        .map(|r| (r.run_id.as_str(), r.job.as_str(), r.attempt))
        .collect();
    let mut cache_hits: BTreeMap<(&str, &str), u64> = BTreeMap::new();
    for r in rows {
        let key = (r.pipeline.as_str(), r.job.as_str());
        *attempts.entry((key.0, key.1, r.outcome.as_str())).or_insert(0) += 1;
        if r.outcome == "cached" {
            // Served from the result cache: not a run of the job's steps.
            *cache_hits.entry(key).or_insert(0) += 1;
            continue;
        }
        if r.outcome == "failed" {
            let class = r.failure_class.as_deref().unwrap_or("script").to_string();
            *failures.entry((key.0, key.1, class)).or_insert(0) += 1;
        }
        if r.attempt > 1 && !preempted.contains(&(r.run_id.as_str(), r.job.as_str(), r.attempt - 1)) {
            *retries.entry(key).or_insert(0) += 1;
        }
        durations.entry(key).or_default().push(r.duration_ms as f64 / 1000.0);
    }
    // Each family: its HELP and TYPE, then its samples.
    let mut out = String::new();
    let mut family = |name: &str, kind: &str, text: &str, samples: &mut dyn FnMut(&mut String)| {
        let _ = writeln!(out, "# HELP {name} {text}\n# TYPE {name} {kind}");
        samples(&mut out);
    };
    family(
        "trackside_runs_total",
        "counter",
        "Runs recorded in history, by pipeline and result (failed: some job's last attempt failed).",
        &mut |out| {
            for ((p, result), n) in &run_counts {
                let _ = writeln!(
                    out,
                    "trackside_runs_total{{pipeline=\"{}\",result=\"{result}\"}} {n}",
                    label(p)
                );
            }
        },
    );
    family(
        "trackside_job_attempts_total",
        "counter",
        "Attempts of each job, by outcome.",
        &mut |out| {
            for ((p, j, o), n) in &attempts {
                let _ = writeln!(
                    out,
                    "trackside_job_attempts_total{{pipeline=\"{}\",job=\"{}\",outcome=\"{o}\"}} {n}",
                    label(p),
                    label(j)
                );
            }
        },
    );
    family(
        "trackside_job_failures_total",
        "counter",
        "Failed attempts of each job, by failure class.",
        &mut |out| {
            for ((p, j, c), n) in &failures {
                let _ = writeln!(
                    out,
                    "trackside_job_failures_total{{pipeline=\"{}\",job=\"{}\",class=\"{c}\"}} {n}",
                    label(p),
                    label(j)
                );
            }
        },
    );
    family(
        "trackside_job_retries_total",
        "counter",
        "Attempts after a job's first in a run.",
        &mut |out| {
            for ((p, j), n) in &retries {
                let _ = writeln!(
                    out,
                    "trackside_job_retries_total{{pipeline=\"{}\",job=\"{}\"}} {n}",
                    label(p),
                    label(j)
                );
            }
        },
    );
    family(
        "trackside_job_cache_hits_total",
        "counter",
        "Times a job was served from the result cache instead of running.",
        &mut |out| {
            for ((p, j), n) in &cache_hits {
                let _ = writeln!(
                    out,
                    "trackside_job_cache_hits_total{{pipeline=\"{}\",job=\"{}\"}} {n}",
                    label(p),
                    label(j)
                );
            }
        },
    );
    family(
        "trackside_job_duration_seconds",
        "histogram",
        "How long each attempt of a job took.",
        &mut |out| {
            for ((p, j), ds) in &durations {
                let (p, j) = (label(p), label(j));
                let name = "trackside_job_duration_seconds";
                for b in BUCKETS {
                    let n = ds.iter().filter(|&&d| d <= b).count();
                    let _ = writeln!(out, "{name}_bucket{{pipeline=\"{p}\",job=\"{j}\",le=\"{b}\"}} {n}");
                }
                let _ = writeln!(
                    out,
                    "{name}_bucket{{pipeline=\"{p}\",job=\"{j}\",le=\"+Inf\"}} {}",
                    ds.len()
                );
                let _ = writeln!(
                    out,
                    "{name}_sum{{pipeline=\"{p}\",job=\"{j}\"}} {}",
                    // Durations are whole milliseconds: so is their sum.
                    (ds.iter().sum::<f64>() * 1000.0).round() / 1000.0
                );
                let _ = writeln!(out, "{name}_count{{pipeline=\"{p}\",job=\"{j}\"}} {}", ds.len());
            }
        },
    );
    family(
        "trackside_job_flake_rate",
        "gauge",
        "Failure rate of the jobs ranked flaky (trackside flaky), over their recent runs.",
        &mut |out| {
            for f in flaky.iter().filter(|f| f.verdict == Verdict::Flaky) {
                let _ = writeln!(
                    out,
                    "trackside_job_flake_rate{{pipeline=\"{}\",job=\"{}\"}} {}",
                    label(&f.pipeline),
                    label(&f.job),
                    f.rate
                );
            }
        },
    );
    family(
        "trackside_flaky_jobs",
        "gauge",
        "Jobs ranked flaky, per pipeline.",
        &mut |out| {
            let mut per: BTreeMap<&str, u64> = BTreeMap::new();
            for f in flaky {
                *per.entry(f.pipeline.as_str()).or_insert(0) += u64::from(f.verdict == Verdict::Flaky);
            }
            for (p, n) in &per {
                let _ = writeln!(out, "trackside_flaky_jobs{{pipeline=\"{}\"}} {n}", label(p));
            }
        },
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(run: &str, job: &str, attempt: u32, outcome: &str, started: u64, ms: u64) -> AttemptRow {
        AttemptRow {
            run_id: run.into(),
            pipeline: "/p/ci.yml".into(),
            dialect: "native".into(),
            job: job.into(),
            definition: "d".into(),
            commit: None,
            branch: None,
            default_branch: false,
            dirty: false,
            attempt,
            outcome: outcome.into(),
            failure_class: (outcome == "failed").then(|| "network".into()),
            exit_code: None,
            duration_ms: ms,
            peak_memory: None,
            cpu_ms: None,
            executor: "shell".into(),
            host: "h".into(),
            signature: None,
            started_ms: started,
            failure_line: None,
            allowed: false,
        }
    }

    #[test]
    fn an_attempt_after_a_preemption_is_not_a_retry() {
        let rows = [
            row("r1", "suite", 1, "preempted", 0, 1_000),
            row("r1", "suite", 2, "failed", 2_000, 1_000),
            row("r1", "suite", 3, "passed", 4_000, 1_000),
        ];
        let text = prometheus(&rows, &[]);
        assert!(
            text.contains(r#"trackside_job_retries_total{pipeline="/p/ci.yml",job="suite"} 1"#),
            "{text}"
        );
        assert!(
            text.contains(r#"trackside_job_attempts_total{pipeline="/p/ci.yml",job="suite",outcome="preempted"} 1"#),
            "{text}"
        );
    }

    #[test]
    fn stats_keep_the_last_runs_with_percentiles_classes_and_flakiest_jobs() {
        let mut rows = Vec::new();
        for i in 0..12u64 {
            let run = format!("r{i:02}");
            let outcome = if i % 4 == 3 { "failed" } else { "passed" };
            rows.push(row(&run, "a", 1, outcome, i * 100_000, 1_000 * (i + 1)));
        }
        let flaky = crate::insight::flaky::analyse(&rows);
        let s = stats(&rows, &flaky, 10);
        assert_eq!(s.len(), 1);
        let s = &s[0];
        assert_eq!(s.pipeline, "/p/ci.yml");
        assert_eq!(s.runs, 10, "the last 10 of 12");
        assert_eq!(s.durations_ms.first(), Some(&3_000), "oldest first");
        assert_eq!(s.durations_ms.last(), Some(&12_000));
        assert_eq!(s.failed, 3, "r03, r07 and r11 failed; r00 and r01 are cut");
        assert_eq!(s.results.iter().filter(|r| *r == "failed").count(), 3);
        assert_eq!((s.p50_ms, s.p90_ms), (8_000, 11_000));
        assert_eq!(
            s.failures_by_class.first().map(|c| (c.class.as_str(), c.attempts)),
            Some(("network", 3))
        );
        assert!(stats(&[], &[], 10).is_empty(), "no history, no stats");
    }

    #[test]
    fn runs_are_told_by_their_jobs_last_attempts() {
        let rows = [
            row("r1", "a", 1, "failed", 0, 2_000),
            row("r1", "a", 2, "passed", 2_000, 3_000),
            row("r2", "a", 1, "failed", 10_000, 1_000),
        ];
        let rs = runs(&rows);
        assert_eq!(rs.len(), 2);
        assert!(!rs[0].failed, "passed on its retry");
        assert_eq!(rs[0].duration_ms, 5_000);
        assert_eq!(rs[0].failures.get("network"), Some(&1));
        assert!(rs[1].failed);
    }

    #[test]
    fn the_text_format_has_counters_and_a_cumulative_histogram() {
        let rows = [
            row("r1", "a\"b", 1, "failed", 0, 2_000),
            row("r1", "a\"b", 2, "passed", 2_000, 40_000),
        ];
        let text = prometheus(&rows, &[]);
        assert!(
            text.contains("# TYPE trackside_job_duration_seconds histogram"),
            "{text}"
        );
        assert!(
            text.contains(r#"trackside_runs_total{pipeline="/p/ci.yml",result="passed"} 1"#),
            "{text}"
        );
        assert!(
            text.contains(r#"trackside_job_failures_total{pipeline="/p/ci.yml",job="a\"b",class="network"} 1"#),
            "{text}"
        );
        assert!(
            text.contains(r#"trackside_job_retries_total{pipeline="/p/ci.yml",job="a\"b"} 1"#),
            "{text}"
        );
        assert!(text.contains(r#"le="5"} 1"#) && text.contains(r#"le="60"} 2"#) && text.contains(r#"le="+Inf"} 2"#));
        assert!(
            text.contains(r#"trackside_job_duration_seconds_sum{pipeline="/p/ci.yml",job="a\"b"} 42"#),
            "{text}"
        );
        // A cache hit counts as one, not as a run of the job.
        let mut more = rows.to_vec();
        more.push(row("r2", "a\"b", 1, "cached", 50_000, 3));
        let text = prometheus(&more, &[]);
        assert!(
            text.contains(r#"trackside_job_cache_hits_total{pipeline="/p/ci.yml",job="a\"b"} 1"#),
            "{text}"
        );
        assert!(
            text.contains(r#"trackside_job_duration_seconds_count{pipeline="/p/ci.yml",job="a\"b"} 2"#),
            "{text}"
        );
        // Every sample line is `name{labels} value`.
        for l in text.lines().filter(|l| !l.starts_with('#')) {
            let (_, value) = l.rsplit_once(' ').expect("a value");
            assert!(value.parse::<f64>().is_ok(), "{l}");
        }
    }
}
