//! The view-model: what the screen shows, built only from engine events.
//!
//! `Model::apply` is a plain function of events, tested without a terminal.
//! Log lines are kept in a bounded window per attempt (the newest
//! [`LOG_WINDOW`] lines); older ones are read back from the run's log file
//! when someone scrolls that far, so memory stays flat however long a job
//! talks.

use std::collections::{HashMap, VecDeque};

use crate::protocol::{Event, EventKind, JobStatus, PlannedJob, RunSummary, Stream};
use crate::protocol::{FailureClass, When};

/// Lines per attempt kept in memory.
pub const LOG_WINDOW: usize = 5_000;

#[derive(Debug, Clone, PartialEq)]
pub struct AttemptView {
    pub number: u32,
    pub started_ts: u64,
    pub ended_ts: Option<u64>,
    pub exit_code: Option<i32>,
    pub failure_class: Option<FailureClass>,
    pub retry_delay_ms: Option<u64>,
    /// The higher-priority run that stopped it (`--preempt`).
    pub preempted_by: Option<String>,
}

#[derive(Debug, Clone)]
pub struct JobView {
    pub name: String,
    pub deps: Vec<usize>,
    pub dependents: Vec<usize>,
    pub level: usize,
    pub when: When,
    pub allow_failure: bool,
    pub steps: Vec<String>,
    /// A step names an image: a failed job can be opened in a shell.
    pub has_image: bool,
    /// Shown in its detail: a GitLab job's environment and tags.
    pub facts: Vec<(String, String)>,
    /// The swarm node its latest attempt runs or ran on.
    pub node: Option<String>,
    /// Who approved its gate so far (a gate that takes approvals by name).
    pub approvals: Vec<String>,
    /// Who its gate still waits for.
    pub waiting_for: Option<String>,
    /// Its definition was edited after it ran: a retry runs the edit.
    pub edited: bool,
    pub status: JobStatus,
    pub attempts: Vec<AttemptView>,
    pub duration_ms: Option<u64>,
    pub failure_class: Option<FailureClass>,
    pub reason: Option<String>,
    /// Why its latest failed attempt failed, per the knowledge base.
    pub diagnosis: Option<Box<crate::protocol::Diagnosis>>,
    pub flaky: bool,
    /// Served from the result cache under this key.
    pub cached: Option<String>,
    /// A deploy job's latest rollout status.
    pub rollout: Option<Box<crate::protocol::RolloutStatus>>,
    /// Every measurement of the rollout so far, for the charts.
    pub rollout_history: Vec<RolloutPoint>,
    /// When the current retry is due (ts, ms).
    pub retry_at: Option<u64>,
    /// Why it is queued although a slot may be free (a busy resource
    /// group, memory), until it starts.
    pub waiting: Option<String>,
    pub step: Option<String>,
    /// A GitHub job's annotations (`::error` and the like), as (level, text).
    pub annotations: Vec<(String, String)>,
    /// Its flake rate across past runs in percent, when history calls it flaky.
    pub flake_pct: Option<u8>,
    /// The test cases of its newest attempt that reported any (attempt, report).
    pub tests: Option<(u32, crate::protocol::TestReport)>,
}

impl JobView {
    fn new(p: &PlannedJob) -> Self {
        JobView {
            name: p.name.clone(),
            deps: Vec::new(),
            dependents: Vec::new(),
            level: p.level,
            when: p.when,
            allow_failure: p.allow_failure,
            steps: p.steps.clone(),
            has_image: p.has_image,
            facts: p.facts.clone(),
            node: None,
            approvals: Vec::new(),
            waiting_for: None,
            edited: false,
            status: JobStatus::Pending,
            attempts: Vec::new(),
            duration_ms: None,
            failure_class: None,
            reason: None,
            diagnosis: None,
            flaky: false,
            cached: None,
            rollout: None,
            rollout_history: Vec::new(),
            annotations: Vec::new(),
            retry_at: None,
            waiting: None,
            step: None,
            flake_pct: p.flake_pct,
            tests: None,
        }
    }

