//! Runs sharing one machine: whether a job of this run may start beside
//! what the other runs of the state directory hold ([`decide`]), pure over
//! the slot table ([`crate::store::slots`]) that the actor reads and writes
//! in one transaction per claim.
//!
//! The rules, in order:
//! 1. **Resource groups** hold across runs: a job whose group (GitLab
//!    `resource_group`, GitHub `concurrency`, native `resource_group`) is
//!    held by another run's job waits for it.
//! 2. **Priority**: while a run of higher priority has jobs waiting for the
//!    machine, a lower run starts nothing new; the next free slots are the
//!    higher run's.
//! 3. **Capacity**: the CPUs and memory all runs' jobs hold, with this one,
//!    stay within the machine's (the most CPUs any live run counted, the
//!    memory budget of the oldest live run: it was measured before the
//!    others' jobs took their share). A job runs alone when nothing holds
//!    anything, as within one run.
//! 4. **Preemption** (`--preempt`): a job that does not fit asks lower runs
//!    to stop enough of their `interruptible` jobs (lowest priority first,
//!    then the most recently started: the least work lost); they go back
//!    to their run's queue. Nothing is asked when stopping every candidate
//!    would still not make room.

use std::fmt;
use std::str::FromStr;

use super::admission::{Need, cpus, gib};
use crate::store::slots::{Request, RequestKind, Table, Writes};

/// How long a run that was refused for capacity keeps lower runs waiting
/// without asking again: it asks every [`RETRY`], so this only runs out
/// once it stopped waiting (cancelled, finished or dead).
pub const WAITING_FOR: u64 = 2_000;

/// How often a refused job asks again.
pub const RETRY: std::time::Duration = std::time::Duration::from_millis(250);

/// A run's priority against the other runs of the machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub enum Priority {
    Low,
    #[default]
    Normal,
    High,
}

impl Priority {
    pub fn rank(self) -> i64 {
        match self {
            Priority::Low => 0,
            Priority::Normal => 1,
            Priority::High => 2,
        }
    }

    fn of_rank(rank: i64) -> Priority {
        match rank {
            i64::MIN..=0 => Priority::Low,
            1 => Priority::Normal,
            _ => Priority::High,
        }
    }
}

impl fmt::Display for Priority {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Priority::Low => "low",
            Priority::Normal => "normal",
            Priority::High => "high",
        })
    }
}

/// A priority that is not one of the three.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{0}` is not a priority: use high, normal or low")]
pub struct BadPriority(pub String);

impl FromStr for Priority {
    type Err = BadPriority;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "high" => Ok(Priority::High),
            "normal" => Ok(Priority::Normal),
            "low" => Ok(Priority::Low),
            _ => Err(BadPriority(s.to_string())),
        }
    }
}

/// How a run shares the machine with the other runs of its state directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Sharing {
    pub priority: Priority,
    /// `--preempt`: it may stop lower runs' interruptible jobs.
    pub preempt: bool,
}

/// A job of this run asking to start.
#[derive(Debug, Clone)]
pub struct Claim<'a> {
    pub run: &'a str,
    pub priority: Priority,
    /// `--preempt`: it may stop lower runs' interruptible jobs.
    pub preempt: bool,
    /// What it would hold.
    pub need: Need,
    pub group: Option<&'a str>,
    /// GitHub's `cancel-in-progress`: another run's job holding the group
    /// is cancelled rather than waited for.
    pub cancels_group: bool,
    /// Milliseconds since the epoch.
    pub now_ms: u64,
}

/// The answer to a claim.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Grant,
    /// Not now; ask again later. `reason` is what the job waits for.
    Wait {
        reason: String,
    },
}

