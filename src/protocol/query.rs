//! What a front-end asks of a run besides its events: log lines older than
//! what the run keeps to replay (read from the run's record), a search
//! through them, and how to open a shell in a failed job. Asked and
//! answered the same way in process and over the run's socket, so an
//! attached UI reads nothing of the run's files and reaches no Docker
//! daemon itself.
//!
//! Every answer is bounded before it is built: at most [`MAX_LINES`] lines
//! and [`MAX_TEXT`] bytes of text (a JSON frame of them stays under the
//! socket's frame limit even if every byte needs escaping), at most
//! [`MAX_HITS`] matches.

use serde::{Deserialize, Serialize};

/// Most lines one `Log` answer carries.
pub const MAX_LINES: usize = 10_000;
/// Bytes of line text past which a `Log` answer stops (the line that passes
/// it is carried: at least one always is). With the longest record line
/// (1 MiB) on top and every byte escaped as `\u00XX`, the frame stays
/// under the socket's 16 MiB.
pub const MAX_TEXT: usize = 1 << 20;
/// Most matches one `Search` answer carries.
pub const MAX_HITS: usize = 100_000;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "query", rename_all = "snake_case")]
pub enum Query {
    /// Entries `from..from + count` of the log of `job`'s attempt
    /// `attempt` (entry 0 is its first line; step markers count).
    Log {
        job: String,
        attempt: u32,
        from: usize,
        count: usize,
    },
    /// The entry numbers in `from..to` of that log whose text (a step
    /// marker's name) holds `needle`, ignoring case; at most `max`.
    Search {
        job: String,
        attempt: u32,
        from: usize,
        to: usize,
        needle: String,
        max: usize,
    },
    /// How to open a shell in `job`'s newest container step: a snapshot of
    /// its failed container when that was kept, else a fresh one of its
    /// image, with its workspace mounted.
    Shell { job: String },
}

impl Query {
    /// What it asks, for people: `the log of build`.
    pub fn describe(&self) -> String {
        match self {
            Query::Log { job, attempt, .. } => format!("lines of the log of {job} (attempt {attempt})"),
            Query::Search { job, attempt, .. } => format!("a search of the log of {job} (attempt {attempt})"),
            Query::Shell { job } => format!("a shell in {job}"),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "answer", rename_all = "snake_case")]
pub enum Answer {
    Log {
        lines: Vec<RecordedLine>,
        /// Stopped at [`MAX_LINES`] or [`MAX_TEXT`] before `count`: ask
        /// again from where it stopped for the rest.
        #[serde(default)]
        cut: bool,
    },
    Hits(LogHits),
    Shell(ShellCommand),
}

/// One entry of a job's log as the run recorded it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecordedLine {
    pub ts_ms: u64,
    pub kind: LineKind,
    /// The line, or the step's name for a step marker.
    pub text: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LineKind {
    Out,
    Err,
    /// Where a step starts.
    Step,
}

/// What a search found: entry numbers in order, and whether it stopped at
/// its cap before the end of the range.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogHits {
    pub lines: Vec<usize>,
    pub capped: bool,
}

/// A program for the front-end to run on its terminal (the engine has
/// prepared what it needs), and what it opens, for people.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShellCommand {
    pub program: String,
    pub args: Vec<String>,
    pub what: String,
}
