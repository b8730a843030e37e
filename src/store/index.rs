//! The index: which manifests belong to which run, job, cache key and
//! directory cache, with creation and last-use times.
//!
//! SQLite (rusqlite, bundled, so nothing needs installing) in WAL mode with a
//! busy timeout: several trackside processes share one state directory, and
//! SQLite's own locking makes each write atomic. That is what lets two jobs
//! store the same cache key at once: the row is replaced whole, never mixed.
//! Objects stay in the object store; the index only holds their digests,
//! and `trackside store verify` reports rows whose objects are gone.

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use rusqlite::{Connection, OptionalExtension, params};

use super::StoreError;
use super::objects::Digest;

/// Bumped when the schema changes incompatibly.
const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS artifacts (
    run_id TEXT NOT NULL,
    job TEXT NOT NULL,
    manifest TEXT NOT NULL,
    created_ms INTEGER NOT NULL,
    last_used_ms INTEGER NOT NULL,
    expires_ms INTEGER,
    PRIMARY KEY (run_id, job)
);
CREATE TABLE IF NOT EXISTS cache_entries (
    key TEXT PRIMARY KEY,
    pipeline TEXT NOT NULL,
    job TEXT NOT NULL,
    run_id TEXT NOT NULL,
    manifest TEXT,
    log TEXT,
    components TEXT NOT NULL,
    created_ms INTEGER NOT NULL,
    last_used_ms INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS cache_by_job ON cache_entries (pipeline, job, last_used_ms);
CREATE TABLE IF NOT EXISTS job_keys (
    run_id TEXT NOT NULL,
    job TEXT NOT NULL,
    pipeline TEXT NOT NULL,
    key TEXT NOT NULL,
    components TEXT NOT NULL,
    hit INTEGER NOT NULL,
    PRIMARY KEY (run_id, job)
);
CREATE TABLE IF NOT EXISTS dir_caches (
    key TEXT PRIMARY KEY,
    manifest TEXT NOT NULL,
    run_id TEXT NOT NULL,
    created_ms INTEGER NOT NULL,
    last_used_ms INTEGER NOT NULL
);
";

/// A stored job result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheEntry {
    pub key: String,
    pub pipeline: String,
    pub job: String,
    /// The run that produced it.
    pub run_id: String,
    pub manifest: Option<Digest>,
    pub log: Option<Digest>,
    /// The key's components as JSON (`{"name": "value", ...}`), for `cache why`.
    pub components: String,
    pub created_ms: u64,
    pub last_used_ms: u64,
}

