//! The machine's slot table: what every run sharing the state directory
//! holds right now, so that runs started side by side share one machine's
//! capacity, resource groups and priorities (`<state>/slots.sqlite`).
//!
//! A run registers with its owner (pid and start time, see
//! [`crate::process`]), its priority and the capacity it measured; each
//! job it starts holds a row (its CPU and memory, its resource group) from
//! the start of its attempt to its end. A claim is one transaction: the
//! table is read, whoever decides ([`crate::engine::sharing::decide`])
//! looks at it, and what it decided is written before anyone else reads.
//! A connection reads the table again only when another has committed
//! since its last claim (SQLite's `data_version`) or a run's process is
//! gone; otherwise it decides on the table as its last claim left it.
//! Rows of a run whose process is gone (kill -9, power loss) are removed by
//! the next run that opens or claims, so a crashed holder's slots come back.
//!
//! Requests ask another run to stop one of its jobs (preemption by a
//! higher-priority run); that run reads and removes them
//! ([`Slots::requests_for`]).
//!
//! The table is coordination, not a record: nothing of it is fsynced
//! (SQLite's `synchronous = OFF`, its log moved in every 32 pages), as
//! after a power loss every holder is gone anyway; a file a power cut
//! left damaged is found on opening and emptied in place.

use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::{Connection, OptionalExtension, params};

use super::StoreError;
use super::index::Keeping;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS runs (
    run_id TEXT PRIMARY KEY,
    owner TEXT NOT NULL,
    priority INTEGER NOT NULL,
    cpu_milli INTEGER NOT NULL,
    memory INTEGER NOT NULL,
    since_ms INTEGER NOT NULL,
    waiting_until_ms INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS holds (
    run_id TEXT NOT NULL,
    job TEXT NOT NULL,
    attempt INTEGER NOT NULL,
    cpu_milli INTEGER NOT NULL,
    memory INTEGER NOT NULL,
    grp TEXT,
    interruptible INTEGER NOT NULL,
    since_ms INTEGER NOT NULL,
    PRIMARY KEY (run_id, job)
);
CREATE TABLE IF NOT EXISTS requests (
    run_id TEXT NOT NULL,
    job TEXT NOT NULL,
    attempt INTEGER NOT NULL,
    kind TEXT NOT NULL,
    by_run TEXT NOT NULL,
    PRIMARY KEY (run_id, job, attempt)
);
";

/// How long a claim waits for another run's transaction: they take
/// microseconds, so this is only reached when something is badly wrong.
const WAIT: Duration = Duration::from_secs(5);

/// A run sharing the machine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunRow {
    pub run_id: String,
    /// `<pid>:<start time>` ([`crate::process::owner`]).
    pub owner: String,
    /// Higher goes first (0 low, 1 normal, 2 high).
    pub priority: i64,
    /// The capacity the run measured when it started.
    pub cpu_milli: u64,
    pub memory: u64,
    /// When it registered (milliseconds since the epoch).
    pub since_ms: u64,
    /// Until when it has jobs waiting for the machine (lower-priority runs
    /// let it go first until then).
    pub waiting_until_ms: u64,
}

/// What one running job holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HoldRow {
    pub run_id: String,
    pub job: String,
    pub attempt: u32,
    pub cpu_milli: u64,
    pub memory: u64,
    /// Its resource group (GitLab `resource_group`, GitHub `concurrency`).
    pub group: Option<String>,
    pub interruptible: bool,
    pub since_ms: u64,
}

/// What a run asks another to do with one of its jobs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestKind {
    /// Stop it and queue it again (preemption).
    Preempt,
    /// Stop it for good (GitHub's `cancel-in-progress`).
    Cancel,
}

impl RequestKind {
    fn as_str(self) -> &'static str {
        match self {
            RequestKind::Preempt => "preempt",
            RequestKind::Cancel => "cancel",
        }
    }
}

/// A request to the run `run_id` about its job `job`'s attempt `attempt`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub run_id: String,
    pub job: String,
    pub attempt: u32,
    pub kind: RequestKind,
    /// The run that asks.
    pub by: String,
}

