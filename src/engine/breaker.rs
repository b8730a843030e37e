//! Circuit breakers: one per dependency outside the run (a registry, a
//! host, the Docker daemon) that jobs fail on.
//!
//! A failure the knowledge base ties to a dependency (its rule names one:
//! `dependency:` in assets/failure-rules.yml) counts against that
//! dependency's breaker. When `failures` of them fall within `window`, the
//! breaker opens: jobs that need the dependency are held, not started to
//! fail too. After `cooldown` it lets one job through as a probe
//! (half-open). The probe passing closes the breaker. The probe failing on
//! the dependency opens it again, with the cool-down doubled (at most
//! eight times). A person may close a breaker by hand.
//!
//! Pure: time comes in as `now`, like the rest of the run's rules.

use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;

pub use crate::protocol::event::BreakerPhase as Phase;
pub use crate::store::gc::BreakerConfig as Settings;

/// What a breaker did: for the run's events.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transition {
    pub dependency: String,
    pub phase: Phase,
    /// Why, in a line: "3 failures in 60 s (connection refused)".
    pub reason: String,
    /// When it opened: how long until it lets a probe through.
    pub probe_in: Option<Duration>,
}

/// Whether a job may start, as far as the breakers go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Gate {
    Go,
    /// It starts as the probe of these breakers (now half-open).
    Probe(Vec<Transition>),
    /// Held: why, and a key that stays the same while the reason does (the
    /// reason's countdown moves).
    Held {
        reason: String,
        key: String,
    },
}

#[derive(Debug, Clone)]
struct Breaker {
    phase: Phase,
    /// Failures while closed, within the window: when, and which job.
    recent: VecDeque<(Duration, usize)>,
    /// What the last failure was ("connection refused").
    what: String,
    /// Open: when it lets a probe through.
    probe_at: Duration,
    /// Half-open: the job let through.
    probe: Option<usize>,
    /// Times it opened since it was last closed.
    trips: u32,
    /// The failures that opened it.
    opened_by: usize,
}

/// Every breaker of a run, by dependency.
#[derive(Debug, Clone)]
pub struct Breakers {
    settings: Settings,
    map: BTreeMap<String, Breaker>,
}

impl Breakers {
    pub fn new(settings: Settings) -> Self {
        Breakers {
            settings,
            map: BTreeMap::new(),
        }
    }

    /// Dependencies whose breaker is open or half-open.
    pub fn tripped(&self) -> impl Iterator<Item = &str> {
        self.map
            .iter()
            .filter(|(_, b)| b.phase != Phase::Closed)
            .map(|(d, _)| d.as_str())
    }

    /// A job failed on `dependency` (`what` the failure was).
    pub fn failed(&mut self, dependency: &str, what: &str, job: usize, now: Duration) -> Option<Transition> {
        let s = self.settings;
        let b = self.map.entry(dependency.to_string()).or_insert_with(|| Breaker {
            phase: Phase::Closed,
            recent: VecDeque::new(),
            what: String::new(),
            probe_at: Duration::ZERO,
            probe: None,
            trips: 0,
            opened_by: 0,
        });
        b.what = what.to_string();
        match b.phase {
            Phase::Closed => {
                b.recent.push_back((now, job));
                while b.recent.front().is_some_and(|&(t, _)| now.saturating_sub(t) > s.window) {
                    b.recent.pop_front();
                }
                // Failures of distinct jobs: one job's quick retries on a
                // mistyped host are not an outage.
                let mut jobs: Vec<usize> = b.recent.iter().map(|&(_, j)| j).collect();
                jobs.sort_unstable();
                jobs.dedup();
                if jobs.len() < s.failures as usize {
                    return None;
                }
                b.opened_by = jobs.len();
                b.recent.clear();
                Some(open(dependency, b, s, now))
            }
            // The probe failed on it: open again, for longer.
            Phase::HalfOpen if b.probe == Some(job) => Some(open(dependency, b, s, now)),
            // A job that started before it opened: already counted as down.
            Phase::HalfOpen | Phase::Open => None,
        }
    }

    /// Job `job` passed: if it was a breaker's probe, that breaker closes.
    pub fn passed(&mut self, job: usize) -> Vec<Transition> {
        let mut out = Vec::new();
        for (d, b) in &mut self.map {
            if b.phase == Phase::HalfOpen && b.probe == Some(job) {
                *b = closed(b);
                out.push(Transition {
                    dependency: d.clone(),
                    phase: Phase::Closed,
                    reason: "the probe passed".into(),
                    probe_in: None,
                });
            }
        }
        out
    }