    pub fn attempt(&self) -> u32 {
        self.attempts.last().map_or(0, |a| a.number)
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum LineKind {
    Out,
    Err,
    /// A step boundary.
    Step,
}

#[derive(Debug, Clone, PartialEq)]
pub struct LogLine {
    pub ts: u64,
    pub kind: LineKind,
    pub text: String,
}

/// The newest lines of one attempt.
#[derive(Debug, Clone, Default)]
pub struct AttemptLog {
    pub lines: VecDeque<LogLine>,
    /// Lines dropped from the front of the window (still on disk).
    pub dropped: usize,
    /// Its groups (GitHub's `::group::`), in order: the title line's
    /// number, and the number of the first line after the group once it
    /// has ended. At most [`MAX_GROUPS`].
    pub groups: Vec<(usize, Option<usize>)>,
}

/// The most groups a log keeps (later ones are shown unfolded).
pub const MAX_GROUPS: usize = 10_000;

impl AttemptLog {
    pub fn total(&self) -> usize {
        self.dropped + self.lines.len()
    }

    /// The ended group whose title is line `i`: the lines after it in the
    /// group (`i + 1 ..end`).
    pub fn group_at(&self, i: usize) -> Option<std::ops::Range<usize>> {
        let k = self.groups.binary_search_by_key(&i, |g| g.0).ok()?;
        self.groups[k].1.map(|end| i + 1..end)
    }

    /// The ended group line `i` is inside of (not its title line).
    pub fn inside_group(&self, i: usize) -> Option<std::ops::Range<usize>> {
        let k = self.groups.partition_point(|g| g.0 < i).checked_sub(1)?;
        let (start, end) = self.groups[k];
        end.filter(|&e| i < e).map(|e| start + 1..e)
    }

    fn group(&mut self, line_no: usize, title: bool) {
        match (title, self.groups.last_mut()) {
            // A group ends where the next one starts, if nothing said so.
            (true, Some((_, end @ None))) => *end = Some(line_no),
            (false, Some((_, end @ None))) => {
                *end = Some(line_no);
                return;
            }
            (false, _) => return,
            _ => {}
        }
        if title && self.groups.len() < MAX_GROUPS && self.groups.last().is_none_or(|g| g.0 < line_no) {
            self.groups.push((line_no, None));
        }
    }
}

/// A message across the top of the screen (pipeline file changes).
#[derive(Debug, Clone, PartialEq)]
pub struct Banner {
    pub error: bool,
    pub lines: Vec<String>,
}

#[derive(Debug, Clone, Default)]
pub struct Model {
    pub run_id: String,
    pub pipeline: String,
    pub started_ts: Option<u64>,
    pub last_ts: u64,
    /// The engine's forecast from history: finish times (p50, p90), ms
    /// since the run started.
    pub forecast: Option<(u64, u64)>,
    pub max_parallel: usize,
    pub paused: bool,
    pub jobs: Vec<JobView>,
    pub index: HashMap<String, usize>,
    pub levels: Vec<Vec<usize>>,
    /// A stage's name per level, when the levels are a GitLab pipeline's
    /// stages (empty otherwise).
    pub stage_names: Vec<String>,
    pub critical_path: Vec<usize>,
    pub logs: HashMap<(usize, u32), AttemptLog>,
    pub finished: Option<RunSummary>,
    pub banner: Option<Banner>,
    /// The pipeline's recent runs before this one (the dashboard).
    pub history: Option<crate::protocol::view::PipelineStats>,
    /// What running jobs hold of the machine, as the engine last said.
    pub resources: Option<Held>,
    /// Circuit breakers that are open or half-open, by dependency.
    pub breakers: std::collections::BTreeMap<String, Tripped>,
    /// `-j auto` starts no job: memory is under pressure.
    pub held_by_pressure: bool,
    /// The swarm's nodes as last reported, how many more there are, and
    /// when (ts, ms) (`--executor swarm` only; the nodes view).
    pub cluster: Option<(Vec<crate::protocol::view::ClusterNode>, usize, u64)>,
}

/// A circuit breaker that is not closed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tripped {
    pub phase: crate::protocol::event::BreakerPhase,
    pub reason: String,
    /// Open: when it lets a probe through (ts, ms).
    pub probe_at: Option<u64>,
}

/// What running jobs hold of the machine (the header's "3/4 jobs, 5.1/7.0 GiB").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Held {
    pub running: usize,
    /// Bytes reserved by running jobs, and the budget.
    pub memory: u64,
    pub memory_budget: u64,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    pub passed: usize,
    pub failed: usize,
    pub running: usize,
    pub waiting: usize,
    pub pending: usize,
    pub skipped: usize,
    pub cancelled: usize,
}

/// One measurement of a rollout: (stable, canary) pairs.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RolloutPoint {
    /// Seconds since the deploy attempt started.
    pub t_s: f64,
    pub weight_pct: f64,
    pub error_pct: [Option<f64>; 2],
    pub p95_ms: [Option<f64>; 2],
}

impl Model {
    pub fn job(&self, name: &str) -> Option<usize> {
        self.index.get(name).copied()
    }

