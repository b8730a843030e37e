//! Admission: whether a ready job fits in what the machine has left.
//!
//! Each job holds a [`Need`] (CPU in thousandths, memory in bytes) while it
//! runs: what it declares (`resources:`, or `TRACKSIDE_CPU` /
//! `TRACKSIDE_MEMORY`), else what history says it used (the 90th
//! percentile of its recorded peaks), else [`Need::DEFAULT`]. The
//! [`Ledger`] holds the machine's [`Capacity`] and what running jobs hold;
//! the run's state machine asks it before each start. Pure: no clock, no
//! I/O (the actor measures the machine once, [`Capacity::measure`]).
//!
//! A job that can never fit is told so at once instead of waiting: one that
//! declares more memory than the budget. One that asks for more CPUs than
//! there are runs alone (slower, not never); an estimate from history
//! larger than the budget runs alone too (it ran before).

use crate::pipeline::Job;

/// 1 GiB.
const GIB: u64 = 1 << 30;

/// What a job holds while it runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Need {
    /// CPUs in thousandths (1000 = one CPU).
    pub cpu_milli: u64,
    pub memory: u64,
}

/// Where a job's [`Need`] comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Basis {
    /// `resources:` or the `TRACKSIDE_*` variables.
    Declared,
    /// Its recorded peaks in past runs.
    History,
    Default,
}

pub use crate::store::history::JobUsage;

impl Need {
    /// A job with no declaration and no history: one CPU and 256 MiB (what
    /// a shell step with a compiler or test runner usually stays under).
    pub const DEFAULT: Need = Need {
        cpu_milli: 1000,
        memory: 256 << 20,
    };

    /// A job whose steps all run on a cluster: this machine ships its
    /// workspace and reads its log.
    pub const REMOTE: Need = Need {
        cpu_milli: 50,
        memory: 32 << 20,
    };

    /// Job `job`'s need, with what history says of it.
    pub fn of(job: &Job, learned: Option<&JobUsage>) -> (Need, Basis) {
        let declared_cpu = job.container.cpus.map(|c| (c * 1000.0).round().max(1.0) as u64);
        let declared_mem = job.container.memory;
        // A deploy job waits on a service; it holds little of the machine.
        if job.deploy.is_some() && declared_cpu.is_none() && declared_mem.is_none() {
            return (
                Need {
                    cpu_milli: 100,
                    memory: 64 << 20,
                },
                Basis::Default,
            );
        }
        let learned = learned.copied().unwrap_or_default();
        let basis = if declared_cpu.is_some() || declared_mem.is_some() {
            Basis::Declared
        } else if learned.memory.is_some() || learned.cpu_milli.is_some() {
            Basis::History
        } else {
            Basis::Default
        };
        let need = Need {
            cpu_milli: declared_cpu.or(learned.cpu_milli).unwrap_or(Need::DEFAULT.cpu_milli),
            memory: declared_mem.or(learned.memory).unwrap_or(Need::DEFAULT.memory),
        };
        (need, basis)
    }

    fn plus(self, o: Need) -> Need {
        Need {
            cpu_milli: self.cpu_milli.saturating_add(o.cpu_milli),
            memory: self.memory.saturating_add(o.memory),
        }
    }

    fn minus(self, o: Need) -> Need {
        Need {
            cpu_milli: self.cpu_milli.saturating_sub(o.cpu_milli),
            memory: self.memory.saturating_sub(o.memory),
        }
    }
}

/// What the machine gives the run's jobs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Capacity {
    /// CPU tokens in thousandths: the cores, or more when `-j` asks for
    /// more jobs at once than there are cores.
    pub cpu_milli: u64,
    /// The memory budget: `available` less `margin`.
    pub memory: u64,
    /// Memory available when the run started.
    pub available: u64,
    /// The machine's memory (or its cgroup's limit) less `margin`: a
    /// declared need above this can never fit.
    pub total: u64,
    /// Kept free: the larger of 10% of the machine's memory and 1 GiB, at
    /// most a quarter of it.
    pub margin: u64,
}

impl Default for Capacity {
    fn default() -> Self {
        Capacity::UNLIMITED
    }
}

impl Capacity {
    /// No limit but the number of jobs (the state machine's tests, and a
    /// machine whose memory cannot be read).
    pub const UNLIMITED: Capacity = Capacity {
        cpu_milli: u64::MAX,
        memory: u64::MAX,
        available: u64::MAX,
        total: u64::MAX,
        margin: 0,
    };

