//! Writes each attempt into the store's history as it ends (see
//! `store::history`): the job's identity (name and a digest of its
//! definition), the outcome, and where it ran: the commit, branch and
//! whether the work tree was dirty, which git tells a background thread
//! while the run goes on. Rows written before git answered get those
//! columns when it does (at the latest when the run ends). Writing history
//! never fails a run: a problem is logged once.
//!
//! The writes themselves happen on a thread of their own ([`Writer`]), off
//! the engine's path from one job to the next, which first reads the
//! pipeline's history. It keeps the run's priority: it holds the index's
//! connection, which a job's start may need too (its result cache), and a
//! lower one would make that job wait on it. Rows are held a moment
//! ([`HOLD`], at most [`HOLD_ROWS`]) and go to the writer together, so that
//! a burst of short jobs costs one transaction, not one per job. The run
//! record (the events) stays the first record of an attempt; a trackside
//! killed outright (SIGKILL, a power cut) loses the rows it held, at most a
//! quarter second's, from history only: a signal it can handle ends the run
//! and [`History::finish`] writes them. It waits for the writes before the
//! run's end is told.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::mpsc;
use std::time::Duration;

use tokio::time::Instant;

use sha2::{Digest, Sha256};

use crate::pipeline::Pipeline;
use crate::protocol::{Event, EventKind, JobStatus};
use crate::store::history::AttemptRow;
use crate::store::index::Index;

/// The metrics of the attempts in history (of one pipeline, or all), in
/// Prometheus' text format: `trackside metrics`, and the deploys'
/// `/metrics` endpoint after the service's own.
pub fn prometheus(index: &Index, pipeline: Option<&str>) -> Result<String, crate::store::StoreError> {
    let rows = index.attempts(&crate::store::history::Filter {
        pipeline: pipeline.map(str::to_string),
        ..Default::default()
    })?;
    let flaky = crate::insight::flaky::analyse(&rows);
    Ok(crate::insight::metrics::prometheus(&rows, &flaky))
}

/// What git says about the commit a run ran.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RunFacts {
    pub commit: Option<String>,
    pub branch: Option<String>,
    pub default_branch: bool,
    pub dirty: bool,
}

impl RunFacts {
    /// Asks git (a few processes); nothing known outside a repository.
    pub fn read(project: &Path, known: Option<&crate::exec::git::Facts>) -> RunFacts {
        let read;
        // Facts of another folder (the workflow's repository, a
        // `--project-dir` elsewhere) are not this project's.
        let same =
            |f: &&crate::exec::git::Facts| std::fs::canonicalize(&f.root).ok() == std::fs::canonicalize(project).ok();
        let facts = match known.filter(same) {
            Some(f) => Some(f),
            None => {
                read = crate::exec::git::Facts::read(project);
                read.as_ref()
            }
        };
        let Some(f) = facts else {
            return RunFacts::default();
        };
        // Without a remote to ask, git's own default names (`main`,
        // `master`) are the default branch.
        let default_branch = f.branch.as_deref() == Some(f.default_branch.as_str())
            || (f.origin_url.is_none() && matches!(f.branch.as_deref(), Some("main" | "master")));
        RunFacts {
            commit: f.head.as_ref().map(|h| h.sha.clone()),
            default_branch,
            branch: f.branch.clone(),
            dirty: crate::exec::git::dirty(&f.root).unwrap_or(false),
        }
    }
}

/// How long an attempt's row may wait for others before it is written.
pub const HOLD: Duration = Duration::from_millis(250);
/// Rows held at most: more are written at once.
const HOLD_ROWS: usize = 16;

/// A write to the history index.
enum Write {
    Rows(Vec<AttemptRow>),
    Facts(RunFacts),
    Allowed(Vec<String>),
}

/// Writes to the index on a thread of its own, in the order given;
/// consecutive rows in one transaction. Where the thread cannot be started
/// (or after [`Writer::close`]), writes happen on the caller's thread.
struct Writer {
    index: Arc<Index>,
    run_id: String,
    tx: Option<mpsc::Sender<Write>>,
    thread: Option<std::thread::JoinHandle<()>>,
    warned: bool,
}