/// The key computed for one job of one run, hit or miss.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobKey {
    pub run_id: String,
    pub job: String,
    pub pipeline: String,
    pub key: String,
    pub components: String,
    pub hit: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArtifactRow {
    pub run_id: String,
    pub job: String,
    pub manifest: Digest,
    pub created_ms: u64,
    pub expires_ms: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirCacheRow {
    pub key: String,
    pub manifest: Digest,
    pub run_id: String,
    pub last_used_ms: u64,
}

pub struct Index {
    conn: Mutex<Connection>,
    path: PathBuf,
}

/// How often opening the index checks all of it for damage.
pub const CHECK_EVERY: Duration = Duration::from_secs(24 * 3600);

/// What [`Index::rebuild`] did.
#[derive(Debug)]
pub struct Rebuilt {
    /// Where the damaged index was moved.
    pub moved_to: PathBuf,
    /// Artifact sets named again (run, job -> manifest).
    pub artifact_sets: usize,
}

/// An SQLite error on the index, told apart when it means damage.
fn index_error(path: &Path, e: rusqlite::Error) -> StoreError {
    let damaged = matches!(
        e.sqlite_error_code(),
        Some(rusqlite::ErrorCode::DatabaseCorrupt | rusqlite::ErrorCode::NotADatabase)
    );
    if damaged {
        StoreError::IndexCorrupt {
            path: path.to_path_buf(),
            message: e.to_string(),
        }
    } else {
        StoreError::Index {
            path: path.to_path_buf(),
            message: e.to_string(),
        }
    }
}

fn ms(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

fn sql_ms(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn digest(text: Option<String>) -> Option<Digest> {
    text.as_deref().and_then(Digest::parse)
}

/// How a SQLite file opened by [`open_wal`] keeps its log: what a power
/// cut may cost it, and how much log the next process to open the file
/// must read. That process (the first since every connection closed) reads
/// and checksums the whole log to rebuild SQLite's shared index of it:
/// 4 MiB of log (SQLite's default of moving it in every 1,000 pages) took
/// 0.6-2.7 ms on the way to a run's first job, for each of the two files.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Keeping {
    /// A record (the index): commits are not fsynced, checkpoints are
    /// (`synchronous = NORMAL`); the log is moved in every 256 pages (1 MiB).
    Record,
    /// Coordination that a power cut makes moot (the slot table: every
    /// holder is gone with the machine): nothing is fsynced (`synchronous =
    /// OFF`), and the log is moved in every 32 pages, costing no fsync on
    /// the way of a job's start. A power cut can leave such a file damaged:
    /// its opener checks it and makes it anew ([`crate::store::slots`]).
    Coordination,
}

impl Keeping {
    fn pragmas(self) -> (&'static str, i64, i64) {
        // (synchronous, pages between checkpoints, bytes the log keeps once moved in)
        match self {
            Keeping::Record => ("NORMAL", 256, 4 << 20),
            Keeping::Coordination => ("OFF", 32, 256 << 10),
        }
    }
}

/// Opens (creating) the SQLite file `path` in WAL mode, waiting up to
/// `wait` for other processes' locks, and makes sure `schema` is there.
pub(crate) fn open_wal(
    path: &Path,
    schema: &str,
    wait: Duration,
    keeping: Keeping,
) -> Result<Connection, rusqlite::Error> {
    let (synchronous, autocheckpoint, size_limit) = keeping.pragmas();
    let conn = Connection::open(path)?;
    conn.busy_timeout(wait)?;
    // Switching to WAL needs a moment alone with the file, and SQLite does
    // not wait for it (no busy handler): retry briefly when another
    // process is opening the file at the same time.
    let deadline = std::time::Instant::now() + wait;
    loop {
        let mode = conn
            .pragma_query_value(None, "journal_mode", |r| r.get::<_, String>(0))
            .and_then(|m| {
                if m.eq_ignore_ascii_case("wal") {
                    Ok(m)
                } else {
                    conn.pragma_update_and_check(None, "journal_mode", "WAL", |r| r.get::<_, String>(0))
                }
            })
            .and_then(|_| conn.pragma_update(None, "synchronous", synchronous))
            .and_then(|()| conn.pragma_update(None, "wal_autocheckpoint", autocheckpoint))
            .and_then(|()| conn.pragma_update(None, "journal_size_limit", size_limit))
            // Closing writes nothing: the log stays beside the file, as
            // committed, and SQLite moves it into the file as it grows
            // (see `Keeping`, inside a later commit). Closing it in would
            // cost two fsyncs and two removed files at every run's end,
            // for durability `synchronous = NORMAL` does not promise anyway.
            .and_then(|()| {
                conn.set_db_config(rusqlite::config::DbConfig::SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE, true)
                    .map(|_| ())
            })
            // 512 KiB of page cache, not SQLite's default 2 MiB: a run reads
            // its history once, in order, and every page is in the OS's
            // cache anyway; a run's memory is better spent on its jobs.
            .and_then(|()| conn.pragma_update(None, "cache_size", -512i64))
            .and_then(|()| conn.execute_batch(schema));
        match mode {
            Ok(()) => return Ok(conn),
            Err(rusqlite::Error::SqliteFailure(e, _))
                if e.code == rusqlite::ErrorCode::DatabaseBusy && std::time::Instant::now() < deadline =>
            {
                std::thread::sleep(Duration::from_millis(5 + u64::from(fastrand::u8(..20))));
            }
            Err(e) => return Err(e),
        }
    }
}

/// The pages in a connection's log now (what SQLite's checkpoint says of it).
#[cfg(test)]
pub(crate) fn log_pages(conn: &Connection) -> i64 {
    conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| r.get(1))
        .expect("checkpoint")
}

/// The index being opened on a thread of its own ([`Index::open_beside`]).
pub struct Opening {
    state: PathBuf,
    thread: Option<std::thread::JoinHandle<Result<Index, StoreError>>>,
}

impl Opening {
    /// The index, once open (opened here if no thread could be started).
    pub fn join(self) -> Result<Index, StoreError> {
        match self.thread {
            Some(t) => t.join().unwrap_or_else(|_| {
                Err(StoreError::Index {
                    path: self.state.join("index.sqlite"),
                    message: "the thread opening it panicked".into(),
                })
            }),
            None => Index::open(&self.state),
        }
    }
}

impl Index {
    /// Starts opening the index beside the caller's other work ([`Opening::join`]
    /// waits for it): a run's start reads its pipeline meanwhile. Opening
    /// reads what is left of the index's log (see [`Keeping`]) and, once a
    /// day, checks every page.
    pub fn open_beside(state: &Path) -> Opening {
        let dir = state.to_path_buf();
        let thread = std::thread::Builder::new()
            .name("trackside-index".into())
            .spawn(move || Index::open(&dir))
            .ok();
        Opening {
            state: state.to_path_buf(),
            thread,
        }
    }

    /// Opens (creating) `<state>/index.sqlite`, checking it for damage when
    /// a check is due ([`CHECK_EVERY`]).
    pub fn open(state: &Path) -> Result<Index, StoreError> {
        Index::open_inner(state, false)
    }

    /// Opens the index and checks every page of it (`store verify`).
    pub fn open_checked(state: &Path) -> Result<Index, StoreError> {
        Index::open_inner(state, true)
    }

    fn open_inner(state: &Path, check: bool) -> Result<Index, StoreError> {
        let path = state.join("index.sqlite");
        super::prepare_state_dir(state)?;
        let err = |e: rusqlite::Error| index_error(&path, e);
        let mut conn = open_wal(&path, SCHEMA, Duration::from_secs(30), Keeping::Record).map_err(err)?;
        // Damage (flipped bytes, a torn copy) is found here, before a run
        // relies on the index, not as odd failures of every job later. The
        // check reads every page (44 ms at 80,000 attempts), so it runs at
        // most once in CHECK_EVERY; between checks, damage in the pages a
        // run reads is still reported, by SQLite, as it reads them.
        // The marker names the file it vouches for (device and inode): an
        // index put back from a copy is checked at once.
        let marker = state.join("index.checked");
        let identity = {
            use std::os::unix::fs::MetadataExt;
            std::fs::metadata(&path)
                .map(|m| format!("{} {}", m.dev(), m.ino()))
                .ok()
        };
        let vouched = std::fs::read_to_string(&marker)
            .ok()
            .zip(identity.as_ref())
            .is_some_and(|(m, id)| m.trim() == id);
        let due = check
            || !vouched
            || std::fs::metadata(&marker)
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| t.elapsed().ok())
                .is_none_or(|age| age > CHECK_EVERY);
        if due {
            let check: String = conn
                .pragma_query_value(None, "quick_check", |r| r.get(0))
                .map_err(err)?;
            if check != "ok" {
                let _ = std::fs::remove_file(&marker);
                return Err(StoreError::IndexCorrupt { path, message: check });
            }
            // Its time is the last check's (the state directory is private).
            if let Some(id) = identity {
                let _ = std::fs::write(&marker, id);
            }
        }
        super::history::migrate(&mut conn).map_err(err)?;
        Ok(Index {
            conn: Mutex::new(conn),
            path,
        })
    }

    /// Moves a damaged index aside (`index.sqlite.damaged-<ms>`) and builds
    /// a new one from what the store itself keeps: each run's artifact sets
    /// are named in its job logs (`kept N artifact file(s), manifest D`).
    /// Cache entries and directory caches cannot be recovered: they start
    /// afresh (a later run stores them again).
    pub fn rebuild(state: &Path) -> Result<Rebuilt, StoreError> {
        let path = state.join("index.sqlite");
        let aside = state.join(format!("index.sqlite.damaged-{}", super::now_ms()));
        for ext in ["", "-wal", "-shm"] {
            let from = PathBuf::from(format!("{}{ext}", path.display()));
            let to = PathBuf::from(format!("{}{ext}", aside.display()));
            if from.exists() {
                std::fs::rename(&from, &to).map_err(super::io_err("cannot move aside", &from))?;
            }
        }
        let index = Index::open(state)?;
        let mut rebuilt = Rebuilt {
            moved_to: aside,
            artifact_sets: 0,
        };
        for run in super::list_runs(state)? {
            let dir = super::runs_dir(state).join(&run.run_id);
            let mut latest: std::collections::BTreeMap<String, Digest> = std::collections::BTreeMap::new();
            let mut logs: Vec<(String, u32, PathBuf)> = std::fs::read_dir(dir.join("logs"))
                .into_iter()
                .flatten()
                .flatten()
                .filter_map(|e| {
                    let name = e.file_name().into_string().ok()?;
                    let (job, attempt) = name.strip_suffix(".log")?.rsplit_once('.')?;
                    Some((job.to_string(), attempt.parse().ok()?, e.path()))
                })
                .collect();
            logs.sort_by_key(|(_, attempt, _)| *attempt);
            for (job, _, log) in logs {
                let Ok(text) = std::fs::read_to_string(&log) else {
                    continue;
                };
                for entry in text.lines().filter_map(super::parse_log_line) {
                    if entry.step != "artifacts" {
                        continue;
                    }
                    if let Some(d) = entry
                        .text
                        .trim_start_matches("trackside: ")
                        .strip_prefix("kept ")
                        .and_then(|t| t.rsplit_once(", manifest "))
                        .and_then(|(_, d)| Digest::parse(d.trim()))
                    {
                        latest.insert(job.clone(), d);
                    }
                }
            }
            for (job, manifest) in latest {
                index.put_artifact(&run.run_id, &job, &manifest, None)?;
                rebuilt.artifact_sets += 1;
            }
        }
        Ok(rebuilt)
    }

    fn with<T>(&self, f: impl FnOnce(&Connection) -> rusqlite::Result<T>) -> Result<T, StoreError> {
        // A panic while holding the lock cannot leave a half-done statement: keep going.
        let conn = self.conn.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        f(&conn).map_err(|e| index_error(&self.path, e))
    }

    /// Adds attempts to the history (one transaction).
    pub fn record_attempts(&self, rows: &[super::history::AttemptRow]) -> Result<(), StoreError> {
        let mut conn = self.conn.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let done = conn
            .transaction()
            .and_then(|tx| super::history::insert(&tx, rows).and_then(|()| tx.commit()));
        done.map_err(|e| index_error(&self.path, e))
    }

    /// Keeps an attempt's test cases (one transaction).
    pub fn record_tests(&self, rows: &[super::history::TestCaseRow]) -> Result<(), StoreError> {
        let mut conn = self.conn.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let done = conn
            .transaction()
            .and_then(|tx| super::history::insert_tests(&tx, rows).and_then(|()| tx.commit()));
        done.map_err(|e| index_error(&self.path, e))
    }

    /// A run's test cases (of one job when given), failed first.
    pub fn tests(&self, run: &str, job: Option<&str>) -> Result<Vec<super::history::TestCaseRow>, StoreError> {
        self.with(|c| super::history::select_tests(c, run, job))
    }

    /// Every test case as an attempt (see `history::test_attempts`), or
    /// the `newest` that many.
    pub fn test_attempts(
        &self,
        pipeline: Option<&str>,
        newest: Option<usize>,
    ) -> Result<Vec<super::history::AttemptRow>, StoreError> {
        self.with(|c| super::history::test_attempts(c, pipeline, newest))
    }

    /// Marks the failures of `jobs` in run `run_id` as allowed: they did
    /// not fail the run.
    pub fn mark_allowed(&self, run_id: &str, jobs: &[String]) -> Result<(), StoreError> {
        self.with(|c| super::history::mark_allowed(c, run_id, jobs))
    }

    pub fn quarantine_add(&self, q: &super::history::Quarantined) -> Result<(), StoreError> {
        self.with(|c| super::history::quarantine_add(c, q))
    }

    pub fn quarantine_remove(&self, name: &str, pipeline: Option<&str>) -> Result<usize, StoreError> {
        self.with(|c| super::history::quarantine_remove(c, name, pipeline))
    }

    pub fn quarantine_list(&self) -> Result<Vec<super::history::Quarantined>, StoreError> {
        self.with(super::history::quarantine_list)
    }

    /// Gives a run's history rows what git said about its commit.
    pub fn history_facts(
        &self,
        run: &str,
        commit: Option<&str>,
        branch: Option<&str>,
        default_branch: bool,
        dirty: bool,
    ) -> Result<(), StoreError> {
        self.with(|c| {
            c.execute(
                "UPDATE attempts SET commit_sha = ?2, branch = ?3, default_branch = ?4, dirty = ?5 WHERE run_id = ?1",
                params![run, commit, branch, default_branch, dirty],
            )
            .map(|_| ())
        })
    }

    /// See [`super::history::recent_durations`].
    pub fn recent_durations(
        &self,
        pipeline: &str,
        jobs: usize,
        per_job: usize,
    ) -> Result<std::collections::BTreeMap<String, Vec<f64>>, StoreError> {
        self.with(|c| super::history::recent_durations(c, pipeline, jobs, per_job))
    }

    /// See [`super::history::usage`].
    pub fn usage(
        &self,
        pipeline: &str,
        jobs: usize,
        per_job: usize,
    ) -> Result<std::collections::BTreeMap<String, super::history::JobUsage>, StoreError> {
        self.with(|c| super::history::usage(c, pipeline, jobs, per_job))
    }

    /// The attempts `filter` wants, oldest first.
    pub fn attempts(&self, filter: &super::history::Filter) -> Result<Vec<super::history::AttemptRow>, StoreError> {
        self.with(|c| super::history::select(c, filter))
    }

    pub fn put_artifact(
        &self,
        run: &str,
        job: &str,
        manifest: &Digest,
        expires_ms: Option<u64>,
    ) -> Result<(), StoreError> {
        let now = sql_ms(super::now_ms());
        self.with(|c| {
            c.execute(
                "INSERT OR REPLACE INTO artifacts (run_id, job, manifest, created_ms, last_used_ms, expires_ms)
                 VALUES (?1, ?2, ?3, ?4, ?4, ?5)",
                params![run, job, manifest.to_string(), now, expires_ms.map(sql_ms)],
            )
            .map(drop)
        })
    }

    /// The job's artifact manifest in that run, marking it used.
    pub fn artifact(&self, run: &str, job: &str) -> Result<Option<Digest>, StoreError> {
        let now = sql_ms(super::now_ms());
        self.with(|c| {
            let m: Option<String> = c
                .query_row(
                    "SELECT manifest FROM artifacts WHERE run_id = ?1 AND job = ?2",
                    params![run, job],
                    |r| r.get(0),
                )
                .optional()?;
            if m.is_some() {
                c.execute(
                    "UPDATE artifacts SET last_used_ms = ?3 WHERE run_id = ?1 AND job = ?2",
                    params![run, job, now],
                )?;
            }
            Ok(digest(m))
        })
    }

    /// Every artifact row (of one run, or all), by run then job.
    pub fn artifacts(&self, run: Option<&str>) -> Result<Vec<ArtifactRow>, StoreError> {
        self.with(|c| {
            let mut st = c.prepare(
                "SELECT run_id, job, manifest, created_ms, expires_ms FROM artifacts
                 WHERE ?1 IS NULL OR run_id = ?1 ORDER BY run_id, job",
            )?;
            let rows = st.query_map(params![run], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, String>(2)?,
                    r.get::<_, i64>(3)?,
                    r.get::<_, Option<i64>>(4)?,
                ))
            })?;
            let mut out = Vec::new();
            for row in rows {
                let (run_id, job, manifest, created, expires) = row?;
                if let Some(manifest) = Digest::parse(&manifest) {
                    out.push(ArtifactRow {
                        run_id,
                        job,
                        manifest,
                        created_ms: ms(created),
                        expires_ms: expires.map(ms),
                    });
                }
            }
            Ok(out)
        })
    }

    pub fn remove_artifact(&self, run: &str, job: &str) -> Result<(), StoreError> {
        self.with(|c| {
            c.execute(
                "DELETE FROM artifacts WHERE run_id = ?1 AND job = ?2",
                params![run, job],
            )
            .map(drop)
        })
    }

    /// Forgets a deleted run's artifacts and keys (its cache entries live on).
    pub fn remove_run(&self, run: &str) -> Result<(), StoreError> {
        self.with(|c| {
            c.execute("DELETE FROM artifacts WHERE run_id = ?1", params![run])?;
            c.execute("DELETE FROM job_keys WHERE run_id = ?1", params![run])?;
            Ok(())
        })
    }

    fn cache_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<CacheEntry> {
        Ok(CacheEntry {
            key: r.get(0)?,
            pipeline: r.get(1)?,
            job: r.get(2)?,
            run_id: r.get(3)?,
            manifest: digest(r.get(4)?),
            log: digest(r.get(5)?),
            components: r.get(6)?,
            created_ms: ms(r.get(7)?),
            last_used_ms: ms(r.get(8)?),
        })
    }

    const CACHE_COLUMNS: &str = "key, pipeline, job, run_id, manifest, log, components, created_ms, last_used_ms";

    /// Looks a key up, marking the entry used.
    pub fn cache_get(&self, key: &str) -> Result<Option<CacheEntry>, StoreError> {
        let now = sql_ms(super::now_ms());
        self.with(|c| {
            let e = c
                .query_row(
                    &format!("SELECT {} FROM cache_entries WHERE key = ?1", Self::CACHE_COLUMNS),
                    params![key],
                    Self::cache_row,
                )
                .optional()?;
            if e.is_some() {
                c.execute(
                    "UPDATE cache_entries SET last_used_ms = ?2 WHERE key = ?1",
                    params![key, now],
                )?;
            }
            Ok(e)
        })
    }

    /// Stores (or replaces, whole) an entry.
    pub fn cache_put(&self, e: &CacheEntry) -> Result<(), StoreError> {
        self.with(|c| {
            c.execute(
                &format!(
                    "INSERT OR REPLACE INTO cache_entries ({}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
                    Self::CACHE_COLUMNS
                ),
                params![
                    e.key,
                    e.pipeline,
                    e.job,
                    e.run_id,
                    e.manifest.map(|d| d.to_string()),
                    e.log.map(|d| d.to_string()),
                    e.components,
                    sql_ms(e.created_ms),
                    sql_ms(e.last_used_ms)
                ],
            )
            .map(drop)
        })
    }

    pub fn cache_remove(&self, key: &str) -> Result<(), StoreError> {
        self.with(|c| {
            c.execute("DELETE FROM cache_entries WHERE key = ?1", params![key])
                .map(drop)
        })
    }

    /// Every cache entry, oldest use first.
    pub fn cache_entries(&self) -> Result<Vec<CacheEntry>, StoreError> {
        self.with(|c| {
            let mut st = c.prepare(&format!(
                "SELECT {} FROM cache_entries ORDER BY last_used_ms",
                Self::CACHE_COLUMNS
            ))?;
            let rows = st.query_map([], Self::cache_row)?;
            rows.collect()
        })
    }

    /// The most recently used entry of a job, other than `key`.
    pub fn last_entry_of(&self, pipeline: &str, job: &str, except_key: &str) -> Result<Option<CacheEntry>, StoreError> {
        self.with(|c| {
            c.query_row(
                &format!(
                    "SELECT {} FROM cache_entries WHERE pipeline = ?1 AND job = ?2 AND key != ?3
                     ORDER BY last_used_ms DESC LIMIT 1",
                    Self::CACHE_COLUMNS
                ),
                params![pipeline, job, except_key],
                Self::cache_row,
            )
            .optional()
        })
    }

    pub fn put_job_key(&self, k: &JobKey) -> Result<(), StoreError> {
        self.with(|c| {
            c.execute(
                "INSERT OR REPLACE INTO job_keys (run_id, job, pipeline, key, components, hit)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![k.run_id, k.job, k.pipeline, k.key, k.components, k.hit],
            )
            .map(drop)
        })
    }

    pub fn job_key(&self, run: &str, job: &str) -> Result<Option<JobKey>, StoreError> {
        self.with(|c| {
            c.query_row(
                "SELECT run_id, job, pipeline, key, components, hit FROM job_keys WHERE run_id = ?1 AND job = ?2",
                params![run, job],
                |r| {
                    Ok(JobKey {
                        run_id: r.get(0)?,
                        job: r.get(1)?,
                        pipeline: r.get(2)?,
                        key: r.get(3)?,
                        components: r.get(4)?,
                        hit: r.get(5)?,
                    })
                },
            )
            .optional()
        })
    }

    pub fn dir_cache_get(&self, key: &str) -> Result<Option<Digest>, StoreError> {
        let now = sql_ms(super::now_ms());
        self.with(|c| {
            let m: Option<String> = c
                .query_row("SELECT manifest FROM dir_caches WHERE key = ?1", params![key], |r| {
                    r.get(0)
                })
                .optional()?;
            if m.is_some() {
                c.execute(
                    "UPDATE dir_caches SET last_used_ms = ?2 WHERE key = ?1",
                    params![key, now],
                )?;
            }
            Ok(digest(m))
        })
    }

    pub fn dir_cache_put(&self, key: &str, manifest: &Digest, run: &str) -> Result<(), StoreError> {
        let now = sql_ms(super::now_ms());
        self.with(|c| {
            c.execute(
                "INSERT OR REPLACE INTO dir_caches (key, manifest, run_id, created_ms, last_used_ms)
                 VALUES (?1, ?2, ?3, ?4, ?4)",
                params![key, manifest.to_string(), run, now],
            )
            .map(drop)
        })
    }

    pub fn dir_caches(&self) -> Result<Vec<DirCacheRow>, StoreError> {
        self.with(|c| {
            let mut st =
                c.prepare("SELECT key, manifest, run_id, last_used_ms FROM dir_caches ORDER BY last_used_ms")?;
            let rows = st.query_map([], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, String>(2)?,
                    r.get::<_, i64>(3)?,
                ))
            })?;
            let mut out = Vec::new();
            for row in rows {
                let (key, manifest, run_id, used) = row?;
                if let Some(manifest) = Digest::parse(&manifest) {
                    out.push(DirCacheRow {
                        key,
                        manifest,
                        run_id,
                        last_used_ms: ms(used),
                    });
                }
            }
            Ok(out)
        })
    }

    /// The directory caches whose keys start with `prefix`, newest first
    /// (created last), as (key, manifest); at most `limit`.
    pub fn dir_caches_with_prefix(&self, prefix: &str, limit: usize) -> Result<Vec<(String, Digest)>, StoreError> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.with(|c| {
            let mut st = c.prepare(
                "SELECT key, manifest FROM dir_caches WHERE substr(key, 1, length(?1)) = ?1
                 ORDER BY created_ms DESC, key LIMIT ?2",
            )?;
            let rows = st.query_map(params![prefix, limit], |r| {
                Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?))
            })?;
            let mut out = Vec::new();
            for row in rows {
                let (key, m) = row?;
                if let Some(d) = Digest::parse(&m) {
                    out.push((key, d));
                }
            }
            Ok(out)
        })
    }

    pub fn dir_cache_remove(&self, key: &str) -> Result<(), StoreError> {
        self.with(|c| {
            c.execute("DELETE FROM dir_caches WHERE key = ?1", params![key])
                .map(drop)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_index_opened_beside_is_the_index_and_its_damage_is_reported() {
        let dir = tempfile::tempdir().expect("tempdir");
        let d = Digest::of(b"manifest");
        {
            let ix = Index::open_beside(dir.path()).join().expect("open");
            ix.put_artifact("r1", "build", &d, None).expect("put");
        }
        let ix = Index::open(dir.path()).expect("open");
        assert_eq!(ix.artifact("r1", "build").expect("read"), Some(d));
        drop(ix);
        for ext in ["-wal", "-shm"] {
            let _ = std::fs::remove_file(dir.path().join(format!("index.sqlite{ext}")));
        }
        std::fs::write(dir.path().join("index.sqlite"), vec![0x5a; 8192]).expect("write");
        assert!(
            matches!(
                Index::open_beside(dir.path()).join(),
                Err(StoreError::IndexCorrupt { .. })
            ),
            "not a database: the advice to repair it comes through the thread"
        );
        // No thread could be started: opened by the one that joins.
        let opening = Opening {
            state: dir.path().to_path_buf(),
            thread: None,
        };
        assert!(matches!(opening.join(), Err(StoreError::IndexCorrupt { .. })));
    }

    #[test]
    fn the_log_is_moved_in_every_256_pages() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ix = Index::open(dir.path()).expect("open");
        let d = Digest::of(b"manifest");
        // 400 one-row transactions, two pages of log or more each: with
        // SQLite's default (moving the log in every 1,000 pages) all of it
        // would still be there for the next opener to read.
        for i in 0..400 {
            ix.put_artifact(&format!("run-{i}"), "build", &d, None).expect("put");
        }
        let pages = log_pages(&ix.conn.lock().expect("conn"));
        assert!(pages <= 270, "{pages} pages of log");
        assert_eq!(ix.artifact("run-399", "build").expect("read"), Some(d));
    }

    #[test]
    fn the_full_check_runs_when_due_and_always_for_verify() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let ix = Index::open(dir.path()).expect("open");
            let conn = ix.conn.lock().expect("conn");
            conn.execute_batch(
                "CREATE TABLE filler(x); WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 3000) INSERT INTO filler SELECT randomblob(200) FROM n;",
            )
            .expect("filler");
            // Into the file itself (closing leaves the log as it is).
            conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE);")
                .expect("checkpoint");
        }
        let marker = dir.path().join("index.checked");
        assert!(marker.exists(), "the first open checked");
        // Damage a page in the middle of the file: the schema still reads.
        let db = dir.path().join("index.sqlite");
        let mut bytes = std::fs::read(&db).expect("index");
        let page = 4096;
        let mid = (bytes.len() / page / 2) * page;
        bytes[mid..mid + page].fill(0x5a);
        std::fs::write(&db, bytes).expect("write");
        assert!(
            Index::open(dir.path()).is_ok(),
            "checked less than a day ago: not read again"
        );
        assert!(matches!(
            Index::open_checked(dir.path()),
            Err(StoreError::IndexCorrupt { .. })
        ));
        assert!(!marker.exists(), "a failed check is due again");
        assert!(matches!(Index::open(dir.path()), Err(StoreError::IndexCorrupt { .. })));
    }

    #[test]
    fn closing_writes_nothing_and_what_was_committed_is_read_again() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let ix = Index::open(dir.path()).expect("open");
            ix.with(|c| c.execute_batch("CREATE TABLE kept(x); INSERT INTO kept VALUES (42);"))
                .expect("write");
        }
        let wal = dir.path().join("index.sqlite-wal");
        let logged = std::fs::metadata(&wal).map(|m| m.len()).unwrap_or(0);
        assert!(logged > 0, "the log stays beside the file, as committed");
        let ix = Index::open(dir.path()).expect("open again");
        let x: i64 = ix
            .with(|c| c.query_row("SELECT x FROM kept", [], |r| r.get(0)))
            .expect("read");
        assert_eq!(x, 42);
    }

    #[test]
    fn an_index_put_back_from_a_copy_is_checked_at_once() {
        let dir = tempfile::tempdir().expect("tempdir");
        drop(Index::open(dir.path()).expect("open"));
        let marker = dir.path().join("index.checked");
        let vouched = std::fs::read_to_string(&marker).expect("marker");
        // A copy put in its place, with its log (closing leaves it beside
        // the file: a copy of the state folder takes both): another inode.
        let db = dir.path().join("index.sqlite");
        let copy = dir.path().join("copy.sqlite");
        std::fs::copy(&db, &copy).expect("copy");
        let wal = dir.path().join("index.sqlite-wal");
        let wal_copy = dir.path().join("copy.sqlite-wal");
        std::fs::copy(&wal, &wal_copy).expect("copy the log");
        std::fs::rename(&copy, &db).expect("rename");
        std::fs::rename(&wal_copy, &wal).expect("rename the log");
        drop(Index::open(dir.path()).expect("open the copy"));
        let now = std::fs::read_to_string(&marker).expect("marker");
        assert_ne!(vouched, now, "checked again, and the marker names the new file");
    }

    #[test]
    fn dir_caches_are_found_by_key_prefix_newest_first() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ix = Index::open(dir.path()).expect("open");
        let d = |n: u8| Digest([n; 32]);
        ix.dir_cache_put("gh/deps-a", &d(1), "r1").expect("put");
        ix.dir_cache_put("gh/deps-b", &d(2), "r2").expect("put");
        ix.dir_cache_put("gh/other", &d(3), "r2").expect("put");
        ix.dir_cache_put("gh_deps-x", &d(4), "r2").expect("put");
        let found = ix.dir_caches_with_prefix("gh/deps-", 10).expect("query");
        let keys: Vec<&str> = found.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(keys.len(), 2, "{keys:?}");
        assert!(keys.contains(&"gh/deps-a") && keys.contains(&"gh/deps-b"));
        // `%` and `_` are not wildcards here.
        assert!(ix.dir_caches_with_prefix("gh%", 10).expect("query").is_empty());
        assert_eq!(ix.dir_caches_with_prefix("gh/", 1).expect("query").len(), 1);
    }

    fn entry(key: &str, used: u64) -> CacheEntry {
        CacheEntry {
            key: key.into(),
            pipeline: "p".into(),
            job: "build".into(),
            run_id: "r1".into(),
            manifest: Some(Digest::of(key.as_bytes())),
            log: None,
            components: "{}".into(),
            created_ms: used,
            last_used_ms: used,
        }
    }

    #[test]
    fn rows_round_trip_and_runs_are_forgotten() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ix = Index::open(dir.path()).expect("open");
        let d = Digest::of(b"m");
        ix.put_artifact("r1", "build", &d, Some(5)).expect("put");
        assert_eq!(ix.artifact("r1", "build").expect("get"), Some(d));
        assert_eq!(ix.artifact("r1", "test").expect("get"), None);
        ix.cache_put(&entry("k1", 1)).expect("put");
        ix.cache_put(&entry("k2", 2)).expect("put");
        assert_eq!(ix.cache_get("k1").expect("get").map(|e| e.key), Some("k1".to_string()));
        // k1 was just used, so it is the last entry other than k2.
        assert_eq!(
            ix.last_entry_of("p", "build", "k2").expect("last").map(|e| e.key),
            Some("k1".to_string())
        );
        ix.remove_run("r1").expect("remove");
        assert!(ix.artifacts(Some("r1")).expect("list").is_empty());
        assert_eq!(
            ix.cache_entries().expect("entries").len(),
            2,
            "cache entries outlive runs"
        );
    }

    #[test]
    fn two_connections_writing_one_key_leave_one_whole_row() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().to_path_buf();
        let writers: Vec<_> = (0..4)
            .map(|w| {
                let path = path.clone();
                std::thread::spawn(move || {
                    let ix = Index::open(&path).expect("open");
                    for i in 0..50u64 {
                        let mut e = entry("same", i);
                        e.run_id = format!("writer{w}");
                        e.components = format!("{{\"writer\":\"{w}\"}}");
                        ix.cache_put(&e).expect("put");
                    }
                })
            })
            .collect();
        for w in writers {
            w.join().expect("writer");
        }
        let ix = Index::open(&path).expect("open");
        let e = ix.cache_get("same").expect("get").expect("entry");
        // Whichever writer won, its row is whole: run and components agree.
        assert_eq!(
            e.components,
            format!("{{\"writer\":\"{}\"}}", &e.run_id["writer".len()..])
        );
    }
}
