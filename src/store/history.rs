//! History: every attempt of every run, one row each in the index
//! (`attempts`), for flakiness, forecasts and `trackside history`.
//!
//! The index's schema has a version (`PRAGMA user_version`); [`migrate`]
//! brings an older index up to this one in a transaction, so a store
//! written by an older trackside opens and is never half-changed. A newer
//! one (a version this trackside does not know) is read as it is: its
//! tables have at least these columns.

use arcstr::ArcStr;
use rusqlite::{Connection, params};
use serde::Serialize;

/// The index's schema version this trackside writes.
pub const VERSION: i64 = 7;

/// Version 1: the `attempts` table.
const V1: &str = "
CREATE TABLE IF NOT EXISTS attempts (
    run_id TEXT NOT NULL,
    pipeline TEXT NOT NULL,
    dialect TEXT NOT NULL,
    job TEXT NOT NULL,
    definition TEXT NOT NULL,
    commit_sha TEXT,
    branch TEXT,
    default_branch INTEGER NOT NULL,
    dirty INTEGER NOT NULL,
    attempt INTEGER NOT NULL,
    outcome TEXT NOT NULL,
    failure_class TEXT,
    exit_code INTEGER,
    duration_ms INTEGER NOT NULL,
    peak_memory INTEGER,
    executor TEXT NOT NULL,
    host TEXT NOT NULL,
    signature TEXT,
    started_ms INTEGER NOT NULL,
    PRIMARY KEY (run_id, job, attempt)
);
CREATE INDEX IF NOT EXISTS attempts_by_job ON attempts (job, started_ms);
CREATE INDEX IF NOT EXISTS attempts_by_pipeline ON attempts (pipeline, started_ms);
";

/// Version 2: the `test_cases` table (JUnit reports' test cases, per
/// attempt).
const V2: &str = "
CREATE TABLE IF NOT EXISTS test_cases (
    run_id TEXT NOT NULL,
    job TEXT NOT NULL,
    attempt INTEGER NOT NULL,
    suite TEXT NOT NULL,
    name TEXT NOT NULL,
    outcome TEXT NOT NULL,
    reruns_failed INTEGER NOT NULL,
    duration_ms INTEGER NOT NULL,
    message TEXT,
    file TEXT
);
CREATE INDEX IF NOT EXISTS test_cases_by_run ON test_cases (run_id, job, attempt);
";

/// Version 3: quarantined jobs (`trackside quarantine`).
const V3: &str = "
CREATE TABLE IF NOT EXISTS quarantine (
    name TEXT NOT NULL,
    pipeline TEXT NOT NULL,
    added_ms INTEGER NOT NULL,
    until_ms INTEGER,
    PRIMARY KEY (name, pipeline)
);
";

/// Version 4: the line that told a failure (its signature is made from it).
const V4: &str = "ALTER TABLE attempts ADD COLUMN failure_line TEXT;";

/// Version 5: whether a failure was allowed (`allow_failure`, quarantine):
/// it did not fail its run.
const V5: &str = "ALTER TABLE attempts ADD COLUMN allowed INTEGER NOT NULL DEFAULT 0;";

/// Version 6: the CPU time an attempt's steps used (for admission).
const V6: &str = "ALTER TABLE attempts ADD COLUMN cpu_ms INTEGER;";

/// Version 7: the newest attempts of a pipeline are read from one index
/// that holds what a run's start reads of them (the jobs' usage for
/// admission, their recent durations for the forecast), not row by row
/// from the table: 2,000 rows in about half the time. It replaces
/// `attempts_by_pipeline`, whose columns it starts with.
const V7: &str = "
CREATE INDEX IF NOT EXISTS attempts_recent
    ON attempts (pipeline, started_ms, outcome, job, run_id, duration_ms, peak_memory, cpu_ms);
DROP INDEX IF EXISTS attempts_by_pipeline;
";

/// What [`usage`] reads: only columns of `attempts_recent`. The limit is on
/// the newest attempts that ran (not cancelled, served from the cache or
/// preempted) before those that measured nothing are left out: most
/// attempts of trivial jobs measure nothing, and leaving them out first
/// read every attempt the pipeline ever had (4,000 rows to return 384,
/// 80,000 in a long history) on the way to the first job.
const USAGE: &str = "SELECT job, peak_memory, cpu_ms, duration_ms FROM (
        SELECT job, peak_memory, cpu_ms, duration_ms FROM attempts
        WHERE pipeline = ?1 AND outcome NOT IN ('cancelled', 'cached', 'preempted')
        ORDER BY started_ms DESC LIMIT ?2)
    WHERE peak_memory IS NOT NULL OR cpu_ms IS NOT NULL";

/// What [`recent_durations`] reads: only columns of `attempts_recent`.
const RECENT_DURATIONS: &str = "SELECT run_id, job, duration_ms FROM attempts
    WHERE pipeline = ?1 AND outcome NOT IN ('cancelled', 'cached')
    ORDER BY started_ms DESC LIMIT ?2";

/// Brings the index to [`VERSION`], each step in one transaction. Each
/// step takes the write lock before it reads the version, so two processes
/// opening an old index at once migrate it once: the second sees the first's
/// version and skips the step. An index already at [`VERSION`] (versions
/// only grow) costs one read, no write lock.
pub fn migrate(conn: &mut Connection) -> rusqlite::Result<()> {
    let version: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
    if version >= VERSION {
        return Ok(());
    }
    for (to, sql) in [(1, V1), (2, V2), (3, V3), (4, V4), (5, V5), (6, V6), (7, V7)] {
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let version: i64 = tx.pragma_query_value(None, "user_version", |r| r.get(0))?;
        if version < to {
            tx.execute_batch(sql)?;
            tx.pragma_update(None, "user_version", to)?;
        }
        tx.commit()?;
    }
    Ok(())
}

