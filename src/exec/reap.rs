//! Waiting for a host step's process as `wait4` does: its exit status, and
//! the peak resident memory the kernel accounted to it and the descendants
//! it waited for (`ru_maxrss`: the largest single process of the tree, as
//! GNU time reports it).
//!
//! tokio's own child handle reaps with `waitpid`, which drops the usage, so
//! host steps are started with std and waited for here: a pidfd (Linux 5.3
//! and later) tells tokio when the process has exited, then `wait4` reaps
//! it without blocking. Where no pidfd can be opened, a blocking thread
//! waits instead. A [`Child`] dropped before its process was reaped kills
//! it and reaps it on a thread of its own, so no zombie is left behind.
//!
//! One catch: a process is charged, at its exec, with the peak resident
//! size of the memory it was started in. Started `vfork`-like (sharing
//! trackside's memory until the exec, as host steps are), that is
//! trackside's high-water mark; forked (a copy), trackside's size at the
//! fork, which is no more. So a peak no greater than trackside's own peak
//! at the spawn says nothing of the step ([`step_peak`] drops it); a
//! greater one is the step's own.

use std::io;
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::process::ExitStatusExt;
use std::process::ExitStatus;
use std::time::Duration;

use tokio::io::unix::AsyncFd;

/// How a process ended, with its peak memory and CPU time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reaped {
    pub status: ExitStatus,
    /// Bytes; `None` when the kernel reported none.
    pub peak_rss: Option<u64>,
    /// User and system time of it and the descendants it waited for, in
    /// milliseconds.
    pub cpu_ms: u64,
}

/// trackside's own peak resident size so far, in bytes: what a process
/// it starts `vfork`-like is charged with at its exec. Not the size now:
/// memory freed since the peak (a large pipeline's text once read) is still
/// counted to the child. 0 where it cannot be read.
///
/// `getrusage` answers with one system call, but says the larger of this
/// peak and the one trackside was itself charged at its own exec (its
/// parent's, when that started it `vfork`-like: `cargo run`, Python). So
/// until trackside's own peak is known to be past the parent's, the
/// kernel's `VmHWM` in `/proc/self/status` is read instead.
pub fn own_peak() -> u64 {
    // The parent's peak when it was above trackside's own at the first
    // call, else 0: `getrusage` above it is trackside's own.
    static PARENTS: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    let said = rusage_peak();
    let parents = *PARENTS.get_or_init(|| if said > vm_hwm().unwrap_or(said) { said } else { 0 });
    if said > parents { said } else { vm_hwm().unwrap_or(said) }
}

/// `getrusage(RUSAGE_SELF)`'s peak, in bytes; 0 where it fails.
fn rusage_peak() -> u64 {
    // SAFETY: getrusage fills the struct it is given; zeroed is a valid one.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: RUSAGE_SELF and a pointer to a live rusage.
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) } != 0 {
        return 0;
    }
    // Linux counts it in KiB.
    u64::try_from(usage.ru_maxrss).unwrap_or(0).saturating_mul(1024)
}

/// `VmHWM` of `/proc/self/status`: this process's own peak, in bytes.
fn vm_hwm() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let kib = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))?
        .trim()
        .strip_suffix("kB")?
        .trim()
        .parse::<u64>()
        .ok()?;
    Some(kib.saturating_mul(1024))
}

/// Slack over the inherited size before a peak counts as the step's own.
const SLACK: u64 = 1 << 20;

/// A step's peak from its reaped one and what it inherited from trackside
/// at the fork: only a peak above that (with a MiB of slack) is the step's.
pub fn step_peak(reaped: Option<u64>, inherited: u64) -> Option<u64> {
    reaped.filter(|&p| p > inherited.saturating_add(SLACK))
}

/// A started process that this module reaps.
pub struct Child {
    pid: libc::pid_t,
    how: Waiting,
    reaped: Option<Reaped>,
}

enum Waiting {
    Pidfd(AsyncFd<OwnedFd>),
    Thread(tokio::task::JoinHandle<io::Result<Reaped>>),
}

impl Child {
    /// Takes over waiting for `pid`, a child of this process nothing else
    /// reaps.
    pub fn new(pid: u32) -> Child {
        let pid = libc::pid_t::try_from(pid).unwrap_or(libc::pid_t::MAX);
        Child::waiting(pid, pidfd(pid).ok())
    }

    /// Takes over waiting for `pid` through `pidfd`, a pidfd of it (from
    /// `clone3`, see [`super::spawn`]).
    pub fn with_pidfd(pid: libc::pid_t, pidfd: OwnedFd) -> Child {
        Child::waiting(pid, Some(pidfd))
    }

    /// Waits through the pidfd where there is one, else on a thread.
    fn waiting(pid: libc::pid_t, pidfd: Option<OwnedFd>) -> Child {
        let registered = pidfd.map(|fd| {
            // SAFETY: the OwnedFd stays open, and is the same descriptor,
            // for as long as the AsyncFd owns it.
            unsafe { AsyncFd::register_with_interest(fd, tokio::io::Interest::READABLE) }
        });
        let how = match registered {
            Some(Ok(fd)) => Waiting::Pidfd(fd),
            _ => Waiting::Thread(tokio::task::spawn_blocking(move || {
                reap(pid, 0)?.ok_or_else(|| io::Error::other("wait4 returned without the process"))
            })),
        };
        Child { pid, how, reaped: None }
    }

