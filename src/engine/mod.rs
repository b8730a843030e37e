//! What a run DOES: a pure state machine for the rules ([`state`]), an
//! actor that owns the run and performs the machine's effects ([`actor`]),
//! and the runner that turns one job attempt into executor calls.
//!
//! Front-ends use only [`EngineHandle`] and [`Event`]s; this module never
//! imports a terminal crate.

pub mod actions;
pub mod actor;
pub mod admission;
pub mod artifacts;
pub mod attempt;
pub mod breaker;
pub mod failure;
pub mod filecmd;
pub mod history;
pub mod junit;
pub mod mask;
pub mod parallelism;
pub mod records;
pub mod replay;
pub mod resume;
pub mod runner;
pub mod sharing;
pub mod state;

pub use crate::protocol::event;
pub use crate::protocol::{Event, EventKind, JobStatus, RunResult, RunSummary, Stream, Verdict};
pub use actor::{EngineConfig, EngineError, EngineHandle, spawn};
