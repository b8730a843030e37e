//! The insight commands of the CLI: `history`, `flaky`, `tests`,
//! `quarantine` and `explain`. Formatting
//! only; the work is in `trackside::insight` over `trackside::store`.

use std::path::Path;
use std::time::{Duration, UNIX_EPOCH};

use trackside::insight::flaky::{self, Verdict};
use trackside::store::history::{AttemptRow, Filter, Quarantined};
use trackside::store::index::Index;

use super::{Fail, write_out};

use trackside::store::history::pipeline_key;

/// `--since 7d`: the time that long ago, in ms since the epoch.
fn since_ms(age: &str) -> Result<u64, Fail> {
    let d = humantime::parse_duration(age)
        .map_err(|e| Fail(format!("--since {age}: {e}; write an age such as 7d, 12h or 30m"), 2))?;
    let now = trackside::store::now_ms();
    Ok(now.saturating_sub(u64::try_from(d.as_millis()).unwrap_or(u64::MAX)))
}

/// Durations as a line of bars, one per value (at most `width`, the newest).
pub fn sparkline(values: &[u64], width: usize) -> String {
    const BARS: [char; 8] = ['▁', '▂', '▃', '▄', '▅', '▆', '▇', '█'];
    let shown = &values[values.len().saturating_sub(width)..];
    let (min, max) = (
        shown.iter().copied().min().unwrap_or(0),
        shown.iter().copied().max().unwrap_or(0),
    );
    shown
        .iter()
        .map(|&v| {
            if max <= min {
                BARS[0]
            } else {
                BARS[(((v - min) as f64 / (max - min) as f64) * 7.0).round() as usize]
            }
        })
        .collect()
}

fn when(ms: u64) -> String {
    let t = humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_millis(ms)).to_string();
    t.trim_end_matches('Z').replace('T', " ")
}

fn short(commit: Option<&str>) -> String {
    commit.map_or("-".into(), |c| c.chars().take(8).collect())
}

pub struct HistoryArgs<'a> {
    pub job: Option<&'a str>,
    pub pipeline: Option<&'a Path>,
    pub branch: Option<&'a str>,
    pub since: Option<&'a str>,
    pub limit: usize,
    pub json: bool,
}

pub fn history(state: &Path, args: HistoryArgs<'_>) -> Result<u8, Fail> {
    let index = Index::open(state)?;
    let filter = Filter {
        job: args.job.map(str::to_string),
        pipeline: args.pipeline.map(pipeline_key),
        branch: args.branch.map(str::to_string),
        since_ms: args.since.map(since_ms).transpose()?,
        limit: Some(args.limit),
        lean: false,
    };
    let rows = index.attempts(&filter)?;
    if args.json {
        write_out(&format!("{}\n", serde_json::to_string(&rows)?));
        return Ok(0);
    }
    if rows.is_empty() {
        write_out(&format!(
            "no attempts recorded{} in {}\n",
            if args.job.is_some() || args.pipeline.is_some() || args.branch.is_some() || args.since.is_some() {
                " that match"
            } else {
                ""
            },
            state.display()
        ));
        return Ok(0);
    }
    let mut out = String::new();
    // One block per job, its attempts oldest first.
    let mut jobs: Vec<&str> = Vec::new();
    for r in &rows {
        if !jobs.contains(&r.job.as_str()) {
            jobs.push(&r.job);
        }
    }
    for job in jobs {
        let mine: Vec<&AttemptRow> = rows.iter().filter(|r| r.job == job).collect();
        let passed: Vec<u64> = mine
            .iter()
            .filter(|r| r.outcome == "passed")
            .map(|r| r.duration_ms)
            .collect();
        let failed = mine.iter().filter(|r| r.outcome == "failed").count();
        out.push_str(&format!(
            "{job}: {} attempts, {failed} failed; passing durations {}\n",
            mine.len(),
            if passed.is_empty() {
                "-".to_string()
            } else {
                sparkline(&passed, 40)
            }
        ));
        out.push_str(&format!(
            "  {:<19}  {:<22}  {:>3}  {:<9}  {:>9}  {:>10}  {:<8}  {:<16}  CLASS\n",
            "STARTED (UTC)", "RUN", "TRY", "OUTCOME", "DURATION", "PEAK MEM", "COMMIT", "BRANCH"
        ));
        for r in mine {
            out.push_str(&format!(
                "  {:<19}  {:<22}  {:>3}  {:<9}  {:>9}  {:>10}  {:<8}  {:<16}  {}\n",
                when(r.started_ms),
                r.run_id,
                r.attempt,
                r.outcome,
                trackside::headless::seconds(r.duration_ms),
                r.peak_memory
                    .map_or_else(|| "-".to_string(), trackside::store::manifest::human),
                format!("{}{}", short(r.commit.as_deref()), if r.dirty { "+" } else { "" }),
                r.branch.as_deref().unwrap_or("-"),
                r.failure_class.as_deref().unwrap_or("")
            ));
        }
    }
    write_out(&out);
    Ok(0)
}