/// The live table, as a claim sees it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Table {
    pub runs: Vec<RunRow>,
    pub holds: Vec<HoldRow>,
    pub requests: Vec<Request>,
}

/// What a claim's decision writes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Writes {
    /// The claimed hold is granted (written).
    pub grant: bool,
    /// The claiming run has jobs waiting for the machine until then (0: none).
    pub waiting_until_ms: Option<u64>,
    /// Requests to other runs.
    pub requests: Vec<Request>,
}

/// The slot table of one state directory.
pub struct Slots {
    conn: Connection,
    path: PathBuf,
    /// The table as this connection's last settlement left it, with
    /// SQLite's `data_version` then. While that has not moved (no other
    /// process has committed since) and every other run's process still
    /// lives, the next settlement decides on it instead of reading the
    /// table again: a thousand running jobs were a thousand rows read
    /// for every start and end.
    known: Option<(i64, Table)>,
}

impl Slots {
    /// Opens (creating) `<state>/slots.sqlite`. Nothing of it is fsynced
    /// (see [`Keeping::Coordination`]), so a power cut can leave it damaged:
    /// a file that fails SQLite's check is emptied in place and made anew
    /// (after a power cut no holder is left, so nothing is lost).
    pub fn open(state: &Path) -> Result<Slots, StoreError> {
        super::prepare_state_dir(state)?;
        let path = state.join("slots.sqlite");
        let conn = match open_checked(&path) {
            Ok(conn) => conn,
            Err(e) if is_damage(&e) => {
                tracing::warn!("{}: {e}; making it anew", path.display());
                reset_damaged(&path)?;
                open_checked(&path).map_err(|e| slots_error(&path, e))?
            }
            Err(e) => return Err(slots_error(&path, e)),
        };
        Ok(Slots {
            conn,
            path,
            known: None,
        })
    }

    /// Runs `f` in one transaction that holds the write lock from its
    /// start, after removing the runs whose process is gone.
    fn locked<T>(&mut self, f: impl FnOnce(&Connection) -> rusqlite::Result<T>) -> Result<T, StoreError> {
        self.transaction(|tx| {
            purge_dead(tx)?;
            f(tx)
        })
    }

    /// Runs `f` in one transaction that holds the write lock from its
    /// start. What this connection knew of the table is forgotten: `f` may
    /// change it ([`Slots::settle`] keeps it up to date itself).
    fn transaction<T>(&mut self, f: impl FnOnce(&Connection) -> rusqlite::Result<T>) -> Result<T, StoreError> {
        self.known = None;
        let run = || -> rusqlite::Result<T> {
            let tx = self
                .conn
                .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            let out = f(&tx)?;
            tx.commit()?;
            Ok(out)
        };
        run().map_err(|e| slots_error(&self.path, e))
    }

    /// Registers run `me` (replacing an earlier registration of it, a
    /// resumed run's). Returns the table as it is then.
    pub fn register(&mut self, me: &RunRow) -> Result<Table, StoreError> {
        self.locked(|tx| {
            delete_run(tx, &me.run_id)?;
            tx.execute(
                "INSERT INTO runs (run_id, owner, priority, cpu_milli, memory, since_ms, waiting_until_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, 0)",
                params![
                    me.run_id,
                    me.owner,
                    me.priority,
                    me.cpu_milli as i64,
                    me.memory as i64,
                    me.since_ms as i64
                ],
            )?;
            read_table(tx)
        })
    }

