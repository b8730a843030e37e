//! Typed events: what front-ends and run records see of a run.
//!
//! The serialized form (one JSON object per line, `type` tag, unix-ms `ts`)
//! is the `--json` output and the `events.jsonl` record; it is documented in
//! docs/json-events.md and must only grow compatibly.

use serde::{Deserialize, Serialize};

use std::fmt;

use super::view::RolloutStatus;

/// The most nodes a [`EventKind::ClusterNodes`] lists.
pub const MAX_CLUSTER_NODES: usize = 100;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobStatus {
    Pending,
    Ready,
    Running,
    Retrying,
    /// Waiting out its `start_in` (GitLab's `when: delayed`).
    Delayed,
    WaitingApproval,
    Succeeded,
    Failed,
    Cancelled,
    Skipped,
}

impl JobStatus {
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            JobStatus::Succeeded | JobStatus::Failed | JobStatus::Cancelled | JobStatus::Skipped
        )
    }

    /// The word expressions see in `job.<name>.status`.
    pub fn expr_name(self) -> &'static str {
        match self {
            JobStatus::Pending => "pending",
            JobStatus::Ready => "ready",
            JobStatus::Running => "running",
            JobStatus::Retrying => "retrying",
            JobStatus::Delayed => "delayed",
            JobStatus::WaitingApproval => "waiting",
            JobStatus::Succeeded => "success",
            JobStatus::Failed => "failure",
            JobStatus::Cancelled => "cancelled",
            JobStatus::Skipped => "skipped",
        }
    }
}

/// Which output stream a line came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Stream {
    Stdout,
    Stderr,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum When {
    #[default]
    OnSuccess,
    OnFailure,
    Always,
    Manual,
}

impl When {
    pub const ALL: [(&'static str, When); 4] = [
        ("on_success", When::OnSuccess),
        ("on_failure", When::OnFailure),
        ("always", When::Always),
        ("manual", When::Manual),
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            When::OnSuccess => "on_success",
            When::OnFailure => "on_failure",
            When::Always => "always",
            When::Manual => "manual",
        }
    }
}

/// Why an attempt failed. Every failed attempt gets exactly one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, PartialOrd, Ord)]
#[serde(rename_all = "snake_case")]
pub enum FailureClass {
    /// An ordinary non-zero exit.
    Script,
    Timeout,
    /// Exit 137 or an OOM kill.
    Oom,
    /// Killed by a signal other than our own.
    Signal,
    /// The executor could not start the job.
    Infra,
    Network,
    DiskFull,
    Cancelled,
    /// An upstream artifact failed verification.
    DataIntegrity,
    /// A deploy whose new revision did not become stable: rolled back by
    /// the judge or a health check, or aborted by a person (its reason says
    /// which). The old revision kept serving.
    RolledBack,
    /// No node of the cluster can ever take the job (its placement labels
    /// or its reservation): the scheduler's reason says which.
    Unschedulable,
}

impl FailureClass {
    pub const ALL: [FailureClass; 11] = [
        FailureClass::Script,
        FailureClass::Timeout,
        FailureClass::Oom,
        FailureClass::Signal,
        FailureClass::Infra,
        FailureClass::Network,
        FailureClass::DiskFull,
        FailureClass::Cancelled,
        FailureClass::DataIntegrity,
        FailureClass::RolledBack,
        FailureClass::Unschedulable,
    ];
    /// Retried by default: the failure says little about the code under test.
    pub const TRANSIENT: [FailureClass; 5] = [
        FailureClass::Timeout,
        FailureClass::Network,
        FailureClass::Infra,
        FailureClass::Oom,
        FailureClass::DiskFull,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            FailureClass::Script => "script",
            FailureClass::Timeout => "timeout",
            FailureClass::Oom => "oom",
            FailureClass::Signal => "signal",
            FailureClass::Infra => "infra",
            FailureClass::Network => "network",
            FailureClass::DiskFull => "disk_full",
            FailureClass::Cancelled => "cancelled",
            FailureClass::DataIntegrity => "data_integrity",
            FailureClass::RolledBack => "rolled_back",
            FailureClass::Unschedulable => "unschedulable",
        }
    }

    pub fn parse(s: &str) -> Option<FailureClass> {
        Self::ALL.into_iter().find(|c| c.as_str() == s)
    }
}