/// A pipeline file as history keys it: its absolute path, so runs from any
/// folder are one series.
pub fn pipeline_key(file: &std::path::Path) -> String {
    std::fs::canonicalize(file)
        .unwrap_or_else(|_| file.to_path_buf())
        .display()
        .to_string()
}

/// Each job's durations in the pipeline's recent runs (the sum of its
/// attempts in a run; cancelled attempts left out), oldest first, at most
/// `per_job` a job, read from the pipeline's newest attempts (twice what
/// `jobs` jobs would need, within bounds).
pub fn recent_durations(
    conn: &Connection,
    pipeline: &str,
    jobs: usize,
    per_job: usize,
) -> rusqlite::Result<std::collections::BTreeMap<String, Vec<f64>>> {
    let max_rows = jobs.saturating_mul(per_job).saturating_mul(2).clamp(1_000, 200_000);
    let mut stmt = conn.prepare_cached(RECENT_DURATIONS)?;
    let limit = i64::try_from(max_rows).unwrap_or(i64::MAX);
    // Newest first: a job's runs in the order first seen, summed per run.
    let mut per: std::collections::BTreeMap<ArcStr, Vec<(ArcStr, f64)>> = std::collections::BTreeMap::new();
    let mut texts = Texts::default();
    let mut rows = stmt.query(params![pipeline, limit])?;
    while let Some(r) = rows.next()? {
        let (run, job, ms) = (texts.text(r, 0)?, texts.text(r, 1)?, r.get::<_, i64>(2)?);
        let runs = per.entry(job).or_default();
        let ms = ms.max(0) as f64;
        if let Some(at) = runs.iter().position(|(r, _)| *r == run) {
            runs[at].1 += ms;
        } else if runs.len() < per_job {
            runs.push((run, ms));
        }
    }
    Ok(per
        .into_iter()
        .map(|(job, runs)| (job.to_string(), runs.into_iter().rev().map(|(_, d)| d).collect()))
        .collect())
}

/// What one job used in its recent attempts: the 90th percentile (nearest
/// rank) of its peak memory in bytes and of its CPU time over its duration
/// in thousandths of a CPU, each from its newest `per_job` attempts that
/// recorded one (cancelled and cached ones left out), when it has at least
/// [`MIN_USAGE_SAMPLES`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct JobUsage {
    pub memory: Option<u64>,
    pub cpu_milli: Option<u64>,
}

/// Fewer attempts than this say nothing of a job's use.
pub const MIN_USAGE_SAMPLES: usize = 3;

/// [`JobUsage`] of each job of `pipeline` with enough history, read from
/// its newest attempts that ran (within bounds, as [`recent_durations`],
/// whatever they measured).
pub fn usage(
    conn: &Connection,
    pipeline: &str,
    jobs: usize,
    per_job: usize,
) -> rusqlite::Result<std::collections::BTreeMap<String, JobUsage>> {
    let max_rows = jobs.saturating_mul(per_job).saturating_mul(2).clamp(1_000, 200_000);
    let mut stmt = conn.prepare_cached(USAGE)?;
    let limit = i64::try_from(max_rows).unwrap_or(i64::MAX);
    let mut seen: std::collections::BTreeMap<ArcStr, (Vec<u64>, Vec<u64>)> = Default::default();
    let mut texts = Texts::default();
    let mut rows = stmt.query(params![pipeline, limit])?;
    while let Some(r) = rows.next()? {
        let (job, peak, cpu, duration) = (
            texts.text(r, 0)?,
            r.get::<_, Option<i64>>(1)?,
            r.get::<_, Option<i64>>(2)?,
            r.get::<_, i64>(3)?,
        );
        let (mem, cpus) = seen.entry(job).or_default();
        if let Some(p) = peak.and_then(|p| u64::try_from(p).ok())
            && mem.len() < per_job
        {
            mem.push(p);
        }
        // Shorter than a tenth of a second: too short to tell a rate.
        if let (Some(c), Ok(d)) = (cpu.and_then(|c| u64::try_from(c).ok()), u64::try_from(duration))
            && d >= 100
            && cpus.len() < per_job
        {
            cpus.push(c.saturating_mul(1000) / d);
        }
    }
    let p90 = |mut v: Vec<u64>| {
        (v.len() >= MIN_USAGE_SAMPLES).then(|| {
            v.sort_unstable();
            // Nearest rank: the smallest value at or above 90% of them.
            let rank = (v.len() * 9).div_ceil(10).max(1);
            v[rank - 1]
        })
    };
    Ok(seen
        .into_iter()
        .map(|(job, (mem, cpus))| {
            (
                job.to_string(),
                JobUsage {
                    memory: p90(mem),
                    cpu_milli: p90(cpus),
                },
            )
        })
        .filter(|(_, u)| u.memory.is_some() || u.cpu_milli.is_some())
        .collect())
}

/// One test case of one attempt, from its JUnit report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TestCaseRow {
    pub run_id: String,
    pub job: String,
    pub attempt: u32,
    pub suite: String,
    /// `classname::name`, as the report names it.
    pub name: String,
    /// `passed`, `failed` (a failure or an error), `skipped`.
    pub outcome: String,
    /// Tries the test framework itself re-ran that failed (`flakyFailure`,
    /// `rerunFailure`, ...): a `passed` with some passed on a rerun.
    pub reruns_failed: u32,
    pub duration_ms: u64,
    /// The failure's message (its first lines).
    pub message: Option<String>,
    /// The report it came from, relative to the workspace.
    pub file: Option<String>,
}