    /// One transaction for what a run has to settle at once: gives back
    /// what its jobs `released` hold, then claims each of `holds` in turn,
    /// `decide` seeing the table with the claims before it applied. A job
    /// that ends and the next that starts cost one transaction, not two.
    pub fn settle<T>(
        &mut self,
        run: &str,
        released: &[String],
        holds: &[HoldRow],
        mut decide: impl FnMut(&Table, &HoldRow) -> Option<(T, Writes)>,
    ) -> Result<Vec<Option<T>>, StoreError> {
        let known = self.known.take();
        let (answers, version, table) = self.transaction(|tx| {
            let version: i64 = tx.query_row("PRAGMA data_version", [], |r| r.get(0))?;
            let known = known
                .filter(|(v, t)| *v == version && t.runs.iter().all(alive))
                .map(|(_, t)| t);
            if known.is_none() {
                purge_dead(tx)?;
            }
            for job in released {
                give_back(tx, run, job)?;
            }
            let mut table = match known {
                Some(mut t) => {
                    for job in released {
                        t.holds.retain(|h| !(h.run_id == run && h.job == *job));
                        t.requests.retain(|r| !(r.run_id == run && r.job == *job));
                    }
                    t
                }
                None => read_table(tx)?,
            };
            let mut answers = Vec::with_capacity(holds.len());
            for hold in holds {
                let Some((answer, writes)) = decide(&table, hold) else {
                    answers.push(None);
                    continue;
                };
                answers.push(Some(answer));
                if writes.grant {
                    tx.prepare_cached(
                        "INSERT OR REPLACE INTO holds (run_id, job, attempt, cpu_milli, memory, grp, interruptible, since_ms)
                         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
                    )?
                    .execute(params![
                        hold.run_id,
                        hold.job,
                        hold.attempt,
                        hold.cpu_milli as i64,
                        hold.memory as i64,
                        hold.group,
                        hold.interruptible,
                        hold.since_ms as i64
                    ])?;
                    table.holds.retain(|h| !(h.run_id == hold.run_id && h.job == hold.job));
                    // Where reading the table would put it.
                    let at = table.holds.partition_point(|h| order(h) < order(hold));
                    table.holds.insert(at, hold.clone());
                }
                if let Some(until) = writes.waiting_until_ms {
                    tx.prepare_cached("UPDATE runs SET waiting_until_ms = ?2 WHERE run_id = ?1")?
                        .execute(params![hold.run_id, until as i64])?;
                    if let Some(r) = table.runs.iter_mut().find(|r| r.run_id == hold.run_id) {
                        r.waiting_until_ms = until;
                    }
                }
                for r in writes.requests {
                    tx.execute(
                        "INSERT OR IGNORE INTO requests (run_id, job, attempt, kind, by_run) VALUES (?1, ?2, ?3, ?4, ?5)",
                        params![r.run_id, r.job, r.attempt, r.kind.as_str(), r.by],
                    )?;
                    let same = |q: &Request| (&q.run_id, &q.job, q.attempt) == (&r.run_id, &r.job, r.attempt);
                    if !table.requests.iter().any(same) {
                        table.requests.push(r);
                    }
                }
            }
            Ok((answers, version, table))
        })?;
        // This connection's own commits leave its `data_version` as it was.
        self.known = Some((version, table));
        Ok(answers)
    }

    /// Gives back what jobs `jobs` of run `run` hold.
    pub fn release(&mut self, run: &str, jobs: &[String]) -> Result<(), StoreError> {
        self.settle::<()>(run, jobs, &[], |_, _| None).map(drop)
    }

    /// The requests made to run `run`, removed from the table as they are
    /// read (each is acted on once).
    pub fn requests_for(&mut self, run: &str) -> Result<Vec<Request>, StoreError> {
        // Most polls find nothing: a read, with no write lock taken.
        let any: Option<i64> = self
            .conn
            .query_row("SELECT 1 FROM requests WHERE run_id = ?1 LIMIT 1", params![run], |r| {
                r.get(0)
            })
            .optional()
            .map_err(|e| slots_error(&self.path, e))?;
        if any.is_none() {
            return Ok(Vec::new());
        }
        self.locked(|tx| {
            let requests: Vec<Request> = read_requests(tx)?.into_iter().filter(|r| r.run_id == run).collect();
            tx.execute("DELETE FROM requests WHERE run_id = ?1", params![run])?;
            Ok(requests)
        })
    }

    /// Removes run `run` and all it holds (its end).
    pub fn unregister(&mut self, run: &str) -> Result<(), StoreError> {
        self.locked(|tx| delete_run(tx, run))
    }

    /// The live table (tests, and whoever wants to look).
    pub fn table(&mut self) -> Result<Table, StoreError> {
        self.locked(read_table)
    }
}

