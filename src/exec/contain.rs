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

/// One step's cgroup; killed and removed by [`StepCgroup::kill_all`], or
/// kept for the next step by [`StepCgroup::release`] when it is empty.
#[derive(Debug)]
pub struct StepCgroup {
    /// Empty once released.
    dir: PathBuf,
}

/// Empty cgroups of ended steps, for the next steps to use: making and
/// removing one costs more than a whole step of `echo` (about 0.6 ms: the
/// kernel makes and tears down its files), and an empty cgroup holds
/// nothing of the step that used it. [`release_idle`] removes them; a
/// crashed trackside's are swept by [`sweep_orphans`] as its others are.
struct Idle {
    dirs: std::sync::Mutex<Vec<PathBuf>>,
    max: usize,
}

impl Idle {
    fn dirs(&self) -> std::sync::MutexGuard<'_, Vec<PathBuf>> {
        self.dirs.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// A kept cgroup, or a new one under `base`.
    fn create(&self, base: &Path) -> Option<StepCgroup> {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        if let Some(dir) = self.dirs().pop() {
            return Some(StepCgroup { dir });
        }
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

    /// Keeps `cg` when nothing is left in it (removed when enough are kept).
    fn release(&self, cg: &mut StepCgroup) -> bool {
        if !members(&cg.dir).is_empty() {
            return false;
        }
        let dir = std::mem::take(&mut cg.dir);
        let mut kept = self.dirs();
        if kept.len() < self.max {
            kept.push(dir);
        } else {
            drop(kept);
            kill_dir(&dir);
        }
        true
    }

    fn remove_all(&self) {
        let dirs = std::mem::take(&mut *self.dirs());
        for dir in dirs {
            kill_dir(&dir);
        }
    }
}

/// Enough for a thousand steps at once; more are removed.
static IDLE: Idle = Idle {
    dirs: std::sync::Mutex::new(Vec::new()),
    max: 1024,
};

/// Removes the empty cgroups kept for later steps (at the end of a run).
pub fn release_idle() {
    IDLE.remove_all();
}

impl StepCgroup {
    /// A cgroup for one step, empty (a kept one, else a new one), or `None`
    /// without a usable hierarchy.
    pub fn create() -> Option<StepCgroup> {
        IDLE.create(base()?)
    }

    /// The cgroup's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
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

    /// Ends the step's use of the cgroup when nothing is left in it, the
    /// usual end of a step: one read, no waiting; the cgroup is kept for a
    /// later step. `false` when something is left, and
    /// [`StepCgroup::kill_all`] must see to it.
    pub fn release(&mut self) -> bool {
        IDLE.release(self)
    }
}

impl Drop for StepCgroup {
    fn drop(&mut self) {
        if !self.dir.as_os_str().is_empty() {
            kill_dir(&self.dir);
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn base_or_skip(test: &str) -> Option<&'static Path> {
        let found = base();
        if found.is_none() {
            assert!(
                std::env::var_os("CI").is_none(),
                "{test}: CI must have a writable cgroup2 hierarchy"
            );
            eprintln!("SKIPPED {test}: no writable cgroup2 hierarchy here");
        }
        found
    }

    fn pool(max: usize) -> Idle {
        Idle {
            dirs: std::sync::Mutex::new(Vec::new()),
            max,
        }
    }

    #[test]
    fn an_empty_cgroup_is_kept_for_the_next_step_and_removed_at_the_end() {
        let Some(base) = base_or_skip("an_empty_cgroup_is_kept_for_the_next_step_and_removed_at_the_end") else {
            return;
        };
        let idle = pool(1);
        let mut first = idle.create(base).expect("a cgroup");
        let kept = first.dir.clone();
        assert!(idle.release(&mut first));
        drop(first);
        assert!(kept.is_dir(), "a released cgroup stays for the next step");
        let mut again = idle.create(base).expect("a cgroup");
        assert_eq!(again.dir, kept, "the kept cgroup is used again");
        let mut other = idle.create(base).expect("a cgroup");
        let extra = other.dir.clone();
        assert_ne!(extra, kept);
        assert!(idle.release(&mut again));
        assert!(idle.release(&mut other));
        assert!(!extra.exists(), "beyond the limit a released cgroup is removed");
        idle.remove_all();
        assert!(!kept.exists(), "the kept ones are removed at the end");
    }

    #[test]
    fn a_cgroup_with_a_process_left_is_not_kept() {
        let Some(base) = base_or_skip("a_cgroup_with_a_process_left_is_not_kept") else {
            return;
        };
        let idle = pool(4);
        let mut cg = idle.create(base).expect("a cgroup");
        let mut child = std::process::Command::new("sleep").arg("30").spawn().expect("sleep");
        std::fs::write(cg.procs(), child.id().to_string()).expect("join");
        assert!(!idle.release(&mut cg), "a cgroup with a process in it is not kept");
        assert!(idle.dirs().is_empty());
        assert_eq!(cg.kill_all(), 1);
        let status = child.wait().expect("wait");
        assert!(!status.success(), "the process left was killed");
        assert!(!cg.dir.exists());
    }
}