/// `trackside tests RUN [JOB]`: the run's test cases, failed first.
pub fn tests(state: &Path, run: &str, job: Option<&str>, json: bool) -> Result<u8, Fail> {
    let dir = trackside::store::find_run(state, run)?;
    let run_id = dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let index = Index::open(state)?;
    let cases = index.tests(&run_id, job)?;
    if json {
        write_out(&format!("{}\n", serde_json::to_string(&cases)?));
        return Ok(0);
    }
    if cases.is_empty() {
        write_out(&format!(
            "run {run_id} kept no test cases{}: a job's JUnit reports are read when it declares them (docs/insight.md)\n",
            job.map(|j| format!(" for `{j}`")).unwrap_or_default()
        ));
        return Ok(0);
    }
    let mut out = String::new();
    let count = |o: &str| cases.iter().filter(|c| c.outcome == o).count();
    out.push_str(&format!(
        "{} test cases: {} failed, {} passed, {} skipped\n",
        cases.len(),
        count("failed"),
        count("passed"),
        count("skipped")
    ));
    for c in &cases {
        let outcome = match (c.outcome.as_str(), c.reruns_failed) {
            ("passed", n) if n > 0 => format!("FLAKY ({n} rerun{} failed)", if n == 1 { "" } else { "s" }),
            (o, _) => o.to_uppercase(),
        };
        out.push_str(&format!(
            "{outcome:<8} {} › {}  {}  (attempt {})\n",
            c.job,
            c.name,
            trackside::headless::seconds(c.duration_ms),
            c.attempt
        ));
        if c.outcome == "failed" || c.reruns_failed > 0 {
            for line in c.message.iter().flat_map(|m| m.lines()) {
                out.push_str(&format!("         {line}\n"));
            }
        }
    }
    write_out(&out);
    Ok(0)
}

/// `trackside metrics`: history as Prometheus metrics, on standard output
/// or written atomically to FILE (node_exporter's textfile collector reads
/// `*.prom` files of a folder).
pub fn metrics(state: &Path, pipeline: Option<&Path>, output: Option<&Path>) -> Result<u8, Fail> {
    let index = Index::open(state)?;
    let text = trackside::engine::history::prometheus(&index, pipeline.map(pipeline_key).as_deref())?;
    match output {
        None => write_out(&text),
        Some(path) => {
            let mut tmp = path.as_os_str().to_owned();
            tmp.push(".tmp");
            let tmp = std::path::PathBuf::from(tmp);
            std::fs::write(&tmp, &text)
                .and_then(|()| std::fs::rename(&tmp, path))
                .map_err(|e| Fail(format!("cannot write {}: {e}", path.display()), 2))?;
        }
    }
    Ok(0)
}

/// `trackside stats`: each pipeline's recent runs at a glance: how long
/// they took, which failed, why, and its flaky jobs.
pub fn stats(state: &Path, pipeline: Option<&Path>, last: usize, json: bool) -> Result<u8, Fail> {
    let index = Index::open(state)?;
    let rows = index.attempts(&Filter {
        pipeline: pipeline.map(pipeline_key),
        ..Filter::default()
    })?;
    let report = trackside::insight::metrics::stats(&rows, &flaky::analyse(&rows), last);
    if json {
        let text = serde_json::to_string(&report).map_err(|e| Fail(format!("cannot write JSON: {e}"), 1))?;
        write_out(&format!("{text}\n"));
        return Ok(0);
    }
    if report.is_empty() {
        write_out("no runs in history yet: each `trackside run` adds one\n");
        return Ok(0);
    }
    let mut out = String::new();
    for r in &report {
        out.push_str(&stats_text(r));
    }
    write_out(&out);
    Ok(0)
}