    /// A job ended in another way than passing or failing on a
    /// dependency (cancelled, or failed on something else): where it was
    /// the probe, except of `except` (the dependency it failed on, which
    /// [`Self::failed`] handles), the next job that needs it probes instead.
    pub fn ended_except(&mut self, job: usize, except: &str) {
        for (d, b) in &mut self.map {
            if b.phase == Phase::HalfOpen && b.probe == Some(job) && d != except {
                b.probe = None;
            }
        }
    }

    /// Whether job `job`, which needs `dependencies`, may start now.
    pub fn gate(&mut self, dependencies: &[String], job: usize, now: Duration) -> Gate {
        let mut probes = Vec::new();
        for d in dependencies {
            let Some(b) = self.map.get(d) else { continue };
            match b.phase {
                Phase::Closed => {}
                Phase::Open if now >= b.probe_at => probes.push(d.clone()),
                Phase::Open => {
                    let left = b.probe_at.saturating_sub(now).as_secs_f64().ceil() as u64;
                    return Gate::Held {
                        reason: format!(
                            "held: circuit open — {d}: {}, {} failures in {} s; next probe in {left} s",
                            b.what,
                            b.opened_by,
                            self.settings.window.as_secs(),
                        ),
                        key: format!("open {d} {}", b.trips),
                    };
                }
                Phase::HalfOpen if b.probe.is_none_or(|p| p == job) => probes.push(d.clone()),
                Phase::HalfOpen => {
                    return Gate::Held {
                        reason: format!("held: circuit half-open — another job is probing {d}"),
                        key: format!("half-open {d} {}", b.trips),
                    };
                }
            }
        }
        if probes.is_empty() {
            return Gate::Go;
        }
        let mut out = Vec::new();
        for d in probes {
            let Some(b) = self.map.get_mut(&d) else { continue };
            if b.phase == Phase::Open {
                out.push(Transition {
                    dependency: d.clone(),
                    phase: Phase::HalfOpen,
                    reason: "cool-down over: one job goes through as a probe".into(),
                    probe_in: None,
                });
            }
            b.phase = Phase::HalfOpen;
            b.probe = Some(job);
        }
        Gate::Probe(out)
    }

    /// Closes a breaker by hand.
    pub fn close(&mut self, dependency: &str, by: &str) -> Option<Transition> {
        let b = self.map.get_mut(dependency)?;
        if b.phase == Phase::Closed {
            return None;
        }
        *b = closed(b);
        Some(Transition {
            dependency: dependency.to_string(),
            phase: Phase::Closed,
            reason: format!("closed by hand by {by}"),
            probe_in: None,
        })
    }

    /// The earliest time an open breaker lets a probe through.
    pub fn next_probe(&self) -> Option<Duration> {
        self.map
            .values()
            .filter(|b| b.phase == Phase::Open)
            .map(|b| b.probe_at)
            .min()
    }
}

/// The dependency the Docker daemon's failures name (the rules' template).
pub const DOCKER_DAEMON: &str = "the Docker daemon";

/// Whether `dependency` is outside `job`: not this machine's loopback
/// (the job's own server, which another job does not share) nor one of
/// its service containers.
pub fn outside(job: &crate::pipeline::Job, dependency: &str) -> bool {
    let host = host_of(dependency);
    let loopback = host == "localhost"
        || host == "::1"
        || host == "0.0.0.0"
        || host.parse::<std::net::Ipv4Addr>().is_ok_and(|a| a.is_loopback());
    let service = job
        .services
        .iter()
        .any(|s| s.name.eq_ignore_ascii_case(&host) || s.aliases.iter().any(|a| a.eq_ignore_ascii_case(&host)));
    !loopback && !service
}

/// A dependency's host: without its port and brackets, in lower case
/// (`[::1]:5432` and `::1` are `::1`).
fn host_of(dependency: &str) -> String {
    if dependency.parse::<std::net::Ipv6Addr>().is_ok() {
        return dependency.to_ascii_lowercase();
    }
    let host = match dependency.rsplit_once(':') {
        Some((h, port)) if port.chars().all(|c| c.is_ascii_digit()) => h,
        _ => dependency,
    };
    host.trim_start_matches('[').trim_end_matches(']').to_ascii_lowercase()
}

