//! The rules of a run, as a pure state machine: `handle(input, now) -> effects`.
//!
//! No tokio, no files, no clock: time comes in as `now` (since the run
//! started) and randomness from a seeded generator, so every rule (cascade,
//! retry, gates, cancel, repeat) is tested in microseconds and
//! deterministically. The actor performs the effects.
//!
//! Job life: Pending -> Ready -> Running -> Succeeded | Failed | Cancelled,
//! with Skipped (condition false, or blocked by an upstream failure),
//! WaitingApproval (manual gate) and Retrying (waiting for backoff).

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use crate::pipeline::expr::{self, Context};
use crate::pipeline::model::Refusal;
use crate::pipeline::{FailureClass, Pipeline, Plan, When};

use super::admission::{Basis, Capacity, Fit, JobUsage, Ledger, Need};
use super::breaker::Gate;
use super::event::*;

pub type JobId = usize;

/// Variables each job's `conditional` sees as `env.X` (jobs without one are absent).
pub type CondEnv = BTreeMap<JobId, BTreeMap<String, String>>;

/// How an attempt ended, as the actor reports it.
#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    pub exit_code: Option<i32>,
    /// `None` = success.
    pub failure: Option<FailureClass>,
    pub message: Option<String>,
    /// With `DataIntegrity`: the job whose artifacts failed verification.
    pub corrupt_upstream: Option<String>,
    /// Served from the result cache under this key; the job did not run.
    pub cached: Option<String>,
    /// Why it failed, when the knowledge base could tell.
    pub diagnosis: Option<Box<Diagnosis>>,
    /// The failed test cases, when every one is in quarantine (and the
    /// attempt ended with its own exit code): then the failure does not
    /// fail the run.
    pub quarantined_tests: Vec<String>,
}

impl Outcome {
    pub fn success() -> Self {
        Outcome {
            exit_code: Some(0),
            failure: None,
            message: None,
            corrupt_upstream: None,
            cached: None,
            diagnosis: None,
            quarantined_tests: Vec::new(),
        }
    }
    /// The attempt could not run (workspace, services): class infra.
    pub fn infra(message: String) -> Self {
        Outcome {
            exit_code: None,
            failure: Some(FailureClass::Infra),
            message: Some(message),
            corrupt_upstream: None,
            cached: None,
            diagnosis: None,
            quarantined_tests: Vec::new(),
        }
    }