/// Decides `claim` against the live `table`, and what to write.
pub fn decide(table: &Table, claim: &Claim) -> (Decision, Writes) {
    let other = |run: &str| run != claim.run;
    let wait = |reason: String, writes: Writes| (Decision::Wait { reason }, writes);
    // 1. Resource groups.
    if let Some(group) = claim.group
        && let Some(h) = table
            .holds
            .iter()
            .find(|h| other(&h.run_id) && h.group.as_deref() == Some(group))
    {
        if claim.cancels_group {
            let asked = Request {
                run_id: h.run_id.clone(),
                job: h.job.clone(),
                attempt: h.attempt,
                kind: RequestKind::Cancel,
                by: claim.run.to_string(),
            };
            return wait(
                format!(
                    "cancelling `{}` of run {} (concurrency `{group}`, cancel-in-progress)",
                    h.job, h.run_id
                ),
                Writes {
                    requests: vec![asked],
                    ..Writes::default()
                },
            );
        }
        return wait(
            format!(
                "waiting for resource group `{group}`, held by `{}` of run {}",
                h.job, h.run_id
            ),
            Writes::default(),
        );
    }
    // 2. Priority.
    if let Some(r) = table
        .runs
        .iter()
        .find(|r| other(&r.run_id) && r.priority > claim.priority.rank() && r.waiting_until_ms > claim.now_ms)
    {
        return wait(
            format!(
                "waiting: run {} ({} priority) goes first",
                r.run_id,
                Priority::of_rank(r.priority)
            ),
            Writes::default(),
        );
    }
    // 3. Capacity.
    let cap = capacity(table);
    let held = table.holds.iter().fold(Need::default(), |a, h| Need {
        cpu_milli: a.cpu_milli.saturating_add(h.cpu_milli),
        memory: a.memory.saturating_add(h.memory),
    });
    let fits = |held: Need| {
        held == Need::default()
            || (held.cpu_milli.saturating_add(claim.need.cpu_milli) <= cap.cpu_milli
                && held.memory.saturating_add(claim.need.memory) <= cap.memory)
    };
    if fits(held) {
        return (
            Decision::Grant,
            Writes {
                grant: true,
                ..Writes::default()
            },
        );
    }
    // Who holds the rest: the other runs' jobs, the first two by name.
    let others: Vec<&crate::store::slots::HoldRow> = table.holds.iter().filter(|h| other(&h.run_id)).collect();
    let mut named: Vec<String> = others
        .iter()
        .take(2)
        .map(|h| format!("`{}` of run {}", h.job, h.run_id))
        .collect();
    if others.len() > 2 {
        named.push(format!("{} more", others.len() - 2));
    }
    let held_by = match named.len() {
        0 => "this run's own jobs".to_string(),
        1 => named.remove(0),
        _ => {
            let last = named.pop().unwrap_or_default();
            format!("{} and {last}", named.join(", "))
        }
    };
    let short = if held.memory.saturating_add(claim.need.memory) > cap.memory {
        format!(
            "memory: needs {}, {} of {} free",
            gib(claim.need.memory),
            gib(cap.memory.saturating_sub(held.memory)),
            gib(cap.memory)
        )
    } else {
        format!(
            "CPU: needs {}, {} of {} free",
            cpus(claim.need.cpu_milli),
            cpus(cap.cpu_milli.saturating_sub(held.cpu_milli)),
            cpus(cap.cpu_milli)
        )
    };
    let mut reason = format!("waiting for {short} on this machine, held by {held_by}");
    let mut writes = Writes {
        waiting_until_ms: Some(claim.now_ms.saturating_add(WAITING_FOR)),
        ..Writes::default()
    };
    let rank = |run: &str| {
        table
            .runs
            .iter()
            .find(|r| r.run_id == run)
            .map_or(i64::MIN, |r| r.priority)
    };
    let preemptible = |h: &&crate::store::slots::HoldRow| h.interruptible && rank(&h.run_id) < claim.priority.rank();
    if !claim.preempt && others.iter().any(preemptible) {
        reason.push_str("; --preempt would stop interruptible jobs of lower-priority runs");
    }
    // 4. Preemption: what is already asked to stop counts as gone.
    if claim.preempt {
        let stopping = |h: &crate::store::slots::HoldRow| {
            table
                .requests
                .iter()
                .any(|r| r.run_id == h.run_id && r.job == h.job && r.attempt == h.attempt)
        };
        let minus = |a: Need, h: &crate::store::slots::HoldRow| Need {
            cpu_milli: a.cpu_milli.saturating_sub(h.cpu_milli),
            memory: a.memory.saturating_sub(h.memory),
        };
        let mut after = table.holds.iter().filter(|h| stopping(h)).fold(held, minus);
        let mut candidates: Vec<_> = others
            .iter()
            .copied()
            .filter(|h| preemptible(h) && !stopping(h))
            .collect();
        // Lowest priority first, then the most recently started.
        candidates.sort_by_key(|h| (rank(&h.run_id), std::cmp::Reverse(h.since_ms)));
        let mut victims = Vec::new();
        for h in candidates {
            if fits(after) {
                break;
            }
            after = minus(after, h);
            victims.push(h);
        }
        if victims.is_empty() && !table.requests.iter().any(|r| r.by == claim.run) {
            reason.push_str("; nothing to preempt: no interruptible job of a lower-priority run");
        } else if !fits(after) {
            reason.push_str("; preempting every interruptible job of lower runs would not make room");
        } else if !victims.is_empty() {
            let names: Vec<String> = victims
                .iter()
                .map(|h| format!("`{}` of run {}", h.job, h.run_id))
                .collect();
            reason = format!("{reason}; preempting {}", names.join(", "));
            writes.requests = victims
                .into_iter()
                .map(|h| Request {
                    run_id: h.run_id.clone(),
                    job: h.job.clone(),
                    attempt: h.attempt,
                    kind: RequestKind::Preempt,
                    by: claim.run.to_string(),
                })
                .collect();
        } else {
            reason.push_str("; waiting for the jobs it preempted to stop");
        }
    }
    wait(reason, writes)
}

