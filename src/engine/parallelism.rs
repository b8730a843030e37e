//! `-j auto`: how many jobs run at once, adjusted from how hard the machine
//! is pressed.
//!
//! It starts at one job more than the cores ([`Controller::new`]): between
//! one job's end and the next one's start a core would wait on trackside's
//! own work (the record, the workspace, the spawn), and the extra job fills
//! that gap, as ninja's default of a job or two over the cores does.
//!
//! Once a second the actor gives the [`Controller`] a [`Reading`]: the share
//! of the last interval in which some task stalled waiting for CPU, memory
//! or I/O (Linux's pressure stall information), and the memory available.
//! The rules:
//!
//! - **memory pressure** (a tenth of the time stalled on memory, or less
//!   available than the safety margin): the limit is halved at once, and
//!   no job starts until it passes;
//! - **sustained CPU or I/O pressure** (half the time stalled, five readings
//!   running): the limit comes down by one;
//! - **a quiet spell** (ten readings with little CPU and I/O pressure and
//!   none on memory) while jobs wait for a slot: the limit goes up by one,
//!   never above the cores times [`FACTOR`].
//!
//! Pure: readings and time come in; the actor reads the machine
//! (`exec::pressure`).

use std::time::Duration;

/// The limit goes no higher than the cores times this.
pub const FACTOR: usize = 2;

/// Stalled shares (0 to 1) of the last interval, and memory available.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Reading {
    pub cpu: f64,
    pub memory: f64,
    pub io: f64,
    pub available: u64,
}

/// A new limit, and why.
#[derive(Debug, Clone, PartialEq)]
pub struct Change {
    pub limit: usize,
    /// Whether jobs may start (not while memory is under pressure).
    pub admit: bool,
    pub reason: String,
}

const MEMORY_STALL: f64 = 0.10;
const CPU_STALL: f64 = 0.50;
const QUIET_CPU: f64 = 0.20;
const QUIET_MEMORY: f64 = 0.01;
/// Readings of pressure before the limit comes down by one.
const HOT_READINGS: u32 = 5;
/// Readings of quiet before it goes up by one.
const CALM_READINGS: u32 = 10;

#[derive(Debug, Clone)]
pub struct Controller {
    limit: usize,
    max: usize,
    /// Memory kept free (as the admission's margin).
    margin: u64,
    admit: bool,
    hot: u32,
    calm: u32,
}

impl Controller {
    /// Starts at one job per core and one more.
    pub fn new(cores: usize, margin: u64) -> Self {
        let cores = cores.max(1);
        Controller {
            limit: cores + 1,
            max: cores.saturating_mul(FACTOR),
            margin,
            admit: true,
            hot: 0,
            calm: 0,
        }
    }

    pub fn limit(&self) -> usize {
        self.limit
    }

    /// The most it ever allows.
    pub fn max(&self) -> usize {
        self.max
    }

    /// One reading; `waiting`: jobs are ready but every slot is taken.
    pub fn observe(&mut self, r: Reading, waiting: bool, _now: Duration) -> Option<Change> {
        let short = r.available < self.margin;
        if r.memory >= MEMORY_STALL || short {
            self.hot = 0;
            self.calm = 0;
            let why = if short {
                format!(
                    "memory pressure: {} available, less than the {} margin",
                    gib(r.available),
                    gib(self.margin)
                )
            } else {
                format!(
                    "memory pressure: {:.0}% of the last second stalled on memory",
                    r.memory * 100.0
                )
            };
            // Halved once per episode: it stays down while the pressure lasts.
            if self.admit {
                self.admit = false;
                self.limit = (self.limit / 2).max(1);
                return Some(self.change(format!("{why}; halved, and no job starts until it passes")));
            }
            return None;
        }
        if !self.admit {
            if r.memory < QUIET_MEMORY {
                self.admit = true;
                return Some(self.change("memory pressure passed: jobs start again".into()));
            }
            return None;
        }
        let pressed = r.cpu.max(r.io);
        if pressed >= CPU_STALL {
            self.calm = 0;
            self.hot += 1;
            if self.hot >= HOT_READINGS && self.limit > 1 {
                self.hot = 0;
                self.limit -= 1;
                let what = if r.cpu >= r.io { "CPU" } else { "I/O" };
                return Some(self.change(format!(
                    "{what} pressure: {:.0}% stalled for {HOT_READINGS} s; one fewer",
                    pressed * 100.0
                )));
            }
            return None;
        }
        self.hot = 0;
        if pressed < QUIET_CPU && r.memory < QUIET_MEMORY && waiting {
            self.calm += 1;
            if self.calm >= CALM_READINGS && self.limit < self.max {
                self.calm = 0;
                self.limit += 1;
                return Some(self.change(format!("quiet for {CALM_READINGS} s with jobs waiting; one more")));
            }
        } else {
            self.calm = 0;
        }
        None
    }

