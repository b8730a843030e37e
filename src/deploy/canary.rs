//! The canary rollout as a pure state machine: `handle(input, now) -> effects`.
//!
//! The machine decides; whoever runs it performs the effects (start the
//! canary, move traffic, run an analysis, stop the canary) and feeds back
//! what happened. Time is an input (`now`, since the rollout began), so
//! timed pauses, gate timeouts and the progress deadline are tested without
//! waiting. Weights are in tenths of a percent (0..=1000).
//!
//! States are explicit: `Aborted` means the canary got 0% and stable is
//! serving; `Degraded` means stable itself is failing its health checks,
//! which no rollout action fixes.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::judge::VerdictClass;
use crate::protocol::identity::Approver;

/// Full traffic, in tenths of a percent.
pub const FULL: u32 = 1000;

pub use crate::pipeline::model::{GateAction, RolloutStep as Step};

impl Phase {
    /// The phase's name in statuses and events: `gate`, `held`, `aborted`, ...
    pub fn name(&self) -> &'static str {
        match self {
            Phase::NotStarted => "not_started",
            Phase::StartingCanary => "starting_canary",
            Phase::Running => "running",
            Phase::Paused { .. } => "paused",
            Phase::Gate { .. } => "gate",
            Phase::Analyzing { .. } => "analyzing",
            Phase::Held { .. } => "held",
            Phase::Completed => "completed",
            Phase::Aborted { .. } => "aborted",
            Phase::RolledBack { .. } => "rolled_back",
            Phase::Degraded { .. } => "degraded",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CanarySpec {
    pub steps: Vec<Step>,
    /// Abort when no step completes for this long (manual gates excepted).
    pub progress_deadline: Duration,
    /// How long an aborted canary keeps running (at 0%) before it is stopped.
    pub abort_scale_down_delay: Duration,
    /// Who may pass a step by hand, and how many must.
    pub approvers: Option<crate::pipeline::model::Approvers>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "phase")]
pub enum Phase {
    NotStarted,
    /// Canary replicas started, waiting for their health checks.
    StartingCanary,
    /// Executing step `step`.
    Running,
    Paused {
        until: Duration,
    },
    Gate {
        deadline: Option<Duration>,
        reason: String,
    },
    Analyzing {
        runs_left: u32,
        next_at: Duration,
        /// Failed runs so far (within the step's failure limit).
        failures: u32,
        /// Runs in a row without a measurement (the metrics provider failed).
        #[serde(default)]
        errors: u32,
    },
    /// Stopped by a person; timers are frozen.
    Held {
        remaining: Option<Duration>,
        was: Box<Phase>,
    },
    Completed,
    /// Canary at 0%, stable serving.
    Aborted {
        reason: String,
    },
    /// After completion, traffic went back to the previous revision.
    RolledBack {
        reason: String,
    },
    /// Stable is failing its own health checks.
    Degraded {
        reason: String,
    },
}

#[derive(Debug, Clone, PartialEq)]
pub enum Input {
    Start,
    /// Time passed (the runner calls this at `next_wake` or on any input).
    Tick,
    CanaryHealthy,
    CanaryUnhealthy(String),
    StableUnhealthy(String),
    AnalysisDone {
        class: VerdictClass,
        why: String,
    },
    /// An analysis run got no measurement: the metrics provider failed.
    AnalysisError(String),
    Promote {
        by: Approver,
    },
    PromoteFull {
        by: Approver,
    },
    Abort {
        by: String,
    },
    Retry {
        by: String,
    },
    Rollback {
        by: String,
    },
    Pause {
        by: String,
    },
    Resume {
        by: String,
    },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "effect")]
pub enum Effect {
    StartCanary,
    SetWeight {
        weight: u32,
    },
    RunAnalysis,
    /// Stop the canary's replicas after this delay (it is at 0% already).
    StopCanary {
        after: Duration,
    },
    /// The canary becomes the new stable revision.
    MakeCanaryStable,
    /// Route to the previous revision again and make it stable.
    RestorePrevious,
    /// Something for people and the audit log.
    Note {
        text: String,
        by: Option<String>,
    },
}

/// Where a restarted rollout takes up a gate a previous trackside waited at.
#[derive(Debug, Clone)]
struct Resume {
    step: usize,
    weight: u32,
    approvals: Vec<String>,
}

#[derive(Debug, Clone)]
pub struct Canary {
    pub spec: CanarySpec,
    pub phase: Phase,
    /// Index of the current step.
    pub step: usize,
    /// Weight last asked of the router.
    pub weight: u32,
    now: Duration,
    last_progress: Duration,
    /// Where an interrupted rollout stood: (step, weight), taken up once
    /// the canary is healthy again.
    resume: Option<Resume>,
    /// Who has approved passing the current step by hand (with a policy).
    pub approvals: Vec<String>,
}

impl Canary {
    pub fn new(spec: CanarySpec) -> Self {
        Canary {
            spec,
            phase: Phase::NotStarted,
            step: 0,
            weight: 0,
            now: Duration::ZERO,
            last_progress: Duration::ZERO,
            resume: None,
            approvals: Vec::new(),
        }
    }