    pub fn apply(&mut self, ev: &Event) {
        self.last_ts = self.last_ts.max(ev.ts);
        match &ev.kind {
            // The decision is in the job's log already; the record keeps the event.
            EventKind::RolloutDecision { .. } | EventKind::Steered { .. } => {}
            EventKind::Approved {
                job, by, waiting_for, ..
            } => self.with(job, |j| {
                j.approvals.push(by.clone());
                j.waiting_for = waiting_for.clone();
            }),
            EventKind::Annotation { job, level, .. } => {
                let text = crate::headless::annotation_text(&ev.kind).unwrap_or_default();
                let level = level.clone();
                self.with(job, |j| j.annotations.push((level, text)));
            }
            EventKind::Rollout { job, status } => self.with(job, |j| {
                let t_s = ev.ts.saturating_sub(j.attempts.last().map_or(ev.ts, |a| a.started_ts)) as f64 / 1000.0;
                j.rollout_history.push(RolloutPoint {
                    t_s,
                    weight_pct: f64::from(status.weight) / 10.0,
                    error_pct: status.recent_error_rate.map(|e| e.map(|e| e * 100.0)),
                    p95_ms: status.recent_p95_ms,
                });
                j.rollout = Some(status.clone());
            }),
            EventKind::History { stats } => self.history = Some(stats.clone()),
            EventKind::TestsReported { job, attempt, report } => {
                self.with(job, |j| j.tests = Some((*attempt, report.clone())));
            }
            EventKind::RunStarted {
                run_id,
                pipeline,
                max_parallel,
                ..
            } => {
                self.run_id = run_id.clone();
                self.pipeline = pipeline.clone();
                self.max_parallel = *max_parallel;
                self.started_ts.get_or_insert(ev.ts);
            }
            EventKind::PlanChanged {
                jobs,
                critical_path,
                stages,
            } => self.set_plan(jobs, critical_path, stages),
            EventKind::JobKept { job, .. } => self.with(job, |j| {
                j.status = JobStatus::Succeeded;
                j.reason = Some("kept: it passed before trackside stopped".into());
            }),
            EventKind::Resumed { .. } => {}
            EventKind::JobQueued { job } => self.with(job, |j| {
                j.status = JobStatus::Ready;
                j.retry_at = None;
                j.waiting = None;
            }),
            EventKind::JobPlaced { job, node, .. } => {
                self.with(job, |j| j.node = Some(node.clone()));
            }
            EventKind::ClusterNodes { nodes, omitted } => self.cluster = Some((nodes.clone(), *omitted, ev.ts)),
            EventKind::JobStarted { job, attempt } => {
                self.with(job, |j| {
                    j.node = None;
                    j.status = JobStatus::Running;
                    j.waiting = None;
                    j.edited = false;
                    j.retry_at = None;
                    j.attempts.push(AttemptView {
                        number: *attempt,
                        started_ts: ev.ts,
                        ended_ts: None,
                        exit_code: None,
                        failure_class: None,
                        retry_delay_ms: None,
                        preempted_by: None,
                    });
                });
            }
            EventKind::StepStarted {
                job,
                attempt,
                step,
                line_no,
                ..
            } => {
                self.with(job, |j| j.step = Some(step.clone()));
                self.skip_to(job, *attempt, *line_no);
                // A group does not reach past its step.
                if let Some(&j) = self.index.get(job.as_str())
                    && let Some(log) = self.logs.get_mut(&(j, *attempt))
                {
                    log.group(usize::try_from(*line_no).unwrap_or(usize::MAX), false);
                }
                self.push_line(job, *attempt, ev.ts, LineKind::Step, step.clone());
            }
            EventKind::LogLine {
                job,
                attempt,
                stream,
                line,
                line_no,
                ..
            } => {
                let kind = match stream {
                    Stream::Stdout => LineKind::Out,
                    Stream::Stderr => LineKind::Err,
                };
                self.skip_to(job, *attempt, *line_no);
                self.push_line(job, *attempt, ev.ts, kind, line.clone());
            }
            EventKind::StepFinished { .. } => {}
            EventKind::LogGroup {
                job,
                attempt,
                line_no,
                title,
            } => {
                if let Some(&j) = self.index.get(job.as_str()) {
                    let line_no = usize::try_from(*line_no).unwrap_or(usize::MAX);
                    self.logs
                        .entry((j, *attempt))
                        .or_default()
                        .group(line_no, title.is_some());
                }
            }
            EventKind::JobFinished {
                job,
                status,
                exit_code,
                failure_class,
                duration_ms,
                flaky,
                message,
                cached,
                diagnosis,
                ..
            } => self.with(job, |j| {
                j.status = *status;
                j.diagnosis = diagnosis.clone();
                j.duration_ms = Some(*duration_ms);
                j.failure_class = *failure_class;
                j.flaky = *flaky;
                j.cached = cached.clone();
                j.reason = message.clone();
                j.step = None;
                if let Some(a) = j.attempts.last_mut().filter(|a| a.ended_ts.is_none()) {
                    a.ended_ts = Some(ev.ts);
                    a.exit_code = *exit_code;
                    a.failure_class = *failure_class;
                }
            }),
            EventKind::JobDelayed { job, start_in_ms } => self.with(job, |j| {
                j.status = JobStatus::Delayed;
                j.retry_at = Some(ev.ts + start_in_ms);
            }),
            EventKind::JobRetrying {
                job,
                delay_ms,
                failure_class,
                exit_code,
                diagnosis,
                ..
            } => self.with(job, |j| {
                j.status = JobStatus::Retrying;
                j.diagnosis = diagnosis.clone();
                j.failure_class = Some(*failure_class);
                j.retry_at = Some(ev.ts + delay_ms);
                j.step = None;
                if let Some(a) = j.attempts.last_mut() {
                    a.ended_ts = Some(ev.ts);
                    a.exit_code = *exit_code;
                    a.failure_class = Some(*failure_class);
                    a.retry_delay_ms = Some(*delay_ms);
                }
            }),
            EventKind::JobSkipped { job, reason } => self.with(job, |j| {
                j.status = JobStatus::Skipped;
                j.reason = Some(reason.clone());
            }),
            EventKind::GateWaiting { job } => self.with(job, |j| j.status = JobStatus::WaitingApproval),
            EventKind::JobWaiting { job, reason } => self.with(job, |j| j.waiting = Some(reason.clone())),
            // Queued again (its `JobQueued` came first): the stopped
            // attempt ends, and why it waits says what happened.
            EventKind::JobPreempted { job, by, .. } => self.with(job, |j| {
                j.waiting = Some(format!("preempted by run {by} (higher priority); queued again"));
                j.step = None;
                if let Some(a) = j.attempts.last_mut().filter(|a| a.ended_ts.is_none()) {
                    a.ended_ts = Some(ev.ts);
                    a.failure_class = Some(FailureClass::Cancelled);
                    a.preempted_by = Some(by.clone());
                }
            }),
            EventKind::Parallelism { limit, admit, .. } => {
                self.max_parallel = *limit;
                self.held_by_pressure = !*admit;
            }
            EventKind::Breaker {
                dependency,
                phase,
                reason,
                probe_in_ms,
            } => match phase {
                crate::protocol::event::BreakerPhase::Closed => {
                    self.breakers.remove(dependency);
                }
                phase => {
                    self.breakers.insert(
                        dependency.clone(),
                        Tripped {
                            phase: *phase,
                            reason: reason.clone(),
                            probe_at: probe_in_ms.map(|ms| ev.ts.saturating_add(ms)),
                        },
                    );
                }
            },
            EventKind::Resources {
                running,
                limit,
                memory,
                memory_budget,
                ..
            } => {
                self.max_parallel = *limit;
                self.resources = Some(Held {
                    running: *running,
                    memory: *memory,
                    memory_budget: *memory_budget,
                });
            }
            EventKind::JobReset { job, .. } => self.with(job, |j| {
                j.status = JobStatus::Pending;
                j.rollout = None;
                j.rollout_history.clear();
                j.reason = None;
                j.failure_class = None;
                j.diagnosis = None;
                j.flaky = false;
                j.cached = None;
                j.duration_ms = None;
            }),
            EventKind::PipelineChanged { changed, .. } => {
                for name in changed {
                    self.with(name, |j| j.edited = j.status.is_terminal());
                }
                self.banner = Some(Banner {
                    error: false,
                    lines: vec![crate::headless::change_summary(&ev.kind)],
                });
            }
            EventKind::PipelineInvalid { file, diagnostics } => {
                // The file by its name: an absolute path would take the line.
                let short = std::path::Path::new(file)
                    .file_name()
                    .map_or_else(|| file.clone(), |n| n.to_string_lossy().into_owned());
                let mut lines = vec![format!(
                    "{short} has errors; the run goes on unchanged (Esc hides this):"
                )];
                const SHOWN: usize = 2;
                for d in diagnostics.iter().take(SHOWN) {
                    lines.push(d.replacen(file.as_str(), &short, 1));
                }
                if diagnostics.len() > SHOWN {
                    lines.push(format!(
                        "+{} more; `trackside validate {short}` lists them all",
                        diagnostics.len() - SHOWN
                    ));
                }
                self.banner = Some(Banner { error: true, lines });
            }
            EventKind::SchedulingPaused => self.paused = true,
            EventKind::SchedulingResumed => self.paused = false,
            EventKind::Forecast { p50_ms, p90_ms, .. } => self.forecast = Some((*p50_ms, *p90_ms)),
            EventKind::RunFinished { summary } => {
                // Final statuses (jobs behind a gate become skipped) come with it.
                for js in &summary.jobs {
                    self.with(&js.name, |j| {
                        j.status = js.status;
                        if js.reason.is_some() {
                            j.reason = js.reason.clone();
                        }
                        // A failure the run allowed (a quarantined test) shows as such.
                        if js.status == JobStatus::Failed {
                            j.allow_failure = js.allow_failure;
                        }
                    });
                }
                self.finished = Some(summary.clone());
            }
        }
        if !matches!(ev.kind, EventKind::RunFinished { .. } | EventKind::LogLine { .. }) && self.finished.is_some() {
            // Activity after the end: the run was reopened (retry, late approval).
            if matches!(
                ev.kind,
                EventKind::JobReset { .. } | EventKind::JobQueued { .. } | EventKind::JobStarted { .. }
            ) {
                self.finished = None;
            }
        }
    }