impl Writer {
    /// Starts the thread, which runs `first` (reading the pipeline's
    /// history: before this run's rows are in it) and then writes.
    fn start(index: Arc<Index>, run_id: String, first: Box<dyn FnOnce() + Send>) -> Writer {
        let (tx, rx) = mpsc::channel::<Write>();
        let (ix, id) = (index.clone(), run_id.clone());
        let thread = std::thread::Builder::new()
            .name("trackside-history".into())
            .spawn(move || {
                first();
                let mut warned = false;
                let mut next = rx.recv().ok();
                while let Some(w) = next.take() {
                    let w = match w {
                        // Rows waiting behind this one join it.
                        Write::Rows(mut rows) => {
                            loop {
                                match rx.try_recv() {
                                    Ok(Write::Rows(more)) => rows.extend(more),
                                    Ok(other) => {
                                        next = Some(other);
                                        break;
                                    }
                                    Err(_) => break,
                                }
                            }
                            Write::Rows(rows)
                        }
                        other => other,
                    };
                    warn_once(&mut warned, apply(&ix, &id, w));
                    if next.is_none() {
                        next = rx.recv().ok();
                    }
                }
            })
            .inspect_err(|e| {
                tracing::warn!("no thread for the run's history ({e}): it is written as the run goes, and not read");
            })
            .ok();
        Writer {
            index,
            run_id,
            tx: thread.as_ref().map(|_| tx),
            thread,
            warned: false,
        }
    }

    fn send(&mut self, w: Write) {
        let w = match &self.tx {
            Some(tx) => match tx.send(w) {
                Ok(()) => return,
                Err(mpsc::SendError(w)) => w,
            },
            None => w,
        };
        let done = apply(&self.index, &self.run_id, w);
        warn_once(&mut self.warned, done);
    }