    fn change(&self, reason: String) -> Change {
        Change {
            limit: self.limit,
            admit: self.admit,
            reason,
        }
    }
}

fn gib(bytes: u64) -> String {
    super::admission::gib(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    const GIB: u64 = 1 << 30;

    fn r(cpu: f64, memory: f64) -> Reading {
        Reading {
            cpu,
            memory,
            io: 0.0,
            available: 8 * GIB,
        }
    }

    fn run(c: &mut Controller, readings: &[(Reading, bool)]) -> Vec<Change> {
        readings
            .iter()
            .enumerate()
            .filter_map(|(i, (reading, waiting))| c.observe(*reading, *waiting, Duration::from_secs(i as u64)))
            .collect()
    }

    #[test]
    fn it_starts_at_one_job_more_than_the_cores_and_at_most_the_cap() {
        assert_eq!((Controller::new(2, GIB).limit(), Controller::new(2, GIB).max()), (3, 4));
        assert_eq!(Controller::new(8, GIB).limit(), 9);
        // No cores known counts as one.
        assert_eq!((Controller::new(0, GIB).limit(), Controller::new(0, GIB).max()), (2, 2));
    }

    #[test]
    fn memory_pressure_halves_the_limit_at_once_and_stops_starts_until_it_passes() {
        let mut c = Controller::new(8, GIB);
        let changes = run(
            &mut c,
            &[(r(0.0, 0.3), true), (r(0.0, 0.4), true), (r(0.0, 0.005), true)],
        );
        assert_eq!(changes.len(), 2, "{changes:?}");
        assert_eq!((changes[0].limit, changes[0].admit), (4, false));
        assert_eq!(
            changes[0].reason,
            "memory pressure: 30% of the last second stalled on memory; halved, and no job starts until it passes"
        );
        assert_eq!((changes[1].limit, changes[1].admit), (4, true));
        // Too little available is pressure too.
        let low = Reading {
            available: GIB / 2,
            ..r(0.0, 0.0)
        };
        let changes = run(&mut c, &[(low, false)]);
        assert_eq!((changes[0].limit, changes[0].admit), (2, false));
        assert!(
            changes[0]
                .reason
                .starts_with("memory pressure: 512.0 MiB available, less than the 1.0 GiB margin")
        );
    }

    #[test]
    fn sustained_cpu_pressure_lowers_it_by_one_within_ten_seconds() {
        let mut c = Controller::new(4, GIB);
        let hot: Vec<_> = (0..10).map(|_| (r(0.8, 0.0), true)).collect();
        let changes = run(&mut c, &hot);
        assert_eq!(changes.iter().map(|c| c.limit).collect::<Vec<_>>(), [4, 3]);
        assert_eq!(changes[0].reason, "CPU pressure: 80% stalled for 5 s; one fewer");
        // A dip resets the count: four hot readings are not five.
        let mut c = Controller::new(4, GIB);
        let mut mixed: Vec<_> = (0..4).map(|_| (r(0.8, 0.0), true)).collect();
        mixed.push((r(0.3, 0.0), true));
        mixed.extend((0..4).map(|_| (r(0.8, 0.0), true)));
        assert!(run(&mut c, &mixed).is_empty());
        // Never below one: one core starts at two, and comes down once.
        let mut c = Controller::new(1, GIB);
        assert_eq!(run(&mut c, &hot).iter().map(|c| c.limit).collect::<Vec<_>>(), [1]);
        assert_eq!(c.limit(), 1);
    }

    #[test]
    fn a_quiet_spell_with_jobs_waiting_raises_it_up_to_the_cap() {
        let mut c = Controller::new(2, GIB);
        // Quiet but nothing waits for a slot: no reason to raise.
        let idle: Vec<_> = (0..30).map(|_| (r(0.05, 0.0), false)).collect();
        assert!(run(&mut c, &idle).is_empty());
        let busy: Vec<_> = (0..60).map(|_| (r(0.05, 0.0), true)).collect();
        let changes = run(&mut c, &busy);
        assert_eq!(changes.iter().map(|c| c.limit).collect::<Vec<_>>(), [4]);
        assert_eq!(c.limit(), 2 * FACTOR, "capped at the cores times the factor");
    }
}