impl fmt::Display for FailureClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a failure happened and what to do about it: the rule of the failure
/// knowledge base (`assets/failure-rules.yml`) that explains it best.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Diagnosis {
    /// The rule's id, e.g. `connection-refused`.
    pub rule: String,
    /// What happened in a few words: "connection refused".
    pub title: String,
    pub class: FailureClass,
    /// What to do, with what the log said filled in.
    pub hint: String,
    /// The runbook page (and section) under docs/runbooks/.
    pub runbook: String,
    /// Whether running it again can pass.
    pub retryable: bool,
    /// The output lines that matched (masked), in the order they came.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub lines: Vec<String>,
    /// What outside the run it failed on, when the rule names it (a
    /// host, a registry, the Docker daemon): its circuit breaker counts it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dependency: Option<String>,
}

/// Where a circuit breaker is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BreakerPhase {
    /// Jobs start as usual.
    Closed,
    /// Jobs that need the dependency are held.
    Open,
    /// One job goes through as a probe.
    HalfOpen,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

impl Diagnosis {
    /// Applies `fix` (masking) to everything taken from the output.
    pub fn mask(&mut self, fix: &dyn Fn(&mut String)) {
        fix(&mut self.hint);
        for l in &mut self.lines {
            fix(l);
        }
    }
}

/// The verdict per job in the final summary.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Verdict {
    Pass,
    /// Passed earlier with the same inputs: served from the result cache.
    Cached,
    Fail,
    Flaky,
    Skipped,
    Cancelled,
    Manual,
    /// Failed, in quarantine: the run does not fail for it.
    Quarantined,
}

