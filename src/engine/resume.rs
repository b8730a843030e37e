//! Going on with a run whose trackside died (`trackside resume RUN`): what
//! its record says was done.
//!
//! A job that passed is kept, if every job it comes after is kept too: a
//! job re-run upstream could change what it was given. Attempts that were
//! running when trackside died were interrupted. They run again, and they
//! are not counted as failures (their end was never recorded, so history
//! has no row for them). New attempts are numbered after the old ones, so
//! logs and history rows of both parts stay apart. Events go on from the
//! record's last sequence number. The artifacts of kept jobs are found
//! under the run's id, as before. A restore that finds them damaged makes
//! their producer run again, as in any run.
//!
//! Pure: it reads the events, not the disk.

use std::collections::BTreeMap;

use crate::pipeline::{Pipeline, Plan};
use crate::protocol::{Event, EventKind, JobStatus};

/// What the first part of a run leaves to the second.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Resumed {
    /// Jobs that passed, with all they come after: not run again.
    pub kept: Vec<String>,
    /// Jobs whose attempt was running when trackside died.
    pub interrupted: Vec<String>,
    /// The last attempt number of each job that started.
    pub attempts: BTreeMap<String, u32>,
    /// The first sequence number of the second part.
    pub next_seq: u64,
}

/// Reads the first part's events for `pipeline` as it is now.
pub fn from_events(events: &[Event], pipeline: &Pipeline, plan: &Plan) -> Resumed {
    #[derive(Clone, Copy, PartialEq)]
    enum Last {
        Started,
        Passed,
        Other,
    }
    let mut last: BTreeMap<&str, Last> = BTreeMap::new();
    let mut attempts: BTreeMap<String, u32> = BTreeMap::new();
    for ev in events {
        match &ev.kind {
            EventKind::JobStarted { job, attempt } => {
                last.insert(job, Last::Started);
                let n = attempts.entry(job.clone()).or_default();
                *n = (*n).max(*attempt);
            }
            EventKind::JobFinished { job, status, .. } => {
                let l = if *status == JobStatus::Succeeded {
                    Last::Passed
                } else {
                    Last::Other
                };
                last.insert(job, l);
            }
            // A kept job of an earlier resume passed then.
            EventKind::JobKept { job, .. } => {
                last.insert(job, Last::Passed);
            }
            EventKind::JobReset { job, .. } | EventKind::JobSkipped { job, .. } => {
                last.insert(job, Last::Other);
            }
            _ => {}
        }
    }
    let passed = |name: &str| last.get(name) == Some(&Last::Passed);
    // In dependency order: kept when it passed and all it needs is kept.
    let mut kept = vec![false; pipeline.jobs.len()];
    for &j in &plan.order {
        kept[j] = passed(&pipeline.jobs[j].name) && plan.deps[j].iter().all(|&d| kept[d]);
    }
    Resumed {
        kept: (0..pipeline.jobs.len())
            .filter(|&j| kept[j])
            .map(|j| pipeline.jobs[j].name.clone())
            .collect(),
        interrupted: last
            .iter()
            .filter(|(_, l)| **l == Last::Started)
            .map(|(j, _)| j.to_string())
            .collect(),
        attempts,
        next_seq: events.iter().map(|e| e.seq + 1).max().unwrap_or(0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::{LoadOptions, parse_source};

    fn ev(seq: u64, kind: EventKind) -> Event {
        Event { seq, ts: seq, kind }
    }

    fn finished(job: &str, attempt: u32, status: JobStatus) -> EventKind {
        EventKind::JobFinished {
            job: job.into(),
            attempt,
            status,
            exit_code: Some(0),
            failure_class: None,
            duration_ms: 1,
            flaky: false,
            message: None,
            cached: None,
            diagnosis: None,
        }
    }

    #[test]
    fn passed_jobs_are_kept_with_their_upstream_and_running_ones_were_interrupted() {
        let yaml = "name: t\njobs:\n  a: {steps: [{script: x}]}\n  b: {depends_on: [a], steps: [{script: x}]}\n  \
                    c: {depends_on: [b], steps: [{script: x}]}\n  lint: {steps: [{script: x}]}\n  \
                    flaky: {steps: [{script: x}]}\n  after: {depends_on: [flaky], steps: [{script: x}]}\n";
        let (p, _) = parse_source(std::path::Path::new("t.yml"), yaml.into(), &LoadOptions::default())
            .unwrap_or_else(|r| panic!("{}", r.render(false)));
        let plan = Plan::build(&p).expect("plan");
        let started = |job: &str, attempt| EventKind::JobStarted {
            job: job.into(),
            attempt,
        };
        let events = vec![
            ev(0, started("a", 1)),
            ev(1, started("lint", 1)),
            ev(2, started("flaky", 1)),
            ev(3, finished("a", 1, JobStatus::Succeeded)),
            ev(4, started("b", 1)),
            ev(5, finished("flaky", 1, JobStatus::Failed)),
            ev(6, started("flaky", 2)),
            ev(7, finished("flaky", 2, JobStatus::Succeeded)),
            // `after` passed, but... (an edit reset `flaky` afterwards)
            ev(8, started("after", 1)),
            ev(9, finished("after", 1, JobStatus::Succeeded)),
            ev(
                10,
                EventKind::JobReset {
                    job: "flaky".into(),
                    reason: "retry".into(),
                },
            ),
            ev(11, started("flaky", 3)),
        ];
        let r = from_events(&events, &p, &plan);
        // `after` passed, but `flaky` runs again: `after` is not kept.
        assert_eq!(r.kept, ["a"]);
        assert_eq!(r.interrupted, ["b", "flaky", "lint"]);
        assert_eq!(r.attempts.get("flaky"), Some(&3));
        assert_eq!(r.attempts.get("c"), None);
        assert_eq!(r.next_seq, 12);
        // A second resume keeps what the first kept.
        let mut more = events.clone();
        more.push(ev(
            12,
            EventKind::JobKept {
                job: "a".into(),
                attempt: 1,
            },
        ));
        assert_eq!(from_events(&more, &p, &plan).kept, ["a"]);
        assert_eq!(from_events(&[], &p, &plan), Resumed::default());
    }
}