    /// A rollout that picks up at `step` with the canary at `weight`
    /// and the `approvals` its gate had (a gate a previous trackside was
    /// waiting at).
    pub fn resuming(spec: CanarySpec, step: usize, weight: u32, approvals: Vec<String>) -> Self {
        let mut c = Canary::new(spec);
        c.resume = Some(Resume {
            step: step.min(c.spec.steps.len()),
            weight: weight.min(FULL),
            approvals,
        });
        c
    }

    /// Whether the rollout is over (completed, aborted, rolled back).
    pub fn is_settled(&self) -> bool {
        matches!(
            self.phase,
            Phase::Completed | Phase::Aborted { .. } | Phase::RolledBack { .. } | Phase::NotStarted
        )
    }

    /// When the runner must call `Tick` next, if anything is timed.
    pub fn next_wake(&self) -> Option<Duration> {
        let deadline = self.progress_deadline_at();
        let timer = match &self.phase {
            Phase::Paused { until } => Some(*until),
            Phase::Gate { deadline, .. } => *deadline,
            Phase::Analyzing { next_at, .. } => Some(*next_at),
            _ => None,
        };
        match (timer, deadline) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    fn progress_deadline_at(&self) -> Option<Duration> {
        match self.phase {
            Phase::StartingCanary | Phase::Running | Phase::Paused { .. } | Phase::Analyzing { .. } => {
                Some(self.last_progress + self.spec.progress_deadline)
            }
            _ => None,
        }
    }

    fn active(&self) -> bool {
        !self.is_settled() && !matches!(self.phase, Phase::Degraded { .. })
    }

    pub fn handle(&mut self, input: Input, now: Duration) -> Vec<Effect> {
        self.now = now;
        let mut fx = Vec::new();
        match input {
            Input::Start | Input::Retry { .. } if self.is_settled() && self.phase != Phase::Completed => {
                if let Input::Retry { by } = &input {
                    note(&mut fx, "retry: starting the rollout again", Some(by));
                }
                self.step = 0;
                self.last_progress = now;
                self.phase = Phase::StartingCanary;
                fx.push(Effect::StartCanary);
            }
            Input::Start => {}
            Input::Retry { by } => self.ignored("retry", &by, &mut fx),
            Input::CanaryHealthy if self.phase == Phase::StartingCanary => {
                self.last_progress = now;
                self.phase = Phase::Running;
                if let Some(Resume {
                    step,
                    weight,
                    approvals,
                }) = self.resume.take()
                {
                    let kept = if approvals.is_empty() {
                        String::new()
                    } else {
                        format!(" (its approvals kept: {})", approvals.join(", "))
                    };
                    note(
                        &mut fx,
                        &format!("resuming at step {} of {}{kept}", step + 1, self.spec.steps.len()),
                        None,
                    );
                    self.step = step;
                    self.weight = weight;
                    self.approvals = approvals;
                    fx.push(Effect::SetWeight { weight });
                }
                self.run_steps(&mut fx);
            }
            Input::CanaryHealthy => {}
            Input::CanaryUnhealthy(why) if self.active() => {
                self.abort(&format!("canary unhealthy: {why}"), None, &mut fx);
            }
            Input::StableUnhealthy(why) if !matches!(self.phase, Phase::Completed | Phase::RolledBack { .. }) => {
                note(&mut fx, &format!("stable unhealthy: {why}; the rollout holds"), None);
                self.phase = Phase::Degraded { reason: why };
            }
            Input::CanaryUnhealthy(_) | Input::StableUnhealthy(_) => {}
            Input::Tick => self.tick(&mut fx),
            Input::AnalysisDone { class, why } => self.analysis_done(class, &why, &mut fx),
            Input::AnalysisError(why) => self.analysis_error(&why, &mut fx),
            Input::Promote { by } if self.active() => match &self.phase {
                Phase::Gate { .. } | Phase::Paused { .. } | Phase::Analyzing { .. } => {
                    if self.approved(&by, false, &mut fx) {
                        note(
                            &mut fx,
                            &format!("promote: step {} passed by hand", self.step + 1),
                            Some(&by.display),
                        );
                        self.advance(&mut fx);
                    }
                }
                Phase::Held { .. } => note(
                    &mut fx,
                    "promote ignored: the rollout is paused; resume first",
                    Some(&by.display),
                ),
                _ => self.ignored("promote", &by.display, &mut fx),
            },
            Input::PromoteFull { by } if self.active() && self.phase != Phase::StartingCanary => {
                if self.approved(&by, true, &mut fx) {
                    note(&mut fx, "full promotion: canary to 100%", Some(&by.display));
                    self.complete(&mut fx);
                }
            }
            Input::Promote { by } => self.ignored("promote", &by.display, &mut fx),
            Input::PromoteFull { by } => self.ignored("full promotion", &by.display, &mut fx),
            Input::Abort { by } if self.active() || matches!(self.phase, Phase::Degraded { .. }) => {
                self.abort("aborted by hand", Some(&by), &mut fx);
            }
            Input::Abort { by } => self.ignored("abort", &by, &mut fx),
            Input::Rollback { by } => match self.phase {
                Phase::Completed => {
                    note(&mut fx, "rollback to the previous revision", Some(&by));
                    self.weight = 0;
                    self.phase = Phase::RolledBack {
                        reason: format!("rolled back by {by}"),
                    };
                    fx.push(Effect::RestorePrevious);
                }
                _ if self.active() || matches!(self.phase, Phase::Degraded { .. }) => {
                    self.abort("rolled back by hand", Some(&by), &mut fx)
                }
                _ => self.ignored("rollback", &by, &mut fx),
            },
            Input::Pause { by } if self.active() && !matches!(self.phase, Phase::Held { .. }) => {
                let remaining = self.next_timer().map(|t| t.saturating_sub(now));
                let was = std::mem::replace(&mut self.phase, Phase::NotStarted);
                self.phase = Phase::Held {
                    remaining,
                    was: Box::new(was),
                };
                note(&mut fx, "paused: timers frozen", Some(&by));
            }
            Input::Resume { by } if matches!(self.phase, Phase::Held { .. }) => {
                if let Phase::Held { remaining, was } = std::mem::replace(&mut self.phase, Phase::NotStarted) {
                    self.last_progress = now;
                    self.phase = match (*was, remaining) {
                        (Phase::Paused { .. }, Some(r)) => Phase::Paused { until: now + r },
                        (Phase::Gate { reason, .. }, r) => Phase::Gate {
                            deadline: r.map(|r| now + r),
                            reason,
                        },
                        (
                            Phase::Analyzing {
                                runs_left,
                                failures,
                                errors,
                                ..
                            },
                            Some(r),
                        ) => Phase::Analyzing {
                            runs_left,
                            next_at: now + r,
                            failures,
                            errors,
                        },
                        (other, _) => other,
                    };
                    note(&mut fx, "resumed", Some(&by));
                }
            }
            Input::Resume { by } => self.ignored("resume", &by, &mut fx),
            Input::Pause { by } => self.ignored("pause", &by, &mut fx),
        }
        fx
    }

    /// A command that does not apply now is recorded, with why, so the
    /// person who gave it (and the audit) sees it was not lost.
    /// Whether `by`'s promotion passes the step now under the approval
    /// policy: refused with why (someone not allowed, the run's starter
    /// when it may not, a second approval by one person, a full promotion
    /// that would need several), or counted until enough have approved.
    fn approved(&mut self, by: &Approver, full: bool, fx: &mut Vec<Effect>) -> bool {
        let Some(policy) = &self.spec.approvers else {
            return true;
        };
        use crate::pipeline::model::Refusal;
        let why = match policy.admit(&self.approvals, by) {
            Err(Refusal::Starter) => Some(format!(
                "{} started this run, and its gates need approvals from others: {}",
                by.user,
                policy.describe()
            )),
            Err(Refusal::NotAllowed) => Some(format!(
                "{} may not pass its gates: its approvers are {}",
                by.user,
                policy.who()
            )),
            Ok(()) if full && policy.required > 1 => Some(format!(
                "a full promotion at once would need {} approvals: promote step by step",
                policy.required
            )),
            Err(Refusal::Already) => Some(format!(
                "{} has already approved this step ({} of {}); another approver is needed",
                by.user,
                self.approvals.len(),
                policy.required
            )),
            Ok(()) => None,
        };
        if let Some(why) = why {
            note(fx, &format!("promote refused: {why}"), Some(&by.display));
            return false;
        }
        self.approvals.push(by.user.clone());
        let given = u32::try_from(self.approvals.len()).unwrap_or(u32::MAX);
        if given >= policy.required {
            self.approvals.clear();
            return true;
        }
        let more = policy.still_needed(self.approvals.len()).unwrap_or_default();
        let text = format!(
            "approval {given} of {} for step {}; waiting for {more}",
            policy.required,
            self.step + 1
        );
        note(fx, &text, Some(&by.display));
        false
    }

    /// Who passing the current step by hand still waits for, with a
    /// policy and approvals begun ("waiting for 1 more from group sre").
    pub fn waiting_for(&self) -> Option<String> {
        let policy = self.spec.approvers.as_ref()?;
        if !matches!(self.phase, Phase::Gate { .. }) {
            return None;
        }
        Some(format!("waiting for {}", policy.still_needed(self.approvals.len())?))
    }

    fn ignored(&self, what: &str, by: &str, fx: &mut Vec<Effect>) {
        let phase = self.phase.name();
        let why = match (what, phase) {
            ("full promotion", "starting_canary") => "the canary is not healthy yet".to_string(),
            ("promote", "starting_canary" | "running") => "it acts at a gate, pause or analysis".to_string(),
            ("pause", "held") => "the rollout is held already".to_string(),
            (_, "held") => "the rollout is held; resume first".to_string(),
            ("resume", _) => "the rollout is not held".to_string(),
            (_, "degraded") => "stable is failing its own health checks; abort or roll back".to_string(),
            ("retry", _) => "the rollout is still under way; it starts again after an abort".to_string(),
            (_, "gate") => "the rollout waits at a gate".to_string(),
            _ => format!("the rollout is {}", phase.replace('_', " ")),
        };
        note(
            fx,
            &format!("{what} ignored ({}): {why}", phase.replace('_', " ")),
            Some(by),
        );
    }

    fn next_timer(&self) -> Option<Duration> {
        match &self.phase {
            Phase::Paused { until } => Some(*until),
            Phase::Gate { deadline, .. } => *deadline,
            Phase::Analyzing { next_at, .. } => Some(*next_at),
            _ => None,
        }
    }

    fn tick(&mut self, fx: &mut Vec<Effect>) {
        let now = self.now;
        if self.progress_deadline_at().is_some_and(|d| now >= d) {
            let d = self.spec.progress_deadline;
            self.abort(
                &format!("no progress for {}s (progress deadline)", d.as_secs()),
                None,
                fx,
            );
            return;
        }
        match self.phase.clone() {
            Phase::Paused { until } if now >= until => self.advance(fx),
            Phase::Gate { deadline: Some(d), .. } if now >= d => {
                let action = match self.spec.steps.get(self.step) {
                    Some(Step::Gate {
                        timeout: Some((_, action)),
                    }) => *action,
                    _ => GateAction::Abort,
                };
                match action {
                    GateAction::Promote => {
                        note(fx, "gate timed out: promoting (its default action)", None);
                        self.advance(fx);
                    }
                    GateAction::Abort => self.abort("gate timed out (default action: abort)", None, fx),
                }
            }
            Phase::Analyzing { next_at, .. } if now >= next_at => fx.push(Effect::RunAnalysis),
            _ => {}
        }
    }

    /// The current analysis step's interval, failure limit and
    /// consecutive-error limit.
    fn analysis_settings(&self) -> (Duration, u32, u32) {
        match self.spec.steps.get(self.step) {
            Some(Step::Analysis {
                interval,
                failure_limit,
                consecutive_error_limit,
                ..
            }) => (*interval, *failure_limit, *consecutive_error_limit),
            _ => (Duration::ZERO, 0, 0),
        }
    }

    fn analysis_done(&mut self, class: VerdictClass, why: &str, fx: &mut Vec<Effect>) {
        let Phase::Analyzing {
            runs_left, failures, ..
        } = self.phase
        else {
            return;
        };
        let (interval, limit, _) = self.analysis_settings();
        // A failed run within the failure limit counts as a run, not a verdict.
        let failures = failures + u32::from(class == VerdictClass::Fail);
        match class {
            VerdictClass::Fail if failures > limit => {
                let allowed = if limit > 0 {
                    format!(" ({failures} failed runs, {limit} allowed)")
                } else {
                    String::new()
                };
                self.abort(&format!("analysis failed{allowed}: {why}"), None, fx);
            }
            VerdictClass::Pass | VerdictClass::Fail => {
                if class == VerdictClass::Fail {
                    note(
                        fx,
                        &format!("analysis run failed ({failures} of {limit} allowed): {why}"),
                        None,
                    );
                }
                self.last_progress = self.now;
                let left = runs_left.saturating_sub(1);
                if left == 0 {
                    note(fx, &format!("analysis passed: {why}"), None);
                    self.advance(fx);
                } else {
                    self.phase = Phase::Analyzing {
                        runs_left: left,
                        next_at: self.now + interval,
                        failures,
                        errors: 0,
                    };
                }
            }
            VerdictClass::Marginal | VerdictClass::Inconclusive => {
                let what = if class == VerdictClass::Marginal {
                    "marginal"
                } else {
                    "inconclusive"
                };
                let reason = format!("analysis {what}: {why}; promote or abort");
                note(fx, &reason, None);
                self.phase = Phase::Gate { deadline: None, reason };
            }
        }
    }

    /// A run without a measurement is tried again after the interval; more
    /// than `consecutive_error_limit` in a row fail the analysis, since a
    /// canary nobody can measure must not be promoted.
    fn analysis_error(&mut self, why: &str, fx: &mut Vec<Effect>) {
        let Phase::Analyzing {
            runs_left,
            failures,
            errors,
            ..
        } = self.phase
        else {
            return;
        };
        let (interval, _, limit) = self.analysis_settings();
        let errors = errors + 1;
        if errors > limit {
            self.abort(
                &format!("analysis failed: no measurement {errors} times in a row ({limit} allowed): {why}"),
                None,
                fx,
            );
            return;
        }
        note(
            fx,
            &format!("analysis run without a measurement ({errors} in a row, {limit} allowed): {why}"),
            None,
        );
        self.phase = Phase::Analyzing {
            runs_left,
            next_at: self.now + interval,
            failures,
            errors,
        };
    }

    /// The current step is done: go to the next.
    fn advance(&mut self, fx: &mut Vec<Effect>) {
        // Approvals were for passing the step now behind.
        self.approvals.clear();
        self.step += 1;
        self.last_progress = self.now;
        self.phase = Phase::Running;
        self.run_steps(fx);
    }

    /// Executes steps from `self.step` until one has to wait.
    fn run_steps(&mut self, fx: &mut Vec<Effect>) {
        let now = self.now;
        while let Some(step) = self.spec.steps.get(self.step).cloned() {
            match step {
                Step::SetWeight(w) => {
                    self.weight = w.min(FULL);
                    fx.push(Effect::SetWeight { weight: self.weight });
                    self.step += 1;
                }
                Step::Pause(d) => {
                    self.phase = Phase::Paused { until: now + d };
                    return;
                }
                Step::Gate { timeout } => {
                    self.phase = Phase::Gate {
                        deadline: timeout.map(|(t, _)| now + t),
                        reason: "manual gate: promote to continue".into(),
                    };
                    return;
                }
                Step::Analysis { interval, count, .. } => {
                    if count == 0 {
                        self.step += 1;
                        continue;
                    }
                    self.phase = Phase::Analyzing {
                        runs_left: count,
                        next_at: now + interval,
                        failures: 0,
                        errors: 0,
                    };
                    return;
                }
            }
        }
        self.complete(fx);
    }

    fn complete(&mut self, fx: &mut Vec<Effect>) {
        self.step = self.spec.steps.len();
        if self.weight != FULL {
            self.weight = FULL;
            fx.push(Effect::SetWeight { weight: FULL });
        }
        fx.push(Effect::MakeCanaryStable);
        note(fx, "rollout complete: the canary is the new stable", None);
        self.phase = Phase::Completed;
    }

    fn abort(&mut self, reason: &str, by: Option<&str>, fx: &mut Vec<Effect>) {
        // Traffic first: everything else can wait.
        self.weight = 0;
        fx.push(Effect::SetWeight { weight: 0 });
        fx.push(Effect::StopCanary {
            after: self.spec.abort_scale_down_delay,
        });
        note(fx, &format!("{reason}; stable is serving"), by);
        self.phase = Phase::Aborted {
            reason: reason.to_string(),
        };
    }
}

fn note(fx: &mut Vec<Effect>, text: &str, by: Option<&str>) {
    fx.push(Effect::Note {
        text: text.to_string(),
        by: by.map(str::to_string),
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(secs: u64) -> Duration {
        Duration::from_secs(secs)
    }

    fn spec(steps: Vec<Step>) -> CanarySpec {
        CanarySpec {
            steps,
            progress_deadline: s(600),
            abort_scale_down_delay: s(30),
            approvers: None,
        }
    }

    fn standard() -> CanarySpec {
        spec(vec![
            Step::SetWeight(100),
            Step::Analysis {
                interval: s(10),
                count: 2,
                failure_limit: 0,
                consecutive_error_limit: 4,
                thresholds: Vec::new(),
            },
            Step::Gate { timeout: None },
            Step::SetWeight(500),
            Step::Pause(s(30)),
        ])
    }

    fn started(sp: CanarySpec) -> Canary {
        let mut c = Canary::new(sp);
        assert_eq!(c.handle(Input::Start, s(0)), vec![Effect::StartCanary]);
        c
    }

    fn weights(fx: &[Effect]) -> Vec<u32> {
        fx.iter()
            .filter_map(|e| match e {
                Effect::SetWeight { weight } => Some(*weight),
                _ => None,
            })
            .collect()
    }

    fn pass() -> Input {
        Input::AnalysisDone {
            class: VerdictClass::Pass,
            why: "ok".into(),
        }
    }

    #[test]
    fn a_good_canary_walks_every_step_to_completion() {
        let mut c = started(standard());
        let fx = c.handle(Input::CanaryHealthy, s(1));
        assert_eq!(weights(&fx), [100]);
        assert_eq!(c.next_wake(), Some(s(11)));
        assert_eq!(c.handle(Input::Tick, s(11)), vec![Effect::RunAnalysis]);
        assert!(c.handle(pass(), s(12)).is_empty(), "one of two analyses done");
        assert_eq!(c.handle(Input::Tick, s(22)), vec![Effect::RunAnalysis]);
        c.handle(pass(), s(22));
        assert!(matches!(c.phase, Phase::Gate { deadline: None, .. }));
        assert!(c.handle(Input::Tick, s(5000)).is_empty(), "a manual gate waits forever");
        let fx = c.handle(Input::Promote { by: "ana".into() }, s(5001));
        assert_eq!(weights(&fx), [500]);
        assert!(
            fx.iter()
                .any(|e| matches!(e, Effect::Note { by: Some(b), .. } if b == "ana"))
        );
        assert_eq!(c.next_wake(), Some(s(5031)));
        let fx = c.handle(Input::Tick, s(5031));
        assert_eq!(weights(&fx), [FULL]);
        assert!(fx.contains(&Effect::MakeCanaryStable));
        assert_eq!(c.phase, Phase::Completed);
    }

    #[test]
    fn a_failed_analysis_sends_traffic_back_first_then_stops_the_canary() {
        let mut c = started(standard());
        c.handle(Input::CanaryHealthy, s(1));
        c.handle(Input::Tick, s(11));
        let fx = c.handle(
            Input::AnalysisDone {
                class: VerdictClass::Fail,
                why: "error_rate High".into(),
            },
            s(12),
        );
        assert_eq!(fx[0], Effect::SetWeight { weight: 0 }, "traffic first");
        assert_eq!(fx[1], Effect::StopCanary { after: s(30) });
        assert!(matches!(&c.phase, Phase::Aborted { reason } if reason.contains("error_rate")));
        assert_eq!(c.weight, 0);
    }

    #[test]
    fn a_provider_failing_beyond_the_consecutive_error_limit_fails_the_analysis() {
        let mut c = started(spec(vec![
            Step::Analysis {
                interval: s(10),
                count: 2,
                failure_limit: 0,
                consecutive_error_limit: 2,
                thresholds: Vec::new(),
            },
            Step::SetWeight(FULL),
        ]));
        c.handle(Input::CanaryHealthy, s(1));
        c.handle(Input::Tick, s(11));
        let err = |t| Input::AnalysisError(format!("prometheus unreachable {t}"));
        assert!(weights(&c.handle(err(1), s(11))).is_empty(), "1 of 2 allowed");
        assert_eq!(c.next_wake(), Some(s(21)), "tried again after the interval");
        c.handle(Input::Tick, s(21));
        c.handle(err(2), s(21));
        // A measurement in between resets the count.
        c.handle(Input::Tick, s(31));
        c.handle(pass(), s(31));
        assert!(matches!(
            c.phase,
            Phase::Analyzing {
                errors: 0,
                runs_left: 1,
                ..
            }
        ));
        for (i, t) in [41, 51].into_iter().enumerate() {
            c.handle(Input::Tick, s(t));
            c.handle(err(i), s(t));
        }
        assert!(matches!(c.phase, Phase::Analyzing { errors: 2, .. }));
        c.handle(Input::Tick, s(61));
        let fx = c.handle(err(3), s(61));
        assert_eq!(fx[0], Effect::SetWeight { weight: 0 });
        assert!(
            matches!(&c.phase, Phase::Aborted { reason } if reason.contains("no measurement 3 times in a row (2 allowed)")),
            "{:?}",
            c.phase
        );
    }

    #[test]
    fn failed_runs_within_the_failure_limit_are_tolerated() {
        let mut c = started(spec(vec![
            Step::Analysis {
                interval: s(10),
                count: 3,
                failure_limit: 1,
                consecutive_error_limit: 4,
                thresholds: Vec::new(),
            },
            Step::SetWeight(FULL),
        ]));
        c.handle(Input::CanaryHealthy, s(0));
        let fail = || Input::AnalysisDone {
            class: VerdictClass::Fail,
            why: "p95 too high".into(),
        };
        c.handle(Input::Tick, s(10));
        c.handle(fail(), s(10));
        assert!(
            matches!(
                c.phase,
                Phase::Analyzing {
                    runs_left: 2,
                    failures: 1,
                    errors: 0,
                    ..
                }
            ),
            "{:?}",
            c.phase
        );
        c.handle(Input::Tick, s(20));
        c.handle(pass(), s(20));
        c.handle(Input::Tick, s(30));
        c.handle(fail(), s(30));
        assert!(
            matches!(&c.phase, Phase::Aborted { reason } if reason.contains("2 failed runs, 1 allowed")),
            "{:?}",
            c.phase
        );
    }

    #[test]
    fn inconclusive_or_marginal_analysis_waits_for_a_person() {
        let mut c = started(standard());
        c.handle(Input::CanaryHealthy, s(1));
        c.handle(Input::Tick, s(11));
        c.handle(
            Input::AnalysisDone {
                class: VerdictClass::Inconclusive,
                why: "no traffic".into(),
            },
            s(11),
        );
        assert!(matches!(&c.phase, Phase::Gate { reason, .. } if reason.contains("no traffic")));
        assert_eq!(c.weight, 100, "never a pass, never a silent promotion");
    }

    fn notes(fx: &[Effect]) -> Vec<String> {
        fx.iter()
            .filter_map(|e| match e {
                Effect::Note { text, .. } => Some(text.clone()),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn a_gate_with_a_policy_passes_on_enough_distinct_allowed_promotions() {
        let mut sp = spec(vec![
            Step::SetWeight(200),
            Step::Gate { timeout: None },
            Step::SetWeight(FULL),
        ]);
        sp.approvers = Some(crate::pipeline::model::Approvers {
            users: vec!["ada".into()],
            groups: vec!["sre".into()],
            required: 2,
            allow_self: false,
        });
        let mut c = started(sp);
        c.handle(Input::CanaryHealthy, s(0));
        assert!(matches!(c.phase, Phase::Gate { .. }));
        let who = |user: &str, groups: &[&str], starter: bool| Approver {
            user: user.into(),
            groups: groups.iter().map(|g| g.to_string()).collect(),
            display: format!("{user}@host"),
            started_the_run: starter,
        };
        let n = notes(&c.handle(
            Input::Promote {
                by: who("root", &["sre"], true),
            },
            s(1),
        ));
        assert!(n[0].contains("promote refused: root started this run"), "{n:?}");
        let n = notes(&c.handle(
            Input::Promote {
                by: who("eve", &["dev"], false),
            },
            s(2),
        ));
        assert!(
            n[0].contains("eve may not pass its gates: its approvers are user ada or group sre"),
            "{n:?}"
        );
        let n = notes(&c.handle(
            Input::PromoteFull {
                by: who("ada", &[], false),
            },
            s(3),
        ));
        assert!(n[0].contains("would need 2 approvals: promote step by step"), "{n:?}");
        let n = notes(&c.handle(
            Input::Promote {
                by: who("ben", &["sre"], false),
            },
            s(4),
        ));
        assert!(n[0].contains("approval 1 of 2 for step 2; waiting for 1 more"), "{n:?}");
        assert!(matches!(c.phase, Phase::Gate { .. }), "one of two");
        assert_eq!(
            c.waiting_for().as_deref(),
            Some("waiting for 1 more from user ada or group sre, not the run's starter")
        );
        let n = notes(&c.handle(
            Input::Promote {
                by: who("ben", &["sre"], false),
            },
            s(5),
        ));
        assert!(n[0].contains("ben has already approved this step (1 of 2)"), "{n:?}");
        c.handle(
            Input::Promote {
                by: who("ada", &[], false),
            },
            s(6),
        );
        assert_eq!(c.phase, Phase::Completed, "two people passed the gate");
        assert!(c.approvals.is_empty() && c.waiting_for().is_none());
    }

    #[test]
    fn gate_timeouts_take_their_default_action() {
        for (action, promoted) in [(GateAction::Promote, true), (GateAction::Abort, false)] {
            let mut c = started(spec(vec![
                Step::SetWeight(200),
                Step::Gate {
                    timeout: Some((s(60), action)),
                },
                Step::SetWeight(FULL),
            ]));
            c.handle(Input::CanaryHealthy, s(0));
            assert_eq!(c.next_wake(), Some(s(60)), "the countdown");
            assert!(c.handle(Input::Tick, s(59)).is_empty());
            c.handle(Input::Tick, s(60));
            assert_eq!(c.phase == Phase::Completed, promoted, "{action:?}");
            assert_eq!(matches!(c.phase, Phase::Aborted { .. }), !promoted);
        }
    }

    #[test]
    fn abort_retry_full_promotion_and_rollback_after_completion() {
        let mut c = started(standard());
        c.handle(Input::CanaryHealthy, s(1));
        c.handle(Input::Abort { by: "sre".into() }, s(2));
        assert!(matches!(c.phase, Phase::Aborted { .. }));
        only_note(
            &c.handle(Input::Promote { by: "x".into() }, s(3)),
            "promote ignored (aborted)",
            "x",
        );
        assert_eq!(
            c.handle(Input::Retry { by: "sre".into() }, s(4))[1],
            Effect::StartCanary
        );
        c.handle(Input::CanaryHealthy, s(5));
        let fx = c.handle(Input::PromoteFull { by: "sre".into() }, s(6));
        assert_eq!(weights(&fx), [FULL]);
        assert_eq!(c.phase, Phase::Completed);
        let fx = c.handle(Input::Rollback { by: "sre".into() }, s(100));
        assert!(fx.contains(&Effect::RestorePrevious));
        assert!(matches!(c.phase, Phase::RolledBack { .. }));
    }

    #[test]
    fn the_progress_deadline_aborts_a_stuck_rollout_but_not_a_manual_gate() {
        let mut c = started(standard());
        // The canary never becomes healthy.
        assert_eq!(c.next_wake(), Some(s(600)));
        c.handle(Input::Tick, s(600));
        assert!(matches!(&c.phase, Phase::Aborted { reason } if reason.contains("progress deadline")));
        let mut c = started(spec(vec![Step::Gate { timeout: None }]));
        c.handle(Input::CanaryHealthy, s(0));
        c.handle(Input::Tick, s(10_000));
        assert!(matches!(c.phase, Phase::Gate { .. }), "people may take their time");
    }

    /// The only effect is a note by `by` that contains `text`.
    fn only_note(fx: &[Effect], text: &str, by: &str) {
        assert!(
            matches!(fx, [Effect::Note { text: t, by: Some(b) }] if t.contains(text) && b == by),
            "{fx:?}"
        );
    }

    #[test]
    fn a_command_that_does_not_apply_changes_nothing_and_says_why() {
        let mut c = started(standard());
        let fx = c.handle(Input::Promote { by: "a".into() }, s(0));
        only_note(&fx, "promote ignored (starting canary): it acts at a gate", "a");
        let fx = c.handle(Input::PromoteFull { by: "a".into() }, s(0));
        only_note(&fx, "the canary is not healthy yet", "a");
        c.handle(Input::CanaryHealthy, s(1));
        c.handle(Input::Tick, s(11));
        c.handle(pass(), s(12));
        c.handle(Input::Tick, s(22));
        c.handle(pass(), s(22));
        assert!(matches!(c.phase, Phase::Gate { .. }));
        // Resume without a hold once wiped the phase: the gate must stay.
        let fx = c.handle(Input::Resume { by: "b".into() }, s(30));
        only_note(&fx, "resume ignored (gate): the rollout is not held", "b");
        assert!(matches!(c.phase, Phase::Gate { .. }), "{:?}", c.phase);
        c.handle(Input::Pause { by: "b".into() }, s(31));
        let fx = c.handle(Input::Pause { by: "b".into() }, s(32));
        only_note(&fx, "held already", "b");
        c.handle(Input::Resume { by: "b".into() }, s(33));
        c.handle(Input::Abort { by: "b".into() }, s(34));
        let fx = c.handle(Input::Abort { by: "c".into() }, s(35));
        only_note(&fx, "abort ignored (aborted): the rollout is aborted", "c");
        let fx = c.handle(Input::Rollback { by: "c".into() }, s(35));
        only_note(&fx, "rollback ignored", "c");
    }

    #[test]
    fn rollback_of_a_degraded_rollout_aborts_it_like_abort_does() {
        let mut c = started(standard());
        c.handle(Input::CanaryHealthy, s(1));
        c.handle(Input::StableUnhealthy("stable#1 refused".into()), s(2));
        assert!(matches!(c.phase, Phase::Degraded { .. }));
        let fx = c.handle(Input::Promote { by: "a".into() }, s(3));
        only_note(&fx, "stable is failing its own health checks", "a");
        let fx = c.handle(Input::Rollback { by: "a".into() }, s(4));
        assert_eq!(weights(&fx), [0], "{fx:?}");
        assert!(matches!(c.phase, Phase::Aborted { .. }), "{:?}", c.phase);
    }

    #[test]
    fn pause_freezes_the_countdown_and_resume_restores_it() {
        let mut c = started(spec(vec![Step::Pause(s(30)), Step::SetWeight(FULL)]));
        c.handle(Input::CanaryHealthy, s(0));
        c.handle(Input::Pause { by: "a".into() }, s(10));
        assert!(c.handle(Input::Tick, s(100)).is_empty(), "held");
        assert_eq!(c.next_wake(), None);
        c.handle(Input::Resume { by: "a".into() }, s(200));
        assert_eq!(c.next_wake(), Some(s(220)), "20 s were left");
        c.handle(Input::Tick, s(220));
        assert_eq!(c.phase, Phase::Completed);
    }

    #[test]
    fn a_resumed_gate_keeps_the_approvals_it_had() {
        let mut sp = spec(vec![
            Step::SetWeight(200),
            Step::Gate { timeout: None },
            Step::SetWeight(FULL),
        ]);
        sp.approvers = Some(crate::pipeline::model::Approvers {
            users: vec!["ada".into(), "ben".into()],
            groups: Vec::new(),
            required: 2,
            allow_self: true,
        });
        let mut c = Canary::resuming(sp, 1, 200, vec!["ben".into()]);
        c.handle(Input::Start, s(0));
        let n = notes(&c.handle(Input::CanaryHealthy, s(1)));
        assert!(
            n[0].contains("resuming at step 2 of 3 (its approvals kept: ben)"),
            "{n:?}"
        );
        assert!(matches!(c.phase, Phase::Gate { .. }), "{:?}", c.phase);
        assert_eq!(
            c.waiting_for().as_deref(),
            Some("waiting for 1 more from users ada, ben")
        );
        let ben = Approver {
            user: "ben".into(),
            groups: Vec::new(),
            display: "ben@host".into(),
            started_the_run: false,
        };
        let n = notes(&c.handle(Input::Promote { by: ben }, s(2)));
        assert!(n[0].contains("ben has already approved this step (1 of 2)"), "{n:?}");
        let ada = Approver {
            user: "ada".into(),
            groups: Vec::new(),
            display: "ada@host".into(),
            started_the_run: false,
        };
        c.handle(Input::Promote { by: ada }, s(3));
        assert_eq!(c.phase, Phase::Completed);
    }

    #[test]
    fn a_resumed_rollout_takes_up_its_gate_with_its_weight() {
        let mut c = Canary::resuming(standard(), 2, 100, Vec::new());
        c.handle(Input::Start, s(0));
        let fx = c.handle(Input::CanaryHealthy, s(1));
        assert_eq!(weights(&fx), [100]);
        assert!(matches!(c.phase, Phase::Gate { .. }), "{:?}", c.phase);
        let fx = c.handle(Input::Promote { by: "a".into() }, s(2));
        assert_eq!(weights(&fx), [500]);
    }

    #[test]
    fn an_unhealthy_stable_is_degraded_not_aborted() {
        let mut c = started(standard());
        c.handle(Input::CanaryHealthy, s(1));
        c.handle(Input::StableUnhealthy("3 failed checks".into()), s(2));
        assert!(matches!(c.phase, Phase::Degraded { .. }));
        let mut c = started(standard());
        c.handle(Input::CanaryHealthy, s(1));
        let fx = c.handle(Input::CanaryUnhealthy("503".into()), s(2));
        assert_eq!(weights(&fx), [0]);
        assert!(matches!(c.phase, Phase::Aborted { .. }));
    }
}