impl Verdict {
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Pass => "PASS",
            Verdict::Cached => "CACHED",
            Verdict::Fail => "FAIL",
            Verdict::Flaky => "FLAKY",
            Verdict::Skipped => "SKIPPED",
            Verdict::Cancelled => "CANCELLED",
            Verdict::Manual => "MANUAL",
            Verdict::Quarantined => "QUARANTINED",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunResult {
    Passed,
    Failed,
    /// A required manual job was never approved.
    Blocked,
    Cancelled,
}

impl RunResult {
    /// Exit codes: 0 passed, 1 failed or blocked, 130 cancelled.
    pub fn exit_code(self) -> i32 {
        match self {
            RunResult::Passed => 0,
            RunResult::Failed | RunResult::Blocked => 1,
            RunResult::Cancelled => 130,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AttemptRecord {
    pub number: u32,
    /// Milliseconds since the run started.
    pub started_ms: u64,
    pub ended_ms: Option<u64>,
    pub exit_code: Option<i32>,
    pub failure_class: Option<FailureClass>,
    /// Wait before the next attempt, when one was scheduled.
    pub retry_delay_ms: Option<u64>,
    /// Why it failed, when the knowledge base could tell.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub diagnosis: Option<Box<Diagnosis>>,
    /// Stopped because this run, of a higher priority, needed the machine
    /// (`--preempt`): not a failure; the job ran again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preempted_by: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobSummary {
    pub name: String,
    pub verdict: Verdict,
    pub status: JobStatus,
    pub attempts: Vec<AttemptRecord>,
    pub duration_ms: u64,
    pub failure_class: Option<FailureClass>,
    pub allow_failure: bool,
    /// Why it was skipped, blocked or failed without running.
    pub reason: Option<String>,
    /// The result-cache key it was served under.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cached: Option<String>,
    /// Its stage (GitLab pipelines).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stage: Option<String>,
    /// Test coverage its log reported (GitLab's `coverage` regex), e.g. `87.5`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub coverage: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RepeatStats {
    pub job: String,
    pub runs: u32,
    pub passed: u32,
    pub failed: u32,
    /// Passed only after a retry.
    pub flaky: u32,
}

impl RepeatStats {
    /// Share of repetitions that did not pass cleanly on their first attempt.
    pub fn flake_rate(&self) -> f64 {
        if self.runs == 0 {
            0.0
        } else {
            f64::from(self.failed + self.flaky) / f64::from(self.runs)
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunSummary {
    pub run_id: String,
    pub pipeline: String,
    pub result: RunResult,
    pub exit_code: i32,
    pub duration_ms: u64,
    pub jobs: Vec<JobSummary>,
    /// A sentence for people: "2 of 7 jobs failed", "blocked on manual job deploy".
    pub message: String,
    pub repeat: Option<RepeatStats>,
}

/// A job as the plan sees it: what a front-end needs to draw the DAG.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PlannedJob {
    pub name: String,
    /// Effective dependencies (implicit final-stage edges included).
    pub depends_on: Vec<String>,
    /// Execution level (column in the DAG).
    pub level: usize,
    pub when: When,
    pub allow_failure: bool,
    pub steps: Vec<String>,
    /// Whether a step names an image (so `trackside shell` can open one).
    #[serde(default)]
    pub has_image: bool,
    /// Its stage (GitLab pipelines): the UI draws a column per stage.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stage: Option<String>,
    /// What the UI shows with it (a GitLab job's environment and tags).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub facts: Vec<(String, String)>,
    /// Its flake rate across past runs in percent, when history calls it flaky.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub flake_pct: Option<u8>,
}

/// Test cases an attempt's JUnit reports shown in the UI: the failed ones
/// first, then those that passed only on a rerun, at most
/// [`TestReport::MAX_CASES`] (the counts are of all of them).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct TestReport {
    pub passed: usize,
    pub failed: usize,
    pub skipped: usize,
    /// Passed only on a rerun by the test framework.
    #[serde(default)]
    pub rerun: usize,
    pub cases: Vec<TestCaseView>,
}

impl TestReport {
    pub const MAX_CASES: usize = 100;
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TestCaseView {
    /// `classname::name`, as the report names it.
    pub name: String,
    /// `failed`, or `passed` (only on a rerun).
    pub outcome: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    pub duration_ms: u64,
    #[serde(default, skip_serializing_if = "is_zero_u32")]
    pub reruns_failed: u32,
    /// In quarantine: its failure does not fail the job's run.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub quarantined: bool,
}

fn is_zero_u32(n: &u32) -> bool {
    *n == 0
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum EventKind {
    RunStarted {
        run_id: String,
        pipeline: String,
        jobs: Vec<String>,
        max_parallel: usize,
    },
    /// The DAG: sent after `run_started` and whenever the pipeline changes.
    PlanChanged {
        jobs: Vec<PlannedJob>,
        critical_path: Vec<String>,
        /// The stages in order (GitLab pipelines); empty when it has none.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        stages: Vec<String>,
    },
    JobQueued {
        job: String,
    },
    /// A resumed run keeps a job that passed before its trackside died: it
    /// does not run again (its last attempt is `attempt`).
    JobKept {
        job: String,
        attempt: u32,
    },
    /// The run goes on after its trackside died (`trackside resume`): the
    /// jobs kept, and those whose attempt was interrupted (they run again;
    /// not counted as failures).
    Resumed {
        kept: Vec<String>,
        interrupted: Vec<String>,
    },
    JobStarted {
        job: String,
        attempt: u32,
    },
    /// Attempt `attempt` of `job` runs on `node`: a swarm node's address
    /// and labels (`--executor swarm`; other executors run on this machine
    /// and say nothing).
    JobPlaced {
        job: String,
        attempt: u32,
        node: String,
    },
    /// The swarm's nodes (`--executor swarm`): sent when the run starts
    /// and whenever a node's state, availability, labels or number of
    /// trackside tasks changes (looked at every few seconds). At most
    /// [`MAX_CLUSTER_NODES`] are listed; `omitted` counts the rest.
    ClusterNodes {
        nodes: Vec<super::view::ClusterNode>,
        #[serde(default)]
        omitted: usize,
    },
    StepStarted {
        job: String,
        attempt: u32,
        step: String,
        index: usize,
        /// Its line in the attempt's log (see `LogLine::line_no`).
        #[serde(default)]
        line_no: u64,
    },
    LogLine {
        job: String,
        attempt: u32,
        step: String,
        stream: Stream,
        line: String,
        /// Its place in the attempt's log (from 0; each step's start counts
        /// as a line too), so a front-end that missed lines knows how many
        /// of the attempt's lines come before it (they are in the record).
        #[serde(default)]
        line_no: u64,
    },
    /// A GitHub step's `::group::title` (with `title`; its `▸ title` line
    /// is line `line_no` of the attempt's log) or `::endgroup::` (without:
    /// the group's lines end before `line_no`). Front-ends may fold a
    /// group's lines under its title line.
    LogGroup {
        job: String,
        attempt: u32,
        line_no: u64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        title: Option<String>,
    },
    /// A GitHub step's `::error`, `::warning` or `::notice` (its line is in
    /// the log too): front-ends list them, as GitHub lists annotations.
    Annotation {
        job: String,
        step: String,
        /// `error`, `warning` or `notice`.
        level: String,
        message: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        title: Option<String>,
        /// `file`, with `line` and `col` when given.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        file: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        line: Option<u64>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        col: Option<u64>,
    },
    /// A rollout decision, for the audit trail: a steering action (with
    /// who took it) or one the rollout took by itself (`by` is None).
    RolloutDecision {
        job: String,
        text: String,
        by: Option<String>,
    },
    /// A deploy job's rollout, twice a second while it runs.
    Rollout {
        job: String,
        status: Box<RolloutStatus>,
    },
    StepFinished {
        job: String,
        attempt: u32,
        step: String,
        exit_code: Option<i32>,
        failure_class: Option<FailureClass>,
        duration_ms: u64,
    },
    JobFinished {
        job: String,
        attempt: u32,
        status: JobStatus,
        exit_code: Option<i32>,
        failure_class: Option<FailureClass>,
        duration_ms: u64,
        flaky: bool,
        message: Option<String>,
        /// Served from the result cache under this key (status stays `succeeded`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        cached: Option<String>,
        /// Why it failed, when the knowledge base could tell.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        diagnosis: Option<Box<Diagnosis>>,
    },
    /// A delayed job waits `start_in_ms` before it is queued (approving it
    /// starts it at once).
    JobDelayed {
        job: String,
        start_in_ms: u64,
    },
    JobRetrying {
        job: String,
        /// The attempt that will run next.
        attempt: u32,
        delay_ms: u64,
        failure_class: FailureClass,
        /// Exit code of the attempt that failed.
        #[serde(default)]
        exit_code: Option<i32>,
        /// Why the attempt failed, when the knowledge base could tell.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        diagnosis: Option<Box<Diagnosis>>,
    },
    /// Attempt `attempt` of `job` was stopped because run `by`, of a higher
    /// priority, needed the machine (`--preempt`); the job is queued again
    /// and the attempt counts neither as a failure nor against its retries.
    JobPreempted {
        job: String,
        attempt: u32,
        by: String,
    },
    JobSkipped {
        job: String,
        reason: String,
    },
    GateWaiting {
        job: String,
    },
    /// A queued job cannot start yet although a slot may be free, and
    /// why: its resource group is busy, the memory it needs is not free
    /// ("waiting for memory: needs 4.0 GiB, 1.2 GiB of 7.0 GiB free").
    /// Sent when the reason changes.
    JobWaiting {
        job: String,
        reason: String,
    },
    /// A circuit breaker changed: `dependency` (a host, a registry, the
    /// Docker daemon) opened after repeated failures on it, let a probe
    /// through, or closed (see `engine::breaker`).
    Breaker {
        dependency: String,
        phase: BreakerPhase,
        reason: String,
        /// Open: milliseconds until it lets a probe through.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        probe_in_ms: Option<u64>,
    },
    /// `-j auto` changed how many jobs run at once (`from` to `limit`):
    /// why, and whether jobs may start now (not under memory pressure).
    Parallelism {
        from: usize,
        limit: usize,
        admit: bool,
        reason: String,
    },
    /// What running jobs hold of the machine: sent when it changes.
    Resources {
        running: usize,
        /// The most jobs at once (`-j`).
        limit: usize,
        /// CPUs held and the machine's CPU tokens, in thousandths.
        cpu_milli: u64,
        cpu_milli_total: u64,
        /// Memory held (jobs' reservations) and the budget, in bytes.
        memory: u64,
        memory_budget: u64,
    },
    /// The job goes back to Pending (manual retry, rerun, or the next repetition).
    JobReset {
        job: String,
        reason: String,
    },
    /// A person steered the run (approve, retry, cancel, ...): what, and
    /// who (`user@host`, `(ssh from IP)` when over SSH), for the audit trail.
    Steered {
        what: String,
        by: String,
    },
    /// A person approved a gate that takes approvals by name
    /// (`approvers:`): the audit trail of who approved, and when (the
    /// event's time). The gate opens when `given` reaches `required`.
    Approved {
        job: String,
        /// The account.
        user: String,
        /// `user@host (ssh from IP)`.
        by: String,
        given: u32,
        required: u32,
        /// Who is still needed ("1 more from group sre"), until it opens.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        waiting_for: Option<String>,
    },
    SchedulingPaused,
    SchedulingResumed,
    /// The pipeline file was edited and the edit applied to jobs that had
    /// not started (or, with `cause`, the run's pipeline grew otherwise: a
    /// generated child pipeline joined it).
    PipelineChanged {
        added: Vec<String>,
        removed: Vec<String>,
        changed: Vec<String>,
        /// Edited jobs that had already started: they keep their definition.
        kept: Vec<String>,
        /// Why, when it was not an edit of the file.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        cause: Option<String>,
    },
    /// The pipeline file was edited but is invalid; the run goes on unchanged.
    PipelineInvalid {
        file: String,
        /// `file:line:col: error: message` lines.
        diagnostics: Vec<String>,
    },
    /// When the run will finish, forecast from history (finish times in ms
    /// since the run started): sent when it changes by a second or more.
    Forecast {
        p50_ms: u64,
        p90_ms: u64,
        /// Jobs with no history, assumed to take `assumed_ms` each (both
        /// absent when every job has history).
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        without_history: Vec<String>,
        #[serde(default, skip_serializing_if = "is_zero")]
        assumed_ms: u64,
    },
    /// The pipeline's recent runs from history (sent once, after the
    /// plan, when it has any): the UI's dashboard.
    History {
        stats: super::view::PipelineStats,
    },
    /// An attempt's JUnit reports were read.
    TestsReported {
        job: String,
        attempt: u32,
        report: TestReport,
    },
    RunFinished {
        summary: RunSummary,
    },
}

/// An event with its wall-clock time (unix milliseconds) and its place in
/// the run: events of a run are numbered from 0 without gaps, in the order
/// the engine emitted them (records written before numbering read as 0).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    #[serde(default)]
    pub seq: u64,
    pub ts: u64,
    #[serde(flatten)]
    pub kind: EventKind,
}

impl EventKind {
    /// Whether this marks a job or run transition.
    pub fn is_transition(&self) -> bool {
        !matches!(self, EventKind::LogLine { .. } | EventKind::Rollout { .. })
    }

    /// Replaces every secret value in the event's text with `[MASKED]`.
    pub fn mask(&mut self, mask: &dyn Fn(&str) -> Option<String>) {
        let fix = |s: &mut String| {
            if let Some(m) = mask(s) {
                *s = m;
            }
        };
        match self {
            EventKind::LogLine { line, .. } => fix(line),
            EventKind::LogGroup { title: Some(t), .. } => fix(t),
            EventKind::Annotation { message, title, .. } => {
                fix(message);
                if let Some(t) = title {
                    fix(t);
                }
            }
            EventKind::JobSkipped { reason, .. } | EventKind::JobReset { reason, .. } => fix(reason),
            EventKind::JobFinished { message, diagnosis, .. } => {
                if let Some(m) = message {
                    fix(m);
                }
                if let Some(d) = diagnosis {
                    d.mask(&fix);
                }
            }
            EventKind::JobRetrying { diagnosis: Some(d), .. } => d.mask(&fix),
            EventKind::TestsReported { report, .. } => {
                for c in &mut report.cases {
                    fix(&mut c.name);
                    if let Some(m) = &mut c.message {
                        fix(m);
                    }
                }
            }
            EventKind::RunFinished { summary } => {
                fix(&mut summary.message);
                for j in &mut summary.jobs {
                    if let Some(r) = &mut j.reason {
                        fix(r);
                    }
                    for d in j.attempts.iter_mut().filter_map(|a| a.diagnosis.as_mut()) {
                        d.mask(&fix);
                    }
                }
            }
            _ => {}
        }
    }
}