    pub fn id(&self) -> u32 {
        u32::try_from(self.pid).unwrap_or(0)
    }

    /// Waits until the process has ended and reaps it. Cancel-safe: a wait
    /// that was dropped can be started again.
    pub async fn wait(&mut self) -> io::Result<Reaped> {
        if let Some(r) = self.reaped {
            return Ok(r);
        }
        let r = match &mut self.how {
            Waiting::Pidfd(fd) => loop {
                if let Some(r) = reap(self.pid, libc::WNOHANG)? {
                    break r;
                }
                // Readable once the process has exited; it stays readable.
                let mut ready = fd.readable().await?;
                if let Some(r) = reap(self.pid, libc::WNOHANG)? {
                    break r;
                }
                // Not yet reapable (the exit is still being accounted):
                // look again shortly rather than wait for a new edge.
                ready.clear_ready();
                tokio::time::sleep(Duration::from_millis(1)).await;
            },
            Waiting::Thread(handle) => handle.await.map_err(io::Error::other)??,
        };
        self.reaped = Some(r);
        Ok(r)
    }

    /// SIGKILL to the process (not its group), unless it was reaped.
    pub fn kill(&self) {
        if self.reaped.is_none() {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.pid), nix::sys::signal::Signal::SIGKILL);
        }
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        if self.reaped.is_some() {
            return;
        }
        self.kill();
        match &self.how {
            // The thread that waits reaps it.
            Waiting::Thread(_) => {}
            Waiting::Pidfd(_) => {
                let pid = self.pid;
                let _ = std::thread::Builder::new()
                    .name("trackside-reap".into())
                    .spawn(move || reap(pid, 0));
            }
        }
    }
}

fn pidfd(pid: libc::pid_t) -> io::Result<OwnedFd> {
    // SAFETY: pidfd_open takes a pid and flags and returns a new file
    // descriptor or -1; nothing is borrowed.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    let fd = i32::try_from(fd).map_err(io::Error::other)?;
    // SAFETY: the descriptor was just opened and is owned by nothing else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// `wait4(pid, flags)`: `None` when (with WNOHANG) it has not ended yet.
fn reap(pid: libc::pid_t, flags: libc::c_int) -> io::Result<Option<Reaped>> {
    loop {
        let mut status: libc::c_int = 0;
        // SAFETY: an all-zero rusage is a valid value of the plain C struct.
        let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
        // SAFETY: both pointers are to live locals of the right types.
        let got = unsafe { libc::wait4(pid, &mut status, flags, &mut usage) };
        match got {
            0 => return Ok(None),
            p if p == pid => {
                // ru_maxrss is in KiB on Linux.
                let kib = u64::try_from(usage.ru_maxrss).unwrap_or(0);
                let ms = |t: libc::timeval| {
                    u64::try_from(t.tv_sec)
                        .unwrap_or(0)
                        .saturating_mul(1000)
                        .saturating_add(u64::try_from(t.tv_usec).unwrap_or(0) / 1000)
                };
                return Ok(Some(Reaped {
                    status: ExitStatus::from_raw(status),
                    peak_rss: (kib > 0).then(|| kib.saturating_mul(1024)),
                    cpu_ms: ms(usage.ru_utime).saturating_add(ms(usage.ru_stime)),
                }));
            }
            _ => {
                let e = io::Error::last_os_error();
                if e.kind() != io::ErrorKind::Interrupted {
                    return Err(e);
                }
            }
        }
    }
}

#[cfg(test)]
// The children are reaped by `Child`, which the lint cannot see.
#[allow(clippy::zombie_processes)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_exit_status_and_the_peak_memory_of_the_tree_come_back() {
        // dd reads into a 64 MiB buffer (a grandchild: sh waits for it),
        // then the shell exits 3.
        let child = std::process::Command::new("sh")
            .args(["-c", "dd if=/dev/zero of=/dev/null bs=64M count=1 2>/dev/null; exit 3"])
            .spawn()
            .expect("sh");
        let mut c = Child::new(child.id());
        let r = c.wait().await.expect("reaped");
        assert_eq!(r.status.code(), Some(3));
        assert!(r.peak_rss.is_some_and(|p| p >= 64 << 20), "{r:?}");
        // Waiting again answers the same.
        assert_eq!(c.wait().await.expect("again"), r);
    }

    #[test]
    fn a_peak_within_what_the_fork_inherited_says_nothing() {
        assert_eq!(step_peak(Some(40 << 20), 40 << 20), None);
        assert_eq!(step_peak(Some((40 << 20) + 1000), 40 << 20), None, "within the slack");
        assert_eq!(step_peak(Some(200 << 20), 40 << 20), Some(200 << 20));
        assert_eq!(step_peak(None, 0), None);
        assert!(own_peak() > 0, "this process has a resident size");
    }

    #[tokio::test]
    async fn a_dropped_child_is_killed_and_reaped() {
        let child = std::process::Command::new("sleep").arg("30").spawn().expect("sleep");
        let pid = child.id();
        drop(Child::new(pid));
        // Gone (not a zombie) within a bounded time.
        let stat = format!("/proc/{pid}/stat");
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while std::path::Path::new(&stat).exists() {
            assert!(std::time::Instant::now() < deadline, "pid {pid} is still there");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}