    fn with(&mut self, job: &str, f: impl FnOnce(&mut JobView)) {
        if let Some(&i) = self.index.get(job) {
            f(&mut self.jobs[i]);
        }
    }

    fn set_plan(&mut self, planned: &[PlannedJob], critical: &[String], stages: &[String]) {
        let old: HashMap<String, JobView> = self.jobs.drain(..).map(|j| (j.name.clone(), j)).collect();
        let mut old = old;
        self.index = planned.iter().enumerate().map(|(i, p)| (p.name.clone(), i)).collect();
        self.jobs = planned
            .iter()
            .map(|p| {
                let mut j = old.remove(&p.name).unwrap_or_else(|| JobView::new(p));
                j.level = p.level;
                j.when = p.when;
                j.allow_failure = p.allow_failure;
                j.steps = p.steps.clone();
                j.has_image = p.has_image;
                j.facts = p.facts.clone();
                j.flake_pct = p.flake_pct;
                j.deps.clear();
                j.dependents.clear();
                j
            })
            .collect();
        for (i, p) in planned.iter().enumerate() {
            for d in &p.depends_on {
                if let Some(&di) = self.index.get(d) {
                    self.jobs[i].deps.push(di);
                    self.jobs[di].dependents.push(i);
                }
            }
        }
        // A GitLab pipeline: a column per stage, as GitLab's pipeline graph.
        self.stage_names.clear();
        let column: Vec<Option<usize>> = planned
            .iter()
            .map(|p| p.stage.as_ref().and_then(|s| stages.iter().position(|x| x == s)))
            .collect();
        if !stages.is_empty() && column.iter().all(Option::is_some) {
            let mut used: Vec<usize> = column.iter().flatten().copied().collect();
            used.sort_unstable();
            used.dedup();
            for (j, c) in self.jobs.iter_mut().zip(&column) {
                if let Some(c) = c {
                    j.level = used.iter().position(|u| u == c).unwrap_or(0);
                }
            }
            self.stage_names = used.iter().map(|&u| stages[u].clone()).collect();
        }
        let depth = self.jobs.iter().map(|j| j.level + 1).max().unwrap_or(0);
        self.levels = vec![Vec::new(); depth];
        for (i, j) in self.jobs.iter().enumerate() {
            self.levels[j.level].push(i);
        }
        self.critical_path = critical.iter().filter_map(|n| self.index.get(n).copied()).collect();
    }

