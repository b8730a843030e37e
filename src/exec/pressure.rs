//! Reading how hard the machine is pressed, for `-j auto`
//! (`engine::parallelism`).
//!
//! Linux's pressure stall information (`/proc/pressure/{cpu,memory,io}`)
//! keeps, per resource, the total microseconds in which some task stalled
//! waiting for it. Two readings a second apart give the share of that
//! second. Where the files are absent (kernels before 4.20, or built
//! without PSI), the run queue stands in: runnable tasks beyond the cores
//! for CPU, tasks blocked on I/O for I/O (`/proc/stat`), and available
//! memory alone for memory.

use std::path::{Path, PathBuf};
use std::time::Instant;

use crate::engine::parallelism::Reading;

/// Where readings come from.
#[derive(Debug)]
enum Source {
    /// PSI files for cpu, memory and io.
    Psi([PathBuf; 3]),
    /// `/proc/stat`'s run queue.
    RunQueue,
}

/// Successive readings of the machine.
#[derive(Debug)]
pub struct Gauge {
    source: Source,
    cores: usize,
    /// The last PSI totals (cpu, memory, io, in microseconds) and when.
    last: Option<(Instant, [u64; 3])>,
}

impl Gauge {
    /// This machine: in a container with a cgroup namespace of its own
    /// (Docker's and Podman's default on cgroup v2), the container's PSI
    /// (what presses the container); elsewhere `/proc/pressure` (the whole
    /// machine, which the container jobs' own cgroups are part of); else
    /// the run queue (with a line saying so, to tell once).
    pub fn system() -> (Gauge, Option<String>) {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let own = namespaced_root().map(|dir| ["cpu", "memory", "io"].map(|r| dir.join(format!("{r}.pressure"))));
        for files in own
            .into_iter()
            .chain([["cpu", "memory", "io"].map(|r| Path::new("/proc/pressure").join(r))])
        {
            if psi_totals(&files).is_some() {
                return (Gauge::with_files(files, cores), None);
            }
        }
        (
            Gauge {
                source: Source::RunQueue,
                cores,
                last: None,
            },
            Some(
                "-j auto: no pressure stall information here (/proc/pressure); it reads the run queue \
                 and available memory instead"
                    .into(),
            ),
        )
    }

    /// PSI files in `dir`, named as in /proc/pressure (`cpu`, `memory`, `io`).
    pub fn at(dir: &Path, cores: usize) -> Gauge {
        Gauge::with_files(["cpu", "memory", "io"].map(|r| dir.join(r)), cores)
    }

    fn with_files(files: [PathBuf; 3], cores: usize) -> Gauge {
        Gauge {
            source: Source::Psi(files),
            cores: cores.max(1),
            last: None,
        }
    }

    /// A reading of the time since the last one; `None` the first time
    /// (PSI needs two) or when the files cannot be read.
    pub fn read(&mut self, available: u64) -> Option<Reading> {
        match &self.source {
            Source::Psi(files) => {
                let now = Instant::now();
                let totals = psi_totals(files)?;
                let last = self.last.replace((now, totals));
                let (then, before) = last?;
                let us = now.duration_since(then).as_micros().max(1) as f64;
                let share = |i: usize| (totals[i].saturating_sub(before[i]) as f64 / us).clamp(0.0, 1.0);
                Some(Reading {
                    cpu: share(0),
                    memory: share(1),
                    io: share(2),
                    available,
                })
            }
            Source::RunQueue => {
                let stat = std::fs::read_to_string("/proc/stat").ok()?;
                let (running, blocked) = run_queue(&stat)?;
                let cores = self.cores as f64;
                Some(Reading {
                    // The share of runnable tasks without a core.
                    cpu: ((running - cores) / running.max(1.0)).clamp(0.0, 1.0),
                    io: (blocked / cores).clamp(0.0, 1.0),
                    memory: 0.0,
                    available,
                })
            }
        }
    }
}

/// The `some` totals of the cpu, memory and io files.
fn psi_totals(files: &[PathBuf; 3]) -> Option<[u64; 3]> {
    let mut out = [0u64; 3];
    for (i, file) in files.iter().enumerate() {
        let text = std::fs::read_to_string(file).ok()?;
        out[i] = some_total(&text)?;
    }
    Some(out)
}

/// The container's cgroup, when trackside sees its cgroup as the root
/// (`0::/`, a cgroup namespace of its own) and the root has pressure files
/// (a host's real root has none: its are /proc/pressure).
fn namespaced_root() -> Option<PathBuf> {
    let own = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    let rel = own.lines().find_map(|l| l.strip_prefix("0::"))?.trim();
    let root = Path::new("/sys/fs/cgroup");
    (rel == "/" && root.join("cpu.pressure").exists()).then(|| root.to_path_buf())
}

/// `total=` of the `some` line of a PSI file.
fn some_total(text: &str) -> Option<u64> {
    let line = text.lines().find(|l| l.starts_with("some "))?;
    line.split_whitespace()
        .find_map(|f| f.strip_prefix("total="))
        .and_then(|t| t.parse().ok())
}

/// `procs_running` and `procs_blocked` of /proc/stat.
fn run_queue(stat: &str) -> Option<(f64, f64)> {
    let field = |name: &str| {
        stat.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().parse::<f64>().ok())
    };
    Some((field("procs_running ")?, field("procs_blocked ")?))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, cpu: u64, memory: u64, io: u64) {
        for (name, total) in [("cpu", cpu), ("memory", memory), ("io", io)] {
            let text = format!(
                "some avg10=0.00 avg60=0.00 avg300=0.00 total={total}\nfull avg10=0.00 avg60=0.00 avg300=0.00 total=0\n"
            );
            std::fs::write(dir.join(name), text).expect("write");
        }
    }

    #[test]
    fn two_readings_give_the_stalled_share_of_the_time_between() {
        let dir = tempfile::tempdir().expect("tempdir");
        write(dir.path(), 1_000, 0, 50);
        let mut g = Gauge::at(dir.path(), 4);
        assert_eq!(g.read(1 << 30), None, "the first reading only primes");
        // A stall longer than the time between: the share is capped.
        write(dir.path(), 1_000 + 3_600_000_000, 0, 50);
        let r = g.read(1 << 30).expect("a reading");
        assert_eq!(r.cpu, 1.0);
        assert_eq!((r.memory, r.io), (0.0, 0.0));
        assert_eq!(r.available, 1 << 30);
    }

    #[test]
    fn the_files_parse_and_the_run_queue_stands_in_without_them() {
        assert_eq!(
            some_total("some avg10=1.00 avg60=0.5 avg300=0.1 total=12345\n"),
            Some(12345)
        );
        assert_eq!(some_total("full avg10=1.00 total=9\n"), None);
        let stat = "cpu  1 2 3\nprocs_running 6\nprocs_blocked 1\n";
        assert_eq!(run_queue(stat), Some((6.0, 1.0)));
        assert_eq!(run_queue("cpu 1 2 3\n"), None);
        let dir = tempfile::tempdir().expect("tempdir");
        let mut g = Gauge::at(dir.path(), 2);
        assert_eq!(g.read(0), None, "no files: no reading, no panic");
    }
}
