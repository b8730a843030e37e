//! What is KEPT of a run: a folder per run under the state directory.
//!
//! ```text
//! <state>/runs/<run-id>/
//!     meta.json        pipeline file, project dir, start time
//!     pipeline.json    the resolved pipeline that ran (JSON, secrets masked)
//!     events.jsonl     every event but log lines, appended once per burst of events
//!     logs/<job>.<attempt>.log   one line per output line: ts_ms TAB stream TAB step TAB text
//!     summary.json     written when the run finishes
//!     steps/           container steps' scripts, secrets files and records (0700)
//! <state>/objects/ab/cdef...     content-addressed objects (artifacts, manifests, cached logs)
//! <state>/index.sqlite            run/job artifacts, cache keys, directory caches -> manifests
//! <state>/slots.sqlite            what the runs sharing the machine hold now (slots::Slots)
//! <state>/logs/trackside.log.YYYY-MM-DD   trackside's own diagnostics
//! ```
//! The engine writes both once per burst of events ([`RunRecord::flush`]),
//! before anyone is told of them: a crash of trackside loses at most the
//! burst it was handling and a partial line.

pub mod actions;
pub mod cache;
pub mod gc;
pub mod history;
pub mod index;
pub mod logscan;
pub mod manifest;
pub mod objects;
pub mod slots;

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{self, BufRead, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

use crate::protocol::{Event, EventKind, RunResult, RunSummary};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot find a state directory: set TRACKSIDE_STATE_DIR or pass --state-dir")]
    NoStateDir,
    #[error(transparent)]
    Io(#[from] IoFailure),
    #[error("no run matches `{0}`; `trackside runs` lists them")]
    NoSuchRun(String),
    #[error("`{0}` matches several runs: {1}; give more of the id")]
    Ambiguous(String, String),
    #[error("run {run} has no log for job `{job}`{attempt}; jobs with logs: {known}")]
    NoLog {
        run: String,
        job: String,
        attempt: String,
        known: String,
    },
    #[error("run record {path} is damaged: {message}")]
    Damaged { path: PathBuf, message: String },
    #[error("{path}: {message}")]
    Config { path: PathBuf, message: String },
    #[error("the store index {path}: {message}; `trackside store verify` checks the store")]
    Index { path: PathBuf, message: String },
    #[error("the machine's slot table {path}: {message}; runs go on without sharing the machine with other runs")]
    Slots { path: PathBuf, message: String },
    #[error(
        "the store index {path} is damaged ({message}); `trackside store verify --repair` rebuilds it from the run records (no object is lost)"
    )]
    IndexCorrupt { path: PathBuf, message: String },
}

/// A file operation that failed: what, on which path, and why. The store's
/// error types all carry this one, so each says it the same way.
#[derive(Debug, thiserror::Error)]
#[error("{action} {path}: {source}")]
pub struct IoFailure {
    pub action: &'static str,
    pub path: PathBuf,
    pub source: io::Error,
}

/// `.map_err(io_err("cannot read", &path))?`
pub(crate) fn io_err<'p>(action: &'static str, path: &'p Path) -> impl FnOnce(io::Error) -> IoFailure + 'p {
    move |source| IoFailure {
        action,
        path: path.to_path_buf(),
        source,
    }
}

/// `--state-dir` > `TRACKSIDE_STATE_DIR` > the platform data directory.
pub fn state_dir(flag: Option<&Path>) -> Result<PathBuf, StoreError> {
    if let Some(p) = flag {
        return Ok(p.to_path_buf());
    }
    if let Some(p) = std::env::var_os("TRACKSIDE_STATE_DIR").filter(|v| !v.is_empty()) {
        return Ok(PathBuf::from(p));
    }
    directories::ProjectDirs::from("", "", "trackside")
        .map(|d| d.data_dir().to_path_buf())
        .ok_or(StoreError::NoStateDir)
}