    /// Lines of the attempt this front-end never received (it attached
    /// late, or fell behind) are on disk: the window starts after them.
    fn skip_to(&mut self, job: &str, attempt: u32, line_no: u64) {
        let Some(&j) = self.index.get(job) else { return };
        let log = self.logs.entry((j, attempt)).or_default();
        let line_no = usize::try_from(line_no).unwrap_or(usize::MAX);
        if line_no > log.total() {
            log.lines.clear();
            log.dropped = line_no;
        }
    }

    fn push_line(&mut self, job: &str, attempt: u32, ts: u64, kind: LineKind, text: String) {
        let Some(&j) = self.index.get(job) else { return };
        let log = self.logs.entry((j, attempt)).or_default();
        log.lines.push_back(LogLine { ts, kind, text });
        if log.lines.len() > LOG_WINDOW {
            log.lines.pop_front();
            log.dropped += 1;
        }
    }

    pub fn counts(&self) -> Counts {
        let mut c = Counts::default();
        for j in &self.jobs {
            match j.status {
                JobStatus::Succeeded => c.passed += 1,
                JobStatus::Failed => c.failed += 1,
                JobStatus::Running | JobStatus::Retrying => c.running += 1,
                JobStatus::WaitingApproval | JobStatus::Delayed => c.waiting += 1,
                JobStatus::Pending | JobStatus::Ready => c.pending += 1,
                JobStatus::Skipped => c.skipped += 1,
                JobStatus::Cancelled => c.cancelled += 1,
            }
        }
        c
    }

    pub fn running_jobs(&self) -> usize {
        self.jobs.iter().filter(|j| j.status == JobStatus::Running).count()
    }

    /// Whether anything is still active (quitting would cancel it).
    pub fn is_active(&self) -> bool {
        self.jobs
            .iter()
            .any(|j| matches!(j.status, JobStatus::Running | JobStatus::Ready | JobStatus::Retrying))
    }