pub fn insert_tests(conn: &Connection, rows: &[TestCaseRow]) -> rusqlite::Result<()> {
    let mut stmt = conn.prepare_cached(
        "INSERT INTO test_cases (run_id, job, attempt, suite, name, outcome, reruns_failed, duration_ms, message,
         file) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
    )?;
    for r in rows {
        stmt.execute(params![
            r.run_id,
            r.job,
            r.attempt,
            r.suite,
            r.name,
            r.outcome,
            r.reruns_failed,
            sql(r.duration_ms),
            r.message,
            r.file,
        ])?;
    }
    Ok(())
}

/// A run's test cases (of one job when given), failed ones first.
pub fn select_tests(conn: &Connection, run: &str, job: Option<&str>) -> rusqlite::Result<Vec<TestCaseRow>> {
    let mut stmt = conn.prepare(
        "SELECT run_id, job, attempt, suite, name, outcome, reruns_failed, duration_ms, message, file
         FROM test_cases WHERE run_id = ?1 AND (?2 IS NULL OR job = ?2)
         ORDER BY outcome != 'failed', reruns_failed = 0, job, attempt, suite, name",
    )?;
    let rows = stmt
        .query_map(params![run, job], |r| {
            Ok(TestCaseRow {
                run_id: r.get(0)?,
                job: r.get(1)?,
                attempt: r.get(2)?,
                suite: r.get(3)?,
                name: r.get(4)?,
                outcome: r.get(5)?,
                reruns_failed: r.get(6)?,
                duration_ms: u64::try_from(r.get::<_, i64>(7)?).unwrap_or(0),
                message: r.get(8)?,
                file: r.get(9)?,
            })
        })?
        .collect::<rusqlite::Result<_>>()?;
    Ok(rows)
}

/// Every test case as an attempt of its own (its job's attempt's commit,
/// branch and run; named `JOB › TEST`), for `insight::flaky`: a test the
/// framework re-ran until it passed counts as failed, then passed on a
/// retry. With `newest`, only the newest that many test cases.
pub fn test_attempts(
    conn: &Connection,
    pipeline: Option<&str>,
    newest: Option<usize>,
) -> rusqlite::Result<Vec<AttemptRow>> {
    let mut stmt = conn.prepare(
        "SELECT a.run_id, a.pipeline, a.dialect, t.job || ' › ' || t.name, a.definition, a.commit_sha, a.branch,
         a.default_branch, a.dirty, t.attempt, t.outcome, NULL, NULL, t.duration_ms, NULL, '', '', NULL,
         a.started_ms, NULL, 0, NULL, t.reruns_failed
         FROM test_cases t JOIN attempts a ON a.run_id = t.run_id AND a.job = t.job AND a.attempt = t.attempt
         WHERE t.outcome != 'skipped' AND (?1 IS NULL OR a.pipeline = ?1)
         ORDER BY t.rowid DESC LIMIT ?2",
    )?;
    let limit = newest.map_or(-1, |n| i64::try_from(n).unwrap_or(i64::MAX));
    let mut texts = Texts::default();
    let (test, failed_text) = (texts.of("test"), texts.of("failed"));
    let mut read = Vec::new();
    let mut found = stmt.query(params![pipeline, limit])?;
    while let Some(r) = found.next()? {
        read.push((texts.attempt(r)?, r.get::<_, u32>(22)?));
    }
    // Read newest first; made in the order written.
    let mut out = Vec::with_capacity(read.len());
    for (mut a, reruns_failed) in read.into_iter().rev() {
        if a.outcome == "failed" {
            a.failure_class = Some(test.clone());
        }
        // Re-run by the framework until it passed: a failed try just
        // before the pass (numbered before the job's attempt, so counting
        // first attempts, as the rule for a run where most tests failed
        // does, sees the pass).
        if reruns_failed > 0 && a.outcome == "passed" {
            let mut failed = a.clone();
            failed.outcome = failed_text.clone();
            failed.failure_class = Some(test.clone());
            failed.attempt = a.attempt.saturating_sub(1);
            out.push(failed);
        }
        out.push(a);
    }
    Ok(out)
}

/// One attempt as history keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AttemptRow {
    pub run_id: ArcStr,
    /// The pipeline file's path as given to `trackside run`.
    pub pipeline: ArcStr,
    pub dialect: ArcStr,
    pub job: ArcStr,
    /// A digest of the job's definition: an edited job starts a new series.
    pub definition: ArcStr,
    pub commit: Option<ArcStr>,
    pub branch: Option<ArcStr>,
    /// The branch is the repository's default branch.
    pub default_branch: bool,
    /// The work tree had changes not committed.
    pub dirty: bool,
    pub attempt: u32,
    /// `passed`, `failed`, `cancelled`.
    pub outcome: ArcStr,
    pub failure_class: Option<ArcStr>,
    pub exit_code: Option<i32>,
    pub duration_ms: u64,
    pub peak_memory: Option<u64>,
    /// Milliseconds of CPU its steps' processes used.
    #[serde(default)]
    pub cpu_ms: Option<u64>,
    pub executor: ArcStr,
    pub host: ArcStr,
    /// The failure's signature (its class and normalised line, hashed).
    pub signature: Option<ArcStr>,
    pub started_ms: u64,
    /// The output line that told the failure (secrets masked).
    pub failure_line: Option<ArcStr>,
    /// A failure that did not fail its run (`allow_failure`, quarantine):
    /// set for the run's jobs when it ends.
    #[serde(default)]
    pub allowed: bool,
}