/// Creates the state directory readable by its owner only (0700), or
/// tightens one an older trackside left open to others. A state directory
/// owned by another user is refused: its records, sockets and objects could
/// be planted or read by that user.
pub fn prepare_state_dir(dir: &Path) -> Result<(), StoreError> {
    use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
    if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(io_err("cannot create", parent))?;
    }
    match std::fs::DirBuilder::new().mode(0o700).create(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(io_err("cannot create", dir)(e).into()),
    }
    let meta = std::fs::metadata(dir).map_err(io_err("cannot read", dir))?;
    if !meta.is_dir() {
        return Err(StoreError::Config {
            path: dir.to_path_buf(),
            message: "the state directory is not a directory".into(),
        });
    }
    let me = nix::unistd::geteuid().as_raw();
    if meta.uid() != me {
        return Err(StoreError::Config {
            path: dir.to_path_buf(),
            message: format!(
                "the state directory belongs to uid {}, not to you (uid {me}); \
                 use a state directory of your own (--state-dir or TRACKSIDE_STATE_DIR)",
                meta.uid()
            ),
        });
    }
    // Search by its group (and nothing else) is how a run's socket is
    // opened to a group (`--allow-group`): kept; anything more is taken away.
    let group_search = if meta.mode() & 0o070 == 0o010 { 0o010 } else { 0 };
    if meta.mode() & 0o077 != group_search {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700 | group_search))
            .map_err(io_err("cannot restrict", dir))?;
    }
    Ok(())
}

/// Creates `dir` (and its parents) and leaves it readable by its owner only.
pub fn private_dir(dir: &Path) -> Result<(), IoFailure> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .and_then(|()| std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)))
        .map_err(io_err("cannot create", dir))
}

/// Writes `path` whole with `mode` (also when an older file had another).
pub fn write_with_mode(path: &Path, bytes: &[u8], mode: u32) -> Result<(), IoFailure> {
    create_with_mode(path, mode)
        .and_then(|mut f| f.write_all(bytes))
        .map_err(io_err("cannot write", path))
}

/// `path`, empty, with `mode` (also when an older file had another).
fn create_with_mode(path: &Path, mode: u32) -> std::io::Result<File> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(path)?;
    f.set_permissions(std::fs::Permissions::from_mode(mode))?;
    Ok(f)
}

/// `path` opened to read and append to, made readable by its user alone
/// (0600) if it is new: a run's events and job logs.
pub fn open_appending(path: &Path) -> std::io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    OpenOptions::new()
        .create(true)
        .read(true)
        .append(true)
        .mode(0o600)
        .open(path)
}

pub use crate::protocol::clock::now_ms;

/// A sortable, unique-enough id: `20261123-022700-3f9a`.
pub fn new_run_id() -> String {
    let now = SystemTime::now();
    let ts = humantime::format_rfc3339_seconds(now).to_string();
    let compact: String = ts.chars().filter(char::is_ascii_digit).collect();
    let (date, time) = compact.split_at(8.min(compact.len()));
    format!("{date}-{time}-{:04x}", fastrand::u16(..))
}

/// A job name made safe for a file name (job names are validated, but be sure).
/// A job name as a file name: itself when it is letters, digits, `-`, `_`
/// and `.` (every native name), else those characters with the rest as `_`
/// and a hash of the whole name, so `test 1/3` and `test_1_3` (GitLab names
/// may hold anything) never share a file.
pub fn file_safe(name: &str) -> String {
    let safe = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.');
    if !name.is_empty() && name.chars().all(safe) && !name.starts_with('.') {
        return name.to_string();
    }
    use sha2::Digest;
    let hash = sha2::Sha256::digest(name.as_bytes());
    let short: String = hash[..4].iter().map(|b| format!("{b:02x}")).collect();
    let base: String = name.chars().take(64).map(|c| if safe(c) { c } else { '_' }).collect();
    format!("{base}-{short}")
}