/// `trackside stats`' text for one pipeline.
fn stats_text(r: &trackside::protocol::view::PipelineStats) -> String {
    let clock = |ms: u64| {
        let s = (ms + 500) / 1000;
        format!("{}:{:02}", s / 60, s % 60)
    };
    let pct = |x: f64| format!("{:.0}%", x * 100.0);
    let marks: String = r
        .results
        .iter()
        .map(|v| if v == "failed" { 'x' } else { '.' })
        .collect();
    let mut out = format!("{} (last {} runs, oldest first)\n", r.pipeline, r.runs);
    out.push_str(&format!(
        "  duration  p50 {}  p90 {}  {}\n",
        clock(r.p50_ms),
        clock(r.p90_ms),
        sparkline(&r.durations_ms, 60)
    ));
    out.push_str(&format!(
        "  failed    {} of {} ({:.0}%)  {}\n",
        r.failed,
        r.runs,
        if r.runs == 0 {
            0.0
        } else {
            r.failed as f64 * 100.0 / r.runs as f64
        },
        &marks[marks.len().saturating_sub(60)..]
    ));
    if !r.failures_by_class.is_empty() {
        let classes: Vec<String> = r
            .failures_by_class
            .iter()
            .map(|c| format!("{} {}", c.class, c.attempts))
            .collect();
        out.push_str(&format!("  failed attempts by class: {}\n", classes.join(", ")));
    }
    if !r.flaky.is_empty() {
        let flaky: Vec<String> = r
            .flaky
            .iter()
            .map(|f| format!("{} {} [{}, {}]", f.job, pct(f.rate), pct(f.low), pct(f.high)))
            .collect();
        out.push_str(&format!("  flaky: {}\n", flaky.join(", ")));
    }
    out
}

/// One failed attempt as `trackside explain` shows it.
#[derive(serde::Serialize)]
struct Explained {
    job: String,
    attempt: u32,
    failure_class: Option<trackside::protocol::FailureClass>,
    exit_code: Option<i32>,
    message: Option<String>,
    diagnosis: Option<trackside::protocol::Diagnosis>,
    /// Failures with the same signature in the last 30 days, and the run
    /// the signature was first seen in.
    seen_in_30_days: usize,
    first_seen_in: Option<String>,
}