    /// Elapsed time of a job: live while it runs.
    pub fn job_elapsed(&self, j: usize, now: u64) -> Option<u64> {
        let job = &self.jobs[j];
        match job.status {
            JobStatus::Running => job.attempts.last().map(|a| now.saturating_sub(a.started_ts)),
            _ => job.duration_ms,
        }
    }

    /// Remaining time along the longest unfinished path, from durations seen
    /// so far (the mean of finished jobs stands in for jobs not yet run).
    /// Never a time lower than what is certainly left: a run that waits for
    /// an approval has no time, and a running job that has outlived its
    /// estimate makes the estimate unknown, not zero.
    pub fn eta(&self, now: u64) -> Eta {
        // A manual job, or a rollout at a gate only a person's promote passes.
        let waiting = |j: &JobView| {
            (j.status == JobStatus::WaitingApproval && !j.allow_failure)
                || (j.status == JobStatus::Running && j.rollout.as_ref().is_some_and(|r| r.phase == "gate"))
        };
        if self.jobs.iter().any(waiting) {
            return Eta::WaitingApproval;
        }
        if let (Some((p50, p90)), Some(start)) = (self.forecast, self.started_ts) {
            let elapsed = now.saturating_sub(start);
            return Eta::Forecast {
                p50_left: p50.saturating_sub(elapsed),
                p90_left: p90.saturating_sub(elapsed),
            };
        }
        let finished: Vec<u64> = self
            .jobs
            .iter()
            .filter(|j| j.status == JobStatus::Succeeded)
            .filter_map(|j| j.duration_ms)
            .collect();
        if finished.is_empty() {
            return Eta::Unknown;
        }
        let mean = finished.iter().sum::<u64>() / finished.len() as u64;
        let mut overdue = false;
        // Levels are a topological order; compute remaining time to the end.
        let mut rest = vec![0u64; self.jobs.len()];
        for level in self.levels.iter().rev() {
            for &j in level {
                let job = &self.jobs[j];
                let own = match job.status {
                    s if s.is_terminal() => 0,
                    JobStatus::Running => {
                        let elapsed = self.job_elapsed(j, now).unwrap_or(0);
                        overdue |= elapsed >= mean;
                        mean.saturating_sub(elapsed)
                    }
                    _ => mean,
                };
                let after = job.dependents.iter().map(|&d| rest[d]).max().unwrap_or(0);
                rest[j] = own + after;
            }
        }
        let left = rest.into_iter().max().unwrap_or(0);
        if overdue || (left == 0 && self.jobs.iter().any(|j| !j.status.is_terminal())) {
            Eta::Overdue
        } else {
            Eta::Left(left)
        }
    }

    /// Why a job is where it is, for the detail pane.
    pub fn why(&self, j: usize) -> String {
        let job = &self.jobs[j];
        let names = |ids: &[usize]| {
            ids.iter()
                .map(|&d| self.jobs[d].name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        };
        match job.status {
            JobStatus::Pending => {
                let waiting: Vec<usize> = job
                    .deps
                    .iter()
                    .copied()
                    .filter(|&d| !self.jobs[d].status.is_terminal())
                    .collect();
                if waiting.is_empty() {
                    "waiting to be scheduled".into()
                } else {
                    format!("waiting for {}", names(&waiting))
                }
            }
            JobStatus::Ready if self.paused => "queued; scheduling is paused (p resumes)".into(),
            JobStatus::Ready if self.held_by_pressure => {
                "queued: no job starts while memory is under pressure (-j auto)".into()
            }
            JobStatus::Ready => match &job.waiting {
                Some(why) => format!("queued; {why}"),
                None => format!("queued: all {} slots are busy", self.max_parallel),
            },
            JobStatus::Running => match &job.step {
                Some(s) => format!("running step `{s}`"),
                None => "running".into(),
            },
            JobStatus::Retrying => match job.failure_class {
                Some(c) => format!("failed ({c}); retry scheduled"),
                None => "retry scheduled".into(),
            },
            JobStatus::WaitingApproval => "manual gate: press a to approve".into(),
            JobStatus::Delayed => "delayed (when: delayed): press a to start it now".into(),
            JobStatus::Skipped | JobStatus::Cancelled | JobStatus::Failed => {
                job.reason.clone().unwrap_or_else(|| job.status.expr_name().to_string())
            }
            JobStatus::Succeeded if job.flaky => "passed after a retry (FLAKY)".into(),
            JobStatus::Succeeded if job.cached.is_some() => format!(
                "CACHED: inputs unchanged, result reused (key {})",
                job.cached.as_deref().map_or("", |k| &k[..16.min(k.len())])
            ),
            JobStatus::Succeeded if job.reason.is_some() => job.reason.clone().unwrap_or_default(),
            JobStatus::Succeeded => "passed".into(),
        }
    }

    /// Jobs upstream and downstream of `j` (for highlighting its path).
    pub fn related(&self, j: usize) -> Vec<bool> {
        let mut mark = vec![false; self.jobs.len()];
        for edges in [true, false] {
            let mut stack = vec![j];
            while let Some(k) = stack.pop() {
                let next = if edges {
                    &self.jobs[k].deps
                } else {
                    &self.jobs[k].dependents
                };
                for &n in next {
                    if !mark[n] {
                        mark[n] = true;
                        stack.push(n);
                    }
                }
            }
        }
        mark
    }
}

/// What the header says of the time left.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Eta {
    /// Nothing has finished yet: no basis for a guess.
    Unknown,
    /// The run cannot end before a manual gate is approved.
    WaitingApproval,
    /// A running job has outlived the estimate: more than it said, how much unknown.
    Overdue,
    /// About this many milliseconds (from this run's durations: there is
    /// no history).
    Left(u64),
    /// The forecast from history: the median and p90 time left (0 once
    /// passed; the engine's next forecast moves them on).
    Forecast { p50_left: u64, p90_left: u64 },
}

