//! The engine's answers to [`Query`]s: older log lines and searches read
//! from the run's record on blocking threads (each attempt's log keeps a
//! sparse index of where its lines start, so later reads seek instead of
//! parsing from the top), and a debug shell prepared with Docker. Front-ends
//! ask through their link and never open the record or the daemon
//! themselves.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};

use crate::protocol::LinkError;
use crate::protocol::query::{self, Answer, LineKind, Query, RecordedLine, ShellCommand};
use crate::store::{self, LogEntry, logscan::LogIndex};

/// Most attempt logs whose index is kept; past it the oldest-asked goes.
const INDEXES_KEPT: usize = 64;

/// An attempt's log index, shared by the reads of that log.
type Index = Arc<Mutex<LogIndex>>;

/// Answers queries about one run's record.
pub struct Records {
    run_dir: PathBuf,
    /// Per (job, attempt): the log's index, and when it was last asked for.
    indexes: Mutex<HashMap<(String, u32), (Index, u64)>>,
    asked: std::sync::atomic::AtomicU64,
}

impl Records {
    pub fn new(run_dir: PathBuf) -> Records {
        Records {
            run_dir,
            indexes: Mutex::default(),
            asked: std::sync::atomic::AtomicU64::new(0),
        }
    }

    pub async fn answer(self: &Arc<Self>, query: Query) -> Result<Answer, LinkError> {
        match query {
            Query::Log {
                job,
                attempt,
                from,
                count,
            } => {
                let (path, index) = self.log(&job, attempt);
                let read =
                    blocking(move || lock(&index).read_within(&path, from, count, query::MAX_LINES, query::MAX_TEXT))
                        .await?;
                let (entries, cut) =
                    read.map_err(|e| LinkError::Refused(format!("cannot read older log lines: {e}")))?;
                Ok(Answer::Log {
                    lines: entries.into_iter().map(recorded).collect(),
                    cut,
                })
            }
            Query::Search {
                job,
                attempt,
                from,
                to,
                needle,
                max,
            } => {
                let (path, index) = self.log(&job, attempt);
                let max = max.min(query::MAX_HITS);
                let found = blocking(move || lock(&index).search(&path, from, to, &needle, max)).await?;
                found
                    .map(Answer::Hits)
                    .map_err(|e| LinkError::Refused(format!("cannot search the log on disk: {e}")))
            }
            Query::Shell { job } => {
                let docker = crate::exec::docker::DockerExecutor::connect()
                    .await
                    .map_err(|e| LinkError::Refused(e.to_string()))?;
                let (cmd, what) = crate::exec::docker::debug_shell(&docker, &self.run_dir, &job, None)
                    .await
                    .map_err(LinkError::Refused)?;
                let text = |s: &std::ffi::OsStr| {
                    s.to_str().map(str::to_string).ok_or_else(|| {
                        LinkError::Refused(format!(
                            "the shell's command line is not UTF-8: {}",
                            s.to_string_lossy()
                        ))
                    })
                };
                Ok(Answer::Shell(ShellCommand {
                    program: text(cmd.get_program())?,
                    args: cmd.get_args().map(text).collect::<Result<_, _>>()?,
                    what,
                }))
            }
        }
    }

    /// The log file of an attempt, and its index.
    fn log(&self, job: &str, attempt: u32) -> (PathBuf, Index) {
        let path = store::log_path(&self.run_dir, job, attempt);
        let now = self.asked.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut indexes = lock(&self.indexes);
        if indexes.len() >= INDEXES_KEPT && !indexes.contains_key(&(job.to_string(), attempt)) {
            let oldest = indexes.iter().min_by_key(|(_, (_, at))| *at).map(|(k, _)| k.clone());
            if let Some(k) = oldest {
                indexes.remove(&k);
            }
        }
        let entry = indexes
            .entry((job.to_string(), attempt))
            .or_insert_with(|| (Arc::default(), now));
        entry.1 = now;
        (path, entry.0.clone())
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Runs disk work off the async threads.
async fn blocking<T: Send + 'static>(work: impl FnOnce() -> T + Send + 'static) -> Result<T, LinkError> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| LinkError::Refused(format!("reading the record failed: {e}")))
}

fn recorded(e: LogEntry) -> RecordedLine {
    let kind = match e.stream.as_str() {
        "step" => LineKind::Step,
        "err" => LineKind::Err,
        _ => LineKind::Out,
    };
    RecordedLine {
        ts_ms: e.ts_ms,
        kind,
        text: if kind == LineKind::Step { e.step } else { e.text },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_log(dir: &std::path::Path, lines: &[&str]) {
        let path = store::log_path(dir, "build", 1);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        let text: String = lines.iter().map(|l| format!("{l}\n")).collect();
        std::fs::write(path, text).unwrap();
    }

    #[tokio::test]
    async fn reads_searches_and_bounds_what_it_answers() {
        let dir = tempfile::tempdir().unwrap();
        // Three of these pass the text budget (each is under the longest
        // record line read whole).
        let big = format!("6\tout\t\t{}", "x".repeat(query::MAX_TEXT / 3 + 1));
        let step = "5\tstep\tcompile\t";
        let lines = [
            "1\tout\t\tfirst",
            "2\terr\t\tSecond error",
            step,
            &big,
            &big,
            &big,
            &big,
            "8\tout\t\tlast",
        ];
        write_log(dir.path(), &lines);
        let records = Arc::new(Records::new(dir.path().to_path_buf()));
        let log = |from, count| Query::Log {
            job: "build".into(),
            attempt: 1,
            from,
            count,
        };
        let Answer::Log { lines: got, cut } = records.answer(log(0, 3)).await.unwrap() else {
            panic!("not a log answer");
        };
        assert!(!cut);
        let kinds: Vec<_> = got.iter().map(|l| (l.ts_ms, l.kind, l.text.as_str())).collect();
        assert_eq!(
            kinds,
            [
                (1, LineKind::Out, "first"),
                (2, LineKind::Err, "Second error"),
                (5, LineKind::Step, "compile")
            ]
        );
        // Big lines pass the text budget: the answer stops after the one
        // that passed it and says so.
        let Answer::Log { lines: got, cut } = records.answer(log(3, 5)).await.unwrap() else {
            panic!("not a log answer");
        };
        assert!(cut);
        assert_eq!(got.len(), 3);
        // Past the end: fewer lines, not cut.
        let Answer::Log { lines: got, cut } = records.answer(log(7, 10)).await.unwrap() else {
            panic!("not a log answer");
        };
        assert_eq!((got.len(), cut), (1, false));
        let search = Query::Search {
            job: "build".into(),
            attempt: 1,
            from: 0,
            to: 8,
            needle: "SECOND".into(),
            max: 10,
        };
        assert_eq!(
            records.answer(search).await.unwrap(),
            Answer::Hits(query::LogHits {
                lines: vec![1],
                capped: false
            })
        );
        // A job that never ran: a clear refusal, not a panic.
        let err = records
            .answer(Query::Log {
                job: "../../etc/passwd".into(),
                attempt: 1,
                from: 0,
                count: 1,
            })
            .await
            .unwrap_err();
        assert!(err.to_string().starts_with("cannot read older log lines"), "{err}");
    }
}