fn sql(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

pub fn insert(conn: &Connection, rows: &[AttemptRow]) -> rusqlite::Result<()> {
    let mut stmt = conn.prepare_cached(
        "INSERT OR REPLACE INTO attempts (run_id, pipeline, dialect, job, definition, commit_sha, branch,
         default_branch, dirty, attempt, outcome, failure_class, exit_code, duration_ms, peak_memory, executor,
         host, signature, started_ms, failure_line, cpu_ms) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11,
         ?12, ?13, ?14, ?15, ?16, ?17, ?18, ?19, ?20, ?21)",
    )?;
    for r in rows {
        stmt.execute(params![
            r.run_id.as_str(),
            r.pipeline.as_str(),
            r.dialect.as_str(),
            r.job.as_str(),
            r.definition.as_str(),
            r.commit.as_deref(),
            r.branch.as_deref(),
            r.default_branch,
            r.dirty,
            r.attempt,
            r.outcome.as_str(),
            r.failure_class.as_deref(),
            r.exit_code,
            sql(r.duration_ms),
            r.peak_memory.map(sql),
            r.executor.as_str(),
            r.host.as_str(),
            r.signature.as_deref(),
            sql(r.started_ms),
            r.failure_line.as_deref(),
            r.cpu_ms.map(sql),
        ])?;
    }
    Ok(())
}

/// Rows a limited read makes room for at once (a row is about 185 bytes).
const PREALLOCATED: usize = 8_192;

/// The texts of one read, each made once: the rows of a pipeline's history
/// repeat their run, job, definition, commit and outcome, so thousands of
/// rows share a few hundred strings instead of holding ten each.
///
/// Rows come run by run, so most columns (the run, the pipeline, the
/// commit, the outcome) hold what they held in the row before: each
/// column's last text is compared first, and only a new one is looked up.
#[derive(Default)]
struct Texts {
    made: std::collections::HashSet<ArcStr>,
    /// The last text of each column, by its index.
    last: Vec<Option<ArcStr>>,
}

impl Texts {
    fn of(&mut self, s: &str) -> ArcStr {
        if let Some(t) = self.made.get(s) {
            return t.clone();
        }
        let t = ArcStr::from(s);
        self.made.insert(t.clone());
        t
    }

    /// Column `i` of `row`: text, or NULL.
    fn maybe(&mut self, row: &rusqlite::Row, i: usize) -> rusqlite::Result<Option<ArcStr>> {
        let value = row.get_ref(i)?;
        let Some(text) = value
            .as_str_or_null()
            .map_err(|e| rusqlite::Error::FromSqlConversionFailure(i, value.data_type(), Box::new(e)))?
        else {
            return Ok(None);
        };
        if let Some(Some(last)) = self.last.get(i)
            && last.as_str() == text
        {
            return Ok(Some(last.clone()));
        }
        let t = self.of(text);
        if self.last.len() <= i {
            self.last.resize(i + 1, None);
        }
        self.last[i] = Some(t.clone());
        Ok(Some(t))
    }

    /// The attempt in `row`, whose columns are [`select`]'s, in its order.
    fn attempt(&mut self, r: &rusqlite::Row) -> rusqlite::Result<AttemptRow> {
        let ms = |v: i64| u64::try_from(v).unwrap_or(0);
        Ok(AttemptRow {
            run_id: self.text(r, 0)?,
            pipeline: self.text(r, 1)?,
            dialect: self.text(r, 2)?,
            job: self.text(r, 3)?,
            definition: self.text(r, 4)?,
            commit: self.maybe(r, 5)?,
            branch: self.maybe(r, 6)?,
            default_branch: r.get(7)?,
            dirty: r.get(8)?,
            attempt: r.get(9)?,
            outcome: self.text(r, 10)?,
            failure_class: self.maybe(r, 11)?,
            exit_code: r.get(12)?,
            duration_ms: ms(r.get(13)?),
            peak_memory: r.get::<_, Option<i64>>(14)?.map(ms),
            executor: self.text(r, 15)?,
            host: self.text(r, 16)?,
            signature: self.maybe(r, 17)?,
            started_ms: ms(r.get(18)?),
            failure_line: self.maybe(r, 19)?,
            allowed: r.get(20)?,
            cpu_ms: r.get::<_, Option<i64>>(21)?.map(ms),
        })
    }

    /// Column `i` of `row`, which is text.
    fn text(&mut self, row: &rusqlite::Row, i: usize) -> rusqlite::Result<ArcStr> {
        self.maybe(row, i)?.ok_or_else(|| {
            let name = row.as_ref().column_name(i).unwrap_or_default().to_string();
            rusqlite::Error::InvalidColumnType(i, name, rusqlite::types::Type::Null)
        })
    }
}

/// Which attempts a query wants.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    pub job: Option<String>,
    pub pipeline: Option<String>,
    pub branch: Option<String>,
    /// Started at or after this time (ms since the epoch).
    pub since_ms: Option<u64>,
    /// At most this many, newest first before they are put in order.
    pub limit: Option<usize>,
    /// Only the columns flakiness and the runs' figures read: dialect,
    /// branch, exit code, memory, executor and host are left empty
    /// (`trackside flaky` over a long history reads a third less).
    pub lean: bool,
}

/// The attempts `filter` wants, oldest first.
pub fn select(conn: &Connection, filter: &Filter) -> rusqlite::Result<Vec<AttemptRow>> {
    if filter.limit == Some(0) {
        return Ok(Vec::new());
    }
    let (sql_text, params) = select_sql(filter);
    let mut stmt = conn.prepare(&sql_text)?;
    let mut texts = Texts::default();
    let mut rows: Vec<AttemptRow> = Vec::with_capacity(filter.limit.unwrap_or(0).min(PREALLOCATED));
    let mut found = stmt.query(rusqlite::params_from_iter(params))?;
    while let Some(r) = found.next()? {
        rows.push(texts.attempt(r)?);
    }
    if let Some(n) = filter.limit {
        // The keys tell every two rows apart; rows started in the same
        // millisecond as the newest `limit`-th may be more than it wants:
        // the oldest by the keys go.
        rows.sort_by(|a, b| {
            (a.started_ms, &a.run_id, a.attempt, &a.job).cmp(&(b.started_ms, &b.run_id, b.attempt, &b.job))
        });
        let over = rows.len().saturating_sub(n);
        rows.drain(..over);
    }
    Ok(rows)
}

