//! The rolling update as a pure state machine: `handle(input, now) -> effects`.
//!
//! Replicas of the old revision are replaced a batch at a time. Per batch,
//! up to `max_unavailable` old replicas are drained and stopped first; then
//! the batch's new replicas start, and only once every one of them is
//! healthy do they take traffic and does the surplus of old replicas go.
//! So with `max_unavailable: 0` (the default) serving capacity never drops
//! below the replica count. A batch that does not become healthy, an
//! updated replica that fails its checks later, an abort, or the progress
//! deadline roll back: the updated replicas are replaced by the old
//! revision again, and the old revision stays the stable one.

use std::time::Duration;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RollingSpec {
    /// Replicas of the new revision at the end.
    pub total: u32,
    /// Replicas of the old revision at the start.
    pub old: u32,
    pub batch_size: u32,
    pub max_unavailable: u32,
    /// Roll back when no batch completes for this long (while not held).
    pub progress_deadline: Duration,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "phase")]
pub enum Phase {
    NotStarted,
    /// A batch of `starting` new replicas is waiting for its health checks.
    Updating {
        starting: u32,
    },
    /// Between batches, stopped by a person.
    Held,
    Completed,
    /// The updated replicas were replaced by the old revision again.
    RolledBack {
        reason: String,
    },
}