/// Opens the table and checks its pages (a few: microseconds).
fn open_checked(path: &Path) -> rusqlite::Result<Connection> {
    let conn = super::index::open_wal(path, SCHEMA, WAIT, Keeping::Coordination)?;
    let check: String = conn.pragma_query_value(None, "quick_check", |r| r.get(0))?;
    if check != "ok" {
        return Err(rusqlite::Error::SqliteFailure(
            rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_CORRUPT),
            Some(check),
        ));
    }
    Ok(conn)
}

/// Empties a damaged table in place, with SQLite's reset: the file, its
/// log and its shared memory stay the ones every other run has open (a
/// file removed and made again would leave them on the old one, each
/// deciding alone). Under a lock beside it, and only if the table is still
/// damaged once the lock is held: two runs finding it damaged at once
/// reset it once, and the second keeps what the first registered.
fn reset_damaged(path: &Path) -> Result<(), StoreError> {
    let lock_path = path.with_extension("sqlite-reset");
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .and_then(|f| f.lock().map(|()| f))
        .map_err(super::io_err("cannot lock", &lock_path))?;
    if open_checked(path).is_ok() {
        return Ok(());
    }
    let reset = || -> rusqlite::Result<()> {
        let conn = Connection::open(path)?;
        conn.busy_timeout(WAIT)?;
        // Read the schema first (errors expected): the file stays in WAL mode.
        let _ = conn.query_row("SELECT count(*) FROM sqlite_master", [], |_| Ok(()));
        conn.set_db_config(rusqlite::config::DbConfig::SQLITE_DBCONFIG_RESET_DATABASE, true)?;
        conn.execute_batch("VACUUM")?;
        conn.set_db_config(rusqlite::config::DbConfig::SQLITE_DBCONFIG_RESET_DATABASE, false)?;
        Ok(())
    };
    reset().map_err(|e| slots_error(path, e))?;
    drop(lock);
    Ok(())
}

/// Whether SQLite found the file damaged (or not a database at all).
fn is_damage(e: &rusqlite::Error) -> bool {
    matches!(
        e.sqlite_error_code(),
        Some(rusqlite::ErrorCode::DatabaseCorrupt | rusqlite::ErrorCode::NotADatabase)
    )
}

fn slots_error(path: &Path, e: rusqlite::Error) -> StoreError {
    StoreError::Slots {
        path: path.to_path_buf(),
        message: e.to_string(),
    }
}

fn give_back(conn: &Connection, run: &str, job: &str) -> rusqlite::Result<()> {
    conn.prepare_cached("DELETE FROM holds WHERE run_id = ?1 AND job = ?2")?
        .execute(params![run, job])?;
    conn.prepare_cached("DELETE FROM requests WHERE run_id = ?1 AND job = ?2")?
        .execute(params![run, job])?;
    Ok(())
}

fn delete_run(conn: &Connection, run: &str) -> rusqlite::Result<()> {
    conn.execute("DELETE FROM runs WHERE run_id = ?1", params![run])?;
    conn.execute("DELETE FROM holds WHERE run_id = ?1", params![run])?;
    conn.execute("DELETE FROM requests WHERE run_id = ?1", params![run])?;
    Ok(())
}

/// Removes the runs whose trackside is gone, with what they held and what
/// was asked of them.
fn purge_dead(conn: &Connection) -> rusqlite::Result<()> {
    let mut stmt = conn.prepare_cached("SELECT run_id, owner FROM runs")?;
    let dead: Vec<String> = stmt
        .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))?
        .collect::<rusqlite::Result<Vec<_>>>()?
        .into_iter()
        // This process is alive: no need to ask /proc.
        .filter(|(_, owner)| owner != crate::process::owner() && !crate::process::alive(owner))
        .map(|(run, _)| run)
        .collect();
    for run in dead {
        delete_run(conn, &run)?;
    }
    // Holds of a run that never registered (a bug, or a table edited by
    // hand) would be held for ever.
    conn.prepare_cached("DELETE FROM holds WHERE run_id NOT IN (SELECT run_id FROM runs)")?
        .execute([])?;
    Ok(())
}

/// The order [`read_table`] gives holds.
fn order(h: &HoldRow) -> (u64, &str, &str) {
    (h.since_ms, &h.run_id, &h.job)
}

/// Whether the run's trackside still runs (this process always does).
fn alive(run: &RunRow) -> bool {
    run.owner == crate::process::owner() || crate::process::alive(&run.owner)
}