/// [`select`]'s query and its parameters.
fn select_sql(filter: &Filter) -> (String, Vec<rusqlite::types::Value>) {
    use rusqlite::types::Value;
    let mut sql_text = String::from(if filter.lean {
        "SELECT run_id, pipeline, '', job, definition, commit_sha, NULL, default_branch, dirty, attempt,
         outcome, failure_class, NULL, duration_ms, NULL, '', '', signature, started_ms,
         failure_line, allowed, NULL FROM attempts"
    } else {
        "SELECT run_id, pipeline, dialect, job, definition, commit_sha, branch, default_branch, dirty, attempt,
         outcome, failure_class, exit_code, duration_ms, peak_memory, executor, host, signature, started_ms,
         failure_line, allowed, cpu_ms FROM attempts"
    });
    let mut wanted = String::from(" WHERE 1 = 1");
    let mut params = Vec::new();
    for (column, value) in [
        ("job", filter.job.clone().map(Value::Text)),
        ("pipeline", filter.pipeline.clone().map(Value::Text)),
        ("branch", filter.branch.clone().map(Value::Text)),
    ] {
        if let Some(v) = value {
            wanted.push_str(&format!(" AND {column} = ?"));
            params.push(v);
        }
    }
    if let Some(s) = filter.since_ms {
        wanted.push_str(" AND started_ms >= ?");
        params.push(Value::Integer(sql(s)));
    }
    sql_text.push_str(&wanted);
    // The newest `limit`: those that started no earlier than the newest
    // `limit`-th, found in the index on the start, in the order of their
    // start; [`select`] puts them in the order of every key (SQLite's
    // ordering by all of them sorted every row, more than half of a
    // 5,000-row read). With neither a pipeline nor a job to look them up
    // by (`trackside history` unfiltered), no index serves: the table is
    // read twice. Without a limit: every row in the order written
    // (attempts are written as they end: oldest first, no sort needed).
    match filter.limit {
        Some(n) => {
            sql_text.push_str(" AND started_ms >= IFNULL((SELECT started_ms FROM attempts");
            sql_text.push_str(&wanted);
            sql_text.push_str(" ORDER BY started_ms DESC LIMIT 1 OFFSET ? - 1), ?) ORDER BY started_ms");
            params.extend_from_within(..);
            params.push(Value::Integer(i64::try_from(n).unwrap_or(i64::MAX)));
            params.push(Value::Integer(i64::MIN));
        }
        None => sql_text.push_str(" ORDER BY rowid"),
    }
    (sql_text, params)
}

/// Marks the attempts of `jobs` in `run_id` as allowed failures.
pub fn mark_allowed(conn: &Connection, run_id: &str, jobs: &[String]) -> rusqlite::Result<()> {
    let mut stmt = conn.prepare_cached("UPDATE attempts SET allowed = 1 WHERE run_id = ?1 AND job = ?2")?;
    for j in jobs {
        stmt.execute(params![run_id, j])?;
    }
    Ok(())
}

/// A quarantined job: its failures do not fail a run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Quarantined {
    pub name: String,
    /// The pipeline file (absolute); empty: every pipeline.
    pub pipeline: String,
    pub added_ms: u64,
    /// Until then (ms since the epoch); `None`: until removed.
    pub until_ms: Option<u64>,
}

pub fn quarantine_add(conn: &Connection, q: &Quarantined) -> rusqlite::Result<()> {
    conn.execute(
        "INSERT OR REPLACE INTO quarantine (name, pipeline, added_ms, until_ms) VALUES (?1, ?2, ?3, ?4)",
        params![q.name, q.pipeline, sql(q.added_ms), q.until_ms.map(sql)],
    )
    .map(|_| ())
}

/// Removes `name` (of `pipeline`, or of every pipeline); how many went.
pub fn quarantine_remove(conn: &Connection, name: &str, pipeline: Option<&str>) -> rusqlite::Result<usize> {
    conn.execute(
        "DELETE FROM quarantine WHERE name = ?1 AND (?2 IS NULL OR pipeline = ?2)",
        params![name, pipeline],
    )
}

/// Every quarantine entry, expired ones too.
pub fn quarantine_list(conn: &Connection) -> rusqlite::Result<Vec<Quarantined>> {
    let mut stmt = conn.prepare("SELECT name, pipeline, added_ms, until_ms FROM quarantine ORDER BY name, pipeline")?;
    let ms = |v: i64| u64::try_from(v).unwrap_or(0);
    let rows = stmt
        .query_map([], |r| {
            Ok(Quarantined {
                name: r.get(0)?,
                pipeline: r.get(1)?,
                added_ms: ms(r.get(2)?),
                until_ms: r.get::<_, Option<i64>>(3)?.map(ms),
            })
        })?
        .collect::<rusqlite::Result<_>>()?;
    Ok(rows)
}