impl Phase {
    /// The phase's name in statuses and events.
    pub fn name(&self) -> &'static str {
        match self {
            Phase::NotStarted => "not_started",
            Phase::Updating { .. } => "updating",
            Phase::Held => "held",
            Phase::Completed => "completed",
            Phase::RolledBack { .. } => "rolled_back",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum Input {
    Start,
    Tick,
    /// Every new replica of the batch passed its health checks.
    BatchHealthy,
    BatchUnhealthy(String),
    /// A replica updated earlier failed its health checks.
    UpdatedUnhealthy(String),
    Abort {
        by: String,
    },
    /// Before completion: roll back; after: make the old revision stable again.
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
    /// Take `count` old replicas out of the router, let them finish what
    /// they serve (drain), and stop them.
    StopOld {
        count: u32,
    },
    /// Start the next `count` new replicas; report their health.
    StartNew {
        count: u32,
    },
    /// The batch is healthy: its replicas take traffic.
    ServeNew,
    /// Stop every new replica and start old ones until there are `old` again.
    RollBackUpdated {
        old: u32,
    },
    MakeNewStable,
    RestorePrevious,
    Note {
        text: String,
        by: Option<String>,
    },
}

#[derive(Debug, Clone)]
pub struct Rolling {
    pub spec: RollingSpec,
    pub phase: Phase,
    /// New replicas serving.
    pub updated: u32,
    /// Old replicas still running.
    pub old_left: u32,
    /// `Held` while a batch was starting: it finishes, the next waits.
    hold_requested: bool,
    last_progress: Duration,
}

impl Rolling {
    pub fn new(spec: RollingSpec) -> Self {
        Rolling {
            spec,
            phase: Phase::NotStarted,
            updated: 0,
            old_left: spec.old,
            hold_requested: false,
            last_progress: Duration::ZERO,
        }
    }

    pub fn is_settled(&self) -> bool {
        matches!(self.phase, Phase::Completed | Phase::RolledBack { .. })
    }

    /// Batches in all, and the one under way (from 1).
    pub fn batches(&self) -> (u32, u32) {
        let b = self.spec.batch_size.max(1);
        let all = self.spec.total.div_ceil(b);
        (all, (self.updated / b + 1).min(all))
    }

    /// When to call with `Tick` next.
    pub fn next_wake(&self) -> Option<Duration> {
        matches!(self.phase, Phase::Updating { .. }).then(|| self.last_progress + self.spec.progress_deadline)
    }

    pub fn handle(&mut self, input: Input, now: Duration) -> Vec<Effect> {
        let mut fx = Vec::new();
        let input_name = match &input {
            Input::Abort { .. } => "abort",
            Input::Pause { .. } => "pause",
            Input::Resume { .. } => "resume",
            _ => "",
        };
        match input {
            Input::Start if self.phase == Phase::NotStarted => {
                self.last_progress = now;
                self.next_batch(&mut fx);
            }
            Input::BatchHealthy => {
                if let Phase::Updating { starting } = self.phase {
                    self.updated += starting;
                    self.last_progress = now;
                    fx.push(Effect::ServeNew);
                    // Old replicas beyond the replica count go now.
                    let surplus = (self.updated + self.old_left)
                        .saturating_sub(self.spec.total)
                        .min(self.old_left);
                    if surplus > 0 {
                        self.old_left -= surplus;
                        fx.push(Effect::StopOld { count: surplus });
                    }
                    note(
                        &mut fx,
                        &format!("{} of {} replicas updated", self.updated, self.spec.total),
                        None,
                    );
                    if self.hold_requested && self.updated < self.spec.total {
                        self.hold_requested = false;
                        self.phase = Phase::Held;
                        note(&mut fx, "held before the next batch", None);
                    } else {
                        self.next_batch(&mut fx);
                    }
                }
            }
            Input::BatchUnhealthy(why) if matches!(self.phase, Phase::Updating { .. }) => {
                self.roll_back(&format!("new replicas unhealthy: {why}"), None, &mut fx);
            }
            Input::UpdatedUnhealthy(why) if self.active() => {
                self.roll_back(&format!("an updated replica failed: {why}"), None, &mut fx);
            }
            Input::Tick if self.next_wake().is_some_and(|at| now >= at) => {
                let d = self.spec.progress_deadline.as_secs();
                self.roll_back(&format!("no progress for {d}s (progress deadline)"), None, &mut fx);
            }
            Input::Abort { by } if self.active() => self.roll_back("aborted by hand", Some(&by), &mut fx),
            Input::Rollback { by } => match self.phase {
                Phase::Completed => {
                    note(&mut fx, "rollback to the previous revision", Some(&by));
                    self.phase = Phase::RolledBack {
                        reason: format!("rolled back by {by}"),
                    };
                    fx.push(Effect::RestorePrevious);
                }
                _ if self.active() => self.roll_back("rolled back by hand", Some(&by), &mut fx),
                _ => note(
                    &mut fx,
                    &format!(
                        "rollback ignored: the update is {}",
                        self.phase.name().replace('_', " ")
                    ),
                    Some(&by),
                ),
            },
            Input::Pause { by } if matches!(self.phase, Phase::Updating { .. }) => {
                self.hold_requested = true;
                note(
                    &mut fx,
                    "pause: the batch under way finishes, the next waits",
                    Some(&by),
                );
            }
            Input::Resume { by } if self.phase == Phase::Held => {
                note(&mut fx, "resumed", Some(&by));
                self.last_progress = now;
                self.next_batch(&mut fx);
            }
            Input::Resume { by } if self.hold_requested => {
                self.hold_requested = false;
                note(&mut fx, "resumed", Some(&by));
            }
            // A person's command that does not apply now is recorded, with
            // why, so it is not silently lost.
            Input::Abort { by } | Input::Pause { by } | Input::Resume { by } => {
                let why = match (input_name, &self.phase) {
                    ("pause", Phase::Held) => "the update is held already".to_string(),
                    ("resume", _) => "the update is not held".to_string(),
                    (_, p) => format!("the update is {}", p.name().replace('_', " ")),
                };
                note(&mut fx, &format!("{input_name} ignored: {why}"), Some(&by));
            }
            _ => {}
        }
        fx
    }

    fn active(&self) -> bool {
        matches!(self.phase, Phase::Updating { .. } | Phase::Held)
    }

    fn next_batch(&mut self, fx: &mut Vec<Effect>) {
        if self.updated >= self.spec.total {
            if self.old_left > 0 {
                fx.push(Effect::StopOld { count: self.old_left });
                self.old_left = 0;
            }
            fx.push(Effect::MakeNewStable);
            note(fx, "rolling update complete: every replica runs the new revision", None);
            self.phase = Phase::Completed;
            return;
        }
        let batch = self.spec.batch_size.max(1).min(self.spec.total - self.updated);
        let first = self.spec.max_unavailable.min(batch).min(self.old_left);
        if first > 0 {
            self.old_left -= first;
            fx.push(Effect::StopOld { count: first });
        }
        let (all, n) = self.batches();
        note(
            fx,
            &format!("batch {n} of {all}: starting {batch} new replica(s)"),
            None,
        );
        fx.push(Effect::StartNew { count: batch });
        self.phase = Phase::Updating { starting: batch };
    }

    fn roll_back(&mut self, reason: &str, by: Option<&str>, fx: &mut Vec<Effect>) {
        fx.push(Effect::RollBackUpdated { old: self.spec.old });
        note(
            fx,
            &format!(
                "{reason}; rolling back: {} updated replica(s) replaced by the old revision",
                self.updated
            ),
            by,
        );
        self.updated = 0;
        self.old_left = self.spec.old;
        self.hold_requested = false;
        self.phase = Phase::RolledBack {
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

    fn spec(total: u32, old: u32, batch_size: u32, max_unavailable: u32) -> RollingSpec {
        RollingSpec {
            total,
            old,
            batch_size,
            max_unavailable,
            progress_deadline: s(600),
        }
    }

    /// Effects without the notes.
    fn acts(fx: Vec<Effect>) -> Vec<Effect> {
        fx.into_iter().filter(|e| !matches!(e, Effect::Note { .. })).collect()
    }

    #[test]
    fn a_command_that_does_not_apply_changes_nothing_and_says_why() {
        let mut r = Rolling::new(spec(2, 2, 1, 0));
        r.handle(Input::Start, s(0));
        let fx = r.handle(Input::Resume { by: "a".into() }, s(1));
        assert!(
            matches!(&fx[..], [Effect::Note { text, by: Some(b) }] if text == "resume ignored: the update is not held" && b == "a"),
            "{fx:?}"
        );
        assert_eq!(r.phase, Phase::Updating { starting: 1 });
        r.handle(Input::BatchHealthy, s(2));
        r.handle(Input::BatchHealthy, s(3));
        assert_eq!(r.phase, Phase::Completed);
        for input in [Input::Abort { by: "b".into() }, Input::Pause { by: "b".into() }] {
            let fx = r.handle(input, s(4));
            assert!(
                matches!(&fx[..], [Effect::Note { text, .. }] if text.ends_with("ignored: the update is completed")),
                "{fx:?}"
            );
        }
        assert_eq!(r.phase, Phase::Completed);
    }

    #[test]
    fn surge_first_never_drops_below_the_replica_count() {
        let mut r = Rolling::new(spec(3, 3, 1, 0));
        assert_eq!(acts(r.handle(Input::Start, s(0))), [Effect::StartNew { count: 1 }]);
        for i in 1..=3u32 {
            let fx = acts(r.handle(Input::BatchHealthy, s(u64::from(i))));
            // Serving: old + new never below 3 at any point.
            assert_eq!(fx[0], Effect::ServeNew);
            assert_eq!(fx[1], Effect::StopOld { count: 1 });
            assert_eq!(r.updated, i);
            assert_eq!(r.old_left, 3 - i);
            if i < 3 {
                assert_eq!(fx[2], Effect::StartNew { count: 1 });
            } else {
                assert_eq!(fx[2], Effect::MakeNewStable);
            }
        }
        assert_eq!(r.phase, Phase::Completed);
    }

    #[test]
    fn max_unavailable_stops_old_replicas_before_the_batch() {
        let mut r = Rolling::new(spec(4, 4, 2, 1));
        assert_eq!(r.batches(), (2, 1));
        assert_eq!(
            acts(r.handle(Input::Start, s(0))),
            [Effect::StopOld { count: 1 }, Effect::StartNew { count: 2 }]
        );
        assert_eq!(
            acts(r.handle(Input::BatchHealthy, s(5))),
            [
                Effect::ServeNew,
                Effect::StopOld { count: 1 },
                Effect::StopOld { count: 1 },
                Effect::StartNew { count: 2 }
            ]
        );
        assert_eq!((r.updated, r.old_left), (2, 1));
        assert_eq!(r.batches(), (2, 2));
        let fx = acts(r.handle(Input::BatchHealthy, s(9)));
        assert_eq!(
            fx,
            [Effect::ServeNew, Effect::StopOld { count: 1 }, Effect::MakeNewStable]
        );
        assert_eq!((r.updated, r.old_left), (4, 0));
    }

    #[test]
    fn more_or_fewer_replicas_than_before() {
        let mut grow = Rolling::new(spec(3, 1, 1, 0));
        grow.handle(Input::Start, s(0));
        // The old replica serves until the new ones are all there.
        for t in [1, 2] {
            assert_eq!(
                acts(grow.handle(Input::BatchHealthy, s(t))),
                [Effect::ServeNew, Effect::StartNew { count: 1 }]
            );
        }
        assert_eq!(
            acts(grow.handle(Input::BatchHealthy, s(3))),
            [Effect::ServeNew, Effect::StopOld { count: 1 }, Effect::MakeNewStable]
        );
        let mut shrink = Rolling::new(spec(1, 3, 1, 0));
        shrink.handle(Input::Start, s(0));
        assert_eq!(
            acts(shrink.handle(Input::BatchHealthy, s(1))),
            [Effect::ServeNew, Effect::StopOld { count: 3 }, Effect::MakeNewStable]
        );
    }

    #[test]
    fn an_unhealthy_batch_or_replica_rolls_back_the_updated_ones() {
        let mut r = Rolling::new(spec(3, 3, 1, 1));
        r.handle(Input::Start, s(0));
        r.handle(Input::BatchHealthy, s(1));
        let fx = r.handle(Input::BatchUnhealthy("v2#2 not healthy within 30s".into()), s(40));
        assert_eq!(fx[0], Effect::RollBackUpdated { old: 3 });
        assert!(matches!(&fx[1], Effect::Note { text, .. } if text.contains("1 updated replica(s) replaced")));
        assert!(matches!(&r.phase, Phase::RolledBack { reason } if reason.contains("v2#2")));
        assert!(r.handle(Input::BatchHealthy, s(41)).is_empty(), "settled");
        let mut later = Rolling::new(spec(2, 2, 1, 0));
        later.handle(Input::Start, s(0));
        later.handle(Input::BatchHealthy, s(1));
        let fx = later.handle(Input::UpdatedUnhealthy("v2#1 failed 2 checks".into()), s(2));
        assert_eq!(fx[0], Effect::RollBackUpdated { old: 2 });
    }

    #[test]
    fn pause_waits_between_batches_and_the_deadline_rolls_back() {
        let mut r = Rolling::new(spec(3, 3, 1, 0));
        r.handle(Input::Start, s(0));
        r.handle(Input::Pause { by: "sre".into() }, s(1));
        let fx = acts(r.handle(Input::BatchHealthy, s(2)));
        assert_eq!(fx, [Effect::ServeNew, Effect::StopOld { count: 1 }], "no next batch");
        assert_eq!(r.phase, Phase::Held);
        assert_eq!(r.next_wake(), None, "no deadline while held");
        assert!(r.handle(Input::Tick, s(5000)).is_empty());
        assert_eq!(
            acts(r.handle(Input::Resume { by: "sre".into() }, s(5001))),
            [Effect::StartNew { count: 1 }]
        );
        assert_eq!(r.next_wake(), Some(s(5601)));
        let fx = r.handle(Input::Tick, s(5601));
        assert_eq!(fx[0], Effect::RollBackUpdated { old: 3 });
        assert!(matches!(&r.phase, Phase::RolledBack { reason } if reason.contains("progress deadline")));
    }

    #[test]
    fn abort_and_rollback_after_completion() {
        let mut r = Rolling::new(spec(1, 1, 1, 0));
        r.handle(Input::Start, s(0));
        let fx = r.handle(Input::Abort { by: "ana".into() }, s(1));
        assert_eq!(fx[0], Effect::RollBackUpdated { old: 1 });
        assert!(matches!(&fx[1], Effect::Note { by: Some(b), .. } if b == "ana"));
        let mut done = Rolling::new(spec(1, 1, 1, 0));
        done.handle(Input::Start, s(0));
        done.handle(Input::BatchHealthy, s(1));
        assert_eq!(done.phase, Phase::Completed);
        assert!(acts(done.handle(Input::Rollback { by: "ana".into() }, s(2))).contains(&Effect::RestorePrevious));
        assert!(matches!(done.phase, Phase::RolledBack { .. }));
    }
}