/// Whether `text` names `host` as a whole host name (`db` in `db:5432`
/// or `postgres://db/x`, not in `mongodb` or `db_migrate`).
fn names_host(text: &str, host: &str) -> bool {
    let text = text.to_ascii_lowercase();
    let part = |c: char| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.';
    text.match_indices(host).any(|(at, _)| {
        let before = text[..at].chars().next_back();
        let after = text[at + host.len()..].chars().next();
        // A trailing dot ends a sentence, not the name.
        let after_ok = match after {
            None => true,
            Some('.') => !text[at + host.len() + 1..].starts_with(part),
            Some(c) => !part(c),
        };
        !before.is_some_and(part) && after_ok
    })
}

/// Whether `job` needs `dependency`: the Docker daemon when it runs a
/// container, else a host its scripts, images, services or variables name
/// (the host without its port, in any case).
pub fn needs(job: &crate::pipeline::Job, dependency: &str) -> bool {
    let containers = job.steps.iter().any(|s| s.image.is_some()) || !job.services.is_empty();
    if dependency == DOCKER_DAEMON {
        return containers;
    }
    let host = host_of(dependency);
    if host.is_empty() {
        return false;
    }
    let names = |text: &str| names_host(text, &host);
    job.steps.iter().any(|s| {
        s.script.iter().any(|l| names(l))
            || s.image.as_deref().is_some_and(names)
            || s.environment.iter().any(|v| names(&v.value))
    }) || job.services.iter().any(|s| names(&s.image))
        || job.environment.iter().any(|v| names(&v.value))
}

fn open(dependency: &str, b: &mut Breaker, s: Settings, now: Duration) -> Transition {
    let cooldown = s.cooldown.saturating_mul(1 << b.trips.min(3));
    let again = b.phase == Phase::HalfOpen;
    b.trips = b.trips.saturating_add(1);
    b.phase = Phase::Open;
    b.probe = None;
    b.probe_at = now.saturating_add(cooldown);
    let reason = if again {
        format!("the probe failed too ({})", b.what)
    } else {
        format!("{} failures in {} s ({})", b.opened_by, s.window.as_secs(), b.what)
    };
    Transition {
        dependency: dependency.to_string(),
        phase: Phase::Open,
        reason,
        probe_in: Some(cooldown),
    }
}