#[cfg(test)]
mod tests {
    use super::*;

    pub fn ev(ts: u64, kind: EventKind) -> Event {
        Event { seq: 0, ts, kind }
    }

    fn planned(name: &str, deps: &[&str], level: usize) -> PlannedJob {
        PlannedJob {
            name: name.into(),
            depends_on: deps.iter().map(|d| d.to_string()).collect(),
            level,
            when: When::OnSuccess,
            allow_failure: false,
            steps: vec!["s".into()],
            has_image: false,
            stage: None,
            facts: Vec::new(),
            flake_pct: None,
        }
    }

    fn model() -> Model {
        let mut m = Model::default();
        m.apply(&ev(
            1_000,
            EventKind::RunStarted {
                run_id: "r1".into(),
                pipeline: "p".into(),
                jobs: vec!["build".into(), "test".into()],
                max_parallel: 2,
            },
        ));
        m.apply(&ev(
            1_000,
            EventKind::PlanChanged {
                jobs: vec![planned("build", &[], 0), planned("test", &["build"], 1)],
                critical_path: vec!["build".into(), "test".into()],
                stages: Vec::new(),
            },
        ));
        m
    }

    #[test]
    fn a_preempted_attempt_says_by_whom_and_its_job_waits_again() {
        let mut m = model();
        m.apply(&ev(
            1_100,
            EventKind::JobStarted {
                job: "build".into(),
                attempt: 1,
            },
        ));
        m.apply(&ev(2_000, EventKind::JobQueued { job: "build".into() }));
        m.apply(&ev(
            2_000,
            EventKind::JobPreempted {
                job: "build".into(),
                attempt: 1,
                by: "r9".into(),
            },
        ));
        let build = &m.jobs[m.job("build").expect("build")];
        assert_eq!(build.status, JobStatus::Ready);
        assert_eq!(build.attempts[0].preempted_by.as_deref(), Some("r9"));
        assert_eq!(build.attempts[0].ended_ts, Some(2_000));
        assert_eq!(
            build.waiting.as_deref(),
            Some("preempted by run r9 (higher priority); queued again")
        );
    }

    #[test]
    fn a_job_shows_the_swarm_node_of_its_latest_attempt() {
        let mut m = model();
        let started = |attempt| EventKind::JobStarted {
            job: "build".into(),
            attempt,
        };
        let placed = |attempt, node: &str| EventKind::JobPlaced {
            job: "build".into(),
            attempt,
            node: node.into(),
        };
        m.apply(&ev(1_000, started(1)));
        assert_eq!(m.jobs[0].node, None, "not placed yet");
        m.apply(&ev(1_100, placed(1, "10.231.0.2 (pool=b)")));
        assert_eq!(m.jobs[0].node.as_deref(), Some("10.231.0.2 (pool=b)"));
        // A retry is placed anew: the lost node is not shown for it.
        m.apply(&ev(5_000, started(2)));
        assert_eq!(m.jobs[0].node, None);
        m.apply(&ev(5_100, placed(2, "10.231.0.1 (pool=a)")));
        assert_eq!(m.jobs[0].node.as_deref(), Some("10.231.0.1 (pool=a)"));
    }

    #[test]
    fn annotations_are_kept_with_their_job() {
        let mut m = model();
        m.apply(&ev(
            2_000,
            EventKind::Annotation {
                job: "test".into(),
                step: "Run unit tests".into(),
                level: "error".into(),
                message: "sub returned 8".into(),
                title: None,
                file: Some("calc.py".into()),
                line: Some(6),
                col: None,
            },
        ));
        let test = &m.jobs[m.job("test").expect("test")];
        assert_eq!(
            test.annotations,
            [("error".to_string(), "calc.py:6: sub returned 8".to_string())]
        );
        assert!(m.jobs[m.job("build").expect("build")].annotations.is_empty());
    }