/// `trackside explain RUN [JOB]`: every failed attempt of the run (or of
/// one job) with the knowledge base's reading of it.
pub fn explain(state: &Path, run: &str, job: Option<&str>, json: bool) -> Result<u8, Fail> {
    use trackside::protocol::{EventKind, JobStatus};
    let dir = trackside::store::find_run(state, run)?;
    let run_id = dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let events = trackside::store::read_events(&dir)?;
    let mut jobs = Vec::new();
    let mut failed = Vec::new();
    for ev in events {
        match ev.kind {
            EventKind::JobStarted { job, .. } if !jobs.contains(&job) => jobs.push(job),
            EventKind::JobRetrying {
                job,
                attempt,
                failure_class,
                exit_code,
                diagnosis,
                ..
            } => failed.push(Explained {
                job,
                attempt: attempt.saturating_sub(1),
                failure_class: Some(failure_class),
                exit_code,
                message: None,
                diagnosis: diagnosis.map(|d| *d),
                seen_in_30_days: 0,
                first_seen_in: None,
            }),
            EventKind::JobFinished {
                job,
                attempt,
                status: JobStatus::Failed,
                failure_class,
                exit_code,
                message,
                diagnosis,
                ..
            } => failed.push(Explained {
                job,
                attempt,
                failure_class,
                exit_code,
                message,
                diagnosis: diagnosis.map(|d| *d),
                seen_in_30_days: 0,
                first_seen_in: None,
            }),
            _ => {}
        }
    }
    if let Some(name) = job {
        if !jobs.iter().any(|j| j == name) {
            return Err(Fail(
                format!(
                    "run {run_id} ran no job `{name}`; its jobs: {}",
                    if jobs.is_empty() {
                        "none".into()
                    } else {
                        jobs.join(", ")
                    }
                ),
                2,
            ));
        }
        failed.retain(|f| f.job == name);
    }
    // Job by job in the order they started, attempts in order.
    failed.sort_by_key(|f| (jobs.iter().position(|j| *j == f.job).unwrap_or(usize::MAX), f.attempt));
    // What this pipeline's history knows of each failure's signature.
    let index = Index::open(state)?;
    let mut rows = index.attempts(&Filter::default())?;
    if let Some(pipeline) = rows.iter().find(|r| r.run_id == run_id).map(|r| r.pipeline.clone()) {
        rows.retain(|r| r.pipeline == pipeline);
    }
    let month_ago = trackside::store::now_ms().saturating_sub(30 * 24 * 3600 * 1000);
    for f in &mut failed {
        let sig = rows
            .iter()
            .find(|r| r.run_id == run_id && r.job == f.job && r.attempt == f.attempt)
            .and_then(|r| r.signature.as_deref());
        if let Some(sig) = sig {
            (f.seen_in_30_days, f.first_seen_in) = flaky::seen(&rows, sig, month_ago);
        }
    }
    if json {
        write_out(&format!("{}\n", serde_json::to_string(&failed)?));
        return Ok(0);
    }
    if failed.is_empty() {
        write_out(&format!(
            "nothing failed in run {run_id}{}\n",
            job.map(|j| format!(" for `{j}`")).unwrap_or_default()
        ));
        return Ok(0);
    }
    let mut out = String::new();
    for f in &failed {
        let class = f.failure_class.map_or("failed".into(), |c| c.to_string());
        let exit = f.exit_code.map(|c| format!(", exit {c}")).unwrap_or_default();
        match &f.diagnosis {
            Some(d) => {
                out.push_str(&format!(
                    "{} attempt {}: {} ({class}{exit})\n",
                    f.job, f.attempt, d.title
                ));
                out.push_str(&format!("  hint:    {}\n", d.hint));
                out.push_str(&format!(
                    "  retry:   {}\n",
                    if d.retryable {
                        "may pass (the failure is often transient)"
                    } else {
                        "will not help until the cause is fixed"
                    }
                ));
                out.push_str(&format!("  runbook: {}\n", d.runbook));
                for l in &d.lines {
                    out.push_str(&format!("  matched: {l}\n"));
                }
                out.push_str(&format!("  rule:    {}\n", d.rule));
            }
            None => {
                out.push_str(&format!("{} attempt {}: {class}{exit}\n", f.job, f.attempt));
                out.push_str("  no rule of the knowledge base explains it (assets/failure-rules.yml)\n");
            }
        }
        if let Some(m) = &f.message {
            out.push_str(&format!("  reason:  {}\n", m.lines().next().unwrap_or("")));
        }
        if f.seen_in_30_days > 1 {
            out.push_str(&format!(
                "  seen {} times in 30 days{}\n",
                f.seen_in_30_days,
                f.first_seen_in
                    .as_deref()
                    .map(|r| format!(", first in run {r}"))
                    .unwrap_or_default()
            ));
        }
        out.push_str(&format!(
            "  log:     trackside logs {run_id} {} --attempt {}\n",
            f.job, f.attempt
        ));
    }
    write_out(&out);
    Ok(0)
}

