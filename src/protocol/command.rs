//! What front-ends ask of a run: one command type, the same in process and
//! over the run's socket.

use serde::{Deserialize, Serialize};

use super::view::RolloutCommand;

/// A steering command. The engine applies it once, whoever sent it, and
/// every front-end sees its effect in the events.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "command", rename_all = "snake_case")]
pub enum Command {
    /// Releases a manual gate (or approves it in advance).
    Approve {
        job: String,
    },
    /// Runs a failed or cancelled job again, with the dependents its failure skipped.
    Retry {
        job: String,
    },
    Cancel {
        job: String,
    },
    CancelAll,
    RerunFailed,
    /// No new job starts until `Resume`.
    Pause,
    Resume,
    /// Steers a deploy job's rollout.
    Rollout {
        job: String,
        action: RolloutCommand,
    },
    /// Makes a service's previous revision stable again (after its rollout completed).
    RollbackService {
        service: String,
    },
    /// Ends the run as blocked once only unapproved manual gates remain.
    FinishWaiting,
    /// Closes a dependency's circuit breaker by hand: the jobs it held
    /// start again.
    CloseBreaker {
        dependency: String,
    },
    /// Cancels what still runs, waits for it to stop, and ends the run.
    Shutdown,
}

impl Command {
    /// What it does, for people and the audit trail: `approve deploy`.
    pub fn describe(&self) -> String {
        match self {
            Command::Approve { job } => format!("approve {job}"),
            Command::Retry { job } => format!("retry {job}"),
            Command::Cancel { job } => format!("cancel {job}"),
            Command::CancelAll => "cancel the run".into(),
            Command::RerunFailed => "rerun failed jobs".into(),
            Command::Pause => "pause scheduling".into(),
            Command::Resume => "resume scheduling".into(),
            Command::Rollout { job, action } => format!("{} {job}", action.as_str()),
            Command::RollbackService { service } => format!("roll back {service}"),
            Command::FinishWaiting => "finish when only gates are left".into(),
            Command::CloseBreaker { dependency } => format!("close the circuit breaker of {dependency}"),
            Command::Shutdown => "stop the run".into(),
        }
    }
}