fn read_table(conn: &Connection) -> rusqlite::Result<Table> {
    let mut stmt = conn.prepare_cached(
        "SELECT run_id, owner, priority, cpu_milli, memory, since_ms, waiting_until_ms FROM runs ORDER BY since_ms, run_id",
    )?;
    let runs = stmt
        .query_map([], |r| {
            Ok(RunRow {
                run_id: r.get(0)?,
                owner: r.get(1)?,
                priority: r.get(2)?,
                cpu_milli: r.get::<_, i64>(3)?.max(0) as u64,
                memory: r.get::<_, i64>(4)?.max(0) as u64,
                since_ms: r.get::<_, i64>(5)?.max(0) as u64,
                waiting_until_ms: r.get::<_, i64>(6)?.max(0) as u64,
            })
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    let mut stmt = conn.prepare_cached(
        "SELECT run_id, job, attempt, cpu_milli, memory, grp, interruptible, since_ms FROM holds ORDER BY since_ms, run_id, job",
    )?;
    let holds = stmt
        .query_map([], |r| {
            Ok(HoldRow {
                run_id: r.get(0)?,
                job: r.get(1)?,
                attempt: r.get(2)?,
                cpu_milli: r.get::<_, i64>(3)?.max(0) as u64,
                memory: r.get::<_, i64>(4)?.max(0) as u64,
                group: r.get(5)?,
                interruptible: r.get(6)?,
                since_ms: r.get::<_, i64>(7)?.max(0) as u64,
            })
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    Ok(Table {
        runs,
        holds,
        requests: read_requests(conn)?,
    })
}

fn read_requests(conn: &Connection) -> rusqlite::Result<Vec<Request>> {
    let mut stmt = conn.prepare_cached("SELECT run_id, job, attempt, kind, by_run FROM requests")?;
    stmt.query_map([], |r| {
        let kind: String = r.get(3)?;
        Ok(Request {
            run_id: r.get(0)?,
            job: r.get(1)?,
            attempt: r.get(2)?,
            kind: if kind == "cancel" {
                RequestKind::Cancel
            } else {
                RequestKind::Preempt
            },
            by: r.get(4)?,
        })
    })?
    .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(id: &str, owner: &str, since: u64) -> RunRow {
        RunRow {
            run_id: id.into(),
            owner: owner.into(),
            priority: 1,
            cpu_milli: 2000,
            memory: 1 << 30,
            since_ms: since,
            waiting_until_ms: 0,
        }
    }

    fn hold(run: &str, job: &str) -> HoldRow {
        HoldRow {
            run_id: run.into(),
            job: job.into(),
            attempt: 1,
            cpu_milli: 1000,
            memory: 256 << 20,
            group: Some("prod".into()),
            interruptible: true,
            since_ms: 5,
        }
    }

    /// Claims `hold` alone, `decide` seeing the table.
    fn claim<T>(s: &mut Slots, hold: &HoldRow, decide: impl Fn(&Table) -> (T, Writes)) -> T {
        let answers = s
            .settle(&hold.run_id, &[], std::slice::from_ref(hold), |t, _| Some(decide(t)))
            .expect("claim");
        answers.into_iter().flatten().next().expect("an answer")
    }

    fn grant(_: &Table) -> ((), Writes) {
        (
            (),
            Writes {
                grant: true,
                ..Writes::default()
            },
        )
    }

    /// What a power cut can leave of a file nothing fsynced: a torn page
    /// where the table's pages are (moved into the file from `s`'s log first).
    fn tear_a_table_page(s: &Slots, state: &Path) {
        s.conn
            .execute_batch("PRAGMA wal_checkpoint(TRUNCATE);")
            .expect("into the file");
        let path = state.join("slots.sqlite");
        let mut bytes = std::fs::read(&path).expect("read");
        assert!(bytes.len() >= 2 * 4096, "a header page and a table page");
        bytes[4096..8192].fill(0xA5);
        std::fs::write(&path, &bytes).expect("write");
    }

    #[test]
    fn a_damaged_table_is_made_anew_on_opening() {
        let dir = tempfile::tempdir().expect("tempdir");
        let me = run("a", crate::process::owner(), 1);
        {
            let mut s = Slots::open(dir.path()).expect("open");
            s.register(&me).expect("register");
            tear_a_table_page(&s, dir.path());
        }
        let _ = std::fs::remove_file(dir.path().join("slots.sqlite-wal"));
        let _ = std::fs::remove_file(dir.path().join("slots.sqlite-shm"));
        let mut s = Slots::open(dir.path()).expect("a damaged table is made anew");
        let table = s.register(&me).expect("register");
        assert_eq!(table.runs.len(), 1);
        claim(&mut s, &hold("a", "build"), grant);
        assert_eq!(s.table().expect("table").holds, [hold("a", "build")]);
    }

    #[test]
    fn a_run_with_the_table_open_sees_it_made_anew() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut a = Slots::open(dir.path()).expect("open");
        a.register(&run("a", crate::process::owner(), 1)).expect("register");
        tear_a_table_page(&a, dir.path());
        let mut b = Slots::open(dir.path()).expect("a damaged table is made anew");
        b.register(&run("b", crate::process::owner(), 2)).expect("register");
        // One file for both: `a` sees what `b` registered (a file removed
        // and made again would have left `a` on the old one).
        let seen = a.table().expect("table");
        assert_eq!(seen.runs.iter().map(|r| r.run_id.as_str()).collect::<Vec<_>>(), ["b"]);
    }

    #[test]
    fn the_log_is_moved_in_every_32_pages() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut s = Slots::open(dir.path()).expect("open");
        s.register(&run("a", crate::process::owner(), 1)).expect("register");
        // Four hundred claims and releases, a page or two of log each: with
        // SQLite's default (moving the log in every 1,000 pages) all of it
        // would still be there for the next opener to read.
        for i in 0..200 {
            let job = format!("job-{}", i % 7);
            claim(&mut s, &hold("a", &job), grant);
            s.release("a", &[job]).expect("release");
        }
        let pages = crate::store::index::log_pages(&s.conn);
        assert!(pages <= 40, "{pages} pages of log");
        assert!(s.table().expect("table").holds.is_empty());
    }

    #[test]
    fn a_claim_sees_the_others_and_a_dead_runs_holds_are_reclaimed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut a = Slots::open(dir.path()).expect("open");
        let mut b = Slots::open(dir.path()).expect("open");
        a.register(&run("a", crate::process::owner(), 1)).expect("register");
        claim(&mut a, &hold("a", "build"), grant);
        // A run whose process is gone: pid 0 is never a user process.
        b.register(&run("dead", "0:0", 2)).expect("register");
        let seen = claim(&mut b, &hold("b", "x"), |t| (t.clone(), Writes::default()));
        assert_eq!(seen.runs.iter().map(|r| r.run_id.as_str()).collect::<Vec<_>>(), ["a"]);
        assert_eq!(seen.holds, [hold("a", "build")]);
        a.release("a", &["build".to_string()]).expect("release");
        assert!(b.table().expect("table").holds.is_empty());
        a.unregister("a").expect("unregister");
        assert!(b.table().expect("table").runs.is_empty());
    }

    #[test]
    fn a_settlement_on_what_it_knew_sees_another_processs_writes_and_matches_a_fresh_read() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut a = Slots::open(dir.path()).expect("open");
        let mut b = Slots::open(dir.path()).expect("open");
        a.register(&run("a", crate::process::owner(), 1)).expect("register");
        claim(&mut a, &hold("a", "build"), grant);
        a.settle("a", &["build".to_string()], &[hold("a", "test")], |_, _| {
            Some((
                (),
                Writes {
                    grant: true,
                    ..Writes::default()
                },
            ))
        })
        .expect("settle");
        // Nothing written by anyone else: decided on what `a` knew.
        let mut late = hold("a", "lint");
        late.since_ms = 1;
        claim(&mut a, &late, grant);
        let known = claim(&mut a, &hold("a", "docs"), |t| (t.clone(), Writes::default()));
        assert_eq!(known, b.table().expect("table"), "what it knew is what the table says");
        let jobs: Vec<&str> = known.holds.iter().map(|h| h.job.as_str()).collect();
        assert_eq!(jobs, ["lint", "test"], "in the table's order");
        // Another process writes: the next settlement reads it.
        b.register(&run("b", crate::process::owner(), 2)).expect("register");
        claim(&mut b, &hold("b", "x"), grant);
        let seen = claim(&mut a, &hold("a", "docs"), |t| (t.clone(), Writes::default()));
        assert_eq!(seen, b.table().expect("table"));
        assert!(seen.holds.iter().any(|h| h.run_id == "b" && h.job == "x"), "{seen:?}");
    }

    #[test]
    fn a_run_whose_process_dies_without_a_write_gives_its_holds_back_at_the_next_claim() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut a = Slots::open(dir.path()).expect("open");
        let mut b = Slots::open(dir.path()).expect("open");
        let mut child = std::process::Command::new("sleep").arg("60").spawn().expect("sleep");
        let start = crate::process::start_time(child.id()).expect("its start");
        let owner = format!("{}:{start}", child.id());
        b.register(&run("other", &owner, 1)).expect("register");
        claim(&mut b, &hold("other", "deploy"), grant);
        a.register(&run("a", crate::process::owner(), 2)).expect("register");
        let before = claim(&mut a, &hold("a", "build"), |t| (t.clone(), Writes::default()));
        assert!(before.holds.iter().any(|h| h.run_id == "other"), "{before:?}");
        // It dies; nobody writes to the table.
        child.kill().expect("kill");
        child.wait().expect("reaped");
        let after = claim(&mut a, &hold("a", "build"), |t| (t.clone(), Writes::default()));
        assert!(
            after.holds.is_empty() && after.runs.iter().all(|r| r.run_id == "a"),
            "{after:?}"
        );
    }

    #[test]
    fn requests_reach_their_run_once() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut s = Slots::open(dir.path()).expect("open");
        s.register(&run("low", crate::process::owner(), 1)).expect("register");
        s.register(&run("high", crate::process::owner(), 2)).expect("register");
        claim(&mut s, &hold("low", "test"), grant);
        let ask = Request {
            run_id: "low".into(),
            job: "test".into(),
            attempt: 1,
            kind: RequestKind::Preempt,
            by: "high".into(),
        };
        let asked = ask.clone();
        claim(&mut s, &hold("high", "hotfix"), move |_| {
            (
                (),
                Writes {
                    grant: false,
                    waiting_until_ms: Some(99),
                    requests: vec![asked.clone()],
                },
            )
        });
        let t = s.table().expect("table");
        assert_eq!(t.requests, std::slice::from_ref(&ask));
        assert_eq!(
            t.runs.iter().find(|r| r.run_id == "high").map(|r| r.waiting_until_ms),
            Some(99)
        );
        assert!(s.requests_for("high").expect("none").is_empty());
        assert_eq!(s.requests_for("low").expect("one"), [ask]);
        assert!(s.requests_for("low").expect("gone").is_empty());
    }

    #[test]
    fn one_settlement_gives_back_and_claims_each_seeing_the_claims_before_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut s = Slots::open(dir.path()).expect("open");
        s.register(&run("a", crate::process::owner(), 1)).expect("register");
        claim(&mut s, &hold("a", "old"), grant);
        let holds = [hold("a", "x"), hold("a", "y")];
        let seen = s
            .settle("a", &["old".to_string()], &holds, |t, _| {
                let jobs: Vec<String> = t.holds.iter().map(|h| h.job.clone()).collect();
                Some((
                    jobs,
                    Writes {
                        grant: true,
                        ..Writes::default()
                    },
                ))
            })
            .expect("settle");
        assert_eq!(seen, [Some(vec![]), Some(vec!["x".to_string()])]);
        let held: Vec<String> = s.table().expect("table").holds.into_iter().map(|h| h.job).collect();
        assert_eq!(held, ["x", "y"]);
    }

    #[test]
    fn the_table_is_private_to_its_user() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("tempdir");
        let state = dir.path().join("state");
        Slots::open(&state).expect("open");
        let mode = std::fs::metadata(&state).expect("meta").permissions().mode();
        assert_eq!(mode & 0o077, 0, "the state directory keeps others out");
    }
}