pub fn flaky(state: &Path, pipeline: Option<&Path>, all: bool, json: bool) -> Result<u8, Fail> {
    let index = Index::open(state)?;
    let pipeline = pipeline.map(pipeline_key);
    let rows = index.attempts(&Filter {
        pipeline: pipeline.clone(),
        lean: true,
        ..Filter::default()
    })?;
    let mut found = flaky::analyse(&rows);
    // Test cases are series of their own (`JOB › TEST`).
    let tests = index.test_attempts(pipeline.as_deref(), None)?;
    found.extend(flaky::analyse(&tests));
    if !all {
        found.retain(|f| matches!(f.verdict, Verdict::Flaky | Verdict::Broken));
    }
    if json {
        write_out(&format!("{}\n", serde_json::to_string(&found)?));
        return Ok(0);
    }
    if found.is_empty() {
        let seen = rows
            .iter()
            .map(|r| r.run_id.as_str())
            .collect::<std::collections::HashSet<_>>()
            .len();
        write_out(&format!(
            "nothing flaky or broken in {seen} recorded run(s){}\n",
            if all { "" } else { " (--all lists every job)" }
        ));
        return Ok(0);
    }
    let several = found
        .iter()
        .map(|f| f.pipeline.as_str())
        .collect::<std::collections::HashSet<_>>()
        .len()
        > 1;
    let quarantined = index.quarantine_list()?;
    let now = trackside::store::now_ms();
    let mut out = String::new();
    for f in &found {
        let name = if several {
            let file = Path::new(&f.pipeline)
                .file_name()
                .map_or(f.pipeline.clone(), |n| n.to_string_lossy().into_owned());
            format!("{file}: {}", f.job)
        } else {
            f.job.clone()
        };
        let branches = if f.branches == "default" {
            ""
        } else {
            " (other branches)"
        };
        out.push_str(&format!("{name}{branches}  {}\n", f.summary()));
        // A test case (`JOB › TEST`) is held by its own entry or its name's.
        let test = f.job.split_once(" › ").map(|(_, t)| t);
        let held = quarantined.iter().any(|q| {
            q.applies(&f.pipeline, now)
                && (q.name == f.job
                    || test.is_some_and(|t| trackside::engine::junit::quarantined(std::slice::from_ref(&q.name), t)))
        });
        let mut evidence = Vec::new();
        if f.passed_on_retry > 0 {
            evidence.push(format!("passed on a retry in {} run(s)", f.passed_on_retry));
        }
        if f.mixed_commits > 0 {
            evidence.push(format!("passed and failed on {} same commit(s)", f.mixed_commits));
        }
        if !evidence.is_empty() {
            out.push_str(&format!("  evidence: {}\n", evidence.join("; ")));
        }
        if let Some(s) = &f.since {
            let what = if f.verdict == Verdict::Broken {
                "failing on every attempt since"
            } else {
                "most likely since"
            };
            out.push_str(&format!(
                "  {what} commit {} (run {}{})\n",
                short(s.commit.as_deref()),
                s.run_id,
                if f.verdict == Verdict::Broken {
                    String::new()
                } else {
                    format!(", probability {:.0}%", s.probability * 100.0)
                }
            ));
        }
        if let Some(l) = &f.last_failure {
            out.push_str(&format!(
                "  last failure: run {} at {}{}\n",
                l.run_id,
                when(l.started_ms),
                l.class.as_deref().map(|c| format!(" ({c})")).unwrap_or_default()
            ));
            if let Some(line) = &l.line {
                out.push_str(&format!("    {}\n", line.chars().take(160).collect::<String>()));
            }
            if let Some(sig) = &l.signature {
                let month = now.saturating_sub(30 * 24 * 3_600_000);
                let (count, first) = flaky::seen(&rows, sig, month);
                out.push_str(&format!(
                    "    signature {sig}: seen {count} time{} in 30 days{}\n",
                    if count == 1 { "" } else { "s" },
                    first.map(|r| format!(", first in run {r}")).unwrap_or_default()
                ));
            }
        }
        if held {
            out.push_str("  in quarantine: its failures do not fail runs\n");
        } else if f.verdict == Verdict::Flaky && f.low > 0.02 {
            // Very likely flaky (its interval is clear of zero): quarantine
            // keeps it running without failing runs. Never done unasked.
            out.push_str(&format!(
                "  suggestion: trackside quarantine add '{}' --until 14d\n",
                f.job.replace('\'', "'\\''")
            ));
        }
    }
    write_out(&out);
    Ok(0)
}