fn closed(b: &Breaker) -> Breaker {
    Breaker {
        phase: Phase::Closed,
        recent: VecDeque::new(),
        what: b.what.clone(),
        probe_at: Duration::ZERO,
        probe: None,
        trips: 0,
        opened_by: 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    fn breakers() -> Breakers {
        Breakers::new(Settings {
            failures: 3,
            window: s(60),
            cooldown: s(30),
        })
    }

    const REG: &str = "registry.local:5000";

    fn deps() -> Vec<String> {
        vec![REG.to_string()]
    }

    #[test]
    fn failures_within_the_window_open_it_and_hold_the_jobs_that_need_it() {
        let mut b = breakers();
        assert_eq!(b.failed(REG, "connection refused", 0, s(0)), None);
        // One job's retries count once.
        assert_eq!(b.failed(REG, "connection refused", 0, s(1)), None);
        assert_eq!(b.failed(REG, "connection refused", 0, s(2)), None);
        // The first falls out of the window before the third comes.
        assert_eq!(b.failed(REG, "connection refused", 1, s(50)), None);
        assert_eq!(b.failed(REG, "connection refused", 2, s(70)), None);
        let t = b.failed(REG, "connection refused", 3, s(80)).expect("opens");
        assert_eq!(t.phase, Phase::Open);
        assert_eq!(t.reason, "3 failures in 60 s (connection refused)");
        assert_eq!(t.probe_in, Some(s(30)));
        assert_eq!(b.next_probe(), Some(s(110)));
        assert_eq!(
            b.gate(&deps(), 4, s(90)),
            Gate::Held {
                reason: "held: circuit open — registry.local:5000: connection refused, 3 failures in 60 s; \
                         next probe in 20 s"
                    .into(),
                key: format!("open {REG} 1"),
            }
        );
        // A job that does not need it goes.
        assert_eq!(b.gate(&["db:5432".to_string()], 5, s(90)), Gate::Go);
        assert_eq!(b.gate(&[], 5, s(90)), Gate::Go);
    }

    #[test]
    fn after_the_cool_down_one_probe_goes_and_its_success_closes_it() {
        let mut b = breakers();
        for j in 0..3 {
            b.failed(REG, "connection refused", j, s(1));
        }
        let Gate::Probe(t) = b.gate(&deps(), 7, s(31)) else {
            panic!("a probe");
        };
        assert_eq!(t[0].phase, Phase::HalfOpen);
        assert!(
            matches!(b.gate(&deps(), 8, s(32)), Gate::Held { .. }),
            "one probe at a time"
        );
        assert_eq!(
            b.gate(&deps(), 7, s(32)),
            Gate::Probe(vec![]),
            "the probe itself may go"
        );
        let closed = b.passed(7);
        assert_eq!(closed.len(), 1);
        assert_eq!(closed[0].phase, Phase::Closed);
        assert_eq!(b.gate(&deps(), 8, s(33)), Gate::Go);
        assert_eq!(b.tripped().count(), 0);
    }

    #[test]
    fn a_failed_probe_opens_it_again_for_longer_and_a_cancelled_one_hands_over() {
        let mut b = breakers();
        for j in 0..3 {
            b.failed(REG, "connection refused", j, s(0));
        }
        assert!(matches!(b.gate(&deps(), 5, s(30)), Gate::Probe(_)));
        let t = b.failed(REG, "connection refused", 5, s(31)).expect("opens again");
        assert_eq!(t.reason, "the probe failed too (connection refused)");
        assert_eq!(t.probe_in, Some(s(60)), "doubled");
        assert!(matches!(b.gate(&deps(), 6, s(90)), Gate::Held { .. }));
        assert!(matches!(b.gate(&deps(), 6, s(91)), Gate::Probe(_)));
        // The probe cancelled: the next job probes.
        b.ended_except(6, "");
        assert!(matches!(b.gate(&deps(), 9, s(92)), Gate::Probe(_)));
        // A failure of a job that started before the opening is not the probe's.
        assert_eq!(b.failed(REG, "connection refused", 2, s(93)), None);
    }

    #[test]
    fn a_job_needs_the_hosts_it_names_and_the_daemon_when_it_runs_containers() {
        let yaml = "name: t\njobs:\n  push:\n    image: registry.local:5000/tools:1\n    \
                    steps: [{script: ['curl -f http://API.example.com/health']}]\n  \
                    lint:\n    environment: {DB: 'db:5432'}\n    steps: [{script: ['make lint']}]\n";
        let (p, _) = crate::pipeline::parse_source(
            std::path::Path::new("t.yml"),
            yaml.to_string(),
            &crate::pipeline::LoadOptions::default(),
        )
        .unwrap_or_else(|r| panic!("{}", r.render(false)));
        let (push, lint) = (&p.jobs[0], &p.jobs[1]);
        assert!(needs(push, "registry.local:5000"));
        assert!(needs(push, "api.example.com:443"));
        assert!(needs(push, DOCKER_DAEMON));
        assert!(!needs(lint, DOCKER_DAEMON));
        assert!(needs(lint, "db:5432"));
        assert!(!needs(lint, "registry.local"));
        assert!(!needs(lint, ":5432"), "a port alone names nothing");
        assert!(names_host("psql -h db -p 5432", "db"));
        assert!(names_host("connect to db.", "db"));
        assert!(!names_host("mongodb://x", "db"));
        assert!(!names_host("./db_migrate", "db"));
        assert!(!names_host("db.example.com", "db"), "another host");
        assert!(outside(lint, "db:5432"));
        assert!(!outside(lint, "localhost:8080"));
        assert!(!outside(lint, "127.0.0.1:5432"));
        assert!(!outside(lint, "[::1]:5432"));
        assert!(!outside(lint, "::1"));
    }

    #[test]
    fn a_person_closes_it_by_hand() {
        let mut b = breakers();
        for j in 0..3 {
            b.failed(REG, "connection refused", j, s(0));
        }
        let t = b.close(REG, "ana@build").expect("closes");
        assert_eq!(t.reason, "closed by hand by ana@build");
        assert_eq!(b.gate(&deps(), 5, s(1)), Gate::Go);
        assert_eq!(b.close(REG, "ana@build"), None, "already closed");
        assert_eq!(b.close("nothing", "ana@build"), None);
    }
}
