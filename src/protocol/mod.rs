//! The protocol between a run's engine and its front-ends: the events
//! (numbered per run), the commands, the queries (older log lines, a
//! search, a shell), the views front-ends draw (a rollout's
//! status), the link a front-end holds, and the run socket's frames.
//!
//! A leaf: it imports nothing else of the crate. The engine produces what
//! is here; the terminal UI, the headless printer, the control server and
//! an attached client consume it, in process or over `control.sock`.

pub mod clock;
pub mod command;
pub mod event;
pub mod identity;
pub mod link;
pub mod query;
pub mod view;
pub mod wire;

pub use command::Command;
pub use event::{
    AttemptRecord, Diagnosis, Event, EventKind, FailureClass, JobStatus, JobSummary, PlannedJob, RepeatStats,
    RunResult, RunSummary, Stream, TestCaseView, TestReport, Verdict, When,
};
pub use link::{Delivery, Link, LinkError, Subscription};
pub use query::{Answer, Query};
pub use view::{RolloutCommand, RolloutStatus};
