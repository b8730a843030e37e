//! Keeping hold of every process a host step starts, and of what a crashed
//! trackside left behind.
//!
//! A process group and an environment tag catch most of a step's processes,
//! but `setsid env -i cmd &` leaves both. A cgroup cannot be left: each
//! host step runs in a cgroup (v2) of its own, named after the trackside
//! that owns it (`trackside-<pid>-<start time>-<n>`), and stopping the step
//! kills the cgroup (`cgroup.kill`, or SIGKILL to each member until none is
//! left). Where no cgroup can be made (no writable cgroup2 hierarchy), the
//! group kill and the tag sweep are what remain, and [`available`] says so.
//!
//! Every step's environment also carries [`OWNER_VAR`] (`<pid>:<start>`).
//! At start, [`sweep_orphans`] kills processes and cgroups whose owner is
//! gone: a pid is only trusted together with its start time, so a reused
//! pid is never mistaken for the trackside that died.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// Names the trackside that started a process: `<pid>:<start time>`.
pub const OWNER_VAR: &str = "TRACKSIDE_OWNER";

use crate::process::{owner, owner_alive, parse_owner};
const PREFIX: &str = "trackside-";

/// The cgroup2 directory this process lives in, when it can hold children
/// of ours (writable, on a cgroup2 mount).
fn base() -> Option<&'static Path> {
    static BASE: OnceLock<Option<PathBuf>> = OnceLock::new();
    BASE.get_or_init(|| {
        let mount = std::fs::read_to_string("/proc/self/mountinfo")
            .ok()?
            .lines()
            .find_map(|l| {
                // `... mount-point options - cgroup2 ...`
                let (left, right) = l.split_once(" - ")?;
                right
                    .starts_with("cgroup2 ")
                    .then(|| left.split_whitespace().nth(4).map(PathBuf::from))?
            })?;
        let own = std::fs::read_to_string("/proc/self/cgroup")
            .ok()?
            .lines()
            .find_map(|l| {
                l.strip_prefix("0::")
                    .map(|p| p.trim().trim_start_matches('/').to_string())
            })?;
        let dir = mount.join(own);
        // Only a hierarchy where a child can be made and joined is of use.
        let probe = dir.join(format!("{PREFIX}probe-{}", std::process::id()));
        std::fs::create_dir(&probe).ok()?;
        let usable = probe.join("cgroup.procs").exists();
        let _ = std::fs::remove_dir(&probe);
        usable.then_some(dir)
    })
    .as_deref()
}

/// Whether steps get cgroups of their own on this machine.
pub fn available() -> bool {
    base().is_some()
}

/// One step's cgroup; killed and removed by [`StepCgroup::kill_all`].
#[derive(Debug)]
pub struct StepCgroup {
    dir: PathBuf,
}

impl StepCgroup {
    /// A fresh cgroup for one step, or `None` without a usable hierarchy.
    pub fn create() -> Option<StepCgroup> {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let base = base()?;
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let dir = base.join(format!("{PREFIX}{}-{n}", owner().replace(':', "-")));
        match std::fs::create_dir(&dir) {
            Ok(()) => Some(StepCgroup { dir }),
            Err(e) => {
                tracing::debug!("cannot create cgroup {}: {e}", dir.display());
                None
            }
        }
    }

    /// The file a process writes its pid to, to join.
    pub fn procs(&self) -> PathBuf {
        self.dir.join("cgroup.procs")
    }

    /// Kills every process in the cgroup, waits (bounded) until it is empty,
    /// and removes it. Returns how many processes were still in it.
    pub fn kill_all(&self) -> usize {
        kill_dir(&self.dir)
    }
}

impl Drop for StepCgroup {
    fn drop(&mut self) {
        kill_dir(&self.dir);
    }
}

fn members(dir: &Path) -> Vec<i32> {
    std::fs::read_to_string(dir.join("cgroup.procs"))
        .map(|t| t.lines().filter_map(|l| l.trim().parse().ok()).collect())
        .unwrap_or_default()
}

fn kill_dir(dir: &Path) -> usize {
    if !dir.exists() {
        return 0;
    }
    let found = members(dir).len();
    let fast = std::fs::write(dir.join("cgroup.kill"), "1").is_ok();
    // cgroup.kill (Linux 5.14) kills at once; without it, kill each member
    // until no new one appears (a fork racing the kill).
    for _ in 0..200 {
        let left = members(dir);
        if left.is_empty() {
            break;
        }
        if !fast {
            for pid in left {
                let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
            }
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    if let Err(e) = std::fs::remove_dir(dir)
        && e.kind() != io::ErrorKind::NotFound
    {
        tracing::warn!("cannot remove cgroup {}: {e}", dir.display());
    }
    found
}

/// Kills what trackside processes that no longer run left behind: host
/// processes marked with a dead owner, and cgroups named after one.
/// Returns how many processes were killed.
pub fn sweep_orphans() -> usize {
    let mut killed = 0;
    if let Some(base) = base() {
        for e in std::fs::read_dir(base).into_iter().flatten().flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let Some(rest) = name.strip_prefix(PREFIX) else {
                continue;
            };
            let mut parts = rest.splitn(3, '-');
            let (Some(pid), Some(start)) = (parts.next(), parts.next()) else {
                continue;
            };
            let (Ok(pid), Ok(start)) = (pid.parse::<u32>(), start.parse::<u64>()) else {
                continue;
            };
            if !owner_alive(pid, start) {
                killed += kill_dir(&e.path());
            }
        }
    }
    let needle = format!("{OWNER_VAR}=");
    for _ in 0..20 {
        let orphans: Vec<i32> = super::shell::tagged_env(&needle)
            .into_iter()
            .filter(|(_, value)| parse_owner(value).is_some_and(|(pid, start)| !owner_alive(pid, start)))
            .map(|(pid, _)| pid)
            .collect();
        if orphans.is_empty() {
            break;
        }
        killed += orphans.len();
        for pid in orphans {
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    killed
}