pub fn log_path(run_dir: &Path, job: &str, attempt: u32) -> PathBuf {
    run_dir.join("logs").join(format!("{}.{attempt}.log", file_safe(job)))
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunMeta {
    pub run_id: String,
    pub pipeline: String,
    pub pipeline_file: PathBuf,
    pub project_dir: PathBuf,
    pub started_ms: u64,
    /// The trackside running it, `<pid>:<start time>` ([`crate::process::owner`]);
    /// absent in records of older versions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
}

/// An unfinished run whose record has no owner (an older trackside) counts
/// as crashed after this long.
const OWNERLESS_CRASHED_AFTER_MS: u64 = 7 * 24 * 3600 * 1000;

impl RunMeta {
    /// Whether the run, unfinished, can never finish: its trackside is gone.
    pub fn crashed(&self, finished: bool) -> bool {
        if finished {
            return false;
        }
        match &self.owner {
            Some(o) => !crate::process::alive(o),
            None => now_ms().saturating_sub(self.started_ms) > OWNERLESS_CRASHED_AFTER_MS,
        }
    }
}

/// The writer side of one run's folder.
pub struct RunRecord {
    dir: PathBuf,
    /// Written by [`RunRecord::flush`]: the engine flushes once per burst
    /// of events (whatever one message or command caused), before anyone
    /// is told of them, so a burst is one write, not one per event.
    events: BufWriter<File>,
    logs: HashMap<(String, u32), BufWriter<File>>,
    /// The attempts' logs written to since the last flush.
    dirty: Vec<(String, u32)>,
}

/// What a log's writer holds before it writes (as a line writer did).
const LOG_BUFFER: usize = 1024;
/// What the events' writer holds before it writes.
const EVENTS_BUFFER: usize = 64 * 1024;

impl RunRecord {
    /// Creates the run's folder, exclusively: when another run took the id
    /// (ids are random within a second), a fresh one is drawn and
    /// `meta.run_id` says which was used.
    /// The resolved pipeline (`pipeline.json`) is written apart, with
    /// [`RunRecord::write_pipeline`].
    pub fn create(state: &Path, meta: &mut RunMeta) -> Result<RunRecord, StoreError> {
        let dir = RunRecord::claim(state, meta)?;
        RunRecord::fill(dir, meta)
    }

    /// The first half of [`RunRecord::create`]: the run's folder, made
    /// exclusively (so `meta.run_id` is the run's own from then on), and
    /// nothing in it yet; [`RunRecord::fill`] makes the rest.
    pub fn claim(state: &Path, meta: &mut RunMeta) -> Result<PathBuf, StoreError> {
        prepare_state_dir(state)?;
        let runs = state.join("runs");
        std::fs::create_dir_all(&runs).map_err(io_err("cannot create", &runs))?;
        let mut dir = runs.join(&meta.run_id);
        let mut tries = 0;
        loop {
            // The user's alone, whoever may reach another run's socket.
            use std::os::unix::fs::DirBuilderExt;
            match std::fs::DirBuilder::new().mode(0o700).create(&dir) {
                Ok(()) => break,
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists && tries < 32 => {
                    tries += 1;
                    meta.run_id = new_run_id();
                    dir = runs.join(&meta.run_id);
                }
                Err(e) => return Err(io_err("cannot create run folder", &dir)(e).into()),
            }
        }
        Ok(dir)
    }

    /// The second half of [`RunRecord::create`], in the folder `claim` made.
    pub fn fill(dir: PathBuf, meta: &RunMeta) -> Result<RunRecord, StoreError> {
        // Its folders and files are the user's alone: a run opened to a
        // group (`--allow-group`) lets the group search the run's folder
        // for its socket, and nothing there may be more open than that.
        for sub in ["logs", "work"] {
            use std::os::unix::fs::DirBuilderExt;
            std::fs::DirBuilder::new()
                .mode(0o700)
                .create(dir.join(sub))
                .map_err(io_err("cannot create run folder", &dir))?;
        }
        let meta_path = dir.join("meta.json");
        let meta_text = serde_json::to_string_pretty(meta).unwrap_or_default();
        write_with_mode(&meta_path, meta_text.as_bytes(), 0o600)?;
        let ev = dir.join("events.jsonl");
        let events = open_appending(&ev).map_err(io_err("cannot open", &ev))?;
        Ok(RunRecord {
            dir,
            events: BufWriter::with_capacity(EVENTS_BUFFER, events),
            logs: HashMap::new(),
            dirty: Vec::new(),
        })
    }

    /// Writes the resolved pipeline that runs (`pipeline.json` of the run's
    /// folder `dir`), whole or not at all (a temporary file renamed).
    pub fn write_pipeline(dir: &Path, resolved: &str) -> Result<(), StoreError> {
        let tmp = dir.join(".pipeline.json.tmp");
        write_with_mode(&tmp, resolved.as_bytes(), 0o600)?;
        let path = dir.join("pipeline.json");
        std::fs::rename(&tmp, &path).map_err(io_err("cannot write", &path))?;
        Ok(())
    }

    /// Opens a crashed run's folder again to go on with it (`trackside
    /// resume`): `meta` (with this trackside as its owner) replaces the
    /// old one, events are appended after a torn last line is ended, and
    /// the old attempts' workspaces are cleared.
    pub fn reopen(run_dir: &Path, meta: &RunMeta) -> Result<RunRecord, StoreError> {
        let meta_path = run_dir.join("meta.json");
        let meta_text = serde_json::to_string_pretty(meta).unwrap_or_default();
        write_with_mode(&meta_path, meta_text.as_bytes(), 0o600)?;
        let work = run_dir.join("work");
        if work.exists() {
            std::fs::remove_dir_all(&work).map_err(io_err("cannot clear", &work))?;
        }
        {
            use std::os::unix::fs::DirBuilderExt;
            std::fs::DirBuilder::new()
                .mode(0o700)
                .create(&work)
                .map_err(io_err("cannot create run folder", &work))?;
        }
        let ev = run_dir.join("events.jsonl");
        let mut events = open_appending(&ev).map_err(io_err("cannot open", &ev))?;
        // A crash may have torn the last line: end it, so the next event
        // starts a line of its own (the reader skips the torn one).
        let len = events.metadata().map_err(io_err("cannot read", &ev))?.len();
        if len > 0 {
            use std::io::{Read, Seek, SeekFrom};
            let mut last = [0u8; 1];
            events.seek(SeekFrom::End(-1)).map_err(io_err("cannot read", &ev))?;
            events.read_exact(&mut last).map_err(io_err("cannot read", &ev))?;
            if last[0] != b'\n' {
                events.write_all(b"\n").map_err(io_err("cannot write", &ev))?;
            }
        }
        Ok(RunRecord {
            dir: run_dir.to_path_buf(),
            events: BufWriter::with_capacity(EVENTS_BUFFER, events),
            logs: HashMap::new(),
            dirty: Vec::new(),
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Appends one event: log lines to their attempt's log, the rest to
    /// events.jsonl. What is appended reaches the files at the next
    /// [`RunRecord::flush`] (or when a buffer fills).
    pub fn write(&mut self, ev: &Event) -> Result<(), StoreError> {
        match &ev.kind {
            EventKind::LogLine {
                job,
                attempt,
                step,
                stream,
                line,
                ..
            } => {
                let tag = match stream {
                    crate::exec::Stream::Stdout => "out",
                    crate::exec::Stream::Stderr => "err",
                };
                self.log_line(job, *attempt, ev.ts, tag, step, line)
            }
            EventKind::StepStarted { job, attempt, step, .. } => self.log_line(job, *attempt, ev.ts, "step", step, ""),
            kind => {
                if let EventKind::JobFinished { job, attempt, .. } | EventKind::JobRetrying { job, attempt, .. } = kind
                {
                    let key_attempt = if matches!(kind, EventKind::JobRetrying { .. }) {
                        attempt.saturating_sub(1)
                    } else {
                        *attempt
                    };
                    // Its last lines are written now: the attempt is over. A
                    // log that cannot be written does not keep its end
                    // from the record: the error is told after the event is.
                    let log_failed = self.logs.remove(&(job.clone(), key_attempt)).and_then(|mut w| {
                        let path = log_path(&self.dir, job, key_attempt);
                        w.flush().err().map(io_err("cannot write", &path))
                    });
                    self.write_event(ev)?;
                    return match log_failed {
                        Some(e) => Err(e.into()),
                        None => Ok(()),
                    };
                }
                self.write_event(ev)
            }
        }
    }

    /// Appends `ev` to events.jsonl's buffer.
    fn write_event(&mut self, ev: &Event) -> Result<(), StoreError> {
        let path = self.dir.join("events.jsonl");
        let mut line = serde_json::to_string(ev).map_err(|e| StoreError::Damaged {
            path: path.clone(),
            message: e.to_string(),
        })?;
        line.push('\n');
        self.events
            .write_all(line.as_bytes())
            .map_err(io_err("cannot write", &path))?;
        Ok(())
    }

    fn log_line(
        &mut self,
        job: &str,
        attempt: u32,
        ts: u64,
        stream: &str,
        step: &str,
        text: &str,
    ) -> Result<(), StoreError> {
        let key = (job.to_string(), attempt);
        if !self.logs.contains_key(&key) {
            let path = log_path(&self.dir, job, attempt);
            let f = open_appending(&path).map_err(io_err("cannot open", &path))?;
            self.logs.insert(key.clone(), BufWriter::with_capacity(LOG_BUFFER, f));
        }
        let path = log_path(&self.dir, job, attempt);
        let w = self.logs.get_mut(&key).ok_or_else(|| StoreError::Damaged {
            path: path.clone(),
            message: "log writer vanished".into(),
        })?;
        let clean = w.buffer().is_empty();
        writeln!(w, "{ts}\t{stream}\t{step}\t{text}").map_err(io_err("cannot write", &path))?;
        if clean {
            self.dirty.push(key);
        }
        Ok(())
    }

    /// Writes what was appended since the last flush to the files (no
    /// fsync: a crash of trackside loses nothing flushed; one of the
    /// machine may lose what the system had not yet written).
    pub fn flush(&mut self) -> Result<(), StoreError> {
        let mut failed = None;
        let mut unwritten = Vec::new();
        for key in std::mem::take(&mut self.dirty) {
            if let Some(w) = self.logs.get_mut(&key)
                && let Err(e) = w.flush()
            {
                failed.get_or_insert_with(|| io_err("cannot write", &log_path(&self.dir, &key.0, key.1))(e));
                // Tried again at the next flush.
                unwritten.push(key);
            }
        }
        self.dirty = unwritten;
        if let Err(e) = self.events.flush() {
            failed.get_or_insert_with(|| io_err("cannot write", &self.dir.join("events.jsonl"))(e));
        }
        match failed {
            Some(e) => Err(e.into()),
            None => Ok(()),
        }
    }

    /// Writes summary.json atomically (temp file + rename), its user's alone.
    pub fn finish(&mut self, summary: &RunSummary) -> Result<(), StoreError> {
        // The summary is written even if the last events could not be.
        let flushed = self.flush();
        self.logs.clear();
        let path = self.dir.join("summary.json");
        let tmp = self.dir.join("summary.json.tmp");
        // Straight to the file: a 1,000-job summary is half a megabyte of
        // text, which need not be in memory at the run's end, its peak.
        create_with_mode(&tmp, 0o600)
            .and_then(|f| {
                let mut out = BufWriter::new(f);
                serde_json::to_writer_pretty(&mut out, summary)?;
                out.flush()
            })
            .map_err(|e| {
                let _ = std::fs::remove_file(&tmp);
                io_err("cannot write", &tmp)(e)
            })?;
        std::fs::rename(&tmp, &path).map_err(io_err("cannot write", &path))?;
        flushed
    }
}

/// One line of `trackside runs`.
#[derive(Debug, Clone, Serialize)]
pub struct RunListing {
    pub run_id: String,
    pub pipeline: String,
    pub started_ms: u64,
    pub duration_ms: Option<u64>,
    /// `None` while running or after a crash.
    pub result: Option<RunResult>,
    /// Unfinished, and the trackside running it is gone.
    pub crashed: bool,
}

pub fn runs_dir(state: &Path) -> PathBuf {
    state.join("runs")
}

/// Past runs, oldest first.
pub fn list_runs(state: &Path) -> Result<Vec<RunListing>, StoreError> {
    let dir = runs_dir(state);
    let entries = match std::fs::read_dir(&dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io_err("cannot read", &dir)(e).into()),
    };
    let mut out = Vec::new();
    for entry in entries.flatten() {
        let path = entry.path();
        let Ok(meta_text) = std::fs::read_to_string(path.join("meta.json")) else {
            continue;
        };
        let Ok(meta) = serde_json::from_str::<RunMeta>(&meta_text) else {
            continue;
        };
        let summary = read_summary_file(&path).ok();
        let crashed = meta.crashed(summary.is_some());
        out.push(RunListing {
            run_id: meta.run_id,
            pipeline: meta.pipeline,
            started_ms: meta.started_ms,
            duration_ms: summary.as_ref().map(|s| s.duration_ms),
            result: summary.map(|s| s.result),
            crashed,
        });
    }
    out.sort_by(|a, b| (a.started_ms, &a.run_id).cmp(&(b.started_ms, &b.run_id)));
    Ok(out)
}

/// Whether `job` has ended for now in the run's record: the run finished,
/// or the job's last transition is its end (a retry or a reset starts it
/// again).
pub fn job_settled(run_dir: &Path, job: &str) -> bool {
    let mut settled = false;
    for ev in read_events(run_dir).unwrap_or_default() {
        match &ev.kind {
            EventKind::RunFinished { .. } => return true,
            EventKind::JobFinished { job: j, .. } | EventKind::JobSkipped { job: j, .. } if j == job => settled = true,
            EventKind::JobStarted { job: j, .. }
            | EventKind::JobRetrying { job: j, .. }
            | EventKind::JobReset { job: j, .. }
                if j == job =>
            {
                settled = false
            }
            _ => {}
        }
    }
    settled
}

/// For a run without a summary: whether it crashed, and how far it got
/// (from its events), for people.
pub fn unfinished_story(run_dir: &Path) -> String {
    let meta: Option<RunMeta> = std::fs::read_to_string(run_dir.join("meta.json"))
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok());
    let mut planned = 0usize;
    let mut finished: Vec<(String, String)> = Vec::new();
    let mut running: Vec<String> = Vec::new();
    for ev in read_events(run_dir).unwrap_or_default() {
        let (job, status) = match ev.kind {
            EventKind::RunStarted { jobs, .. } => {
                planned = jobs.len();
                continue;
            }
            EventKind::JobStarted { job, .. } => {
                running.push(job);
                continue;
            }
            EventKind::JobFinished { job, status, .. } => (job, format!("{status:?}").to_lowercase()),
            EventKind::JobSkipped { job, .. } => (job, "skipped".to_string()),
            _ => continue,
        };
        running.retain(|r| r != &job);
        finished.retain(|(n, _)| n != &job);
        finished.push((job, status));
    }
    let done: Vec<String> = finished.iter().map(|(n, s)| format!("{n} {s}")).collect();
    let progress = format!(
        "{} of {planned} job(s) finished{}{}",
        finished.len(),
        if done.is_empty() {
            String::new()
        } else {
            format!(" ({})", done.join(", "))
        },
        if running.is_empty() {
            String::new()
        } else {
            format!("; running when it stopped: {}", running.join(", "))
        }
    );
    match meta {
        Some(m) if m.crashed(false) => {
            let who = m.owner.as_deref().and_then(crate::process::parse_owner).map_or_else(
                || "the trackside running it".to_string(),
                |(pid, _)| format!("trackside (pid {pid})"),
            );
            format!(
                "crashed: {who} is gone; it got as far as {progress}; `trackside resume {}` goes on with it",
                m.run_id
            )
        }
        _ => format!(
            "still running: {}",
            progress.replace("running when it stopped", "running now")
        ),
    }
}

/// Finds a run folder by id, unique id prefix, or `last`.
pub fn find_run(state: &Path, id: &str) -> Result<PathBuf, StoreError> {
    let runs = list_runs(state)?;
    if id == "last" || id == "latest" {
        return runs
            .last()
            .map(|r| runs_dir(state).join(&r.run_id))
            .ok_or_else(|| StoreError::NoSuchRun(id.into()));
    }
    let matches: Vec<&RunListing> = runs.iter().filter(|r| r.run_id.starts_with(id)).collect();
    match matches.as_slice() {
        [one] => Ok(runs_dir(state).join(&one.run_id)),
        [] => Err(StoreError::NoSuchRun(id.into())),
        many => {
            if let Some(exact) = many.iter().find(|r| r.run_id == id) {
                return Ok(runs_dir(state).join(&exact.run_id));
            }
            Err(StoreError::Ambiguous(
                id.into(),
                many.iter().map(|r| r.run_id.as_str()).collect::<Vec<_>>().join(", "),
            ))
        }
    }
}

fn read_summary_file(run_dir: &Path) -> Result<RunSummary, StoreError> {
    let path = run_dir.join("summary.json");
    let text = std::fs::read_to_string(&path).map_err(io_err("cannot read", &path))?;
    serde_json::from_str(&text).map_err(|e| StoreError::Damaged {
        path,
        message: e.to_string(),
    })
}

/// The run's summary; for a run that never finished (crash, kill -9), the
/// last summary-bearing event or `None`.
pub fn read_summary(run_dir: &Path) -> Result<Option<RunSummary>, StoreError> {
    if run_dir.join("summary.json").exists() {
        return read_summary_file(run_dir).map(Some);
    }
    Ok(read_events(run_dir)?.into_iter().rev().find_map(|e| match e.kind {
        EventKind::RunFinished { summary } => Some(summary),
        _ => None,
    }))
}

/// Every event in events.jsonl; a torn last line (crash) is ignored.
pub fn read_events(run_dir: &Path) -> Result<Vec<Event>, StoreError> {
    let path = run_dir.join("events.jsonl");
    let f = File::open(&path).map_err(io_err("cannot read", &path))?;
    let mut out = Vec::new();
    for line in io::BufReader::new(f).lines() {
        let line = line.map_err(io_err("cannot read", &path))?;
        if let Ok(ev) = serde_json::from_str::<Event>(&line) {
            out.push(ev);
        }
    }
    Ok(out)
}

/// One parsed line of an attempt log.
#[derive(Debug, Clone, PartialEq)]
pub struct LogEntry {
    pub ts_ms: u64,
    /// `out`, `err` or `step` (a step boundary).
    pub stream: String,
    pub step: String,
    pub text: String,
}

pub fn parse_log_line(line: &str) -> Option<LogEntry> {
    let mut parts = line.splitn(4, '\t');
    Some(LogEntry {
        ts_ms: parts.next()?.parse().ok()?,
        stream: parts.next()?.to_string(),
        step: parts.next()?.to_string(),
        text: parts.next().unwrap_or("").to_string(),
    })
}

/// Attempt numbers with a log for `job`, ascending.
pub fn log_attempts(run_dir: &Path, job: &str) -> Vec<u32> {
    let prefix = format!("{}.", file_safe(job));
    let mut out: Vec<u32> = std::fs::read_dir(run_dir.join("logs"))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            name.strip_prefix(&prefix)?.strip_suffix(".log")?.parse().ok()
        })
        .collect();
    out.sort_unstable();
    out
}