    /// From the machine's numbers: `cores`, memory `available` now and
    /// `total`, and the most jobs at once (`-j`).
    pub fn of(cores: usize, available: u64, total: u64, max_parallel: usize) -> Capacity {
        let margin = (total / 10).max(GIB).min(total / 4);
        let tokens = cores.max(max_parallel).max(1) as u64;
        Capacity {
            cpu_milli: tokens.saturating_mul(1000),
            memory: available.saturating_sub(margin),
            available,
            total: total.saturating_sub(margin),
            margin,
        }
    }

    /// This machine, now: its cores, and `MemAvailable`/`MemTotal` from
    /// /proc/meminfo, lowered to what trackside's own cgroup allows (a
    /// container's `memory.max`). Unlimited memory where they cannot be read.
    pub fn measure(max_parallel: usize) -> Capacity {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        match memory() {
            Some((available, total)) => Capacity::of(cores, available, total, max_parallel),
            None => Capacity {
                cpu_milli: cores.max(max_parallel).max(1) as u64 * 1000,
                ..Capacity::UNLIMITED
            },
        }
    }
}

/// Memory available now and the machine's total, lowered to what
/// trackside's own cgroup allows; `None` where /proc/meminfo cannot be read.
pub fn memory() -> Option<(u64, u64)> {
    let (mut available, mut total) = meminfo()?;
    if let Some((max, current)) = cgroup_memory() {
        total = total.min(max);
        available = available.min(max.saturating_sub(current));
    }
    Some((available, total))
}

fn meminfo() -> Option<(u64, u64)> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
            .map(|kib| kib.saturating_mul(1024))
    };
    Some((field("MemAvailable:")?, field("MemTotal:")?))
}

/// trackside's own cgroup's memory limit and use (cgroup v2), when
/// limited; the page cache the kernel can drop (`inactive_file`) is not
/// counted as used.
fn cgroup_memory() -> Option<(u64, u64)> {
    let own = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    let rel = own.lines().find_map(|l| l.strip_prefix("0::"))?;
    let dir = std::path::Path::new("/sys/fs/cgroup").join(rel.trim_start_matches('/'));
    let read = |f: &str| std::fs::read_to_string(dir.join(f)).ok();
    let max = read("memory.max")?.trim().parse::<u64>().ok()?;
    let current = read("memory.current")?.trim().parse::<u64>().ok()?;
    let cache = read("memory.stat")
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("inactive_file "))
                .and_then(|v| v.trim().parse::<u64>().ok())
        })
        .unwrap_or(0);
    Some((max, current.saturating_sub(cache)))
}

/// Whether a job can start now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fit {
    Fits,
    /// Not now: what it waits for.
    Wait(String),
    /// Never on this machine: why.
    Never(String),
}

/// The machine's capacity and what running jobs hold of it.
#[derive(Debug, Clone)]
pub struct Ledger {
    capacity: Capacity,
    used: Need,
}

impl Ledger {
    pub fn new(capacity: Capacity) -> Self {
        Ledger {
            capacity,
            used: Need::default(),
        }
    }

    pub fn capacity(&self) -> Capacity {
        self.capacity
    }

    pub fn used(&self) -> Need {
        self.used
    }

    /// What a job with `need` would hold: its CPUs at most all of them, its
    /// memory at most the budget (so one larger than what was free at the
    /// start runs alone; a declared need larger than the machine is
    /// [`Fit::Never`] instead).
    pub fn held(&self, need: Need) -> Need {
        Need {
            cpu_milli: need.cpu_milli.min(self.capacity.cpu_milli),
            memory: need.memory.min(self.capacity.memory),
        }
    }