impl Quarantined {
    /// In force at `now` for `pipeline`.
    pub fn applies(&self, pipeline: &str, now_ms: u64) -> bool {
        (self.pipeline.is_empty() || self.pipeline == pipeline) && self.until_ms.is_none_or(|u| now_ms < u)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(run: &str, job: &str, attempt: u32, outcome: &str, at: u64) -> AttemptRow {
        AttemptRow {
            run_id: run.into(),
            pipeline: "ci.yml".into(),
            dialect: "github".into(),
            job: job.into(),
            definition: "d1".into(),
            commit: Some("abc".into()),
            branch: Some("main".into()),
            default_branch: true,
            dirty: false,
            attempt,
            outcome: outcome.into(),
            failure_class: (outcome == "failed").then(|| "script".into()),
            exit_code: Some(if outcome == "failed" { 1 } else { 0 }),
            duration_ms: 1_200,
            peak_memory: None,
            cpu_ms: None,
            executor: "shell".into(),
            host: "h".into(),
            signature: None,
            started_ms: at,
            failure_line: None,
            allowed: false,
        }
    }

    #[test]
    fn usage_reads_the_newest_attempts_whatever_they_measured() {
        let mut conn = Connection::open_in_memory().unwrap();
        migrate(&mut conn).unwrap();
        let mut rows = Vec::new();
        for i in 1..=10u64 {
            let mut r = row(&format!("old{i}"), "build", 1, "passed", i);
            r.peak_memory = Some(i << 20);
            rows.push(r);
        }
        // A thousand newer attempts that measured nothing (a trivial job's,
        // where the machine cannot tell its memory): the read stops there,
        // not at the end of the pipeline's history.
        for i in 1..=1_000u64 {
            rows.push(row(&format!("new{i}"), "build", 1, "passed", 1_000 + i));
        }
        insert(&conn, &rows).unwrap();
        assert_eq!(usage(&conn, "ci.yml", 1, 20).unwrap().get("build"), None);
        // Attempts served from the cache are not among them: a job cached
        // in most runs keeps what its runs measured.
        let cached: Vec<AttemptRow> = (1..=1_000u64)
            .map(|i| row(&format!("c{i}"), "build", 1, "cached", 2_000 + i))
            .collect();
        insert(&conn, &cached).unwrap();
        assert_eq!(usage(&conn, "ci.yml", 1, 20).unwrap().get("build"), None);
        let mut measured = Vec::new();
        for i in 1..=3u64 {
            let mut r = row(&format!("m{i}"), "build", 1, "passed", 3_000 + i);
            r.peak_memory = Some(5 << 20);
            measured.push(r);
        }
        insert(&conn, &measured).unwrap();
        insert(
            &conn,
            &(1..=1_000u64)
                .map(|i| row(&format!("d{i}"), "build", 1, "cached", 4_000 + i))
                .collect::<Vec<_>>(),
        )
        .unwrap();
        assert_eq!(
            usage(&conn, "ci.yml", 1, 20)
                .unwrap()
                .get("build")
                .and_then(|u| u.memory),
            Some(5 << 20),
            "a thousand cached attempts after them"
        );
        // Measured runs among the newest count, cached ones in between or not.
        let mut r = row("newest", "build", 1, "passed", 9_000);
        r.peak_memory = Some(7 << 20);
        insert(&conn, &[r]).unwrap();
        assert_eq!(
            usage(&conn, "ci.yml", 1, 20)
                .unwrap()
                .get("build")
                .and_then(|u| u.memory),
            Some(7 << 20)
        );
    }

    #[test]
    fn a_jobs_usage_is_the_90th_percentile_of_its_recent_attempts() {
        let mut conn = Connection::open_in_memory().unwrap();
        migrate(&mut conn).unwrap();
        let mut rows = Vec::new();
        // build: ten attempts of 1..=10 MiB, each 1.2 s with 0.3..3.0 s of CPU.
        for i in 1..=10u64 {
            let mut r = row(&format!("r{i}"), "build", 1, "passed", 1_000 + i);
            r.peak_memory = Some(i << 20);
            r.cpu_ms = Some(i * 300);
            rows.push(r);
        }
        // lint: two attempts only; test: a cancelled attempt does not count.
        for i in 1..=2u64 {
            let mut r = row(&format!("r{i}"), "lint", 1, "passed", 2_000 + i);
            r.peak_memory = Some(1 << 30);
            rows.push(r);
        }
        for (i, outcome) in ["passed", "failed", "passed", "cancelled"].iter().enumerate() {
            let mut r = row(&format!("t{i}"), "test", 1, outcome, 3_000 + i as u64);
            r.peak_memory = Some(if *outcome == "cancelled" { 9 << 30 } else { 2 << 30 });
            rows.push(r);
        }
        insert(&conn, &rows).unwrap();
        let u = usage(&conn, "ci.yml", 3, 20).unwrap();
        assert_eq!(
            u.get("build"),
            Some(&JobUsage {
                memory: Some(9 << 20),
                cpu_milli: Some(2250),
            })
        );
        assert_eq!(u.get("lint"), None, "two attempts say nothing");
        assert_eq!(u.get("test").and_then(|t| t.memory), Some(2 << 30));
        // The newest `per_job` only: 6..=10 MiB.
        assert_eq!(usage(&conn, "ci.yml", 3, 5).unwrap()["build"].memory, Some(10 << 20));
    }

    #[test]
    fn the_start_reads_the_newest_attempts_from_the_index_alone() {
        let mut conn = Connection::open_in_memory().unwrap();
        // An index of version 6 (`attempts_by_pipeline`) is brought to 7.
        conn.execute_batch(&[V1, V2, V3, V4, V5, V6].concat()).unwrap();
        conn.pragma_update(None, "user_version", 6).unwrap();
        migrate(&mut conn).unwrap();
        for sql in [USAGE, RECENT_DURATIONS] {
            let plan: Vec<String> = conn
                .prepare(&format!("EXPLAIN QUERY PLAN {sql}"))
                .unwrap()
                .query_map(params!["ci.yml", 10], |r| r.get(3))
                .unwrap()
                .collect::<Result<_, _>>()
                .unwrap();
            // Every read of the table is a search of the covering index.
            let reads: Vec<&String> = plan.iter().filter(|step| step.contains("attempts ")).collect();
            assert_eq!(
                reads,
                ["SEARCH attempts USING COVERING INDEX attempts_recent (pipeline=?)"],
                "{sql}: {plan:?}"
            );
        }
        let old: i64 = conn
            .query_row(
                "SELECT count(*) FROM sqlite_master WHERE name = 'attempts_by_pipeline'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(old, 0, "the index it replaces is gone");
    }

    #[test]
    fn an_old_index_is_migrated_once_and_rows_come_back_oldest_first() {
        let mut conn = Connection::open_in_memory().unwrap();
        migrate(&mut conn).unwrap();
        migrate(&mut conn).unwrap();
        let v: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0)).unwrap();
        assert_eq!(v, VERSION);
        let rows = [
            row("r1", "test", 1, "failed", 10),
            row("r1", "test", 2, "passed", 20),
            row("r2", "test", 1, "passed", 30),
            row("r2", "lint", 1, "passed", 31),
        ];
        insert(&conn, &rows).unwrap();
        let got = select(
            &conn,
            &Filter {
                job: Some("test".into()),
                ..Filter::default()
            },
        )
        .unwrap();
        assert_eq!(got, rows[..3].to_vec());
        let newest = select(
            &conn,
            &Filter {
                limit: Some(2),
                since_ms: Some(15),
                ..Filter::default()
            },
        )
        .unwrap();
        assert_eq!(newest, vec![rows[2].clone(), rows[3].clone()]);
    }