/// The log of one attempt (the last one when `attempt` is None).
pub fn read_log(run_dir: &Path, job: &str, attempt: Option<u32>) -> Result<(u32, Vec<LogEntry>), StoreError> {
    let attempts = log_attempts(run_dir, job);
    let chosen = match attempt {
        Some(a) if attempts.contains(&a) => Some(a),
        Some(_) => None,
        None => attempts.last().copied(),
    };
    let Some(a) = chosen else {
        let mut known: Vec<String> = std::fs::read_dir(run_dir.join("logs"))
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| e.file_name().into_string().ok())
            .filter_map(|n| n.strip_suffix(".log").map(str::to_string))
            .collect();
        known.sort();
        return Err(StoreError::NoLog {
            run: run_dir
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
            job: job.into(),
            attempt: attempt.map(|a| format!(" attempt {a}")).unwrap_or_default(),
            known: if known.is_empty() {
                "none".into()
            } else {
                known.join(", ")
            },
        });
    };
    let path = log_path(run_dir, job, a);
    let f = File::open(&path).map_err(io_err("cannot read", &path))?;
    let mut out = Vec::new();
    for line in io::BufReader::new(f).lines() {
        let line = line.map_err(io_err("cannot read", &path))?;
        if let Some(e) = parse_log_line(&line) {
            out.push(e);
        }
    }
    Ok((a, out))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_lines_round_trip_with_tabs_in_text() {
        let e = parse_log_line("12\tout\tbuild\ta\tb").expect("parse");
        assert_eq!(e.text, "a\tb");
        assert_eq!(e.step, "build");
    }

    #[test]
    fn a_job_is_settled_by_its_last_transition_or_the_runs_end() {
        let dir = tempfile::tempdir().expect("tempdir");
        let write = |kinds: &[EventKind]| {
            let text: String = kinds
                .iter()
                .enumerate()
                .map(|(i, k)| {
                    let ev = Event {
                        seq: i as u64,
                        ts: 0,
                        kind: k.clone(),
                    };
                    serde_json::to_string(&ev).expect("serialise") + "\n"
                })
                .collect();
            std::fs::write(dir.path().join("events.jsonl"), text).expect("write");
        };
        let started = EventKind::JobStarted {
            job: "build".into(),
            attempt: 1,
        };
        let skipped = |job: &str| EventKind::JobSkipped {
            job: job.into(),
            reason: "no".into(),
        };
        let reset = EventKind::JobReset {
            job: "build".into(),
            reason: "retry".into(),
        };
        assert!(!job_settled(dir.path(), "build"), "no record: not settled");
        write(std::slice::from_ref(&started));
        assert!(!job_settled(dir.path(), "build"));
        write(&[started.clone(), skipped("test")]);
        assert!(!job_settled(dir.path(), "build"), "another job's end");
        write(&[started.clone(), skipped("build")]);
        assert!(job_settled(dir.path(), "build"));
        write(&[started.clone(), skipped("build"), reset]);
        assert!(!job_settled(dir.path(), "build"), "reset: it runs again");
        write(&[started, EventKind::SchedulingPaused, skipped("x")]);
        assert!(!job_settled(dir.path(), "build"));
    }

    fn meta(run_id: &str) -> RunMeta {
        RunMeta {
            run_id: run_id.into(),
            pipeline: "p".into(),
            pipeline_file: "p.yml".into(),
            project_dir: ".".into(),
            started_ms: 0,
            owner: None,
        }
    }

    fn event(seq: u64, kind: EventKind) -> Event {
        Event { seq, ts: 7, kind }
    }

    /// A line of the first attempt of job `build`.
    fn build_line(text: &str) -> EventKind {
        EventKind::LogLine {
            job: "build".into(),
            attempt: 1,
            step: "script".into(),
            stream: crate::exec::Stream::Stdout,
            line: text.into(),
            line_no: 0,
        }
    }

    #[test]
    fn a_burst_of_events_reaches_the_files_at_the_flush() {
        let state = tempfile::tempdir().expect("tempdir");
        let mut rec = RunRecord::create(state.path(), &mut meta("20261206-000000-f00d")).expect("record");
        let started = EventKind::JobStarted {
            job: "build".into(),
            attempt: 1,
        };
        rec.write(&event(0, started)).expect("write");
        rec.write(&event(1, build_line("one"))).expect("write");
        rec.write(&event(2, build_line("two"))).expect("write");
        let events = rec.dir().join("events.jsonl");
        let read = |p: &Path| std::fs::read_to_string(p).unwrap_or_default();
        // Held until the burst ends (one write, not one per event).
        assert_eq!(read(&events), "");
        rec.flush().expect("flush");
        assert_eq!(read(&events).lines().count(), 1, "{}", read(&events));
        let (_, lines) = read_log(rec.dir(), "build", Some(1)).expect("log");
        let texts: Vec<&str> = lines.iter().map(|l| l.text.as_str()).collect();
        assert_eq!(texts, ["one", "two"]);
        // A flush with nothing new writes nothing more.
        rec.flush().expect("flush");
        assert_eq!(read(&events).lines().count(), 1);
    }

    #[test]
    fn an_attempts_end_is_recorded_even_when_its_log_cannot_be_written() {
        let state = tempfile::tempdir().expect("tempdir");
        let mut rec = RunRecord::create(state.path(), &mut meta("20261206-000000-d15c")).expect("record");
        // Every write to the attempt's log fails (a full disk).
        std::os::unix::fs::symlink("/dev/full", log_path(rec.dir(), "build", 1)).expect("symlink");
        rec.write(&event(0, build_line("lost"))).expect("buffered");
        let retrying = EventKind::JobRetrying {
            job: "build".into(),
            attempt: 2,
            delay_ms: 0,
            failure_class: crate::pipeline::FailureClass::Script,
            exit_code: Some(1),
            diagnosis: None,
        };
        assert!(rec.write(&event(1, retrying)).is_err(), "the log's failure is told");
        rec.flush().expect("flush");
        let events = std::fs::read_to_string(rec.dir().join("events.jsonl")).expect("events");
        assert!(events.contains("\"job_retrying\""), "{events}");
    }

    #[test]
    fn run_ids_sort_by_time() {
        let id = new_run_id();
        assert_eq!(id.len(), 20, "{id}");
        assert!(id.chars().all(|c| c.is_ascii_hexdigit() || c == '-'), "{id}");
    }

    #[test]
    fn a_taken_run_id_gets_a_fresh_one_instead_of_sharing_the_folder() {
        let state = tempfile::tempdir().expect("tempdir");
        let mut meta = meta("20261202-000000-beef");
        let first = RunRecord::create(state.path(), &mut meta.clone()).expect("first");
        let second = RunRecord::create(state.path(), &mut meta).expect("second");
        assert_ne!(meta.run_id, "20261202-000000-beef");
        assert_ne!(first.dir(), second.dir());
        let text = std::fs::read_to_string(second.dir().join("meta.json")).expect("meta");
        assert!(text.contains(&meta.run_id), "{text}");
    }

    #[test]
    fn the_state_directory_is_private_to_its_user() {
        use std::os::unix::fs::PermissionsExt;
        let top = tempfile::tempdir().expect("tempdir");
        let fresh = top.path().join("a/state");
        prepare_state_dir(&fresh).expect("create");
        let mode = |p: &Path| std::fs::metadata(p).expect("meta").permissions().mode() & 0o777;
        assert_eq!(mode(&fresh), 0o700);
        let open = top.path().join("open");
        std::fs::create_dir(&open).expect("mkdir");
        std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o777)).expect("chmod");
        prepare_state_dir(&open).expect("tighten");
        assert_eq!(mode(&open), 0o700, "an open state directory is tightened");
        std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o715)).expect("chmod");
        prepare_state_dir(&open).expect("tighten");
        assert_eq!(mode(&open), 0o710, "search by its group (--allow-group) is kept");
        let file = top.path().join("file");
        std::fs::write(&file, "x").expect("write");
        assert!(prepare_state_dir(&file).is_err());
    }
}