    /// Waits until everything sent is written; later writes are made on
    /// the caller's thread.
    fn close(&mut self) {
        self.tx = None;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Writer {
    /// A run that ends without [`History::finish`] (a panic) still writes
    /// what was sent.
    fn drop(&mut self) {
        self.close();
    }
}

fn apply(index: &Index, run_id: &str, w: Write) -> Result<(), crate::store::StoreError> {
    match w {
        Write::Rows(rows) => index.record_attempts(&rows),
        Write::Facts(f) => index.history_facts(
            run_id,
            f.commit.as_deref(),
            f.branch.as_deref(),
            f.default_branch,
            f.dirty,
        ),
        Write::Allowed(jobs) => index.mark_allowed(run_id, &jobs),
    }
}

fn warn_once(warned: &mut bool, r: Result<(), crate::store::StoreError>) {
    if let Err(e) = r
        && !std::mem::replace(warned, true)
    {
        tracing::warn!("cannot write the run's history: {e}");
    }
}

pub struct History {
    writer: Writer,
    run_id: arcstr::ArcStr,
    pipeline: arcstr::ArcStr,
    dialect: arcstr::ArcStr,
    host: arcstr::ArcStr,
    facts: Option<RunFacts>,
    pending: Option<mpsc::Receiver<RunFacts>>,
    /// When each attempt started (ms since the epoch).
    started: HashMap<(String, u32), u64>,
    /// Definitions' digests, by job name.
    definitions: HashMap<String, arcstr::ArcStr>,
    /// The line that told each failed attempt, by (job, attempt).
    telling: HashMap<(String, u32), String>,
    /// Peak memory (bytes) and CPU time (ms) of attempts that have not
    /// ended yet.
    usage: HashMap<(String, u32), (Option<u64>, Option<u64>)>,
    /// Rows not sent to the writer yet, and when the first of them must be.
    held: Vec<AttemptRow>,
    due: Option<Instant>,
}

impl History {
    /// Starts asking git in the background.
    pub fn start(
        index: Arc<Index>,
        run_id: &str,
        pipeline_file: &Path,
        dialect: &str,
        project: PathBuf,
        known: Option<crate::exec::git::Facts>,
        before_writing: Box<dyn FnOnce() + Send>,
    ) -> History {
        let (tx, rx) = mpsc::channel();
        let asked = std::thread::Builder::new()
            .name("trackside-git-facts".into())
            .spawn(move || {
                // Nothing waits for these before the run's end: git (a
                // child inherits its thread's nice) gives way to the jobs.
                crate::process::background_thread();
                let _ = tx.send(RunFacts::read(&project, known.as_ref()));
            });
        let host = crate::protocol::identity::hostname();
        History {
            writer: Writer::start(index, run_id.to_string(), before_writing),
            run_id: run_id.into(),
            pipeline: crate::store::history::pipeline_key(pipeline_file).into(),
            dialect: dialect.into(),
            host: host.into(),
            facts: asked.is_err().then(RunFacts::default),
            pending: asked.is_ok().then_some(rx),
            started: HashMap::new(),
            definitions: HashMap::new(),
            telling: HashMap::new(),
            usage: HashMap::new(),
            held: Vec::new(),
            due: None,
        }
    }

    /// When the held rows must be written ([`History::flush`]), if any are.
    pub fn due(&self) -> Option<Instant> {
        self.due
    }

    /// Sends the held rows to the writer.
    pub fn flush(&mut self) {
        self.due = None;
        if !self.held.is_empty() {
            self.writer.send(Write::Rows(std::mem::take(&mut self.held)));
        }
    }

    /// Follows the run's events: an attempt's row is written as it ends.
    pub fn observe(&mut self, ev: &Event, pipeline: &Pipeline, containers: bool) {
        self.poll_facts(None);
        let row = match &ev.kind {
            EventKind::JobStarted { job, attempt } => {
                self.started.insert((job.clone(), *attempt), ev.ts);
                return;
            }
            EventKind::JobRetrying {
                job,
                attempt,
                failure_class,
                exit_code,
                ..
            } => {
                let failed = attempt.saturating_sub(1);
                let started = self.started.remove(&(job.clone(), failed)).unwrap_or(ev.ts);
                self.row(
                    job,
                    failed,
                    "failed",
                    Some(failure_class.to_string()),
                    *exit_code,
                    started,
                    ev.ts.saturating_sub(started),
                    pipeline,
                    containers,
                )
            }
            EventKind::JobFinished {
                job,
                attempt,
                status,
                exit_code,
                failure_class,
                cached,
                ..
            } => {
                let Some(started) = self.started.remove(&(job.clone(), *attempt)) else {
                    // Never started (cancelled or skipped while waiting).
                    return;
                };
                let outcome = match status {
                    // Served from the result cache: counted as a hit, not as a run of the job.
                    JobStatus::Succeeded if cached.is_some() => "cached",
                    JobStatus::Succeeded => "passed",
                    JobStatus::Cancelled => "cancelled",
                    _ => "failed",
                };
                let class = failure_class.map(|c| c.to_string());
                self.row(
                    job,
                    *attempt,
                    outcome,
                    class,
                    *exit_code,
                    started,
                    // The attempt's own time (the job's counts retries' waits).
                    ev.ts.saturating_sub(started),
                    pipeline,
                    containers,
                )
            }
            // Stopped for a higher-priority run: neither a pass nor a failure.
            EventKind::JobPreempted { job, attempt, .. } => {
                let started = self.started.remove(&(job.clone(), *attempt)).unwrap_or(ev.ts);
                self.row(
                    job,
                    *attempt,
                    "preempted",
                    None,
                    None,
                    started,
                    ev.ts.saturating_sub(started),
                    pipeline,
                    containers,
                )
            }
            // Failures the run allowed (allow_failure, quarantine) did not fail it.
            EventKind::RunFinished { summary } => {
                let allowed: Vec<String> = summary
                    .jobs
                    .iter()
                    .filter(|j| j.status == JobStatus::Failed && j.allow_failure)
                    .map(|j| j.name.clone())
                    .collect();
                // After the rows they mark.
                self.flush();
                if !allowed.is_empty() {
                    self.writer.send(Write::Allowed(allowed));
                }
                return;
            }
            _ => return,
        };
        self.held.push(row);
        if self.held.len() >= HOLD_ROWS {
            self.flush();
        } else if self.due.is_none() {
            self.due = Some(Instant::now() + HOLD);
        }
    }

    /// The line that told why attempt `attempt` of `job` failed (it comes
    /// before the attempt's end is an event).
    pub fn telling(&mut self, job: &str, attempt: u32, line: String) {
        self.telling.insert((job.to_string(), attempt), line);
    }

    /// The most memory attempt `attempt` of `job` held, and the CPU time
    /// it used (they come before the attempt's end is an event).
    pub fn usage(&mut self, job: &str, attempt: u32, peak: Option<u64>, cpu_ms: Option<u64>) {
        self.usage.insert((job.to_string(), attempt), (peak, cpu_ms));
    }

    /// The run has ended: git's answer is waited for (a while) and given to
    /// the rows that lack it, and every write is made before this returns.
    pub fn finish(&mut self) {
        self.flush();
        self.poll_facts(Some(Duration::from_secs(5)));
        self.writer.close();
    }

    #[allow(clippy::too_many_arguments)]
    fn row(
        &mut self,
        job: &str,
        attempt: u32,
        outcome: &str,
        failure_class: Option<String>,
        exit_code: Option<i32>,
        started_ms: u64,
        duration_ms: u64,
        pipeline: &Pipeline,
        containers: bool,
    ) -> AttemptRow {
        let spec = pipeline.jobs.iter().find(|j| j.name == job);
        let definition = self
            .definitions
            .entry(job.to_string())
            .or_insert_with(|| definition(spec).into())
            .clone();
        let in_docker = containers && spec.is_some_and(|j| j.steps.iter().any(|s| s.image.is_some()));
        let facts = self.facts.clone().unwrap_or_default();
        let used = self.usage.remove(&(job.to_string(), attempt)).unwrap_or_default();
        let failure_line = self
            .telling
            .remove(&(job.to_string(), attempt))
            .filter(|_| outcome == "failed");
        let signature = failure_line
            .as_deref()
            .map(|l| crate::insight::signature::of(failure_class.as_deref().unwrap_or(""), l));
        AttemptRow {
            run_id: self.run_id.clone(),
            pipeline: self.pipeline.clone(),
            dialect: self.dialect.clone(),
            job: job.into(),
            definition,
            commit: facts.commit.map(Into::into),
            branch: facts.branch.map(Into::into),
            default_branch: facts.default_branch,
            dirty: facts.dirty,
            attempt,
            outcome: outcome.into(),
            failure_class: failure_class.map(Into::into),
            exit_code,
            duration_ms,
            peak_memory: used.0,
            cpu_ms: used.1,
            executor: arcstr::ArcStr::from(if in_docker { "docker" } else { "shell" }),
            host: self.host.clone(),
            signature: signature.map(Into::into),
            started_ms,
            failure_line: failure_line.map(Into::into),
            allowed: false,
        }
    }

    /// Takes git's answer if it has come (waiting up to `wait`), and gives
    /// it to the rows written without it.
    fn poll_facts(&mut self, wait: Option<Duration>) {
        let Some(rx) = &self.pending else { return };
        let got = match wait {
            None => rx.try_recv().ok(),
            Some(d) => rx.recv_timeout(d).ok(),
        };
        let Some(facts) = got else {
            if wait.is_some() {
                self.pending = None;
            }
            return;
        };
        self.pending = None;
        // The facts go to the rows written before them: the held ones first.
        self.flush();
        self.writer.send(Write::Facts(facts.clone()));
        self.facts = Some(facts);
    }
}

impl Drop for History {
    /// A run that ends without [`History::finish`] (a panic) still writes
    /// the rows it held.
    fn drop(&mut self) {
        self.flush();
    }
}

/// A digest of a job's definition (its model, serialized, without what
/// the UI shows with it: its facts change with its history). Fields are
/// taken in name order, so the digest does not depend on which are set.
///
/// The text digested is the JSON object of the job's fields in name order:
/// each field is serialized on its own ([`Fields`]), with no
/// `serde_json::Value` of the whole job built first (a tenth of a GitHub
/// job's allocations went to that).
pub fn definition(job: Option<&crate::pipeline::Job>) -> String {
    use serde::Serialize;
    let mut fields = Fields(Vec::new());
    let text = match job.map(|j| j.serialize(&mut fields)) {
        Some(Ok(())) => {
            fields.0.retain(|(k, _)| *k != "facts");
            // A struct's field names are unique: no order among equals.
            fields.0.sort_unstable_by_key(|(k, _)| *k);
            let mut text =
                String::with_capacity(fields.0.iter().map(|(k, v)| k.len() + v.len() + 4).sum::<usize>() + 2);
            text.push('{');
            for (i, (k, v)) in fields.0.iter().enumerate() {
                if i > 0 {
                    text.push(',');
                }
                text.push_str(&serde_json::to_string(k).unwrap_or_default());
                text.push(':');
                text.push_str(v);
            }
            text.push('}');
            text
        }
        _ => "{}".to_string(),
    };
    let d = Sha256::digest(text.as_bytes());
    d.iter().take(8).map(|b| format!("{b:02x}")).collect()
}

/// A struct's fields, each serialized to JSON text on its own, in the
/// order the struct gives them: a `serde::Serializer` that takes a struct
/// and nothing else.
///
/// The text is the one `serde_json::to_value` then `to_string` gave for
/// everything a `Job` holds today (the test below checks every corpus
/// job). It would differ for an `f32` (a `Value` widens it to `f64`:
/// `0.1` becomes `0.10000000149011612`), an integer beyond `u64`, or a map
/// serialized with the same key twice (a `Value` keeps one): a `Job` that
/// gains one of those must keep its digests another way.
struct Fields(Vec<(&'static str, String)>);

fn not_a_struct() -> serde_json::Error {
    serde::ser::Error::custom("a job's definition is a struct")
}

/// The serializer's methods for what is not a struct: each an error.
macro_rules! not_a_struct {
    ($($method:ident($($arg:ty),*)),* $(,)?) => {
        $(
            fn $method(self, $(_: $arg),*) -> Result<(), serde_json::Error> {
                Err(not_a_struct())
            }
        )*
    };
}

impl<'a> serde::Serializer for &'a mut Fields {
    type Ok = ();
    type Error = serde_json::Error;
    type SerializeSeq = serde::ser::Impossible<(), serde_json::Error>;
    type SerializeTuple = serde::ser::Impossible<(), serde_json::Error>;
    type SerializeTupleStruct = serde::ser::Impossible<(), serde_json::Error>;
    type SerializeTupleVariant = serde::ser::Impossible<(), serde_json::Error>;
    type SerializeMap = serde::ser::Impossible<(), serde_json::Error>;
    type SerializeStruct = &'a mut Fields;
    type SerializeStructVariant = serde::ser::Impossible<(), serde_json::Error>;

    not_a_struct!(
        serialize_bool(bool),
        serialize_i8(i8),
        serialize_i16(i16),
        serialize_i32(i32),
        serialize_i64(i64),
        serialize_u8(u8),
        serialize_u16(u16),
        serialize_u32(u32),
        serialize_u64(u64),
        serialize_f32(f32),
        serialize_f64(f64),
        serialize_char(char),
        serialize_str(&str),
        serialize_bytes(&[u8]),
        serialize_none(),
        serialize_unit(),
        serialize_unit_struct(&'static str),
        serialize_unit_variant(&'static str, u32, &'static str),
    );

    fn serialize_some<T: ?Sized + serde::Serialize>(self, _: &T) -> Result<(), serde_json::Error> {
        Err(not_a_struct())
    }
    fn serialize_newtype_struct<T: ?Sized + serde::Serialize>(
        self,
        _: &'static str,
        _: &T,
    ) -> Result<(), serde_json::Error> {
        Err(not_a_struct())
    }
    fn serialize_newtype_variant<T: ?Sized + serde::Serialize>(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: &T,
    ) -> Result<(), serde_json::Error> {
        Err(not_a_struct())
    }
    fn serialize_seq(self, _: Option<usize>) -> Result<Self::SerializeSeq, serde_json::Error> {
        Err(not_a_struct())
    }
    fn serialize_tuple(self, _: usize) -> Result<Self::SerializeTuple, serde_json::Error> {
        Err(not_a_struct())
    }
    fn serialize_tuple_struct(
        self,
        _: &'static str,
        _: usize,
    ) -> Result<Self::SerializeTupleStruct, serde_json::Error> {
        Err(not_a_struct())
    }
    fn serialize_tuple_variant(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: usize,
    ) -> Result<Self::SerializeTupleVariant, serde_json::Error> {
        Err(not_a_struct())
    }
    fn serialize_map(self, _: Option<usize>) -> Result<Self::SerializeMap, serde_json::Error> {
        Err(not_a_struct())
    }
    fn serialize_struct(self, _: &'static str, len: usize) -> Result<Self::SerializeStruct, serde_json::Error> {
        self.0.reserve(len);
        Ok(self)
    }
    fn serialize_struct_variant(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: usize,
    ) -> Result<Self::SerializeStructVariant, serde_json::Error> {
        Err(not_a_struct())
    }
}

impl serde::ser::SerializeStruct for &mut Fields {
    type Ok = ();
    type Error = serde_json::Error;

    fn serialize_field<T: ?Sized + serde::Serialize>(
        &mut self,
        key: &'static str,
        value: &T,
    ) -> Result<(), serde_json::Error> {
        self.0.push((key, serde_json::to_string(value)?));
        Ok(())
    }

    fn end(self) -> Result<(), serde_json::Error> {
        Ok(())
    }
}

#[cfg(test)]
pub(crate) mod tests {
    /// What git said of the workflow file's repository is used only when
    /// it is the project's: a `--project-dir` elsewhere is asked itself.
    #[test]
    fn facts_of_another_repository_are_not_the_projects() {
        use crate::exec::git::tests::{git, project};
        let (Some(file_repo), Some(project_dir)) = (project(), project()) else {
            return;
        };
        std::fs::write(project_dir.path().join("c.txt"), "c").expect("write");
        assert!(git(project_dir.path(), &["add", "-A"]));
        assert!(git(project_dir.path(), &["commit", "-qm", "third"]));
        let theirs = crate::exec::git::Facts::read(file_repo.path()).expect("facts");
        let ours = crate::exec::git::Facts::read(project_dir.path()).expect("facts");
        assert_ne!(theirs.head.as_ref().map(|h| &h.sha), ours.head.as_ref().map(|h| &h.sha));
        let told = super::RunFacts::read(project_dir.path(), Some(&theirs));
        assert_eq!(told.commit, ours.head.as_ref().map(|h| h.sha.clone()));
        // The project's own facts are taken as given.
        let same = super::RunFacts::read(file_repo.path(), Some(&theirs));
        assert_eq!(same.commit, theirs.head.as_ref().map(|h| h.sha.clone()));
    }

    /// What `definition` digested before it serialized each field on its
    /// own: the whole job as a `serde_json::Value`, its fields in name
    /// order. Digests in history must not change with how they are made.
    fn definition_by_value(job: &crate::pipeline::Job) -> String {
        use sha2::Digest;
        let fields: std::collections::BTreeMap<String, serde_json::Value> = match serde_json::to_value(job) {
            Ok(serde_json::Value::Object(o)) => o.into_iter().filter(|(k, _)| k != "facts").collect(),
            _ => Default::default(),
        };
        let text = serde_json::to_string(&fields).expect("text");
        let d = sha2::Sha256::digest(text.as_bytes());
        d.iter().take(8).map(|b| format!("{b:02x}")).collect()
    }

    /// The pipelines of the examples and of the GitLab and GitHub corpora
    /// that load, and how many files were tried.
    pub(crate) fn corpus_pipelines() -> (Vec<crate::pipeline::Pipeline>, usize) {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
        let mut files: Vec<std::path::PathBuf> = Vec::new();
        for dir in ["examples", "tests/corpus/gitlab", "tests/corpus/github"] {
            for entry in std::fs::read_dir(root.join(dir)).expect("read").flatten() {
                let p = entry.path();
                if p.extension().is_some_and(|e| e == "yml") {
                    files.push(p.clone());
                }
                for f in [".gitlab-ci.yml", ".github/workflows"] {
                    if p.join(f).exists() {
                        files.push(p.join(f));
                    }
                }
            }
        }
        let loaded = files
            .iter()
            .filter_map(|f| crate::pipeline::load(f, &Default::default()).ok())
            .map(|(p, _)| p)
            .collect();
        (loaded, files.len())
    }

    /// Every job of the examples and of the GitLab and GitHub corpora (all
    /// the model's parts between them: steps, containers, caches,
    /// artifacts, rules, matrices, deploys), and one with text to escape
    /// and fractions, digest as they did before.
    #[test]
    fn a_definitions_digest_is_the_one_its_whole_value_gave() {
        let (pipelines, files) = corpus_pipelines();
        let mut jobs: Vec<_> = pipelines.iter().flat_map(|p| p.jobs.iter().cloned()).collect();
        assert!(jobs.len() > 300, "only {} jobs loaded from {files} files", jobs.len());
        let mut odd = crate::pipeline::Job {
            name: "build \"quoted\" \\ é\u{1}".into(),
            timeout: std::time::Duration::from_millis(1500),
            stage: Some("tëst\ttab".into()),
            ..Default::default()
        };
        odd.facts.push(("history".into(), "x".into()));
        jobs.push(odd);
        jobs.push(crate::pipeline::Job::default());
        for job in &jobs {
            assert_eq!(
                super::definition(Some(job)),
                definition_by_value(job),
                "job `{}`",
                job.name
            );
        }
        assert_eq!(super::definition(None), {
            use sha2::Digest;
            let d = sha2::Sha256::digest(b"{}");
            d.iter().take(8).map(|b| format!("{b:02x}")).collect::<String>()
        });
    }

    #[test]
    fn a_jobs_facts_are_no_part_of_its_definition() {
        let mut job = crate::pipeline::Job {
            name: "test".into(),
            retry_count: 1,
            ..Default::default()
        };
        let bare = super::definition(Some(&job));
        job.facts.push(("history".into(), "flaky: 1 of 3 runs".into()));
        assert_eq!(super::definition(Some(&job)), bare);
        job.retry_count = 2;
        assert_ne!(super::definition(Some(&job)), bare);
    }
}