    #[test]
    fn a_limited_read_is_the_newest_by_every_key_and_sorts_no_row_in_sqlite() {
        let mut conn = Connection::open_in_memory().unwrap();
        migrate(&mut conn).unwrap();
        // Runs of three jobs, some attempted twice, many started in the same
        // millisecond (a limit falls among rows of one start), two pipelines.
        let mut rows = Vec::new();
        for run in 0..40u64 {
            for (j, job) in ["lint", "build", "test"].iter().enumerate() {
                for attempt in 1..=(1 + u32::from(run % 3 == 0 && j == 2)) {
                    let mut r = row(&format!("r{:02}", run % 17), job, attempt, "passed", 100 + run / 4);
                    if run % 5 == 0 {
                        r.pipeline = "other.yml".into();
                    }
                    rows.push(r);
                }
            }
        }
        insert(&conn, &rows).unwrap();
        // What SQLite returns ordering by every key itself.
        let sorted_by_sqlite = |filter: &Filter| -> Vec<(u64, String, u32, String)> {
            let mut sql = String::from("SELECT started_ms, run_id, attempt, job FROM attempts WHERE 1 = 1");
            if let Some(p) = &filter.pipeline {
                sql.push_str(&format!(" AND pipeline = '{p}'"));
            }
            if let Some(j) = &filter.job {
                sql.push_str(&format!(" AND job = '{j}'"));
            }
            if let Some(s) = filter.since_ms {
                sql.push_str(&format!(" AND started_ms >= {s}"));
            }
            let n = filter.limit.unwrap();
            sql.push_str(&format!(
                " ORDER BY started_ms DESC, run_id DESC, attempt DESC, job DESC LIMIT {n}"
            ));
            let mut stmt = conn.prepare(&sql).unwrap();
            let mut got: Vec<_> = stmt
                .query_map([], |r| {
                    Ok((r.get::<_, i64>(0)? as u64, r.get(1)?, r.get(2)?, r.get(3)?))
                })
                .unwrap()
                .collect::<Result<_, _>>()
                .unwrap();
            got.reverse();
            got
        };
        let mut tried = 0;
        for limit in [0, 1, 2, 3, 7, 50, 97, 1_000] {
            for pipeline in [None, Some("ci.yml"), Some("other.yml")] {
                for (job, since_ms) in [(None, None), (Some("test"), None), (None, Some(105))] {
                    let filter = Filter {
                        limit: Some(limit),
                        pipeline: pipeline.map(String::from),
                        job: job.map(String::from),
                        since_ms,
                        lean: limit % 2 == 1,
                        ..Filter::default()
                    };
                    let got: Vec<_> = select(&conn, &filter)
                        .unwrap()
                        .into_iter()
                        .map(|r| (r.started_ms, r.run_id.to_string(), r.attempt, r.job.to_string()))
                        .collect();
                    assert_eq!(got, sorted_by_sqlite(&filter), "{filter:?}");
                    tried += usize::from(!got.is_empty());
                }
            }
        }
        assert!(tried > 50, "the reads found rows");
        // The pipeline's history is read through its index, with no sort.
        let (sql, params) = select_sql(&Filter {
            pipeline: Some("ci.yml".into()),
            limit: Some(5),
            lean: true,
            ..Filter::default()
        });
        let plan: Vec<String> = conn
            .prepare(&format!("EXPLAIN QUERY PLAN {sql}"))
            .unwrap()
            .query_map(rusqlite::params_from_iter(params), |r| r.get::<_, String>(3))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert!(
            plan.iter().any(|step| step.contains("INDEX attempts_recent")),
            "{plan:?}"
        );
        assert!(plan.iter().all(|step| !step.contains("TEMP B-TREE")), "{plan:?}");
    }