/// `--until`: a date (`2026-12-31`), a time (RFC 3339) or a span from now
/// (`14d`).
fn until_ms(text: &str) -> Result<u64, Fail> {
    let now = trackside::store::now_ms();
    if let Ok(d) = humantime::parse_duration(text) {
        return Ok(now.saturating_add(u64::try_from(d.as_millis()).unwrap_or(u64::MAX)));
    }
    let full = if text.len() == 10 {
        format!("{text}T00:00:00Z")
    } else {
        text.to_string()
    };
    let t = humantime::parse_rfc3339_weak(&full).map_err(|_| {
        Fail(
            format!("--until {text}: write a date (2026-12-31), a time (2026-12-31T18:00:00Z) or a span (14d)"),
            2,
        )
    })?;
    let ms = t
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0);
    if ms <= now {
        return Err(Fail(format!("--until {text} has passed already"), 2));
    }
    Ok(ms)
}

pub enum QuarantineCmd<'a> {
    Add { name: &'a str, until: Option<&'a str> },
    Remove { name: &'a str },
    List { json: bool },
}

pub fn quarantine(state: &Path, cmd: QuarantineCmd<'_>, pipeline: Option<&Path>) -> Result<u8, Fail> {
    let index = Index::open(state)?;
    let pipeline = pipeline.map(pipeline_key);
    match cmd {
        QuarantineCmd::Add { name, until } => {
            // `JOB > TEST` for those who cannot type `›`.
            let name = &name.replacen(" > ", " › ", 1);
            if name.trim().is_empty() || name.split(" › ").any(|part| part.trim().is_empty()) {
                return Err(Fail(
                    format!(
                        "`{name}`: name a job, a test case (`JOB › TEST`, as `trackside flaky` prints it) or a test case's name"
                    ),
                    2,
                ));
            }
            let q = Quarantined {
                name: name.to_string(),
                pipeline: pipeline.unwrap_or_default(),
                added_ms: trackside::store::now_ms(),
                until_ms: until.map(until_ms).transpose()?,
            };
            index.quarantine_add(&q)?;
            write_out(&format!(
                "quarantined `{name}`{}{}: it still runs, and {} reported as QUARANTINED without failing the run\n",
                if q.pipeline.is_empty() {
                    String::new()
                } else {
                    format!(" in {}", q.pipeline)
                },
                q.until_ms.map(|u| format!(" until {}", when(u))).unwrap_or_default(),
                if name.contains(" › ") {
                    "a job that fails only in it is"
                } else {
                    "a failure of a job of that name, or of a job that fails only in a test case of that name, is"
                }
            ));
            Ok(0)
        }
        QuarantineCmd::Remove { name } => {
            let name = &name.replacen(" > ", " › ", 1);
            let n = index.quarantine_remove(name, pipeline.as_deref())?;
            if n == 0 {
                return Err(Fail(
                    format!("`{name}` is not in quarantine (trackside quarantine list)"),
                    1,
                ));
            }
            write_out(&format!(
                "`{name}` is out of quarantine: its failures fail runs again\n"
            ));
            Ok(0)
        }
        QuarantineCmd::List { json } => {
            let list = index.quarantine_list()?;
            if json {
                write_out(&format!("{}\n", serde_json::to_string(&list)?));
                return Ok(0);
            }
            if list.is_empty() {
                write_out("nothing is in quarantine\n");
                return Ok(0);
            }
            let now = trackside::store::now_ms();
            let mut out = String::new();
            for q in &list {
                let state = match q.until_ms {
                    Some(u) if u <= now => format!("expired {}", when(u)),
                    Some(u) => format!("until {}", when(u)),
                    None => "until removed".into(),
                };
                let scope = if q.pipeline.is_empty() {
                    "every pipeline".to_string()
                } else {
                    q.pipeline.clone()
                };
                out.push_str(&format!("{}  {state}  ({scope}; since {})\n", q.name, when(q.added_ms)));
            }
            write_out(&out);
            Ok(0)
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn sparklines_scale_between_the_shortest_and_longest() {
        assert_eq!(super::sparkline(&[1, 5, 9], 10), "▁▅█");
        assert_eq!(super::sparkline(&[3, 3], 10), "▁▁");
        assert_eq!(super::sparkline(&[1, 2, 3, 4], 2), "▁█", "the newest that fit");
    }
}