    /// Whether a job with `need` can start now.
    pub fn fit(&self, need: Need, basis: Basis) -> Fit {
        let cap = self.capacity;
        // Larger than the machine: never. Larger than what was free at the
        // start: it holds all of that, so it runs when nothing else does.
        if basis == Basis::Declared && need.memory > cap.total {
            return Fit::Never(format!(
                "unschedulable: needs {} of memory, this machine has {} for jobs ({} in all less a {} safety margin)",
                gib(need.memory),
                gib(cap.total),
                gib(cap.total.saturating_add(cap.margin)),
                gib(cap.margin),
            ));
        }
        let held = self.held(need);
        let after = self.used.plus(held);
        if after.memory > cap.memory {
            return Fit::Wait(format!(
                "waiting for memory: needs {}, {} of {} free",
                gib(held.memory),
                gib(cap.memory.saturating_sub(self.used.memory)),
                gib(cap.memory),
            ));
        }
        if after.cpu_milli > cap.cpu_milli {
            return Fit::Wait(format!(
                "waiting for CPU: needs {}, {} of {} free",
                cpus(held.cpu_milli),
                number(cap.cpu_milli.saturating_sub(self.used.cpu_milli)),
                cpus(cap.cpu_milli),
            ));
        }
        Fit::Fits
    }

    /// What [`Self::fit`] would say, without its text: `None` when it
    /// fits, else the start of its text ("waiting for memory", "waiting
    /// for CPU", "unschedulable"), which names what the job waits for.
    pub fn refusal(&self, need: Need, basis: Basis) -> Option<&'static str> {
        let cap = self.capacity;
        if basis == Basis::Declared && need.memory > cap.total {
            return Some("unschedulable");
        }
        let after = self.used.plus(self.held(need));
        if after.memory > cap.memory {
            Some("waiting for memory")
        } else if after.cpu_milli > cap.cpu_milli {
            Some("waiting for CPU")
        } else {
            None
        }
    }

    /// Whether a declared `need` fits beside what is held now, as
    /// [`Self::fit`] with [`Basis::Declared`] says [`Fit::Fits`], without
    /// making the text of why not: for choosing among many ledgers.
    pub fn fits(&self, need: Need) -> bool {
        let after = self.used.plus(self.held(need));
        need.memory <= self.capacity.total
            && after.memory <= self.capacity.memory
            && after.cpu_milli <= self.capacity.cpu_milli
    }

    pub fn take(&mut self, need: Need) {
        self.used = self.used.plus(self.held(need));
    }

    pub fn give_back(&mut self, need: Need) {
        self.used = self.used.minus(self.held(need));
    }
}

/// `1.5 GiB`, `512 MiB`.
pub fn gib(bytes: u64) -> String {
    crate::exec::preflight::gib(bytes)
}

/// `2 CPUs`, `0.5 CPU`.
pub fn cpus(milli: u64) -> String {
    let unit = if milli > 0 && milli <= 1000 { "CPU" } else { "CPUs" };
    format!("{} {unit}", number(milli))
}