    #[test]
    fn a_read_makes_each_text_once_however_many_rows_repeat_it() {
        let mut conn = Connection::open_in_memory().unwrap();
        migrate(&mut conn).unwrap();
        let rows = [
            row("r1", "test", 1, "passed", 10),
            row("r2", "test", 1, "passed", 20),
            row("r2", "lint", 1, "passed", 20),
        ];
        insert(&conn, &rows).unwrap();
        for limit in [None, Some(10)] {
            let got = select(
                &conn,
                &Filter {
                    limit,
                    ..Filter::default()
                },
            )
            .unwrap();
            let mut want = rows.to_vec();
            if limit.is_some() {
                // Started together: by job.
                want.swap(1, 2);
            }
            assert_eq!(got, want, "limit {limit:?}");
            let (test, lint) = (&got[0], &got[if limit.is_some() { 1 } else { 2 }]);
            assert!(ArcStr::ptr_eq(&test.pipeline, &lint.pipeline));
            assert!(ArcStr::ptr_eq(&test.outcome, &lint.outcome));
            assert!(ArcStr::ptr_eq(&got[1].run_id, &got[2].run_id));
            assert!(!ArcStr::ptr_eq(&got[0].run_id, &got[1].run_id));
        }
    }

    #[test]
    fn a_text_that_comes_back_after_another_or_a_null_is_the_one_made_first() {
        let mut conn = Connection::open_in_memory().unwrap();
        migrate(&mut conn).unwrap();
        let mut failed = row("r2", "test", 1, "failed", 20);
        failed.failure_class = Some("test".into());
        let rows = [
            row("r1", "test", 1, "passed", 10),
            row("r1", "lint", 1, "passed", 11),
            failed,
            row("r2", "lint", 1, "passed", 21),
        ];
        insert(&conn, &rows).unwrap();
        let all = select(&conn, &Filter::default()).unwrap();
        assert_eq!(all, rows);
        assert!(ArcStr::ptr_eq(&all[0].job, &all[2].job), "test");
        assert!(ArcStr::ptr_eq(&all[1].job, &all[3].job), "lint");
        assert!(ArcStr::ptr_eq(&all[0].outcome, &all[3].outcome), "passed");
        assert_eq!(all[3].failure_class, None, "a NULL after a text");
    }

    #[test]
    fn a_limited_read_of_test_cases_takes_the_newest_in_the_order_written() {
        let mut conn = Connection::open_in_memory().unwrap();
        migrate(&mut conn).unwrap();
        let case = |run: &str, name: &str, reruns_failed: u32| TestCaseRow {
            run_id: run.into(),
            job: "test".into(),
            attempt: 1,
            suite: "s".into(),
            name: name.into(),
            outcome: "passed".into(),
            reruns_failed,
            duration_ms: 5,
            message: None,
            file: None,
        };
        for (i, run) in ["r1", "r2", "r3"].into_iter().enumerate() {
            insert(&conn, &[row(run, "test", 1, "passed", 10 * i as u64)]).unwrap();
            insert_tests(&conn, &[case(run, "a", 0), case(run, "b", u32::from(run == "r3"))]).unwrap();
        }
        let names = |rows: &[AttemptRow]| -> Vec<String> {
            rows.iter()
                .map(|r| format!("{} {} {}", r.run_id, r.job, r.outcome))
                .collect()
        };
        let newest = test_attempts(&conn, Some("ci.yml"), Some(2)).unwrap();
        assert_eq!(
            names(&newest),
            ["r3 test › a passed", "r3 test › b failed", "r3 test › b passed"]
        );
        let all = test_attempts(&conn, Some("ci.yml"), None).unwrap();
        assert_eq!(all.len(), 7);
        assert_eq!(names(&all[..2]), ["r1 test › a passed", "r1 test › b passed"]);
        assert_eq!(all[5].failure_class.as_deref(), Some("test"));
        assert!(test_attempts(&conn, Some("other.yml"), None).unwrap().is_empty());
    }

    #[test]
    fn a_lean_read_leaves_out_only_what_flakiness_and_run_figures_do_not_read() {
        let conn = Connection::open_in_memory().unwrap();
        let mut conn = conn;
        migrate(&mut conn).unwrap();
        let mut rows = Vec::new();
        for (i, run) in ["r1", "r2", "r3", "r4", "r5", "r6"].iter().enumerate() {
            let at = 100 * i as u64;
            let mut failed = row(run, "test", 1, "failed", at);
            failed.signature = Some(format!("sig{}", i % 2).into());
            failed.failure_line = Some("connection reset".into());
            failed.commit = Some(format!("c{}", i / 2).into());
            rows.push(failed);
            rows.push(row(run, "test", 2, "passed", at + 1));
            rows.push(row(run, "lint", 1, if i == 4 { "failed" } else { "passed" }, at + 2));
        }
        insert(&conn, &rows).unwrap();
        let full = select(&conn, &Filter::default()).unwrap();
        let lean = select(
            &conn,
            &Filter {
                lean: true,
                ..Filter::default()
            },
        )
        .unwrap();
        assert_eq!(full, rows);
        let l = &lean[0];
        assert!(l.dialect.is_empty() && l.branch.is_none() && l.exit_code.is_none() && l.executor.is_empty());
        assert_eq!(
            (l.signature.as_deref(), l.failure_line.as_deref()),
            (Some("sig0"), Some("connection reset"))
        );
        let (a, b) = (
            crate::insight::flaky::analyse(&full),
            crate::insight::flaky::analyse(&lean),
        );
        assert_eq!(serde_json::to_string(&a).unwrap(), serde_json::to_string(&b).unwrap());
        assert!(a.iter().any(|f| f.job == "test" && f.passed_on_retry == 6), "{a:?}");
        // The run start's dashboard figures read the lean rows too.
        let (sa, sb) = (
            crate::insight::metrics::stats(&full, &a, 30),
            crate::insight::metrics::stats(&lean, &b, 30),
        );
        assert_eq!(serde_json::to_string(&sa).unwrap(), serde_json::to_string(&sb).unwrap());
        assert!(sa.iter().any(|s| s.runs > 0), "{sa:?}");
    }
}