    #[test]
    fn events_drive_statuses_attempts_and_reasons() {
        let mut m = model();
        assert_eq!(m.levels, vec![vec![0], vec![1]]);
        assert_eq!(m.why(1), "waiting for build");
        m.apply(&ev(
            1_100,
            EventKind::JobStarted {
                job: "build".into(),
                attempt: 1,
            },
        ));
        assert_eq!(m.job_elapsed(0, 1_600), Some(500));
        m.apply(&ev(
            1_200,
            EventKind::JobRetrying {
                job: "build".into(),
                attempt: 2,
                delay_ms: 500,
                failure_class: FailureClass::Network,
                exit_code: Some(6),
                diagnosis: None,
            },
        ));
        assert_eq!(m.jobs[0].status, JobStatus::Retrying);
        assert_eq!(m.jobs[0].retry_at, Some(1_700));
        m.apply(&ev(
            1_700,
            EventKind::JobStarted {
                job: "build".into(),
                attempt: 2,
            },
        ));
        m.apply(&ev(
            1_900,
            EventKind::JobFinished {
                job: "build".into(),
                attempt: 2,
                status: JobStatus::Succeeded,
                exit_code: Some(0),
                failure_class: None,
                duration_ms: 800,
                flaky: true,
                message: None,
                cached: None,
                diagnosis: None,
            },
        ));
        assert_eq!(m.jobs[0].attempts.len(), 2);
        assert_eq!(m.jobs[0].attempts[0].failure_class, Some(FailureClass::Network));
        assert!(m.jobs[0].flaky);
        m.apply(&ev(
            2_000,
            EventKind::JobSkipped {
                job: "test".into(),
                reason: "blocked by x".into(),
            },
        ));
        assert_eq!(m.why(1), "blocked by x");
        assert_eq!(m.counts().passed, 1);
        assert_eq!(m.counts().skipped, 1);
    }

    #[test]
    fn log_window_is_bounded_and_counts_dropped_lines() {
        let mut m = model();
        for i in 0..(LOG_WINDOW + 10) {
            m.apply(&ev(
                2_000,
                EventKind::LogLine {
                    job: "build".into(),
                    attempt: 1,
                    step: "s".into(),
                    stream: Stream::Stdout,
                    line: format!("line {i}"),
                    line_no: i as u64,
                },
            ));
        }
        let log = &m.logs[&(0, 1)];
        assert_eq!(log.lines.len(), LOG_WINDOW);
        assert_eq!(log.dropped, 10);
        assert_eq!(log.lines[0].text, "line 10");
    }

    #[test]
    fn lines_never_received_count_as_on_disk() {
        let mut m = model();
        let line = |n: u64| {
            ev(
                2_000,
                EventKind::LogLine {
                    job: "build".into(),
                    attempt: 1,
                    step: "s".into(),
                    stream: Stream::Stdout,
                    line: format!("line {n}"),
                    line_no: n,
                },
            )
        };
        // Attached late: the first line seen is the attempt's 500th.
        m.apply(&line(500));
        m.apply(&line(501));
        let log = &m.logs[&(0, 1)];
        assert_eq!((log.dropped, log.lines.len()), (500, 2));
        assert_eq!(log.total(), 502);
        // Fell behind: lines 502..=599 never came; the window starts again at 600.
        m.apply(&line(600));
        let log = &m.logs[&(0, 1)];
        assert_eq!((log.dropped, log.lines.len()), (600, 1));
        assert_eq!(log.lines[0].text, "line 600");
    }

    #[test]
    fn eta_follows_the_longest_unfinished_path() {
        let mut m = model();
        assert_eq!(m.eta(1_000), Eta::Unknown);
        m.apply(&ev(
            1_000,
            EventKind::JobStarted {
                job: "build".into(),
                attempt: 1,
            },
        ));
        m.apply(&ev(
            3_000,
            EventKind::JobFinished {
                job: "build".into(),
                attempt: 1,
                status: JobStatus::Succeeded,
                exit_code: Some(0),
                failure_class: None,
                duration_ms: 2_000,
                flaky: false,
                message: None,
                cached: None,
                diagnosis: None,
            },
        ));
        assert_eq!(m.eta(3_000), Eta::Left(2_000), "one job of mean duration left");
        m.apply(&ev(
            3_000,
            EventKind::JobStarted {
                job: "test".into(),
                attempt: 1,
            },
        ));
        assert_eq!(m.eta(4_000), Eta::Left(1_000));
        assert_eq!(
            m.eta(18_000),
            Eta::Overdue,
            "a job running past its estimate: unknown, never 00:00"
        );
    }

    #[test]
    fn related_marks_upstream_and_downstream() {
        let m = model();
        assert_eq!(m.related(0), vec![false, true]);
        assert_eq!(m.related(1), vec![true, false]);
    }
}