/// `2`, `0.5`: thousandths as a number.
fn number(milli: u64) -> String {
    if milli.is_multiple_of(1000) {
        format!("{}", milli / 1000)
    } else {
        format!("{:.1}", milli as f64 / 1000.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn need(cpu: u64, mib: u64) -> Need {
        Need {
            cpu_milli: cpu,
            memory: mib << 20,
        }
    }

    #[test]
    fn fits_says_what_fit_says_of_a_declared_need() {
        // 4 CPUs, 5 GiB budget, 7 GiB for jobs in all.
        let mut l = Ledger::new(Capacity::of(4, 6 * GIB, 8 * GIB, 4));
        l.take(need(2000, 3 << 10));
        for n in [
            need(1000, 1 << 10),
            need(2000, 2 << 10),
            need(3000, 1 << 10),
            need(1000, 3 << 10),
            need(1000, 6 << 10),
            need(1000, 9 << 10),
        ] {
            assert_eq!(l.fits(n), l.fit(n, Basis::Declared) == Fit::Fits, "{n:?}");
        }
        for basis in [Basis::Declared, Basis::History] {
            for n in [
                need(1000, 1 << 10),
                need(3000, 1 << 10),
                need(1000, 3 << 10),
                need(1000, 9 << 10),
            ] {
                let text = match l.fit(n, basis) {
                    Fit::Fits => None,
                    Fit::Wait(t) | Fit::Never(t) => Some(t),
                };
                let key = text.as_deref().and_then(|t| t.split(':').next());
                assert_eq!(l.refusal(n, basis), key, "{n:?} {basis:?}");
            }
        }
        let empty = Ledger::new(Capacity::of(4, 6 * GIB, 8 * GIB, 4));
        assert!(
            empty.fits(need(1000, 6 << 10)),
            "above the budget, within the machine: alone"
        );
        assert!(!empty.fits(need(1000, 9 << 10)), "above the machine: never");
    }

    #[test]
    fn the_budget_keeps_a_margin_of_a_tenth_or_a_gib() {
        let c = Capacity::of(4, 8 * GIB, 16 * GIB, 4);
        assert_eq!(c.margin, 16 * GIB / 10);
        assert_eq!(c.memory, 8 * GIB - 16 * GIB / 10);
        assert_eq!(c.total, 16 * GIB - 16 * GIB / 10);
        let small = Capacity::of(2, 3 * GIB, 4 * GIB, 2);
        assert_eq!(small.margin, GIB);
        assert_eq!(small.memory, 2 * GIB);
        // A small machine or container keeps a quarter, not a whole GiB.
        let tiny = Capacity::of(1, GIB, 2 * GIB, 1);
        assert_eq!(tiny.margin, GIB / 2);
        assert_eq!(tiny.memory, GIB / 2);
        // `-j 8` on 2 cores: eight one-CPU jobs fit.
        assert_eq!(Capacity::of(2, 3 * GIB, 4 * GIB, 8).cpu_milli, 8000);
    }

    #[test]
    fn jobs_are_admitted_while_they_fit_and_wait_for_what_they_lack() {
        let mut l = Ledger::new(Capacity::of(2, 3 * GIB, 4 * GIB, 2));
        assert_eq!(l.fit(need(1000, 1024), Basis::Declared), Fit::Fits);
        l.take(need(1000, 1024));
        let Fit::Wait(why) = l.fit(need(500, 1536), Basis::Declared) else {
            panic!("should wait for memory");
        };
        assert_eq!(why, "waiting for memory: needs 1.5 GiB, 1.0 GiB of 2.0 GiB free");
        l.take(need(1000, 512));
        let Fit::Wait(why) = l.fit(need(500, 10), Basis::Default) else {
            panic!("should wait for CPU");
        };
        assert_eq!(why, "waiting for CPU: needs 0.5 CPU, 0 of 2 CPUs free");
        l.give_back(need(1000, 1024));
        assert_eq!(l.fit(need(500, 1024), Basis::Default), Fit::Fits);
        assert_eq!(l.used(), need(1000, 512));
    }

    #[test]
    fn a_declared_need_beyond_the_machine_is_unschedulable_an_estimate_runs_alone() {
        let l = Ledger::new(Capacity::of(2, 5 * GIB, 10 * GIB, 2));
        assert_eq!(
            l.fit(need(1000, 16 << 10), Basis::Declared),
            Fit::Never(
                "unschedulable: needs 16.0 GiB of memory, this machine has 9.0 GiB for jobs \
                 (10.0 GiB in all less a 1.0 GiB safety margin)"
                    .into()
            )
        );
        assert_eq!(l.fit(need(1000, 16 << 10), Basis::History), Fit::Fits);
        // More than was free at the start but less than the machine: it
        // holds the whole budget, so it runs alone.
        let mut l = l;
        assert_eq!(l.fit(need(1000, 6 << 10), Basis::Declared), Fit::Fits);
        l.take(need(1000, 6 << 10));
        assert!(matches!(l.fit(need(100, 10), Basis::Default), Fit::Wait(_)));
        l.give_back(need(1000, 6 << 10));
        // More CPUs than there are: it runs, alone.
        assert_eq!(l.fit(need(8000, 100), Basis::Declared), Fit::Fits);
        l.take(need(8000, 100));
        assert!(matches!(l.fit(need(100, 100), Basis::Default), Fit::Wait(_)));
        l.give_back(need(8000, 100));
        assert_eq!(l.used(), Need::default());
    }

    #[test]
    fn a_need_comes_from_the_declaration_then_history_then_the_default() {
        let mut job = Job {
            name: "build".into(),
            ..Job::default()
        };
        assert_eq!(Need::of(&job, None), (Need::DEFAULT, Basis::Default));
        let learned = JobUsage {
            memory: Some(3 << 30),
            cpu_milli: Some(250),
        };
        assert_eq!(Need::of(&job, Some(&learned)), (need(250, 3 << 10), Basis::History));
        job.container.memory = Some(1 << 30);
        assert_eq!(Need::of(&job, Some(&learned)), (need(250, 1 << 10), Basis::Declared));
        job.container.cpus = Some(1.5);
        assert_eq!(Need::of(&job, Some(&learned)), (need(1500, 1 << 10), Basis::Declared));
    }
}