    pub fn failed(exit_code: Option<i32>, class: FailureClass) -> Self {
        Outcome {
            exit_code,
            failure: Some(class),
            message: None,
            corrupt_upstream: None,
            cached: None,
            diagnosis: None,
            quarantined_tests: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CancelReason {
    User,
    Timeout,
    FailFast,
    /// A higher-priority run needs the machine (`--preempt`): the attempt
    /// is stopped and the job queued again.
    Preempted,
    /// Another run took the job's concurrency group (GitHub's
    /// `cancel-in-progress`).
    Superseded,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Input {
    Start,
    AttemptFinished {
        job: JobId,
        attempt: u32,
        outcome: Outcome,
    },
    RetryDue {
        job: JobId,
    },
    Approve(JobId),
    /// An approval by a person, for a gate with an approval policy
    /// (`approvers:`): it opens once enough allowed people have given one.
    ApproveAs(JobId, Approver),
    Retry(JobId),
    Cancel(JobId),
    CancelAll(CancelReason),
    RerunFailed,
    Pause,
    Resume,
    /// End the run once only unapproved gates remain (an interactive run
    /// whose user quits at a gate): it finishes as blocked.
    FinishWaiting,
    /// `-j auto` changed how many jobs may run at once, and whether any
    /// may start now (not under memory pressure).
    Parallelism {
        limit: usize,
        admit: bool,
    },
    /// Close a dependency's circuit breaker by hand (`by`: who).
    CloseBreaker {
        dependency: String,
        by: String,
    },
    /// A time asked for with [`Effect::Wake`] has come.
    Tick,
    /// The answer to [`Effect::Claim`]: `wait` is `None` when the job may
    /// start, else why it waits (it asks again after [`Effect::Wake`]).
    Claimed {
        job: JobId,
        wait: Option<String>,
    },
    /// Another run asks to stop attempt `attempt` of `job`: to queue it
    /// again (a higher-priority run preempting it), or, with `cancel`, for
    /// good (it took the job's concurrency group).
    Preempt {
        job: JobId,
        attempt: u32,
        by: String,
        cancel: bool,
    },
}

pub use crate::protocol::identity::Approver;

#[derive(Debug, Clone, PartialEq)]
pub enum Effect {
    Start {
        job: JobId,
        attempt: u32,
    },
    /// Stop a running attempt (its outcome still comes back as AttemptFinished).
    Kill {
        job: JobId,
    },
    ScheduleRetry {
        job: JobId,
        after: Duration,
    },
    Emit(EventKind),
    Finished(Box<RunSummary>),
    /// Send [`Input::Tick`] after this long (an open circuit breaker's
    /// probe is due).
    Wake {
        after: Duration,
    },
    /// Ask the runs sharing the machine whether attempt `attempt` of `job`
    /// may start (see `engine::sharing`); the answer comes back as
    /// [`Input::Claimed`]. Only with [`Options::shared`].
    Claim {
        job: JobId,
        attempt: u32,
        /// What it would hold.
        need: Need,
        group: Option<String>,
        interruptible: bool,
        cancels_group: bool,
    },
    /// Give back what a granted claim of `job` holds.
    Release {
        job: JobId,
    },
}

#[derive(Debug, Clone, Default)]
pub struct Options {
    pub max_parallel: usize,
    pub fail_fast: bool,
    /// Headless runs end when only unapproved gates remain; interactive ones wait.
    pub finish_when_blocked: bool,
    /// Run this job this many times (its dependencies once).
    pub repeat: Option<(JobId, u32)>,
    /// Per-job variables for `env.X` in conditionals (only jobs that have one).
    pub cond_env: CondEnv,
    /// `vars.X` in conditionals: command-line vars and global_env.
    pub vars: BTreeMap<String, String>,
    pub seed: u64,
    /// What the machine gives the run's jobs (CPU tokens, a memory
    /// budget); unlimited by default.
    pub capacity: Capacity,
    /// What history says each job (by name) used.
    pub learned: HashMap<String, JobUsage>,
    /// When a dependency's circuit breaker opens.
    pub breakers: super::breaker::Settings,
    /// The first part of a resumed run: its kept jobs, its attempts.
    pub resumed: Option<super::resume::Resumed>,
    /// Other runs share the machine: each start is claimed first
    /// ([`Effect::Claim`]).
    pub shared: bool,
    /// Container jobs run on a cluster (`--executor swarm`): their
    /// resources are reserved there, and here they hold little.
    pub remote_containers: bool,
}

#[derive(Debug, Clone)]
struct JobState {
    status: JobStatus,
    /// Number of the current or last attempt (0 = never started).
    attempt: u32,
    attempts: Vec<AttemptRecord>,
    /// Skipped because of this upstream job (the cascade's root cause).
    blocked_by: Option<String>,
    reason: Option<String>,
    approved: bool,
    /// The accounts that approved it so far (a gate with a policy).
    approvals: Vec<String>,
    /// Its `start_in` has passed (or it was started at once).
    delay_done: bool,
    /// When its current `start_in` ends: an earlier timer (from before a
    /// reset) is ignored.
    delay_until: Duration,
    kill_reason: Option<CancelReason>,
    /// A failed attempt happened in the current round (for FLAKY).
    failed_before: bool,
    /// First attempt start of the current round, for the job's duration.
    first_start: Option<Duration>,
    duration: Duration,
    failure_class: Option<FailureClass>,
    /// Attempts used in this round (retry_count counts per round).
    round_attempts: u32,
    /// Served from the result cache under this key.
    cached: Option<String>,
    /// What its last attempt handed on (GitHub's job `outputs`).
    outputs: Vec<(String, String)>,
    /// Its last attempt failed only in quarantined test cases.
    tests_quarantined: bool,
    /// What its running attempt holds of the machine.
    holds: Option<Need>,
    /// Why it could not start when it last tried (told once per reason).
    waiting: Option<String>,
    /// The dependencies its failures were on (their breakers hold it).
    failed_on: Vec<String>,
    /// Its start is being claimed from the runs sharing the machine.
    claiming: bool,
    /// The run that asked to stop its running attempt.
    stopped_by: Option<String>,
}

impl JobState {
    /// A job that has not been looked at yet.
    fn fresh() -> Self {
        JobState {
            status: JobStatus::Pending,
            attempt: 0,
            attempts: Vec::new(),
            blocked_by: None,
            reason: None,
            approved: false,
            approvals: Vec::new(),
            delay_done: false,
            delay_until: Duration::ZERO,
            kill_reason: None,
            failed_before: false,
            first_start: None,
            duration: Duration::ZERO,
            failure_class: None,
            round_attempts: 0,
            cached: None,
            outputs: Vec::new(),
            tests_quarantined: false,
            holds: None,
            waiting: None,
            failed_on: Vec::new(),
            claiming: false,
            stopped_by: None,
        }
    }
}

/// What history says of one job, for its box and its detail pane.
#[derive(Debug, Clone, PartialEq)]
pub struct JobHistory {
    pub job: String,
    /// Its flake rate, when history calls it flaky.
    pub flake_pct: Option<u8>,
    /// `flaky: 7 of 40 runs, 18% [9%, 30%] since abc12345` (or broken).
    pub fact: String,
}

pub struct RunState {
    run_id: String,
    /// Shared with the run's context: one copy of a large pipeline.
    pipeline: Arc<Pipeline>,
    /// What history says of jobs, by name ([`Self::learn_history`]): their
    /// flake rate and `history` fact, shown beside the pipeline's own.
    learned: HashMap<String, (Option<u8>, String)>,
    plan: Plan,
    /// Each job's place among ready jobs: its remaining critical path, in
    /// tenths of a second of its jobs' past durations once history is
    /// known ([`Self::weigh`]), else in jobs.
    priority: Vec<u32>,
    /// Each job's past durations by name, in ms.
    durations: BTreeMap<String, Vec<f64>>,
    opts: Options,
    jobs: Vec<JobState>,
    /// Ready jobs by (priority, earlier file position first). Stale entries are skipped.
    ready: BinaryHeap<(u32, Reverse<JobId>)>,
    /// Ready jobs the machine's other runs made wait: they ask again at the
    /// next [`Input::Tick`] or when one of this run's attempts ends.
    refused: Vec<(u32, Reverse<JobId>)>,
    /// Starts being claimed ([`Effect::Claim`] sent, no answer yet).
    claiming: usize,
    running: usize,
    retrying: usize,
    /// Jobs waiting out their `start_in`.
    delayed: usize,
    /// Resource groups a running job holds.
    held: HashMap<String, usize>,
    /// The machine's capacity and what running jobs hold of it.
    ledger: Ledger,
    /// The last `Resources` event's numbers (one is sent when they change).
    told_resources: Option<(usize, Need)>,
    /// A circuit breaker per dependency jobs failed on.
    breakers: super::breaker::Breakers,
    /// Jobs may start (`-j auto` stops them under memory pressure).
    admit: bool,
    paused: bool,
    started: bool,
    finished: bool,
    cancelled: Option<CancelReason>,
    rng: fastrand::Rng,
    repeat_results: Vec<Verdict>,
    now: Duration,
    /// Producers already re-run once because their artifacts were corrupt.
    integrity_reruns: Vec<JobId>,
    /// Jobs dropped by an edit of the pipeline file (kept as tombstones so
    /// job ids stay stable for attempts in flight).
    removed: Vec<bool>,
}

/// A changed pipeline whose dependencies cannot hold with the jobs that
/// already ran (a cycle through them, or a need on a removed one).
#[derive(Debug, thiserror::Error)]
#[error("the edit conflicts with jobs that already ran: {0}")]
pub struct Conflict(pub String);

/// What an edit of the pipeline file changed.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Changes {
    pub added: Vec<String>,
    pub removed: Vec<String>,
    pub changed: Vec<String>,
    pub kept: Vec<String>,
}

impl RunState {
    pub fn new(run_id: impl Into<String>, pipeline: impl Into<Arc<Pipeline>>, plan: Plan, opts: Options) -> Self {
        let pipeline = pipeline.into();
        let n = pipeline.jobs.len();
        let rng = fastrand::Rng::with_seed(opts.seed);
        RunState {
            run_id: run_id.into(),
            jobs: vec![JobState::fresh(); n],
            pipeline,
            learned: HashMap::new(),
            priority: plan.priority.clone(),
            durations: BTreeMap::new(),
            plan,
            opts: Options {
                max_parallel: 1,
                ..Options::default()
            },
            ready: BinaryHeap::new(),
            refused: Vec::new(),
            claiming: 0,
            running: 0,
            retrying: 0,
            delayed: 0,
            held: Default::default(),
            ledger: Ledger::new(opts.capacity),
            told_resources: None,
            breakers: super::breaker::Breakers::new(opts.breakers),
            admit: true,
            paused: false,
            started: false,
            finished: false,
            cancelled: None,
            rng,
            repeat_results: Vec::new(),
            now: Duration::ZERO,
            removed: vec![false; n],
            integrity_reruns: Vec::new(),
        }
        .with_opts(opts)
    }

    fn with_opts(mut self, mut opts: Options) -> Self {
        opts.max_parallel = opts.max_parallel.max(1);
        self.opts = opts;
        self
    }

    pub fn pipeline(&self) -> &Pipeline {
        &self.pipeline
    }

    /// The pipeline, shared (see [`RunContext`](super::attempt::RunContext)).
    pub fn shared_pipeline(&self) -> Arc<Pipeline> {
        self.pipeline.clone()
    }

    /// The pipeline without the jobs an edit or a graft removed (their
    /// tombstones stay in [`Self::pipeline`], so job ids hold): what a
    /// change to the run starts from.
    pub fn live_pipeline(&self) -> Pipeline {
        let mut p = (*self.pipeline).clone();
        let mut i = 0;
        p.jobs.retain(|_| {
            let keep = !self.removed.get(i).copied().unwrap_or(false);
            i += 1;
            keep
        });
        p
    }
    pub fn plan(&self) -> &Plan {
        &self.plan
    }
    /// Keeps what job `j`'s attempt handed on, for the jobs that need it.
    pub fn record_outputs(&mut self, j: JobId, outputs: Vec<(String, String)>) {
        if let Some(st) = self.jobs.get_mut(j) {
            st.outputs = outputs;
        }
    }

    /// A GitHub job's `needs` context: for each job id it needs, the
    /// `result` (`failure` if any of a matrix's jobs failed, `cancelled`
    /// if any was, `skipped` if all were, else `success`; a failure that
    /// `continue-on-error` allows is a success) and the `outputs` (a
    /// matrix's jobs in order, a later non-empty value winning).
    pub fn needs_context(&self, job: JobId) -> serde_json::Value {
        self.needs_context_with(job, None)
    }

    /// [`Self::needs_context`] as it will be once `finished` (which passed,
    /// its end not applied yet) counts as a success.
    pub fn needs_context_after(&self, job: JobId, finished: JobId) -> serde_json::Value {
        self.needs_context_with(job, Some(finished))
    }

    fn needs_context_with(&self, job: JobId, finished: Option<JobId>) -> serde_json::Value {
        let mut out = serde_json::Map::new();
        let rank = |r: &str| match r {
            "failure" => 3,
            "cancelled" => 2,
            "success" => 1,
            _ => 0,
        };
        let mine = self.pipeline.jobs[job].call.as_deref();
        for &i in &self.plan.deps[job] {
            let spec = &self.pipeline.jobs[i];
            // A called workflow's jobs are one job, the caller, to the jobs
            // outside the call; its outputs are the call's.
            let from_call = spec.call.as_deref().filter(|c| Some(*c) != mine);
            let id = match from_call {
                Some(c) => c.to_string(),
                None => spec.id.clone().unwrap_or_else(|| spec.name.clone()),
            };
            let result = match self.jobs[i].status {
                _ if Some(i) == finished => "success",
                JobStatus::Succeeded => "success",
                JobStatus::Failed if self.failure_allowed(i) => "success",
                JobStatus::Failed => "failure",
                JobStatus::Cancelled => "cancelled",
                _ => "skipped",
            };
            let entry = out
                .entry(id)
                .or_insert_with(|| serde_json::json!({"result": "", "outputs": {}}));
            let before = entry["result"].as_str().unwrap_or("");
            // `skipped` only when every job of it was.
            if before.is_empty() || rank(result) > rank(before) {
                entry["result"] = serde_json::Value::String(result.to_string());
            }
            let outputs = &self.jobs[i].outputs;
            let value = |name: &str| outputs.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone());
            let given: Vec<(String, String)> = match from_call {
                Some(_) => spec
                    .call_outputs
                    .iter()
                    .filter_map(|(call_name, own)| Some((call_name.clone(), value(own)?)))
                    .collect(),
                None => outputs.clone(),
            };
            for (k, v) in given {
                if !v.is_empty() {
                    entry["outputs"][&k] = serde_json::Value::String(v);
                }
            }
        }
        serde_json::Value::Object(out)
    }

    /// A GitHub job whose condition asks about status (`always()`,
    /// `cancelled()`, `failure()`).
    fn status_driven(&self, j: JobId) -> bool {
        let spec = &self.pipeline.jobs[j];
        spec.strict_needs
            && spec
                .conditional
                .as_ref()
                .is_some_and(|c| c.expr.uses_status_functions())
    }

    /// Whether job `j` goes on through a cancel of the run: a GitHub job
    /// whose condition asks about status, not decided yet, or queued or
    /// running with its condition still holding now that the run is
    /// cancelled.
    fn outlives_cancel(&self, j: JobId) -> bool {
        if !self.status_driven(j) {
            return false;
        }
        match self.jobs[j].status {
            JobStatus::Pending => true,
            JobStatus::Running | JobStatus::Ready => {
                let (upstream_ok, upstream_failed) = self.ancestors_status(j);
                let ctx = CondCtx {
                    state: self,
                    job: j,
                    upstream_ok,
                    upstream_failed,
                };
                let cond = self.pipeline.jobs[j].conditional.as_ref();
                cond.is_some_and(|c| expr::eval(&c.expr, &ctx).is_ok_and(|v| expr::truthy(&v)))
            }
            _ => false,
        }
    }

    /// GitHub's view of the jobs `j` comes after (its needs, theirs, ...):
    /// (none failed, was cancelled or skipped; one failed).
    fn ancestors_status(&self, j: JobId) -> (bool, bool) {
        let mut seen = vec![false; self.jobs.len()];
        let mut work: Vec<JobId> = self.plan.deps[j].clone();
        let (mut ok, mut failed) = (true, false);
        while let Some(d) = work.pop() {
            if std::mem::replace(&mut seen[d], true) {
                continue;
            }
            match self.jobs[d].status {
                JobStatus::Succeeded => {}
                JobStatus::Failed if self.failure_allowed(d) => {}
                JobStatus::Failed => (ok, failed) = (false, true),
                _ => ok = false,
            }
            work.extend(self.plan.deps[d].iter().copied());
        }
        (ok, failed)
    }

    pub fn max_parallel(&self) -> usize {
        self.opts.max_parallel
    }
    pub fn status(&self, job: JobId) -> JobStatus {
        self.jobs[job].status
    }

    /// The run as the forecast sees it (`history`: past durations by job
    /// name, oldest first). Times are ms since the run started.
    pub fn forecast_nodes(
        &self,
        history: &std::collections::BTreeMap<String, Vec<f64>>,
    ) -> Vec<crate::insight::forecast::Node> {
        use crate::insight::forecast::{Node, State};
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        self.jobs
            .iter()
            .enumerate()
            .map(|(j, st)| {
                let spec = &self.pipeline.jobs[j];
                let state = match st.status {
                    s if s.is_terminal() => State::Done {
                        ended_ms: st.first_start.map_or(0.0, |f| ms(f + st.duration)),
                    },
                    JobStatus::Running | JobStatus::Retrying => State::Running {
                        started_ms: st.first_start.map_or(0.0, ms),
                    },
                    JobStatus::WaitingApproval => State::Held,
                    _ if spec.when == When::Manual && !st.approved => State::Held,
                    _ => State::Pending,
                };
                Node {
                    deps: self.plan.deps.get(j).cloned().unwrap_or_default(),
                    state,
                    history: history.get(&spec.name).cloned().unwrap_or_default(),
                    priority: self.priority.get(j).copied().unwrap_or(0),
                }
            })
            .collect()
    }
    pub fn attempt(&self, job: JobId) -> u32 {
        self.jobs[job].attempt
    }
    pub fn reason(&self, job: JobId) -> Option<&str> {
        self.jobs[job].reason.as_deref()
    }
    pub fn is_finished(&self) -> bool {
        self.finished
    }
    pub fn running(&self) -> usize {
        self.running
    }

    /// Whether a command applies to a job now; `Err` says why not.
    /// Whether job `j` is a gate that takes an approval now.
    fn gate_check(&self, j: JobId) -> Result<(), String> {
        let name = self.pipeline.jobs[j].name.as_str();
        let delayed = self.pipeline.jobs[j].start_in.is_some();
        if delayed && matches!(self.jobs[j].status, JobStatus::Delayed | JobStatus::Pending) {
            return Ok(());
        }
        if self.pipeline.jobs[j].when != When::Manual {
            return Err(format!("`{name}` is not a manual job"));
        }
        match self.jobs[j].status {
            JobStatus::WaitingApproval | JobStatus::Pending => Ok(()),
            s => Err(format!("`{name}` is {} and needs no approval", s.expr_name())),
        }
    }

    /// Opens job `j`'s gate (approved: it starts when it can).
    fn release(&mut self, job: JobId, fx: &mut Vec<Effect>) {
        self.jobs[job].approved = true;
        match self.jobs[job].status {
            JobStatus::WaitingApproval => self.make_ready(job, fx),
            // Start a delayed job now (its timer is then ignored).
            JobStatus::Delayed => {
                self.delayed -= 1;
                self.jobs[job].delay_done = true;
                self.make_ready(job, fx);
            }
            _ => {}
        }
    }

    /// Who a gate with a policy still waits for ("1 more from group
    /// sre"); `None` once it has its approvals (or has no policy).
    pub fn waiting_for(&self, job: JobId) -> Option<String> {
        let policy = self.pipeline.jobs[job].approvers.as_ref()?;
        policy.still_needed(self.jobs[job].approvals.len())
    }

    pub fn check(&self, input: &Input) -> Result<(), String> {
        let name = |j: JobId| self.pipeline.jobs[j].name.as_str();
        match input {
            &Input::Approve(j) => match &self.pipeline.jobs[j].approvers {
                Some(policy) => Err(format!(
                    "`{}` needs approvals from {}, each by name",
                    name(j),
                    policy.describe()
                )),
                None => self.gate_check(j),
            },
            Input::ApproveAs(j, who) => {
                self.gate_check(*j)?;
                let Some(policy) = &self.pipeline.jobs[*j].approvers else {
                    return Ok(());
                };
                let given = &self.jobs[*j].approvals;
                policy.admit(given, who).map_err(|r| match r {
                    Refusal::Starter => format!(
                        "{} started this run, and `{}` needs approvals from others: {}",
                        who.user,
                        name(*j),
                        policy.describe()
                    ),
                    Refusal::NotAllowed => format!(
                        "{} may not approve `{}`: its approvers are {}",
                        who.user,
                        name(*j),
                        policy.who()
                    ),
                    Refusal::Already => format!(
                        "{} has already approved `{}` ({} of {}); another approver is needed",
                        who.user,
                        name(*j),
                        given.len(),
                        policy.required
                    ),
                })
            }
            &Input::Retry(j) => match self.jobs[j].status {
                JobStatus::Failed | JobStatus::Cancelled => Ok(()),
                s => Err(format!(
                    "only failed or cancelled jobs can be retried; `{}` is {}",
                    name(j),
                    s.expr_name()
                )),
            },
            &Input::Cancel(j) => {
                if self.jobs[j].status.is_terminal() {
                    Err(format!("`{}` has already finished", name(j)))
                } else {
                    Ok(())
                }
            }
            Input::RerunFailed => {
                if self
                    .jobs
                    .iter()
                    .any(|j| matches!(j.status, JobStatus::Failed | JobStatus::Cancelled))
                {
                    Ok(())
                } else {
                    Err("no failed or cancelled job to rerun".into())
                }
            }
            Input::CloseBreaker { dependency, .. } => {
                if self.breakers.tripped().any(|d| d == dependency) {
                    Ok(())
                } else {
                    let open: Vec<&str> = self.breakers.tripped().collect();
                    Err(match open.is_empty() {
                        true => format!("no circuit breaker is open (`{dependency}` asked)"),
                        false => format!("`{dependency}` has no open circuit breaker; open: {}", open.join(", ")),
                    })
                }
            }
            _ => Ok(()),
        }
    }

    /// Whether jobs are ready but every slot is taken (`-j auto` raises
    /// the limit only then).
    pub fn short_of_slots(&self) -> bool {
        self.running >= self.opts.max_parallel
            && self
                .ready
                .iter()
                .any(|(_, Reverse(j))| self.jobs[*j].status == JobStatus::Ready)
    }

    /// The dependencies whose breakers are open or half-open.
    pub fn open_breakers(&self) -> Vec<String> {
        self.breakers.tripped().map(str::to_string).collect()
    }

    pub fn handle(&mut self, input: Input, now: Duration) -> Vec<Effect> {
        self.now = now;
        let mut fx = Vec::new();
        match input {
            Input::Start => {
                if !self.started {
                    self.started = true;
                    fx.push(Effect::Emit(EventKind::RunStarted {
                        run_id: self.run_id.clone(),
                        pipeline: self.pipeline.name.clone(),
                        jobs: self.pipeline.jobs.iter().map(|j| j.name.clone()).collect(),
                        max_parallel: self.opts.max_parallel,
                    }));
                    fx.push(Effect::Emit(self.planned()));
                    if let Some(r) = self.opts.resumed.take() {
                        self.resume(r, &mut fx);
                    }
                    let roots: Vec<JobId> = self.plan.order.clone();
                    for j in roots {
                        self.evaluate(j, &mut fx);
                    }
                }
            }
            Input::AttemptFinished { job, attempt, outcome } => self.attempt_finished(job, attempt, outcome, &mut fx),
            Input::RetryDue { job }
                if self.jobs[job].status == JobStatus::Delayed && now >= self.jobs[job].delay_until =>
            {
                self.delayed -= 1;
                self.jobs[job].delay_done = true;
                self.make_ready(job, &mut fx);
            }
            Input::RetryDue { job } => {
                if self.jobs[job].status == JobStatus::Retrying {
                    self.retrying -= 1;
                    // An upstream job may have been reset meanwhile (user retry):
                    // then the normal rules decide again when it is done.
                    if self.plan.deps[job].iter().all(|&d| self.jobs[d].status.is_terminal()) {
                        self.make_ready(job, &mut fx);
                    } else {
                        self.jobs[job].status = JobStatus::Pending;
                    }
                }
            }
            Input::Approve(job) => {
                if self.check(&input).is_ok() {
                    self.release(job, &mut fx);
                }
            }
            Input::ApproveAs(job, ref who) => {
                if self.check(&input).is_ok() {
                    let required = self.pipeline.jobs[job].approvers.as_ref().map_or(1, |p| p.required);
                    self.jobs[job].approvals.push(who.user.clone());
                    let given = u32::try_from(self.jobs[job].approvals.len()).unwrap_or(u32::MAX);
                    let waiting_for = self.waiting_for(job);
                    fx.push(Effect::Emit(EventKind::Approved {
                        job: self.pipeline.jobs[job].name.clone(),
                        user: who.user.clone(),
                        by: who.display.clone(),
                        given,
                        required,
                        waiting_for,
                    }));
                    if given >= required {
                        self.release(job, &mut fx);
                    }
                }
            }
            Input::Retry(job) => {
                if self.check(&input).is_ok() {
                    self.reset(job, "retried by user", &mut fx);
                    self.cancelled = None;
                    self.reopen();
                    self.evaluate(job, &mut fx);
                }
            }
            Input::RerunFailed => {
                let failed: Vec<JobId> = self
                    .plan
                    .order
                    .iter()
                    .copied()
                    .filter(|&j| matches!(self.jobs[j].status, JobStatus::Failed | JobStatus::Cancelled))
                    .collect();
                if !failed.is_empty() {
                    self.cancelled = None;
                    self.reopen();
                    for &j in &failed {
                        self.reset(j, "rerun of failed jobs", &mut fx);
                    }
                    for &j in &failed {
                        self.evaluate(j, &mut fx);
                    }
                }
            }
            Input::Cancel(job) => self.cancel(job, CancelReason::User, &mut fx),
            Input::CancelAll(reason) => {
                // GitHub's rule: a job whose `if:` asks about status
                // (`always()`, `cancelled()`) is not cancelled by a
                // cancel of the run if its condition, asked again, holds;
                // one not started yet is decided when its needs are done.
                // A second cancel stops everything.
                let again = self.cancelled == Some(CancelReason::User);
                if self.cancelled.is_none() || reason == CancelReason::User {
                    self.cancelled = Some(reason);
                }
                for j in self.plan.order.clone() {
                    if reason == CancelReason::User && !again && self.outlives_cancel(j) {
                        continue;
                    }
                    self.cancel(j, reason, &mut fx);
                }
            }
            Input::FinishWaiting => self.opts.finish_when_blocked = true,
            Input::CloseBreaker { dependency, by } => {
                if let Some(t) = self.breakers.close(&dependency, &by) {
                    fx.push(breaker_event(t));
                }
            }
            // The schedule below lets a due probe through, and refused
            // jobs ask again.
            Input::Tick => self.ready.extend(self.refused.drain(..)),
            Input::Claimed { job, wait } => self.claimed(job, wait, &mut fx),
            Input::Preempt {
                job,
                attempt,
                by,
                cancel,
            } => self.stop_for(job, attempt, by, cancel, &mut fx),
            Input::Parallelism { limit, admit } => {
                self.opts.max_parallel = limit.max(1);
                self.admit = admit;
            }
            Input::Pause => {
                if !self.paused {
                    self.paused = true;
                    fx.push(Effect::Emit(EventKind::SchedulingPaused));
                }
            }
            Input::Resume => {
                if self.paused {
                    self.paused = false;
                    fx.push(Effect::Emit(EventKind::SchedulingResumed));
                }
            }
        }
        if self.started {
            self.schedule(&mut fx);
            self.maybe_finish(&mut fx);
            // An open breaker's probe comes due with no other input.
            if let Some(at) = self.breakers.next_probe().filter(|&at| at > now)
                && !self.finished
            {
                fx.push(Effect::Wake { after: at - now });
            }
        }
        fx
    }

    /// [`RunState::replan`] for a reason other than an edit of the file
    /// (`cause` is said with the change).
    pub fn replan_because(
        &mut self,
        new: Pipeline,
        cause: String,
        cond_env: &dyn Fn(&Pipeline) -> CondEnv,
        now: Duration,
    ) -> Result<(Vec<Effect>, Changes), Conflict> {
        let removed = format!("replaced: {cause}");
        let (mut fx, changes) = self.replan_removing(new, cond_env, now, &removed)?;
        for e in &mut fx {
            if let Effect::Emit(EventKind::PipelineChanged { cause: c, .. }) = e {
                *c = Some(cause.clone());
            }
        }
        Ok((fx, changes))
    }

    /// Applies an edited pipeline to the jobs that have not started: added
    /// jobs join, removed ones are dropped, changed ones take the new
    /// definition. Jobs that started (or finished) keep theirs. Job ids stay
    /// stable: new jobs are appended, removed ones become tombstones.
    /// `cond_env` computes the conditionals' environment for the merged pipeline.
    pub fn replan(
        &mut self,
        new: Pipeline,
        cond_env: &dyn Fn(&Pipeline) -> CondEnv,
        now: Duration,
    ) -> Result<(Vec<Effect>, Changes), Conflict> {
        self.replan_removing(new, cond_env, now, "removed from the pipeline file")
    }

    /// [`RunState::replan`], saying `why_removed` of the jobs it drops.
    fn replan_removing(
        &mut self,
        new: Pipeline,
        cond_env: &dyn Fn(&Pipeline) -> CondEnv,
        now: Duration,
        why_removed: &str,
    ) -> Result<(Vec<Effect>, Changes), Conflict> {
        self.now = now;
        let same = |a: &crate::pipeline::Job, b: &crate::pipeline::Job| {
            serde_json::to_string(a).ok() == serde_json::to_string(b).ok()
        };
        let mut changes = Changes::default();
        let mut merged = (*self.pipeline).clone();
        merged.global_env = new.global_env.clone();
        merged.retry_policy = new.retry_policy.clone();
        merged.kill_grace = new.kill_grace;
        let mut drop = Vec::new();
        for (i, old) in self.pipeline.jobs.iter().enumerate() {
            if self.removed[i] {
                continue;
            }
            let st = &self.jobs[i];
            let started = st.attempt > 0 || st.status.is_terminal() || st.status == JobStatus::Running;
            // A failed or cancelled job's next attempt is a retry: the debugging
            // loop is edit, retry, so it takes the edited definition (its
            // dependencies unchanged: the DAG around finished jobs stays).
            let retryable = matches!(st.status, JobStatus::Failed | JobStatus::Cancelled);
            match (new.job(&old.name), started) {
                (Some(nj), false) if !same(old, nj) => {
                    changes.changed.push(old.name.clone());
                    merged.jobs[i] = nj.clone();
                }
                (Some(nj), true) if !same(old, nj) && retryable && nj.depends_on == old.depends_on => {
                    changes.changed.push(old.name.clone());
                    merged.jobs[i] = nj.clone();
                }
                (Some(nj), true) if !same(old, nj) => changes.kept.push(old.name.clone()),
                (None, false) => {
                    changes.removed.push(old.name.clone());
                    merged.jobs[i].depends_on.clear();
                    drop.push(i);
                }
                (None, true) => changes.kept.push(old.name.clone()),
                _ => {}
            }
        }
        for nj in &new.jobs {
            if self.pipeline.job_index(&nj.name).is_none_or(|i| self.removed[i]) {
                changes.added.push(nj.name.clone());
                merged.jobs.push(nj.clone());
            }
        }
        if changes == Changes::default() {
            return Ok((Vec::new(), changes));
        }
        let plan = Plan::build(&merged).map_err(|diags| {
            Conflict(
                diags
                    .first()
                    .map_or("a dependency cycle".to_string(), |d| d.message.clone()),
            )
        })?;
        // Apply.
        let mut fx = vec![Effect::Emit(EventKind::PipelineChanged {
            added: changes.added.clone(),
            removed: changes.removed.clone(),
            changed: changes.changed.clone(),
            kept: changes.kept.clone(),
            cause: None,
        })];
        while self.jobs.len() < merged.jobs.len() {
            self.jobs.push(JobState::fresh());
            self.removed.push(false);
        }
        self.pipeline = Arc::new(merged);
        self.plan = plan;
        self.priority = self.weighted();
        self.opts.cond_env = cond_env(&self.pipeline);
        for name in &changes.changed {
            if let Some(j) = self.pipeline.job_index(name) {
                // Its dependencies may differ now: decide again.
                if matches!(
                    self.jobs[j].status,
                    JobStatus::Ready | JobStatus::WaitingApproval | JobStatus::Delayed
                ) {
                    if self.jobs[j].status == JobStatus::Delayed {
                        self.delayed -= 1;
                    }
                    self.jobs[j].status = JobStatus::Pending;
                    self.jobs[j].delay_done = false;
                }
            }
        }
        for &j in &drop {
            self.removed[j] = true;
            if self.jobs[j].status == JobStatus::Delayed {
                self.delayed -= 1;
            }
            let st = &mut self.jobs[j];
            st.status = JobStatus::Skipped;
            st.reason = Some(why_removed.to_string());
            st.blocked_by = None;
        }
        fx.push(Effect::Emit(self.planned()));
        self.ready = self
            .jobs
            .iter()
            .enumerate()
            .filter(|(_, st)| st.status == JobStatus::Ready)
            .map(|(j, _)| (self.priority[j], Reverse(j)))
            .collect();
        if self.started {
            for j in self.plan.order.clone() {
                self.evaluate(j, &mut fx);
            }
            self.schedule(&mut fx);
            self.maybe_finish(&mut fx);
        }
        Ok((fx, changes))
    }

    /// Adds what history says of jobs (by name; a job no longer in the
    /// plan is passed over) and returns the plan to show again.
    pub fn learn_history(&mut self, jobs: Vec<JobHistory>) -> EventKind {
        for h in jobs {
            if self.pipeline.job_index(&h.job).is_some() {
                self.learned.insert(h.job, (h.flake_pct, h.fact));
            }
        }
        self.planned()
    }

    /// The DAG as an event, for front-ends.
    pub fn planned(&self) -> EventKind {
        let names = |ids: &[JobId]| {
            ids.iter()
                .map(|&d| self.pipeline.jobs[d].name.clone())
                .collect::<Vec<_>>()
        };
        EventKind::PlanChanged {
            jobs: self
                .pipeline
                .jobs
                .iter()
                .enumerate()
                .filter(|&(i, _)| !self.removed[i])
                .map(|(i, j)| PlannedJob {
                    name: j.name.clone(),
                    depends_on: names(&self.plan.deps[i]),
                    level: self.plan.level_of[i],
                    when: j.when,
                    // A quarantined job's failure is allowed, as the summary says.
                    allow_failure: j.allow_failure || j.quarantined,
                    steps: j.steps.iter().map(|s| s.name.clone()).collect(),
                    has_image: j.steps.iter().any(|s| s.image.is_some()),
                    facts: {
                        let mut facts = j.facts.clone();
                        if let Some((_, fact)) = self.learned.get(&j.name) {
                            facts.retain(|(k, _)| k != "history");
                            facts.push(("history".into(), fact.clone()));
                        }
                        if let Some(a) = &j.approvers {
                            facts.push(("approvers".into(), a.describe()));
                        }
                        facts
                    },
                    stage: j.stage.clone(),
                    flake_pct: self.learned.get(&j.name).map_or(j.flake_pct, |(pct, _)| *pct),
                })
                .collect(),
            critical_path: names(&self.plan.critical_path),
            stages: self.pipeline.stages.clone(),
        }
    }

    fn name(&self, j: JobId) -> String {
        self.pipeline.jobs[j].name.clone()
    }

    /// Decides what a Pending job does now that its dependencies may have changed.
    fn evaluate(&mut self, job: JobId, fx: &mut Vec<Effect>) {
        let mut work = vec![job];
        while let Some(j) = work.pop() {
            if self.jobs[j].status != JobStatus::Pending || !self.started {
                continue;
            }
            if let Some(reason) = self
                .cancelled
                .filter(|r| !(*r == CancelReason::User && self.status_driven(j)))
            {
                let why = match reason {
                    CancelReason::User => "run cancelled".to_string(),
                    CancelReason::Timeout => "pipeline timed out".to_string(),
                    CancelReason::FailFast => "fail-fast: an earlier job failed".to_string(),
                    CancelReason::Preempted | CancelReason::Superseded => "cancelled by another run".to_string(),
                };
                self.skip(j, why, None, fx);
                work.extend(self.plan.dependents[j].iter().copied());
                continue;
            }
            let spec = &self.pipeline.jobs[j];
            let status_driven = spec
                .conditional
                .as_ref()
                .is_some_and(|c| c.expr.uses_status_functions());
            let mut all_done = true;
            let mut bad: Option<String> = None;
            for &d in &self.plan.deps[j] {
                let st = &self.jobs[d];
                match st.status {
                    JobStatus::Succeeded => {}
                    JobStatus::Failed if self.failure_allowed(d) => {}
                    // An optional manual job (allowed to fail) does not hold
                    // back what comes after it, as in GitLab.
                    JobStatus::WaitingApproval if self.pipeline.jobs[d].allow_failure => {}
                    JobStatus::Failed | JobStatus::Cancelled => {
                        bad.get_or_insert_with(|| self.pipeline.jobs[d].name.clone());
                    }
                    JobStatus::Skipped => {
                        if let Some(root) = &st.blocked_by {
                            bad.get_or_insert_with(|| root.clone());
                        } else if spec.strict_needs {
                            bad.get_or_insert_with(|| self.pipeline.jobs[d].name.clone());
                        }
                    }
                    _ => all_done = false,
                }
            }
            let when = spec.when;
            let waits_for_all = status_driven || matches!(when, When::OnFailure | When::Always);
            if !waits_for_all
                && let Some(root) = bad.clone()
                && spec.mirrors_upstream
            {
                // A trigger job with `strategy: depend` takes its child
                // pipeline's failure as its own.
                self.fail_as(
                    j,
                    format!("its child pipeline failed ({root})"),
                    FailureClass::Script,
                    fx,
                );
                work.extend(self.plan.dependents[j].iter().copied());
                continue;
            }
            if !waits_for_all && let Some(root) = bad {
                self.skip(j, format!("blocked by {root}"), Some(root), fx);
                work.extend(self.plan.dependents[j].iter().copied());
                continue;
            }
            if !all_done {
                continue;
            }
            if !status_driven && when == When::OnFailure && bad.is_none() {
                self.skip(j, "no upstream job failed (when: on_failure)".into(), None, fx);
                work.extend(self.plan.dependents[j].iter().copied());
                continue;
            }
            if let Some(cond) = &spec.conditional {
                let (upstream_ok, upstream_failed) = match spec.strict_needs {
                    true => self.ancestors_status(j),
                    false => (bad.is_none(), bad.is_some()),
                };
                let ctx = CondCtx {
                    state: self,
                    job: j,
                    upstream_ok,
                    upstream_failed,
                };
                match expr::eval(&cond.expr, &ctx) {
                    Ok(v) if expr::truthy(&v) => {}
                    Ok(_) => {
                        let why = format!("condition is false: {}", cond.source);
                        self.skip(j, why, None, fx);
                        work.extend(self.plan.dependents[j].iter().copied());
                        continue;
                    }
                    Err(e) => {
                        let msg = format!("conditional `{}` could not be evaluated: {e}", cond.source);
                        self.fail_without_running(j, msg, fx);
                        work.extend(self.plan.dependents[j].iter().copied());
                        continue;
                    }
                }
            }
            if when == When::Manual && !self.jobs[j].approved {
                self.jobs[j].status = JobStatus::WaitingApproval;
                fx.push(Effect::Emit(EventKind::GateWaiting { job: self.name(j) }));
                if spec.allow_failure {
                    work.extend(self.plan.dependents[j].iter().copied());
                }
            } else if let Some(after) = spec
                .start_in
                .filter(|_| !self.jobs[j].delay_done && !self.jobs[j].approved)
            {
                self.jobs[j].status = JobStatus::Delayed;
                self.jobs[j].delay_until = self.now + after;
                self.delayed += 1;
                fx.push(Effect::Emit(EventKind::JobDelayed {
                    job: self.name(j),
                    start_in_ms: ms(after),
                }));
                fx.push(Effect::ScheduleRetry { job: j, after });
            } else {
                self.make_ready(j, fx);
            }
        }
    }

    fn make_ready(&mut self, j: JobId, fx: &mut Vec<Effect>) {
        self.jobs[j].status = JobStatus::Ready;
        self.jobs[j].waiting = None;
        self.ready.push((self.priority[j], Reverse(j)));
        fx.push(Effect::Emit(EventKind::JobQueued { job: self.name(j) }));
    }

    fn skip(&mut self, j: JobId, reason: String, blocked_by: Option<String>, fx: &mut Vec<Effect>) {
        let st = &mut self.jobs[j];
        st.status = JobStatus::Skipped;
        st.blocked_by = blocked_by;
        st.reason = Some(reason.clone());
        fx.push(Effect::Emit(EventKind::JobSkipped {
            job: self.name(j),
            reason,
        }));
        self.repeat_outcome(j, fx);
    }

    fn fail_without_running(&mut self, j: JobId, message: String, fx: &mut Vec<Effect>) {
        self.fail_as(j, message, FailureClass::Infra, fx);
    }

    fn fail_as(&mut self, j: JobId, message: String, class: FailureClass, fx: &mut Vec<Effect>) {
        let st = &mut self.jobs[j];
        st.status = JobStatus::Failed;
        st.failure_class = Some(class);
        st.reason = Some(message.clone());
        let attempt = st.attempt;
        fx.push(Effect::Emit(EventKind::JobFinished {
            job: self.name(j),
            attempt,
            status: JobStatus::Failed,
            exit_code: None,
            failure_class: Some(class),
            duration_ms: 0,
            flaky: false,
            message: Some(message),
            cached: None,
            diagnosis: None,
        }));
        self.after_failure(j, fx);
    }

    /// The groups job `j` holds a place in while it runs, with how many
    /// may run at once: its resource group (one), its `max-parallel`.
    fn groups(&self, j: JobId) -> Vec<(String, usize)> {
        let spec = &self.pipeline.jobs[j];
        let mut out = Vec::new();
        if let Some(g) = &spec.resource_group {
            out.push((format!("resource:{g}"), 1));
        }
        if let Some((g, n)) = &spec.parallel_limit {
            out.push((format!("parallel:{g}"), (*n).max(1)));
        }
        out
    }

    /// Whether every job still queued would only be put back by
    /// [`Self::schedule`]: refused by the ledger for the reason it was
    /// already told, and in no group (or no longer ready at all).
    fn rest_waits_as_told(&self) -> bool {
        self.ready.iter().all(|&(_, Reverse(e))| {
            let (spec, st) = (&self.pipeline.jobs[e], &self.jobs[e]);
            if st.status != JobStatus::Ready || st.claiming {
                return true;
            }
            if spec.resource_group.is_some() || spec.parallel_limit.is_some() {
                return false;
            }
            let (need, basis) = self.need(e);
            matches!(self.ledger.refusal(need, basis), Some(key) if st.waiting.as_deref() == Some(key))
        })
    }

    fn schedule(&mut self, fx: &mut Vec<Effect>) {
        // Ready jobs whose resource group is busy wait for their next turn.
        let mut waiting = Vec::new();
        // Whether the jobs left were seen to wait as they did (once a pass).
        let mut looked = false;
        // Under memory pressure (`-j auto`) no job starts, unless none runs:
        // a run with nothing running would wait for nothing.
        while !self.paused && (self.admit || self.running == 0) && self.running < self.opts.max_parallel {
            let Some((prio, Reverse(j))) = self.ready.pop() else {
                break;
            };
            // A stale entry: cancelled while queued, or a second entry of a
            // job retried since, whose first is being claimed.
            if self.jobs[j].status != JobStatus::Ready || self.jobs[j].claiming {
                continue;
            }
            let groups = self.groups(j);
            if let Some((g, cap)) = groups
                .iter()
                .find(|(g, cap)| self.held.get(g).copied().unwrap_or(0) >= *cap)
            {
                let reason = match g.split_once(':') {
                    Some(("resource", name)) => format!("waiting for resource group `{name}` (one job at a time)"),
                    Some((_, name)) => format!("waiting for a place in `{name}` ({cap} at a time)"),
                    None => format!("waiting for `{g}`"),
                };
                self.tell_waiting(j, reason, fx);
                waiting.push((prio, Reverse(j)));
                continue;
            }
            let (need, basis) = self.need(j);
            // Told once while it waits for the same thing (the free amounts
            // in the text move with every start and end), so the text is
            // made only then: a thousand queued jobs are looked at after
            // every end.
            match self.ledger.refusal(need, basis) {
                None => {}
                Some(key) if self.jobs[j].waiting.as_deref() == Some(key) => {
                    waiting.push((prio, Reverse(j)));
                    // A thousand queued jobs are looked at after every start
                    // and end: when each of the rest would wait, already told
                    // why, as this one does, they stay queued untouched.
                    if !std::mem::replace(&mut looked, true) && self.rest_waits_as_told() {
                        break;
                    }
                    continue;
                }
                Some(_) => match self.ledger.fit(need, basis) {
                    Fit::Fits => {}
                    Fit::Wait(reason) => {
                        let key = reason.split(':').next().unwrap_or_default().to_string();
                        self.tell_waiting_as(j, key, reason, fx);
                        waiting.push((prio, Reverse(j)));
                        continue;
                    }
                    Fit::Never(reason) => {
                        self.jobs[j].waiting = None;
                        self.fail_as(j, reason, FailureClass::Infra, fx);
                        continue;
                    }
                },
            }
            let deps = self.dependencies(j);
            if !deps.is_empty() {
                match self.breakers.gate(&deps, j, self.now) {
                    Gate::Go => {}
                    Gate::Probe(opened) => fx.extend(opened.into_iter().map(breaker_event)),
                    Gate::Held { reason, key } => {
                        self.tell_waiting_as(j, key, reason, fx);
                        waiting.push((prio, Reverse(j)));
                        continue;
                    }
                }
            }
            for (g, _) in groups {
                *self.held.entry(g).or_default() += 1;
            }
            self.ledger.take(need);
            self.jobs[j].holds = Some(need);
            self.running += 1;
            if self.opts.shared {
                let spec = &self.pipeline.jobs[j];
                let st = &mut self.jobs[j];
                st.claiming = true;
                self.claiming += 1;
                fx.push(Effect::Claim {
                    job: j,
                    attempt: st.attempt + 1,
                    need: self.ledger.held(need),
                    group: spec.resource_group.clone(),
                    interruptible: spec.interruptible,
                    cancels_group: spec.cancel_in_progress,
                });
                continue;
            }
            self.launch(j, fx);
        }
        self.ready.extend(waiting);
        self.tell_resources(fx);
    }

    /// The answer to a claim: the job starts, or waits for the next tick.
    fn claimed(&mut self, j: JobId, wait: Option<String>, fx: &mut Vec<Effect>) {
        let Some(st) = self.jobs.get_mut(j).filter(|st| st.claiming) else {
            if wait.is_none() {
                fx.push(Effect::Release { job: j });
            }
            return;
        };
        st.claiming = false;
        self.claiming -= 1;
        let still = st.status == JobStatus::Ready;
        match wait {
            None if still => self.launch(j, fx),
            None => {
                // Cancelled while claimed.
                self.unhold(j);
                fx.push(Effect::Release { job: j });
            }
            Some(reason) => {
                self.unhold(j);
                // A probe of an open breaker that cannot start: the next
                // job to try probes.
                self.breakers.ended_except(j, "");
                if still {
                    let key = reason.split(':').next().unwrap_or_default().to_string();
                    self.tell_waiting_as(j, key, reason, fx);
                    self.refused.push((self.priority[j], Reverse(j)));
                    fx.push(Effect::Wake {
                        after: super::sharing::RETRY,
                    });
                }
            }
        }
        self.tell_resources(fx);
    }

    /// Attempt `attempt` of `j` was stopped for a higher-priority run: it is
    /// recorded as preempted (not a failure, not counted against its
    /// retries) and the job is queued again.
    fn preempted(&mut self, j: JobId, attempt: u32, outcome: &Outcome, fx: &mut Vec<Effect>) {
        let now = self.now;
        let st = &mut self.jobs[j];
        let by = st.stopped_by.take().unwrap_or_default();
        if let Some(rec) = st.attempts.last_mut() {
            rec.ended_ms = Some(ms(now));
            rec.exit_code = outcome.exit_code;
            rec.failure_class = Some(FailureClass::Cancelled);
            rec.preempted_by = Some(by.clone());
        }
        st.kill_reason = None;
        st.round_attempts = st.round_attempts.saturating_sub(1);
        self.make_ready(j, fx);
        fx.push(Effect::Emit(EventKind::JobPreempted {
            job: self.name(j),
            attempt,
            by,
        }));
        if let Some(reason) = self.cancelled {
            self.cancel(j, reason, fx);
        }
    }

    /// Gives back what job `j`'s start reserved in this run.
    fn unhold(&mut self, j: JobId) {
        self.running -= 1;
        if let Some(need) = self.jobs[j].holds.take() {
            self.ledger.give_back(need);
        }
        for (g, _) in self.groups(j) {
            if let Some(n) = self.held.get_mut(&g) {
                *n = n.saturating_sub(1);
            }
        }
    }

    /// Another run asks to stop job `j`'s attempt `attempt` (see
    /// [`Input::Preempt`]); a job that is not interruptible is only
    /// stopped for good, and only by a request to cancel.
    fn stop_for(&mut self, j: JobId, attempt: u32, by: String, cancel: bool, fx: &mut Vec<Effect>) {
        let Some(st) = self.jobs.get(j) else { return };
        if st.status != JobStatus::Running || st.attempt != attempt || st.kill_reason.is_some() {
            return;
        }
        if !cancel && !self.pipeline.jobs[j].interruptible {
            return;
        }
        let st = &mut self.jobs[j];
        st.kill_reason = Some(if cancel {
            CancelReason::Superseded
        } else {
            CancelReason::Preempted
        });
        st.stopped_by = Some(by);
        fx.push(Effect::Kill { job: j });
    }

    /// Starts job `j`'s next attempt (its place is already reserved).
    fn launch(&mut self, j: JobId, fx: &mut Vec<Effect>) {
        let now = self.now;
        {
            let st = &mut self.jobs[j];
            st.waiting = None;
            st.status = JobStatus::Running;
            st.attempt += 1;
            st.round_attempts += 1;
            st.kill_reason = None;
            st.stopped_by = None;
            st.first_start.get_or_insert(now);
            // Most jobs run once: room for one more record, not the four a
            // growing Vec takes (a quarter of a MB at 1,000 jobs); a retry
            // grows it by one.
            st.attempts.reserve_exact(1);
            st.attempts.push(AttemptRecord {
                number: st.attempt,
                started_ms: ms(now),
                ended_ms: None,
                exit_code: None,
                failure_class: None,
                retry_delay_ms: None,
                diagnosis: None,
                preempted_by: None,
            });
        }
        let attempt = self.jobs[j].attempt;
        fx.push(Effect::Emit(EventKind::JobStarted {
            job: self.name(j),
            attempt,
        }));
        fx.push(Effect::Start { job: j, attempt });
    }

    /// A resumed run: its kept jobs passed already, and every job's next
    /// attempt is numbered after its old ones.
    fn resume(&mut self, r: super::resume::Resumed, fx: &mut Vec<Effect>) {
        fx.push(Effect::Emit(EventKind::Resumed {
            kept: r.kept.clone(),
            interrupted: r.interrupted.clone(),
        }));
        for j in 0..self.jobs.len() {
            let name = &self.pipeline.jobs[j].name;
            let attempt = r.attempts.get(name).copied().unwrap_or(0);
            let kept = r.kept.contains(name);
            let st = &mut self.jobs[j];
            st.attempt = attempt;
            if kept {
                st.status = JobStatus::Succeeded;
                st.approved = true;
                st.reason = Some("kept: it passed before trackside stopped".into());
                fx.push(Effect::Emit(EventKind::JobKept {
                    job: name.clone(),
                    attempt,
                }));
            }
        }
    }

    /// Orders ready jobs by their remaining critical path weighted by past
    /// durations (the median of each job's recent runs, in ms; see
    /// [`Plan::priority_by_durations`]): the longest chain in time starts
    /// first, not the one with most jobs.
    pub fn weigh(&mut self, durations: &BTreeMap<String, Vec<f64>>) {
        self.durations = durations.clone();
        self.priority = self.weighted();
        self.ready = self
            .ready
            .drain()
            .map(|(_, Reverse(j))| (self.priority[j], Reverse(j)))
            .collect();
    }

    /// The priorities from the past durations (in jobs without them).
    fn weighted(&self) -> Vec<u32> {
        let names: Vec<&str> = self.pipeline.jobs.iter().map(|j| j.name.as_str()).collect();
        self.plan.priority_by_durations(&names, &self.durations)
    }

    /// What job `j` holds while it runs, and where that comes from.
    fn need(&self, j: JobId) -> (Need, Basis) {
        let spec = &self.pipeline.jobs[j];
        let remote =
            self.opts.remote_containers && !spec.steps.is_empty() && spec.steps.iter().all(|s| s.image.is_some());
        if remote {
            return (Need::REMOTE, Basis::Default);
        }
        Need::of(spec, self.opts.learned.get(&spec.name))
    }

    /// Says why a ready job waits, once per reason.
    fn tell_waiting(&mut self, j: JobId, reason: String, fx: &mut Vec<Effect>) {
        self.tell_waiting_as(j, reason.clone(), reason, fx);
    }

    /// Says why a ready job waits, once per `key` (a reason whose text
    /// moves, as a countdown, keeps its key).
    fn tell_waiting_as(&mut self, j: JobId, key: String, reason: String, fx: &mut Vec<Effect>) {
        if self.jobs[j].waiting.as_deref() != Some(key.as_str()) {
            self.jobs[j].waiting = Some(key);
            fx.push(Effect::Emit(EventKind::JobWaiting {
                job: self.name(j),
                reason,
            }));
        }
    }

    /// The dependencies with a tripped breaker that job `j` needs: those
    /// its definition names, and those it failed on before.
    fn dependencies(&self, j: JobId) -> Vec<String> {
        let spec = &self.pipeline.jobs[j];
        self.breakers
            .tripped()
            .filter(|d| self.jobs[j].failed_on.iter().any(|f| f == d) || super::breaker::needs(spec, d))
            .map(str::to_string)
            .collect()
    }

    /// What the end of an attempt tells the breakers: a failure on a
    /// dependency counts against it, a pass closes a breaker it probed.
    fn tell_breakers(
        &mut self,
        j: JobId,
        class: Option<FailureClass>,
        diagnosis: Option<&Diagnosis>,
        fx: &mut Vec<Effect>,
    ) {
        let spec = &self.pipeline.jobs[j];
        let on = diagnosis
            .filter(|_| matches!(class, Some(FailureClass::Network | FailureClass::Infra)))
            .and_then(|d| Some((d.dependency.clone()?, d.title.clone())))
            .filter(|(d, _)| super::breaker::outside(spec, d));
        match (class, on) {
            (None, _) => fx.extend(self.breakers.passed(j).into_iter().map(breaker_event)),
            (Some(_), Some((dependency, what))) => {
                if !self.jobs[j].failed_on.contains(&dependency) {
                    self.jobs[j].failed_on.push(dependency.clone());
                }
                // A probe of another breaker that failed on this one
                // hands its probing over.
                self.breakers.ended_except(j, &dependency);
                if let Some(t) = self.breakers.failed(&dependency, &what, j, self.now) {
                    fx.push(breaker_event(t));
                }
            }
            (Some(_), None) => self.breakers.ended_except(j, ""),
        }
    }

    /// A `Resources` event when what running jobs hold changed.
    fn tell_resources(&mut self, fx: &mut Vec<Effect>) {
        // Told once the starts being claimed are decided: what runs then.
        if self.claiming > 0 {
            return;
        }
        let now = (self.running, self.ledger.used());
        if self.told_resources == Some(now) {
            return;
        }
        self.told_resources = Some(now);
        let cap = self.ledger.capacity();
        fx.push(Effect::Emit(EventKind::Resources {
            running: self.running,
            limit: self.opts.max_parallel,
            cpu_milli: now.1.cpu_milli,
            cpu_milli_total: cap.cpu_milli,
            memory: now.1.memory,
            memory_budget: cap.memory,
        }));
    }

    fn attempt_finished(&mut self, j: JobId, attempt: u32, outcome: Outcome, fx: &mut Vec<Effect>) {
        if self.jobs[j].status != JobStatus::Running || self.jobs[j].attempt != attempt {
            return;
        }
        self.unhold(j);
        if self.opts.shared {
            fx.push(Effect::Release { job: j });
            // What this attempt held may fit a job another run made wait.
            self.ready.extend(self.refused.drain(..));
        }
        if self.jobs[j].kill_reason == Some(CancelReason::Preempted) && outcome.failure.is_some() {
            self.preempted(j, attempt, &outcome, fx);
            return;
        }
        let now = self.now;
        let (name, retry_when, retry_count, retry_codes) = {
            let spec = &self.pipeline.jobs[j];
            (
                spec.name.clone(),
                spec.retry_when.clone(),
                spec.retry_count,
                spec.retry_exit_codes.clone(),
            )
        };
        let pipeline_timeout = self.pipeline.timeout.as_secs();
        let st = &mut self.jobs[j];
        // The pipeline's timeout stopped it: its reason says that, not
        // what the stopped step saw.
        let mut outcome = outcome;
        if st.kill_reason == Some(CancelReason::Timeout) && outcome.failure.is_some() {
            outcome.message = Some(format!("the pipeline timeout of {pipeline_timeout}s was reached"));
        }
        if st.kill_reason == Some(CancelReason::Superseded) && outcome.failure.is_some() {
            let by = st.stopped_by.as_deref().unwrap_or("another run");
            outcome.message = Some(format!(
                "cancelled: run {by} took its concurrency group (cancel-in-progress)"
            ));
        }
        // Our own kill decides the class: the process only saw a signal.
        let class = match (st.kill_reason, outcome.failure) {
            (_, None) => None,
            (
                Some(CancelReason::User | CancelReason::FailFast | CancelReason::Superseded | CancelReason::Preempted),
                Some(_),
            ) => Some(FailureClass::Cancelled),
            (Some(CancelReason::Timeout), Some(_)) => Some(FailureClass::Timeout),
            (None, Some(c)) => Some(c),
        };
        // The diagnosis explains the class the attempt ended with; when our
        // own kill decided another, the rules' view of that class stands.
        let diagnosis = match (class, outcome.diagnosis.clone()) {
            (None | Some(FailureClass::Cancelled), _) => None,
            (Some(c), Some(d)) if d.class == c => Some(d),
            (Some(c), _) => crate::insight::knowledge::KnowledgeBase::builtin()
                .for_class(c, outcome.exit_code, outcome.message.as_deref().unwrap_or(""))
                .map(Box::new),
        };
        self.tell_breakers(j, class, diagnosis.as_deref(), fx);
        let st = &mut self.jobs[j];
        if let Some(rec) = st.attempts.last_mut() {
            rec.ended_ms = Some(ms(now));
            rec.exit_code = outcome.exit_code;
            rec.failure_class = class;
            rec.diagnosis = diagnosis.clone();
        }
        st.duration = now.saturating_sub(st.first_start.unwrap_or(now));
        let duration_ms = ms(st.duration);
        match class {
            None => {
                st.status = JobStatus::Succeeded;
                st.failure_class = None;
                st.cached = outcome.cached.clone();
                let flaky = st.failed_before;
                fx.push(Effect::Emit(EventKind::JobFinished {
                    job: name.clone(),
                    attempt,
                    status: JobStatus::Succeeded,
                    exit_code: outcome.exit_code,
                    failure_class: None,
                    duration_ms,
                    flaky,
                    message: outcome.message,
                    cached: outcome.cached,
                    diagnosis: None,
                }));
                self.repeat_outcome(j, fx);
                self.release_dependents(j, fx);
            }
            Some(FailureClass::Cancelled) => {
                st.status = JobStatus::Cancelled;
                st.failure_class = Some(FailureClass::Cancelled);
                fx.push(Effect::Emit(EventKind::JobFinished {
                    job: name.clone(),
                    attempt,
                    status: JobStatus::Cancelled,
                    exit_code: outcome.exit_code,
                    failure_class: Some(FailureClass::Cancelled),
                    duration_ms,
                    flaky: false,
                    message: outcome.message,
                    cached: None,
                    diagnosis: None,
                }));
                self.repeat_outcome(j, fx);
                self.release_dependents(j, fx);
            }
            Some(FailureClass::DataIntegrity) if self.rerun_producer(j, &outcome, fx) => {}
            Some(c) => {
                let st = &mut self.jobs[j];
                st.failed_before = true;
                st.failure_class = Some(c);
                let failed = Retry {
                    class: c,
                    exit_code: outcome.exit_code,
                    tries: st.round_attempts,
                    stopping: self.cancelled.is_some() || st.kill_reason.is_some(),
                    permanent: diagnosis.as_ref().is_some_and(|d| !d.retryable),
                };
                let retryable = may_retry(failed, &retry_when, &retry_codes, retry_count);
                // A retry the job would have had, were it not for the rule:
                // its reason says so.
                let vetoed = !retryable
                    && failed.permanent
                    && may_retry(
                        Retry {
                            permanent: false,
                            ..failed
                        },
                        &retry_when,
                        &retry_codes,
                        retry_count,
                    );
                let mut outcome = outcome;
                st.tests_quarantined = !outcome.quarantined_tests.is_empty();
                if st.tests_quarantined {
                    let shown: Vec<&str> = outcome.quarantined_tests.iter().take(3).map(String::as_str).collect();
                    let more = outcome.quarantined_tests.len() - shown.len();
                    let note = format!(
                        "failed only in quarantined test{}: {}{}",
                        if outcome.quarantined_tests.len() == 1 { "" } else { "s" },
                        shown.join(", "),
                        if more > 0 {
                            format!(" and {more} more")
                        } else {
                            String::new()
                        }
                    );
                    outcome.message = Some(match outcome.message.take() {
                        Some(m) => format!("{m}; {note}"),
                        None => note,
                    });
                }
                if let Some(d) = diagnosis.as_ref().filter(|_| vetoed) {
                    let note = format!("not retried: {}, which a retry does not fix", d.title);
                    outcome.message = Some(match outcome.message.take() {
                        Some(m) => format!("{m}; {note}"),
                        None => note,
                    });
                }
                if retryable {
                    let delay = self
                        .pipeline
                        .retry_policy
                        .backoff
                        .delay(st.round_attempts, self.rng.f64());
                    let st = &mut self.jobs[j];
                    st.status = JobStatus::Retrying;
                    if let Some(rec) = st.attempts.last_mut() {
                        rec.retry_delay_ms = Some(ms(delay));
                    }
                    self.retrying += 1;
                    fx.push(Effect::Emit(EventKind::JobRetrying {
                        job: self.name(j),
                        attempt: attempt + 1,
                        delay_ms: ms(delay),
                        failure_class: c,
                        exit_code: outcome.exit_code,
                        diagnosis: diagnosis.clone(),
                    }));
                    fx.push(Effect::ScheduleRetry { job: j, after: delay });
                } else {
                    let st = &mut self.jobs[j];
                    st.status = JobStatus::Failed;
                    st.reason = outcome.message.clone();
                    fx.push(Effect::Emit(EventKind::JobFinished {
                        job: self.name(j),
                        attempt,
                        status: JobStatus::Failed,
                        exit_code: outcome.exit_code,
                        failure_class: Some(c),
                        duration_ms,
                        flaky: false,
                        message: outcome.message,
                        cached: None,
                        diagnosis,
                    }));
                    self.after_failure(j, fx);
                }
            }
        }
    }

    /// An upstream artifact failed verification: run its producer again
    /// (once per producer per run) and put this job back to wait for it.
    /// Returns false when that cannot help (then the job fails).
    fn rerun_producer(&mut self, j: JobId, outcome: &Outcome, fx: &mut Vec<Effect>) -> bool {
        let Some(p) = outcome
            .corrupt_upstream
            .as_deref()
            .and_then(|n| self.pipeline.job_index(n))
        else {
            return false;
        };
        if self.integrity_reruns.contains(&p) || self.jobs[p].status != JobStatus::Succeeded || self.cancelled.is_some()
        {
            return false;
        }
        self.integrity_reruns.push(p);
        let producer = self.pipeline.jobs[p].name.clone();
        let st = &mut self.jobs[j];
        st.status = JobStatus::Pending;
        st.failure_class = None;
        fx.push(Effect::Emit(EventKind::JobReset {
            job: self.pipeline.jobs[j].name.clone(),
            reason: format!("artifacts of {producer} failed verification; waiting for {producer} to run again"),
        }));
        self.reset(
            p,
            &format!(
                "its artifacts failed verification in {}; running it again",
                self.pipeline.jobs[j].name
            ),
            fx,
        );
        self.evaluate(p, fx);
        true
    }

    /// Whether job `j`'s failure is allowed: `allow_failure`, and its last
    /// exit code among `allow_failure_exit_codes` when it names any.
    fn failure_allowed(&self, j: JobId) -> bool {
        let spec = &self.pipeline.jobs[j];
        let exit = self.jobs[j].attempts.last().and_then(|a| a.exit_code);
        spec.quarantined
            || self.jobs[j].tests_quarantined
            || spec.allow_failure
                && (spec.allow_failure_exit_codes.is_empty()
                    || exit.is_some_and(|c| spec.allow_failure_exit_codes.contains(&c)))
    }

    fn after_failure(&mut self, j: JobId, fx: &mut Vec<Effect>) {
        self.repeat_outcome(j, fx);
        // A matrix's fail-fast: the failed job's siblings stop.
        if let Some(group) = self.pipeline.jobs[j].fail_fast_group.clone()
            && !self.failure_allowed(j)
        {
            for k in 0..self.jobs.len() {
                if k != j && self.pipeline.jobs[k].fail_fast_group.as_deref() == Some(group.as_str()) {
                    self.cancel(k, CancelReason::FailFast, fx);
                }
            }
        }
        if self.opts.fail_fast && !self.failure_allowed(j) && self.cancelled.is_none() {
            self.cancelled = Some(CancelReason::FailFast);
            for k in self.plan.order.clone() {
                self.cancel(k, CancelReason::FailFast, fx);
            }
        }
        self.release_dependents(j, fx);
    }

    fn release_dependents(&mut self, j: JobId, fx: &mut Vec<Effect>) {
        for d in self.plan.dependents[j].clone() {
            self.evaluate(d, fx);
        }
    }

    fn cancel(&mut self, j: JobId, reason: CancelReason, fx: &mut Vec<Effect>) {
        match self.jobs[j].status {
            JobStatus::Running if self.jobs[j].kill_reason.is_none() => {
                self.jobs[j].kill_reason = Some(reason);
                fx.push(Effect::Kill { job: j });
            }
            JobStatus::Pending
            | JobStatus::Ready
            | JobStatus::Retrying
            | JobStatus::Delayed
            | JobStatus::WaitingApproval => {
                if self.jobs[j].status == JobStatus::Retrying {
                    self.retrying -= 1;
                }
                if self.jobs[j].status == JobStatus::Delayed {
                    self.delayed -= 1;
                }
                let st = &mut self.jobs[j];
                st.status = JobStatus::Cancelled;
                st.failure_class = Some(FailureClass::Cancelled);
                let why = match reason {
                    CancelReason::User => "cancelled",
                    CancelReason::Timeout => "pipeline timed out",
                    CancelReason::FailFast => "fail-fast: an earlier job failed",
                    CancelReason::Preempted | CancelReason::Superseded => "cancelled by another run",
                };
                st.reason = Some(why.to_string());
                fx.push(Effect::Emit(EventKind::JobFinished {
                    job: self.name(j),
                    attempt: self.jobs[j].attempt,
                    status: JobStatus::Cancelled,
                    exit_code: None,
                    failure_class: Some(FailureClass::Cancelled),
                    duration_ms: ms(self.jobs[j].duration),
                    flaky: false,
                    message: Some(why.to_string()),
                    cached: None,
                    diagnosis: None,
                }));
                self.repeat_outcome(j, fx);
                self.release_dependents(j, fx);
            }
            _ => {}
        }
    }

    /// Puts a finished job back to Pending, and with it the dependents its failure skipped.
    fn reset(&mut self, j: JobId, why: &str, fx: &mut Vec<Effect>) {
        let mut stack = vec![j];
        let mut first = true;
        while let Some(k) = stack.pop() {
            let st = &mut self.jobs[k];
            // Queued or gate-waiting dependents are no longer eligible either:
            // their upstream is about to run again.
            let eligible = first
                || (st.status == JobStatus::Skipped && st.blocked_by.is_some())
                || (st.status == JobStatus::Skipped && self.pipeline.jobs[k].when == When::OnFailure)
                || (st.status == JobStatus::Cancelled && st.attempt == 0)
                || matches!(
                    st.status,
                    JobStatus::Ready | JobStatus::WaitingApproval | JobStatus::Retrying | JobStatus::Delayed
                );
            first = false;
            if !eligible {
                continue;
            }
            if st.status == JobStatus::Retrying {
                self.retrying -= 1;
            }
            if st.status == JobStatus::Delayed {
                self.delayed -= 1;
            }
            // A job that runs again waits its `start_in` again, and a gate
            // that takes approvals by name takes them again.
            st.delay_done = false;
            if self.pipeline.jobs[k].approvers.is_some() {
                st.approved = false;
                st.approvals.clear();
            }
            st.status = JobStatus::Pending;
            st.blocked_by = None;
            st.reason = None;
            st.kill_reason = None;
            st.failed_before = false;
            st.first_start = None;
            st.round_attempts = 0;
            st.failure_class = None;
            fx.push(Effect::Emit(EventKind::JobReset {
                job: self.pipeline.jobs[k].name.clone(),
                reason: why.to_string(),
            }));
            stack.extend(self.plan.dependents[k].iter().copied());
        }
    }

    fn reopen(&mut self) {
        self.finished = false;
    }

    /// In repeat mode, records the target's verdict and starts the next repetition.
    fn repeat_outcome(&mut self, j: JobId, fx: &mut Vec<Effect>) {
        let Some((target, total)) = self.opts.repeat else {
            return;
        };
        if j != target {
            return;
        }
        let st = &self.jobs[j];
        let verdict = match st.status {
            JobStatus::Succeeded if st.failed_before => Verdict::Flaky,
            JobStatus::Succeeded => Verdict::Pass,
            JobStatus::Skipped => Verdict::Skipped,
            JobStatus::Cancelled => Verdict::Cancelled,
            _ => Verdict::Fail,
        };
        self.repeat_results.push(verdict);
        let more = (self.repeat_results.len() as u32) < total
            && self.cancelled.is_none()
            && matches!(verdict, Verdict::Pass | Verdict::Fail | Verdict::Flaky);
        if more {
            let n = self.repeat_results.len() + 1;
            self.reset(j, &format!("repetition {n} of {total}"), fx);
            self.evaluate(j, fx);
        }
    }

    /// The run is finished exactly when nothing is active; new activity
    /// (a retry, a late approval) reopens it and it finishes again later.
    fn maybe_finish(&mut self, fx: &mut Vec<Effect>) {
        let active = self.running > 0
            || self.retrying > 0
            || self.delayed > 0
            || self
                .ready
                .iter()
                .chain(&self.refused)
                .any(|&(_, Reverse(j))| self.jobs[j].status == JobStatus::Ready);
        if active {
            self.finished = false;
            return;
        }
        if self.finished {
            return;
        }
        let gates: Vec<JobId> = (0..self.jobs.len())
            .filter(|&j| self.jobs[j].status == JobStatus::WaitingApproval)
            .collect();
        if !gates.is_empty() && !self.opts.finish_when_blocked {
            return;
        }
        // Whatever is still pending waits behind an unapproved gate.
        for j in self.plan.order.clone() {
            if self.jobs[j].status == JobStatus::Pending {
                let gate = self
                    .plan
                    .ancestors(j)
                    .into_iter()
                    .find(|&a| self.jobs[a].status == JobStatus::WaitingApproval);
                let why = match gate {
                    Some(g) => format!("blocked on manual job {}", self.pipeline.jobs[g].name),
                    None => "never became ready".to_string(),
                };
                let st = &mut self.jobs[j];
                st.status = JobStatus::Skipped;
                st.reason = Some(why.clone());
                fx.push(Effect::Emit(EventKind::JobSkipped {
                    job: self.name(j),
                    reason: why,
                }));
            }
        }
        self.finished = true;
        let summary = self.summary();
        fx.push(Effect::Emit(EventKind::RunFinished {
            summary: summary.clone(),
        }));
        fx.push(Effect::Finished(Box::new(summary)));
    }

    pub fn summary(&self) -> RunSummary {
        let jobs: Vec<JobSummary> = self
            .pipeline
            .jobs
            .iter()
            .zip(&self.jobs)
            .enumerate()
            .map(|(i, (spec, st))| JobSummary {
                name: spec.name.clone(),
                verdict: match st.status {
                    JobStatus::Succeeded if st.failed_before => Verdict::Flaky,
                    JobStatus::Succeeded if st.cached.is_some() => Verdict::Cached,
                    JobStatus::Succeeded => Verdict::Pass,
                    JobStatus::Failed if spec.quarantined || st.tests_quarantined => Verdict::Quarantined,
                    JobStatus::Failed => Verdict::Fail,
                    JobStatus::Cancelled => Verdict::Cancelled,
                    JobStatus::WaitingApproval => Verdict::Manual,
                    JobStatus::Skipped => Verdict::Skipped,
                    _ => Verdict::Cancelled,
                },
                status: st.status,
                attempts: st.attempts.clone(),
                duration_ms: ms(st.duration),
                failure_class: st.failure_class,
                allow_failure: if st.status == JobStatus::Failed {
                    self.failure_allowed(i)
                } else {
                    spec.allow_failure
                },
                reason: st.reason.clone(),
                cached: st.cached.clone(),
                stage: spec.stage.clone(),
                coverage: None,
            })
            .collect();
        let failed: Vec<&str> = jobs
            .iter()
            .filter(|j| j.status == JobStatus::Failed && !j.allow_failure)
            .map(|j| j.name.as_str())
            .collect();
        // A cancelled job fails the run too, but it did not fail: say which is which.
        let cancelled: Vec<&str> = jobs
            .iter()
            .filter(|j| j.status == JobStatus::Cancelled)
            .map(|j| j.name.as_str())
            .collect();
        let gates: Vec<&str> = jobs
            .iter()
            .filter(|j| j.status == JobStatus::WaitingApproval && !j.allow_failure)
            .map(|j| j.name.as_str())
            .collect();
        let repeat = self.opts.repeat.map(|(t, _)| {
            let count = |v: Verdict| self.repeat_results.iter().filter(|&&r| r == v).count() as u32;
            RepeatStats {
                job: self.pipeline.jobs[t].name.clone(),
                runs: self.repeat_results.len() as u32,
                passed: count(Verdict::Pass) + count(Verdict::Flaky),
                failed: count(Verdict::Fail),
                flaky: count(Verdict::Flaky),
            }
        });
        let (result, message) = match self.cancelled {
            Some(CancelReason::User) => (RunResult::Cancelled, "run cancelled".to_string()),
            Some(CancelReason::Timeout) => (
                RunResult::Failed,
                format!("pipeline timed out after {}s", self.pipeline.timeout.as_secs()),
            ),
            _ if !failed.is_empty() || !cancelled.is_empty() => {
                let mut parts = Vec::new();
                if !failed.is_empty() {
                    parts.push(format!(
                        "{} of {} failed: {}",
                        failed.len(),
                        jobs_word(jobs.len()),
                        failed.join(", ")
                    ));
                }
                if !cancelled.is_empty() {
                    let of = if failed.is_empty() {
                        format!(" of {}", jobs_word(jobs.len()))
                    } else {
                        String::new()
                    };
                    parts.push(format!("{}{of} cancelled: {}", cancelled.len(), cancelled.join(", ")));
                }
                (RunResult::Failed, parts.join("; "))
            }
            _ if repeat.as_ref().is_some_and(|r| r.failed > 0) => (RunResult::Failed, "some repetitions failed".into()),
            _ if !gates.is_empty() => (
                RunResult::Blocked,
                format!("blocked on manual job {}", gates.join(", ")),
            ),
            _ => (RunResult::Passed, passed_message(&jobs)),
        };
        let result = if self.cancelled == Some(CancelReason::FailFast) {
            RunResult::Failed
        } else {
            result
        };
        RunSummary {
            run_id: self.run_id.clone(),
            pipeline: self.pipeline.name.clone(),
            result,
            exit_code: result.exit_code(),
            duration_ms: ms(self.now),
            jobs,
            message,
            repeat,
        }
    }
}

/// "all 7 jobs passed", or "5 passed, 1 skipped, 1 allowed to fail".
fn passed_message(jobs: &[JobSummary]) -> String {
    let count = |f: &dyn Fn(&JobSummary) -> bool| jobs.iter().filter(|j| f(j)).count();
    let passed = count(&|j| j.status == JobStatus::Succeeded);
    if passed == jobs.len() {
        return match passed {
            1 => "the job passed".to_string(),
            n => format!("all {n} jobs passed"),
        };
    }
    let mut parts = vec![format!("{passed} passed")];
    let skipped = count(&|j| j.status == JobStatus::Skipped);
    let allowed = count(&|j| j.status == JobStatus::Failed && j.allow_failure);
    if skipped > 0 {
        parts.push(format!("{skipped} skipped"));
    }
    if allowed > 0 {
        parts.push(format!("{allowed} allowed to fail"));
    }
    parts.join(", ")
}

/// `1 job`, `7 jobs`.
fn jobs_word(n: usize) -> String {
    if n == 1 { "1 job".into() } else { format!("{n} jobs") }
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

struct CondCtx<'a> {
    state: &'a RunState,
    job: JobId,
    upstream_ok: bool,
    upstream_failed: bool,
}

impl Context for CondCtx<'_> {
    fn root(&self, name: &str) -> Option<serde_json::Value> {
        let spec = &self.state.pipeline.jobs[self.job];
        (name == "needs" && spec.strict_needs).then(|| self.state.needs_context(self.job))
    }
    fn ignore_case(&self) -> bool {
        self.state.pipeline.jobs[self.job].strict_needs
    }
    fn upstream_failed(&self) -> bool {
        self.upstream_failed
    }
    fn env(&self, name: &str) -> Option<String> {
        self.state
            .opts
            .cond_env
            .get(&self.job)
            .and_then(|e| e.get(name).cloned())
    }
    fn var(&self, name: &str) -> Option<String> {
        self.state.opts.vars.get(name).cloned()
    }
    fn job_status(&self, job: &str) -> Option<String> {
        let j = self.state.pipeline.job_index(job)?;
        Some(self.state.jobs[j].status.expr_name().to_string())
    }
    fn upstream_succeeded(&self) -> bool {
        self.upstream_ok && !self.cancelled()
    }
    fn cancelled(&self) -> bool {
        self.state.cancelled == Some(CancelReason::User)
    }
}

/// A failed try, as the retry rule sees it.
#[derive(Debug, Clone, Copy)]
pub struct Retry {
    pub class: FailureClass,
    pub exit_code: Option<i32>,
    /// Tries made so far (the failed one included).
    pub tries: u32,
    /// Cancelled, timed out, or otherwise being stopped by trackside.
    pub stopping: bool,
    /// The knowledge base says running it again cannot pass (`retryable:
    /// false`): a class retried by default is then not retried for it.
    pub permanent: bool,
}

/// The one retry rule, for a job's attempts (here) and a step's tries (the
/// runner) alike: try again when the failure's class is one to retry (or
/// its exit code is), tries are left (`limit` retries after the first),
/// and nothing is stopping it.
pub fn may_retry(r: Retry, when: &[FailureClass], exit_codes: &[i32], limit: u32) -> bool {
    let by_class = when.contains(&r.class) && !(r.permanent && FailureClass::TRANSIENT.contains(&r.class));
    let wanted = by_class || r.exit_code.is_some_and(|e| exit_codes.contains(&e));
    wanted && r.tries <= limit && !r.stopping
}

/// A breaker's transition as the run's event.
fn breaker_event(t: super::breaker::Transition) -> Effect {
    Effect::Emit(EventKind::Breaker {
        dependency: t.dependency,
        phase: t.phase,
        reason: t.reason,
        probe_in_ms: t.probe_in.map(ms),
    })
}

#[cfg(test)]
mod tests;