/// The machine's capacity as the live runs measured it: the most CPU tokens
/// any counted, the memory budget of the oldest (the table lists runs
/// oldest first).
pub fn capacity(table: &Table) -> Need {
    Need {
        cpu_milli: table.runs.iter().map(|r| r.cpu_milli).max().unwrap_or(u64::MAX),
        memory: table.runs.first().map_or(u64::MAX, |r| r.memory),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::slots::{HoldRow, RunRow};

    const GIB: u64 = 1 << 30;

    fn run(id: &str, priority: Priority, since: u64) -> RunRow {
        RunRow {
            run_id: id.into(),
            owner: "1:1".into(),
            priority: priority.rank(),
            cpu_milli: 4000,
            memory: 8 * GIB,
            since_ms: since,
            waiting_until_ms: 0,
        }
    }

    fn hold(run: &str, job: &str, cpu: u64, mem_gib: u64, since: u64, interruptible: bool) -> HoldRow {
        HoldRow {
            run_id: run.into(),
            job: job.into(),
            attempt: 1,
            cpu_milli: cpu * 1000,
            memory: mem_gib * GIB,
            group: None,
            interruptible,
            since_ms: since,
        }
    }

    fn claim(run: &str, priority: Priority, cpu: u64, mem_gib: u64) -> Claim<'_> {
        Claim {
            run,
            priority,
            preempt: false,
            need: Need {
                cpu_milli: cpu * 1000,
                memory: mem_gib * GIB,
            },
            group: None,
            cancels_group: false,
            now_ms: 1_000,
        }
    }

    #[test]
    fn a_job_fits_beside_other_runs_jobs_and_waits_when_the_machine_is_full() {
        let mut t = Table {
            runs: vec![run("a", Priority::Normal, 1), run("b", Priority::Normal, 2)],
            holds: vec![hold("a", "build", 2, 4, 10, false)],
            requests: vec![],
        };
        let (d, w) = decide(&t, &claim("b", Priority::Normal, 2, 4));
        assert_eq!(d, Decision::Grant);
        assert!(w.grant);
        t.holds.push(hold("b", "test", 2, 4, 11, false));
        let (d, w) = decide(&t, &claim("b", Priority::Normal, 1, 1));
        assert_eq!(
            d,
            Decision::Wait {
                reason: "waiting for memory: needs 1.0 GiB, 0.0 MiB of 8.0 GiB free on this machine, held by `build` of run a"
                    .into()
            }
        );
        assert!(!w.grant);
        assert_eq!(w.waiting_until_ms, Some(1_000 + WAITING_FOR));
    }

    #[test]
    fn a_job_larger_than_the_machine_runs_when_nothing_else_does() {
        let t = Table {
            runs: vec![run("a", Priority::Normal, 1)],
            ..Table::default()
        };
        assert_eq!(decide(&t, &claim("a", Priority::Normal, 16, 32)).0, Decision::Grant);
    }

    #[test]
    fn a_resource_group_held_by_another_run_is_waited_for_or_cancelled() {
        let mut deploy = hold("a", "deploy", 1, 1, 10, false);
        deploy.group = Some("prod".into());
        let t = Table {
            runs: vec![run("a", Priority::Normal, 1), run("b", Priority::High, 2)],
            holds: vec![deploy],
            requests: vec![],
        };
        let mut c = claim("b", Priority::High, 1, 1);
        c.group = Some("prod");
        let (d, w) = decide(&t, &c);
        assert_eq!(
            d,
            Decision::Wait {
                reason: "waiting for resource group `prod`, held by `deploy` of run a".into()
            }
        );
        assert!(w.requests.is_empty() && w.waiting_until_ms.is_none());
        c.cancels_group = true;
        let (_, w) = decide(&t, &c);
        assert_eq!(w.requests.len(), 1);
        assert_eq!(w.requests[0].kind, RequestKind::Cancel);
        // Its own run's job of the group is the run's own business.
        let mine = claim("a", Priority::Normal, 1, 1);
        assert_eq!(
            decide(
                &t,
                &Claim {
                    group: Some("prod"),
                    ..mine
                }
            )
            .0,
            Decision::Grant
        );
    }

    #[test]
    fn a_lower_run_lets_a_waiting_higher_run_go_first_until_it_stops_waiting() {
        let mut high = run("h", Priority::High, 2);
        high.waiting_until_ms = 2_000;
        let t = Table {
            runs: vec![run("l", Priority::Low, 1), high],
            holds: vec![],
            requests: vec![],
        };
        assert_eq!(
            decide(&t, &claim("l", Priority::Low, 1, 1)).0,
            Decision::Wait {
                reason: "waiting: run h (high priority) goes first".into()
            }
        );
        // An equal or higher run is not held back; nor is anyone once the
        // higher run's wait has run out.
        assert_eq!(decide(&t, &claim("x", Priority::High, 1, 1)).0, Decision::Grant);
        let later = Claim {
            now_ms: 2_001,
            ..claim("l", Priority::Low, 1, 1)
        };
        assert_eq!(decide(&t, &later).0, Decision::Grant);
    }

    #[test]
    fn preemption_stops_the_lowest_most_recent_interruptible_jobs_that_make_room() {
        let t = Table {
            runs: vec![
                run("low", Priority::Low, 1),
                run("normal", Priority::Normal, 2),
                run("high", Priority::High, 3),
            ],
            holds: vec![
                hold("low", "old", 1, 2, 10, true),
                hold("low", "new", 1, 2, 20, true),
                hold("low", "pinned", 1, 2, 30, false),
                hold("normal", "n", 1, 2, 15, true),
            ],
            requests: vec![],
        };
        let mut c = claim("high", Priority::High, 1, 3);
        // Without --preempt it only waits, and says what --preempt would do.
        let (d, w) = decide(&t, &c);
        assert!(w.requests.is_empty());
        assert!(
            matches!(&d, Decision::Wait { reason } if reason.ends_with("; --preempt would stop interruptible jobs of lower-priority runs")),
            "{d:?}"
        );
        c.preempt = true;
        let (d, w) = decide(&t, &c);
        let asked: Vec<(&str, &str)> = w.requests.iter().map(|r| (r.run_id.as_str(), r.job.as_str())).collect();
        assert_eq!(asked, [("low", "new"), ("low", "old")]);
        assert!(
            matches!(d, Decision::Wait { reason } if reason.ends_with("preempting `new` of run low, `old` of run low"))
        );
        // Asked once: the next claim counts them as going.
        let t = Table {
            requests: w.requests,
            ..t
        };
        assert!(decide(&t, &c).1.requests.is_empty());
    }

    #[test]
    fn nothing_is_preempted_when_it_would_not_make_room() {
        let t = Table {
            runs: vec![run("low", Priority::Low, 1), run("high", Priority::High, 2)],
            holds: vec![hold("low", "a", 1, 2, 10, true), hold("low", "b", 1, 6, 11, false)],
            requests: vec![],
        };
        let c = Claim {
            preempt: true,
            ..claim("high", Priority::High, 1, 7)
        };
        let (d, w) = decide(&t, &c);
        assert!(w.requests.is_empty());
        assert_eq!(
            d,
            Decision::Wait {
                reason: "waiting for memory: needs 7.0 GiB, 0.0 MiB of 8.0 GiB free on this machine, held by `a` of run low and `b` of run low; preempting every interruptible job of lower runs would not make room".into()
            }
        );
        // None that may be stopped: said so.
        let pinned = Table {
            holds: vec![hold("low", "b", 1, 8, 11, false)],
            ..t
        };
        let (d, _) = decide(
            &pinned,
            &Claim {
                need: Need {
                    cpu_milli: 1000,
                    memory: GIB,
                },
                ..c
            },
        );
        assert!(
            matches!(&d, Decision::Wait { reason } if reason.ends_with("; nothing to preempt: no interruptible job of a lower-priority run")),
            "{d:?}"
        );
    }

    #[test]
    fn priorities_read_and_print() {
        assert_eq!("HIGH".parse::<Priority>(), Ok(Priority::High));
        assert_eq!(
            "urgent".parse::<Priority>().map_err(|e| e.to_string()),
            Err("`urgent` is not a priority: use high, normal or low".to_string())
        );
        assert_eq!(Priority::Low.to_string(), "low");
        assert!(Priority::High > Priority::Normal);
    }
}
